"""This user's runtime folders (the local cluster's home, the ipc sockets' folder): private to
the user, and refused when another user owns them.

Both default to /tmp/snipe-<uid>, in a folder every user may write to: a folder of that name
made by another user first would let its owner replace what we keep there (the local cluster's
description names the catalog to trust), and one left readable by others lists our sockets.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from snipe.errors import ConfigError


def private_dir(path: Path) -> Path:
    """Make `path` (and any missing parent) if needed, and see that it is this user's alone:
    a folder of ours open to others is closed (mode 0700); one of another user's is refused."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    with contextlib.suppress(FileExistsError):        # not a folder: `_check` says so
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for made in missing[1:]:              # parents come with the umask's mode, not `mode`
        _check(made)
    return _check(path)


def _check(path: Path) -> Path:
    me = os.getuid()
    link = os.lstat(path)
    if link.st_uid != me:
        raise ConfigError(f"{path} belongs to user id {link.st_uid}, not to this user ({me}): another user may have "
                          "made it to read or replace what snipe keeps there. Remove it, or point SNIPE_HOME or "
                          "XDG_RUNTIME_DIR at a folder of your own")
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} should be a folder, but it is not; remove it or point SNIPE_HOME or "
                          "XDG_RUNTIME_DIR elsewhere")
    if st.st_uid != me:
        raise ConfigError(f"{path} leads to a folder of user id {st.st_uid}, not of this user ({me}); remove it")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
