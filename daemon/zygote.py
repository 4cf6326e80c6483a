"""A pre-started interpreter that becomes a task: the daemon's warm pool (see daemon/pool.py).

Starting Python and importing the library costs tens of milliseconds, more than everything else
in a spawn. A zygote pays that ahead of time: it imports what tasks use, then blocks reading
one JSON line on stdin. The line says what to become: working directory, environment, rlimits,
stdout/stderr files, and the argv of a Python program. The zygote applies them to itself and
runs the program in place, so the task's pid, process group and session are the zygote's.
Only Python programs run here (the argv must start with this interpreter); others are started
cold by the task runner.
"""

from __future__ import annotations

import json
import os
import resource
import runpy
import sys

# What tasks import, paid for before the task exists.
import snipe.runtime  # noqa: F401


def become(command: dict) -> None:
    os.chdir(command["cwd"])
    os.environ.clear()
    os.environ.update(command["env"])
    for name, soft, hard in command.get("limits", []):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
    for fd, path in ((1, command["stdout"]), (2, command["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    argv = command["argv"][1:]
    if argv and argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        code = compile(argv[1], "<string>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    line = sys.stdin.readline()
    if not line:          # the daemon closed the pool: leave quietly
        return
    become(json.loads(line))


if __name__ == "__main__":
    main()
