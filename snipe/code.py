"""Mobile code: packaging a program as a content-addressed blob, and unpacking it safely.

This is the pure part of `snipe.publish(path)` and of a playground's download step (SNIPE
sections 3.6 and 4.5): the publisher turns a `.py` file or a folder into a `CodePackage` whose
blob is a deterministic, uncompressed POSIX tar and whose name is `urn:snipe:code:sha256:<hex>`
of that blob; a host that runs the code fetches the blob, checks it against its URN (`verify`),
unpacks it where nothing can escape (`unpack`) and builds the command line (`entry_argv`).
`CodeCache` keeps verified blobs and their unpacked trees on disk, keyed by hash.

Invariants:
- The same content gives the same blob and URN wherever and whenever it is packaged: members are
  sorted, mtimes are 0, owners are 0 and nameless, modes are 0o644 (0o755 if executable or a
  folder), and caches and version-control folders are left out. The folder's own name is not
  part of the blob (it goes to the manifest's `name`).
- The blob holds files only; the manifest (entry, requirements, name) is catalog metadata, made
  of catalog-storable values (str, int, list of str).
- `unpack` checks every member before it writes anything: no absolute paths, no `..`, no links
  that resolve outside the destination (following chains of links), no hard links, devices or
  fifos, no sparse or other special member types (only what `package` writes: regular files,
  folders, symlinks), no duplicates, nothing written through a link; and at most MAX_MEMBERS
  members of at most MAX_UNPACKED_BYTES in all, judged from the headers before any data is read.
- `CodeCache.install` refuses a blob over DEFAULT_MAX_SIZE before hashing it, and leaves nothing
  on disk for code it refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from snipe.errors import CodeError, IntegrityError, TooLarge, UrnError
from snipe.urn import Urn, content_urn

FORMAT = "snipe-code/1"
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_ENTRIES = ("__main__.py", "main.py")
EXCLUDED_NAMES = frozenset({
    "__pycache__", ".git", ".hg", ".svn", ".venv", ".tox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".hypothesis",
})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
MAX_LINK_HOPS = 40
MAX_UNPACKED_BYTES = DEFAULT_MAX_SIZE     # what a code blob's files may add up to, unpacked
MAX_MEMBERS = 100_000                     # members (files, folders, links) in one code blob
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)   # what `isreg` also says of sparse and contiguous members

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_ENTRY = re.compile(rf"^({_IDENT}(?:\.{_IDENT})*):({_IDENT})$")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CodePackage:
    """A packaged program: the blob to store and ship, its content URN, and its manifest."""

    blob: bytes
    urn: str
    manifest: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Member:
    name: str  # relative POSIX path inside the archive
    kind: str  # "file", "dir" or "link"
    data: bytes = b""
    executable: bool = False
    target: str = ""  # for links: a relative POSIX path


def package(
    path: str | os.PathLike[str],
    *,
    entry: str | None = None,
    requirements: Sequence[str] = (),
    name: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> CodePackage:
    """Package a `.py` file or a folder as a deterministic tar blob named by its sha256.

    `entry` is a path of a `.py` file inside the package (default: the file itself, or the
    folder's `__main__.py`, else `main.py`) or `module:function`. Raises CodeError for anything
    that cannot be packaged as given, TooLarge past `max_size` bytes.
    """
    reqs = _check_requirements(requirements)
    given = Path(path)
    if not given.exists():
        raise CodeError(f"cannot package {str(given)!r}: no such file or folder")
    src = given.resolve()
    if src.is_file():
        if given.suffix != ".py":
            raise CodeError(f"cannot package {str(given)!r}: a single file must be a .py module; "
                            "package its folder to ship other files")
        data = src.read_bytes()
        _check_size(len(data), max_size, "at least ")
        members = [_Member(given.name, "file", data, _is_executable(src.stat().st_mode))]
        default_name = given.stem
    elif src.is_dir():
        members = _collect(src, max_size)
        default_name = src.name
    else:
        raise CodeError(f"cannot package {str(src)!r}: it is neither a regular file nor a folder")

    files = {m.name for m in members if m.kind == "file"}
    entry = _choose_entry(entry, files, given)
    if name is None:
        name = default_name
    if not isinstance(name, str) or not name:
        raise CodeError(f"package name must be a non-empty string, not {name!r}")

    blob = _archive(members)
    _check_size(len(blob), max_size, "")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "entry": entry,
        "files": len(files),
        "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "requirements": reqs,
        "name": name,
    }
    return CodePackage(blob, content_urn("code", blob), manifest)


def verify(blob: bytes, urn: str) -> None:
    """Raise IntegrityError unless `blob` hashes to the content URN `urn` (UrnError if malformed)."""
    kind = Urn.parse(urn).kind
    expected = _hex_of(urn, kind if kind == "file" else "code")
    actual = hashlib.sha256(blob).hexdigest()
    if actual != expected:
        raise IntegrityError(f"content does not match its URN: expected sha256 {expected}, got sha256 {actual}")


def unpack(blob: bytes, dest: Path) -> None:
    """Extract a code blob into `dest` (absent or empty; created 0o755), refusing unsafe members.

    Every member is checked before anything is written; on refusal (CodeError) `dest` is left as
    it was.
    """
    dest = Path(dest)
    members = _read_archive(blob)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise CodeError(f"cannot unpack into {str(dest)!r}: it must be absent or an empty folder")
    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
    dest.chmod(0o755)
    links = []
    for m in members:
        out = dest.joinpath(*m.name.split("/"))
        if m.kind == "dir":
            out.mkdir(mode=0o755, parents=True, exist_ok=True)
            out.chmod(0o755)
        elif m.kind == "file":
            _make_parents(dest, out)
            mode = 0o755 if m.executable else 0o644
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            with os.fdopen(fd, "wb") as f:
                f.write(m.data)
            os.chmod(out, mode)
        else:
            links.append((out, m.target))
    for out, target in links:  # last, so nothing is ever written through one
        _make_parents(dest, out)
        os.symlink(target, out)


def entry_argv(manifest: dict[str, Any], unpacked_dir: Path, python: str, args: Sequence[str]) -> list[str]:
    """The command line that runs the manifest's entry from an unpacked package.

    `file.py` runs as a script; `module:function` imports the module with `unpacked_dir` first on
    `sys.path` (in place of the current folder) and exits with `function(*sys.argv[1:])`, as
    console-script wrappers do.
    """
    entry = manifest.get("entry")
    if not isinstance(entry, str):
        raise CodeError(f"manifest has no usable entry: {entry!r}")
    directory = Path(unpacked_dir).resolve()
    match = _MODULE_ENTRY.fullmatch(entry)
    if match:
        module, function = match.groups()
        bootstrap = (
            f"import sys,importlib;sys.path[:]=[{str(directory)!r},*[p for p in sys.path if p]];"
            f"sys.exit(getattr(importlib.import_module({module!r}),{function!r})(*sys.argv[1:]))"
        )
        return [python, "-c", bootstrap, *args]
    rel = _safe_relpath(entry)
    if rel is None or not entry.endswith(".py"):
        raise CodeError(f"manifest entry {entry!r} is neither a relative path to a .py file nor module:function")
    return [python, str(directory.joinpath(*rel.split("/"))), *args]


class CodeCache:
    """Verified code on disk: raw blobs under `root/blobs/<hex>`, unpacked trees under `root/<hex>`.

    Both are written to a temporary name and renamed into place, so a reader never sees a partial
    tree or blob, and processes installing the same code at once all end up with one copy.
    """

    def __init__(self, root: str | os.PathLike[str], kind: str = "code") -> None:
        self.kind = kind            # "file" for stored blobs that are never unpacked (checkpoints)
        self.root = Path(root)
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._blobs = self.root / "blobs"
        self._blobs.mkdir(mode=0o755, exist_ok=True)

    def path_for(self, urn: str) -> Path | None:
        """The unpacked tree of this code, or None if it is not installed."""
        path = self.root / _hex_of(urn, self.kind)
        return path if path.is_dir() else None

    def blob_path(self, urn: str) -> Path | None:
        """The file holding this code's blob (to serve to other hosts), or None if not held."""
        path = self._blobs / _hex_of(urn, self.kind)
        return path if path.is_file() else None

    def held(self) -> list[str]:
        """The URNs of every blob held here, sorted (a daemon republishes where they are, on start)."""
        names = (p.name for p in self._blobs.iterdir() if p.is_file())
        return sorted(f"urn:snipe:{self.kind}:sha256:{n}" for n in names if _HEX64.fullmatch(n))

    def has(self, urn: str) -> bool:
        """True when the code is here in either form (installed, or its blob held)."""
        return self.path_for(urn) is not None or self.blob_path(urn) is not None

    def get_blob(self, urn: str) -> bytes | None:
        """The stored blob, re-verified; a blob that no longer matches its URN is dropped (None)."""
        path = self.blob_path(urn)
        if path is None:
            return None
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            verify(blob, urn)
        except IntegrityError:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return blob

    def put_blob(self, blob: bytes, urn: str) -> Path:
        """Verify and store a blob without unpacking it; idempotent."""
        verify(blob, urn)
        return self._store(blob, urn)

    def drop_blob(self, urn: str) -> None:
        """Forget a stored blob (a superseded checkpoint); idempotent."""
        with contextlib.suppress(FileNotFoundError):
            (self._blobs / _hex_of(urn, self.kind)).unlink()

    def _store(self, blob: bytes, urn: str) -> Path:
        path = self._blobs / _hex_of(urn, self.kind)
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self._blobs)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return path

    def install(self, blob: bytes, urn: str, max_size: int = DEFAULT_MAX_SIZE) -> Path:
        """Verify, store and unpack the code; return its tree. Idempotent and safe to race.

        A blob over `max_size` bytes is refused (TooLarge) before it is hashed; a blob that does
        not unpack (CodeError, TooLarge) leaves neither a tree nor a stored blob behind."""
        if len(blob) > max_size:
            raise TooLarge(f"code blob for {urn} is {len(blob)} bytes; a daemon takes code blobs of at most "
                           f"{max_size} bytes ({max_size / 2**20:.0f} MiB), as snipe.publish makes them")
        verify(blob, urn)
        final = self.root / _hex_of(urn)
        if not final.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_hex_of(urn)[:16]}-", dir=self.root))
            try:
                unpack(blob, tmp)
                try:
                    os.rename(tmp, final)
                except OSError:
                    if not final.is_dir():  # not a lost race: a real failure
                        raise
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        self._store(blob, urn)  # only once it has unpacked safely
        return final


