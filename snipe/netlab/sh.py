"""Running the system tools the harness drives (ip, nft, tc, sysctl), always with a timeout."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger("snipe.netlab")

TOOL_TIMEOUT_S = 20.0


class ToolError(RuntimeError):
    """A system tool failed; the message carries the command and its stderr."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        self.argv, self.code, self.stderr = list(argv), code, stderr
        super().__init__(f"{' '.join(argv)} failed ({code}): {stderr.strip()}")


def which(tool: str) -> str | None:
    """The path of `tool`, also looking in the sbin folders a non-login PATH may lack."""
    found = shutil.which(tool)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        path = f"{d}/{tool}"
        if shutil.which(path):
            return path
    return None


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a tool; raise ToolError on a non-zero exit when `check`."""
    argv = list(argv)
    tool = which(argv[0])
    if tool is not None:
        argv[0] = tool
    log.debug("run: %s", " ".join(argv))
    try:
        r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(argv, -1, f"timed out after {timeout} s") from exc
    if check and r.returncode != 0:
        raise ToolError(argv, r.returncode, r.stderr or r.stdout)
    return r


def ns_run(ns: str, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a tool inside network namespace `ns`."""
    return run(["ip", "netns", "exec", ns, *argv], **kw)  # type: ignore[arg-type]