# -- packaging ---------------------------------------------------------------------------------


def _check_requirements(requirements: Sequence[str]) -> list[str]:
    if isinstance(requirements, str | bytes):
        raise CodeError("requirements must be a sequence of strings, not a single string")
    reqs = list(requirements)
    for r in reqs:
        if not isinstance(r, str) or not r.strip():
            raise CodeError(f"each requirement must be a non-empty string, not {r!r}")
    return reqs


def _check_size(size: int, limit: int, qualifier: str) -> None:
    if size > limit:
        raise TooLarge(f"code package is {qualifier}{size} bytes ({size / 2**20:.1f} MiB); "
                       f"the limit is {limit} bytes ({limit / 2**20:.1f} MiB)")


def _is_executable(mode: int) -> bool:
    return bool(mode & 0o111)


def _excluded(name: str) -> bool:
    return name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES)


def _collect(root: Path, max_size: int) -> list[_Member]:
    """Every member of a folder, sorted by name; links checked to stay among the members."""
    members: list[_Member] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        entries = [n for n in dirnames + filenames if not _excluded(n)]
        dirnames[:] = [n for n in dirnames if not _excluded(n) and not (here / n).is_symlink()]
        for n in entries:
            full = here / n
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                real = Path(os.path.realpath(full))
                if real != root and root not in real.parents:
                    raise CodeError(f"cannot package {str(root)!r}: symlink {rel!r} points outside the folder "
                                    f"(to {str(real)!r}); replace it with a copy of what it points to")
                members.append(_Member(rel, "link", target=os.path.relpath(real, here)))
            elif stat.S_ISDIR(st.st_mode):
                members.append(_Member(rel, "dir"))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                _check_size(total, max_size, "at least ")
                members.append(_Member(rel, "file", full.read_bytes(), _is_executable(st.st_mode)))
            else:
                raise CodeError(f"cannot package {str(root)!r}: {rel!r} is not a regular file, folder or symlink")
            if len(members) > MAX_MEMBERS:      # a daemon would refuse to unpack it (unpack)
                raise TooLarge(f"cannot package {str(root)!r}: it has more than {MAX_MEMBERS} files, folders and "
                               "links; leave out what the task does not need")
    members.sort(key=lambda m: m.name)
    names = {m.name for m in members}
    for m in members:
        if m.kind == "link":
            target = os.path.normpath(PurePosixPath(m.name).parent / m.target).replace(os.sep, "/")
            if target not in names:
                raise CodeError(f"cannot package {str(root)!r}: symlink {m.name!r} points to {target!r}, "
                                "which is not among the packaged files (missing, excluded, or the folder itself)")
    return members


def _choose_entry(entry: str | None, files: set[str], src: Path) -> str:
    if entry is None:
        if src.is_file():
            return src.name
        for candidate in DEFAULT_ENTRIES:
            if candidate in files:
                return candidate
        raise CodeError(f"cannot package {str(src)!r}: no entry point; add __main__.py or main.py, or name "
                        "one, a script in the folder or module:function (snipe-console publish --entry "
                        "path/to/script.py; snipe.publish(..., entry='path/to/script.py'))")
    if not isinstance(entry, str):
        raise CodeError(f"entry must be a string, not {type(entry).__name__}")
    match = _MODULE_ENTRY.fullmatch(entry)
    if match:
        module = match.group(1).replace(".", "/")
        if f"{module}.py" not in files and f"{module}/__init__.py" not in files:
            raise CodeError(f"entry {entry!r}: module {match.group(1)!r} is not in the package "
                            f"(expected {module}.py or {module}/__init__.py)")
        return entry
    rel = _safe_relpath(entry)
    if rel is None or not rel.endswith(".py"):
        raise CodeError(f"entry {entry!r} must be a relative path to a .py file in the package, or module:function")
    if rel not in files:
        raise CodeError(f"entry {entry!r} is not a file in the package")
    return rel


def _archive(members: Iterable[_Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if m.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif m.kind == "link":
                info.type = tarfile.SYMTYPE
                info.mode = 0o777
                info.linkname = m.target
                tar.addfile(info)
            else:
                info.type = tarfile.REGTYPE
                info.mode = 0o755 if m.executable else 0o644
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
    return buf.getvalue()


# -- unpacking ---------------------------------------------------------------------------------


def _safe_relpath(name: str) -> str | None:
    """`name` as a normalised relative POSIX path, or None if absolute, empty or climbing out."""
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _resolve(parts: list[str], links: dict[str, str]) -> list[str] | None:
    """Resolve a path inside the archive as the kernel would, following the archive's links.

    Returns the final components, or None if the path climbs above the root.
    """
    stack: list[str] = []
    queue = list(parts)
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        target = links.get("/".join(stack))
        if target is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or target.startswith("/"):
                return None
            stack.pop()
            queue = target.split("/") + queue
    return stack


def _read_archive(blob: bytes) -> list[_Member]:
    """Parse and check every member of a code blob; raise CodeError on anything unsafe, TooLarge
    past MAX_MEMBERS members or MAX_UNPACKED_BYTES of files (from the headers, before reading)."""
    members: list[_Member] = []
    total = count = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for info in tar:
                count += 1
                if count > MAX_MEMBERS:
                    raise TooLarge(f"refusing code archive: it has more than {MAX_MEMBERS} members")
                if info.isreg() and info.type in _REGULAR and info.sparse is None:
                    total += info.size
                    if total > MAX_UNPACKED_BYTES:
                        raise TooLarge(f"refusing code archive: its files add up to more than {MAX_UNPACKED_BYTES} "
                                       f"bytes ({MAX_UNPACKED_BYTES / 2**20:.0f} MiB) unpacked (at {info.name!r})")
                m = _read_member(tar, info)
                if m is not None:
                    members.append(m)
    except (tarfile.TarError, EOFError) as exc:
        raise CodeError(f"code blob is not a valid tar archive ({exc})") from None
    kinds: dict[str, str] = {}
    for m in members:
        if m.name in kinds:
            raise CodeError(f"refusing code archive: member {m.name!r} appears twice")
        kinds[m.name] = m.kind
    links = {m.name: m.target for m in members if m.kind == "link"}
    for m in members:
        parents = m.name.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            prefix = "/".join(parents[:i])
            if kinds.get(prefix, "dir") != "dir":
                raise CodeError(f"refusing code archive: member {m.name!r} lies under "
                                f"{'symlink' if kinds[prefix] == 'link' else 'file'} {prefix!r}")
        if m.kind == "link" and _resolve([*parents, *m.target.split("/")], links) is None:
            raise CodeError(f"refusing code archive: symlink {m.name!r} -> {m.target!r} points outside the folder")
    return members


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> _Member | None:
    name = _safe_relpath(info.name)
    if name is None:
        if info.isdir() and info.name.strip("/") in ("", "."):
            return None  # the archive's root folder
        raise CodeError(f"refusing code archive: member {info.name!r} is an absolute path or leaves the folder")
    if info.sparse is not None or info.type == tarfile.GNUTYPE_SPARSE:
        raise CodeError(f"refusing code archive: member {name!r} is a sparse file; code blobs hold plain "
                        "files only (package the folder with snipe.publish)")
    if info.isdir():
        return _Member(name, "dir")
    if info.isreg() and info.type not in _REGULAR:
        raise CodeError(f"refusing code archive: member {name!r} has tar type {info.type!r}; code blobs hold "
                        "only regular files, folders and symlinks")
    if info.isreg():
        f = tar.extractfile(info)
        return _Member(name, "file", f.read() if f is not None else b"", _is_executable(info.mode))
    if info.issym():
        if not info.linkname or info.linkname.startswith("/"):
            raise CodeError(f"refusing code archive: symlink {name!r} has an absolute or empty target "
                            f"{info.linkname!r}")
        return _Member(name, "link", target=info.linkname)
    if info.islnk():
        raise CodeError(f"refusing code archive: member {name!r} is a hard link")
    raise CodeError(f"refusing code archive: member {name!r} is a device, fifo or other special file")


def _make_parents(dest: Path, out: Path) -> None:
    """Create the folders above `out` that the archive did not list, each 0o755."""
    missing = []
    parent = out.parent
    while parent != dest and not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o755)
        folder.chmod(0o755)


def _hex_of(urn: str, kind: str = "code") -> str:
    parsed = Urn.parse(urn)
    if parsed.kind != kind:
        raise UrnError(f"{urn!r} is not a {kind} URN (urn:snipe:{kind}:sha256:<hex>)")
    return parsed.id.removeprefix("sha256:")
