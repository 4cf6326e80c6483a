"""Mobile code: deterministic packaging, verification, safe unpacking, entry points, the cache."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snipe import code as code_mod
from snipe.assertion import canonical_value
from snipe.code import FORMAT, CodeCache, CodePackage, entry_argv, package, unpack, verify
from snipe.errors import CodeError, IntegrityError, SnipeError, TooLarge, UrnError
from snipe.urn import content_urn

ECHO = "import sys\nprint(repr(sys.argv[1:]))\n"


def write(path: Path, text: str | bytes = "", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def make_project(root: Path) -> Path:
    write(root / "main.py", "from lib import util\nutil.run()\n")
    write(root / "lib" / "__init__.py")
    write(root / "lib" / "util.py", "def run():\n    print('ran')\n")
    write(root / "bin" / "tool.sh", "#!/bin/sh\necho hi\n", mode=0o700)
    write(root / "data" / "table.csv", "a,b\n1,2\n", mode=0o600)
    return root


def tar_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        return tar.getnames()


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


# -- packaging -----------------------------------------------------------------------------------


def test_a_single_file_is_packaged_with_its_name_as_entry(tmp_path: Path):
    src = write(tmp_path / "hello.py", "print('hello')\n")
    pkg = package(src)
    assert isinstance(pkg, CodePackage)
    assert tar_names(pkg.blob) == ["hello.py"]
    assert pkg.urn == content_urn("code", pkg.blob)
    assert pkg.manifest == {
        "format": FORMAT,
        "entry": "hello.py",
        "files": 1,
        "size": len(pkg.blob),
        "sha256": hashlib.sha256(pkg.blob).hexdigest(),
        "requirements": [],
        "name": "hello",
    }


def test_manifest_holds_only_catalog_storable_values(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"), requirements=("numpy>=1.26", "msgpack"), name="demo")
    assert canonical_value(pkg.manifest) == pkg.manifest
    assert pkg.manifest["requirements"] == ["numpy>=1.26", "msgpack"]
    assert pkg.manifest["name"] == "demo"
    assert pkg.manifest["files"] == 5


def test_a_folder_is_a_sorted_tar_with_normalised_metadata(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    names = tar_names(pkg.blob)
    assert names == sorted(names)
    assert names == ["bin", "bin/tool.sh", "data", "data/table.csv", "lib", "lib/__init__.py", "lib/util.py",
                     "main.py"]
    with tarfile.open(fileobj=io.BytesIO(pkg.blob)) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
    assert modes["bin/tool.sh"] == 0o755
    assert modes["data/table.csv"] == 0o644
    assert modes["lib"] == 0o755
    assert pkg.manifest["entry"] == "main.py"
    assert pkg.manifest["name"] == "proj"


def test_same_content_gives_same_blob_and_urn(tmp_path: Path):
    src = make_project(tmp_path / "a")
    first, second = package(src), package(src)
    assert first.blob == second.blob and first.urn == second.urn

    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(src, copy)
    for dirpath, _dirs, files in os.walk(copy):
        for n in files:
            os.utime(Path(dirpath) / n, (1_000_000, 1_000_000))
    (copy / "data" / "table.csv").chmod(0o664)  # still not executable: normalises to 0o644
    (copy / "bin" / "tool.sh").chmod(0o744)  # still executable: 0o755
    other = package(copy)
    assert other.urn == first.urn and other.blob == first.blob
    assert other.manifest["name"] == "b" and first.manifest["name"] == "a"


def test_content_changes_change_the_urn(tmp_path: Path):
    src = make_project(tmp_path / "a")
    before = package(src).urn
    (src / "bin" / "tool.sh").chmod(0o644)
    assert package(src).urn != before


def test_caches_and_version_control_are_left_out(tmp_path: Path):
    src = make_project(tmp_path / "proj")
    write(src / "__pycache__" / "main.cpython-311.pyc", b"\0")
    write(src / "lib" / "__pycache__" / "util.cpython-311.pyc", b"\0")
    write(src / "lib" / "stale.pyc", b"\0")
    write(src / ".git" / "HEAD", "ref: refs/heads/main\n")
    write(src / ".venv" / "bin" / "python", "#!/bin/sh\n")
    names = tar_names(package(src).blob)
    assert not any("__pycache__" in n or n.endswith(".pyc") or ".git" in n or ".venv" in n for n in names)
    assert "lib/util.py" in names


def test_entry_defaults_to_dunder_main_then_main(tmp_path: Path):
    src = write(tmp_path / "p" / "main.py", "")
    assert package(src.parent).manifest["entry"] == "main.py"
    write(tmp_path / "p" / "__main__.py", "")
    assert package(src.parent).manifest["entry"] == "__main__.py"


def test_missing_entry_names_what_to_add(tmp_path: Path):
    write(tmp_path / "p" / "worker.py", "")
    with pytest.raises(CodeError) as info:
        package(tmp_path / "p")
    message = str(info.value)
    assert "__main__.py" in message and "main.py" in message and "entry=" in message


def test_explicit_entries_are_checked_against_the_files(tmp_path: Path):
    src = make_project(tmp_path / "proj")
    assert package(src, entry="lib/util.py").manifest["entry"] == "lib/util.py"
    assert package(src, entry="./lib/util.py").manifest["entry"] == "lib/util.py"
    assert package(src, entry="lib.util:run").manifest["entry"] == "lib.util:run"
    assert package(src, entry="lib:run").manifest["entry"] == "lib:run"  # lib/__init__.py
    for bad, fragment in [
        ("nothere.py", "not a file in the package"),
        ("data/table.csv", ".py"),
        ("../escape.py", "relative path"),
        ("/abs/main.py", "relative path"),
        ("missing:run", "module 'missing' is not in the package"),
        ("lib.util:", "relative path"),
    ]:
        with pytest.raises(CodeError, match=fragment):
            package(src, entry=bad)


def test_bad_inputs_are_refused(tmp_path: Path):
    with pytest.raises(CodeError, match="no such file or folder"):
        package(tmp_path / "absent")
    with pytest.raises(CodeError, match=r"\.py module"):
        package(write(tmp_path / "notes.txt", "hi"))
    with pytest.raises(CodeError, match="single string"):
        package(write(tmp_path / "x.py"), requirements="numpy")  # type: ignore[arg-type]


def test_size_limit_names_the_size(tmp_path: Path):
    src = write(tmp_path / "big" / "main.py", b"#" * 5000)
    with pytest.raises(TooLarge) as info:
        package(src.parent, max_size=4096)
    assert "5000" in str(info.value) and "4096" in str(info.value)
    with pytest.raises(TooLarge, match="the limit is 1000 bytes"):
        package(src, max_size=1000)
    assert package(src.parent, max_size=64 * 1024).manifest["size"] <= 64 * 1024


def test_symlinks_inside_are_kept_outside_refused(tmp_path: Path):
    src = make_project(tmp_path / "proj")
    (src / "lib" / "alias.py").symlink_to("util.py")
    (src / "lib2").symlink_to(src / "lib")  # absolute, but inside: stored relative
    pkg = package(src)
    with tarfile.open(fileobj=io.BytesIO(pkg.blob)) as tar:
        assert tar.getmember("lib/alias.py").linkname == "util.py"
        assert tar.getmember("lib2").linkname == "lib"
    assert "lib2/util.py" not in tar_names(pkg.blob)  # a linked folder is not walked twice

    write(tmp_path / "secret.txt", "x")
    (src / "leak").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(CodeError, match="points outside the folder") as info:
        package(src)
    assert "'leak'" in str(info.value)


def test_symlinks_to_left_out_or_missing_files_are_refused(tmp_path: Path):
    src = make_project(tmp_path / "proj")
    write(src / ".git" / "config", "")
    (src / "cfg").symlink_to(".git/config")
    with pytest.raises(CodeError, match="not among the packaged files"):
        package(src)
    (src / "cfg").unlink()
    (src / "dangling").symlink_to("nowhere.py")
    with pytest.raises(CodeError, match="not among the packaged files"):
        package(src)


# -- verify --------------------------------------------------------------------------------------


def test_verify_accepts_the_blob_and_refuses_a_flipped_byte(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    verify(pkg.blob, pkg.urn)
    tampered = bytearray(pkg.blob)
    tampered[len(tampered) // 3] ^= 0x01
    with pytest.raises(IntegrityError) as info:
        verify(bytes(tampered), pkg.urn)
    message = str(info.value)
    assert pkg.manifest["sha256"] in message
    assert hashlib.sha256(bytes(tampered)).hexdigest() in message
    assert info.value.code == "bad-hash" and isinstance(info.value, SnipeError)


def test_verify_wants_a_code_urn():
    with pytest.raises(UrnError):
        verify(b"x", "urn:snipe:host:h1")
    with pytest.raises(UrnError):
        verify(b"x", "urn:snipe:code:abc")


# -- unpack --------------------------------------------------------------------------------------


def test_unpack_reproduces_the_folder(tmp_path: Path):
    src = make_project(tmp_path / "proj")
    (src / "lib" / "alias.py").symlink_to("util.py")
    dest = tmp_path / "out"
    unpack(package(src).blob, dest)
    assert (dest / "lib" / "util.py").read_text() == (src / "lib" / "util.py").read_text()
    assert os.readlink(dest / "lib" / "alias.py") == "util.py"
    assert (dest / "lib" / "alias.py").read_text() == (src / "lib" / "util.py").read_text()
    assert (dest.stat().st_mode & 0o777) == 0o755
    assert ((dest / "bin" / "tool.sh").stat().st_mode & 0o777) == 0o755
    assert ((dest / "data" / "table.csv").stat().st_mode & 0o777) == 0o644


def test_unpack_wants_an_absent_or_empty_destination(tmp_path: Path):
    blob = package(write(tmp_path / "x.py", "")).blob
    write(tmp_path / "full" / "other.txt", "")
    with pytest.raises(CodeError, match="absent or an empty folder"):
        unpack(blob, tmp_path / "full")
    (tmp_path / "empty").mkdir()
    unpack(blob, tmp_path / "empty")
    assert (tmp_path / "empty" / "x.py").exists()


@pytest.mark.parametrize(
    ("members", "fragment"),
    [
        ([reg("../evil.py")], "leaves the folder"),
        ([reg("ok/../../evil.py")], "leaves the folder"),
        ([reg("/etc/evil.py")], "absolute path"),
        ([link("l", "/etc/passwd")], "absolute or empty target"),
        ([link("l", "../../etc/passwd")], "points outside"),
        ([link("sub/l", "../..")], "points outside"),
        # each link alone stays inside; chained, b/.. is the parent of the folder
        ([link("b", "."), link("a", "b/..")], "points outside"),
        ([link("a", "b/x"), link("b", "..")], "points outside"),
        ([link("loop1", "loop2"), link("loop2", "loop1")], "points outside"),
        ([link("d", "sub"), reg("d/file.py")], "lies under symlink"),
        ([reg("f"), reg("f/g")], "lies under file"),
        ([reg("main.py"), reg("main.py", b"again")], "appears twice"),
        ([link("h", "main.py", tarfile.LNKTYPE)], "hard link"),
        ([special("dev", tarfile.CHRTYPE)], "device"),
        ([special("blk", tarfile.BLKTYPE)], "device"),
        ([special("pipe", tarfile.FIFOTYPE)], "fifo"),
    ],
)
def test_unsafe_archives_are_refused_before_anything_is_written(tmp_path: Path, members, fragment):
    dest = tmp_path / "box" / "out"
    with pytest.raises(CodeError, match=fragment):
        unpack(tar_of(*members), dest)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_garbage_is_not_an_archive(tmp_path: Path):
    with pytest.raises(CodeError, match="not a valid tar archive"):
        unpack(b"this is not a tar" * 100, tmp_path / "out")
    blob = package(write(tmp_path / "x.py", "print(1)\n" * 100)).blob
    with pytest.raises(CodeError, match="not a valid tar archive"):
        unpack(blob[:700], tmp_path / "out")


def test_links_inside_an_external_archive_are_allowed(tmp_path: Path):
    blob = tar_of(reg("pkg/mod.py", b"x = 1\n"), link("pkg/alias.py", "mod.py"), link("top", "pkg"))
    unpack(blob, tmp_path / "out")
    assert (tmp_path / "out" / "top" / "alias.py").read_text() == "x = 1\n"
    assert ((tmp_path / "out" / "pkg").stat().st_mode & 0o777) == 0o755


# the file names a random tree may use: none excluded, no dots-only names
NAMES = st.text("abcXY01_-", min_size=1, max_size=6).map(lambda s: s + ".py") | st.text("abcd", min_size=1, max_size=4)
TREES = st.recursive(
    st.tuples(st.binary(max_size=64), st.booleans()),
    lambda children: st.dictionaries(NAMES, children, max_size=4),
    max_leaves=12,
).filter(lambda t: isinstance(t, dict))


def build(root: Path, tree: dict) -> None:
    root.mkdir(exist_ok=True)
    for name, node in tree.items():
        if isinstance(node, dict):
            build(root / name, node)
        else:
            data, executable = node
            write(root / name, data, mode=0o755 if executable else 0o644)


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(Path(dirpath) / n, root)] = "dir"
        for n in files:
            p = Path(dirpath) / n
            out[os.path.relpath(p, root)] = (p.read_bytes(), bool(p.stat().st_mode & 0o111))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=TREES)
def test_unpack_of_package_reproduces_a_random_tree(tree):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        build(src, {**tree, "main.py": (b"", False)})
        pkg = package(src)
        assert package(src).blob == pkg.blob
        unpack(pkg.blob, Path(tmp) / "out")
        assert snapshot(Path(tmp) / "out") == snapshot(src)


# -- entry_argv ----------------------------------------------------------------------------------


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


def test_entry_argv_runs_a_script(tmp_path: Path):
    pkg = package(write(tmp_path / "src" / "echo.py", ECHO))
    unpack(pkg.blob, tmp_path / "code")
    argv = entry_argv(pkg.manifest, tmp_path / "code", sys.executable, ["a b", "--x=1", "'q'"])
    assert argv[:2] == [sys.executable, str((tmp_path / "code" / "echo.py").resolve())]
    result = run(argv, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(["a b", "--x=1", "'q'"])


def test_entry_argv_runs_module_function(tmp_path: Path):
    src = tmp_path / "src"
    write(src / "main.py")
    write(src / "tools" / "__init__.py")
    write(src / "tools" / "helper.py", "SUFFIX = '!'\n")
    write(src / "tools" / "cli.py",
          "from tools.helper import SUFFIX\n"
          "def main(*args):\n    print(repr(list(args)) + SUFFIX)\n    return 3\n")
    pkg = package(src, entry="tools.cli:main")
    unpack(pkg.blob, tmp_path / "code")
    elsewhere = tmp_path / "cwd"
    write(elsewhere / "tools" / "__init__.py", "raise SystemExit('imported from the current folder')\n")
    argv = entry_argv(pkg.manifest, tmp_path / "code", sys.executable, ["one", "two words"])
    assert argv[0] == sys.executable and argv[1] == "-c" and argv[3:] == ["one", "two words"]
    result = run(argv, elsewhere)
    assert result.stdout.strip() == repr(["one", "two words"]) + "!", result.stderr
    assert result.returncode == 3  # the function's return value is the exit status


def test_entry_argv_refuses_unsafe_entries(tmp_path: Path):
    for entry in ("../x.py", "/abs.py", "x.sh", "a:b:c", "", None):
        with pytest.raises(CodeError):
            entry_argv({"entry": entry}, tmp_path, sys.executable, [])


# -- CodeCache -----------------------------------------------------------------------------------


def test_cache_installs_once_and_serves_the_blob(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    cache = CodeCache(tmp_path / "cache")
    assert cache.path_for(pkg.urn) is None and cache.get_blob(pkg.urn) is None and not cache.has(pkg.urn)
    path = cache.install(pkg.blob, pkg.urn)
    assert path == tmp_path / "cache" / pkg.manifest["sha256"]
    assert (path / "lib" / "util.py").exists()
    assert cache.path_for(pkg.urn) == path and cache.has(pkg.urn)
    assert cache.get_blob(pkg.urn) == pkg.blob
    assert cache.blob_path(pkg.urn) is not None and cache.blob_path(pkg.urn).read_bytes() == pkg.blob
    (path / "marker").write_text("still the first install")
    assert cache.install(pkg.blob, pkg.urn) == path
    assert (path / "marker").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")] == []


def test_cache_refuses_a_tampered_blob_and_keeps_nothing(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(IntegrityError):
        cache.install(pkg.blob[:-1] + b"\x01", pkg.urn)
    assert not cache.has(pkg.urn)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["blobs"]


def test_cache_keeps_nothing_of_an_unsafe_archive(tmp_path: Path):
    blob = tar_of(reg("../evil.py"))
    urn = content_urn("code", blob)
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(CodeError):
        cache.install(blob, urn)
    assert not cache.has(urn)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["blobs"]
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_cache_install_is_atomic_when_unpacking_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pkg = package(make_project(tmp_path / "proj"))
    cache = CodeCache(tmp_path / "cache")
    real_unpack = code_mod.unpack

    def half_unpack(blob: bytes, dest: Path) -> None:
        real_unpack(blob, dest)
        raise OSError("disk full")

    monkeypatch.setattr(code_mod, "unpack", half_unpack)
    with pytest.raises(OSError, match="disk full"):
        cache.install(pkg.blob, pkg.urn)
    assert cache.path_for(pkg.urn) is None
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["blobs"]
    monkeypatch.setattr(code_mod, "unpack", real_unpack)
    assert cache.install(pkg.blob, pkg.urn) == tmp_path / "cache" / pkg.manifest["sha256"]


def test_concurrent_installs_end_with_one_tree(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    caches = [CodeCache(tmp_path / "cache") for _ in range(8)]
    barrier = threading.Barrier(len(caches))
    results: list[Path] = []
    errors: list[BaseException] = []

    def install(cache: CodeCache) -> None:
        barrier.wait()
        try:
            results.append(cache.install(pkg.blob, pkg.urn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=install, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(results) == {tmp_path / "cache" / pkg.manifest["sha256"]}
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {"blobs", pkg.manifest["sha256"]}
    assert sorted(p.name for p in (tmp_path / "cache" / "blobs").iterdir()) == [pkg.manifest["sha256"]]


def test_cache_drops_a_corrupted_stored_blob(tmp_path: Path):
    pkg = package(write(tmp_path / "x.py", "print(1)\n"))
    cache = CodeCache(tmp_path / "cache")
    stored = cache.put_blob(pkg.blob, pkg.urn)
    assert cache.put_blob(pkg.blob, pkg.urn) == stored
    stored.write_bytes(pkg.blob + b"rot")
    assert cache.get_blob(pkg.urn) is None
    assert not cache.has(pkg.urn)


def test_cache_wants_code_urns(tmp_path: Path):
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(UrnError):
        cache.path_for("urn:snipe:file:sha256:" + "0" * 64)
    with pytest.raises(UrnError):
        cache.has("not a urn")


def test_the_cache_lists_the_blobs_it_holds(tmp_path: Path) -> None:
    cache = CodeCache(tmp_path / "code")
    blobs = [package(write(tmp_path / f"p{i}.py", ECHO + f"# {i}\n")) for i in range(2)]
    cache.install(blobs[0].blob, blobs[0].urn)
    cache.put_blob(blobs[1].blob, blobs[1].urn)
    (tmp_path / "code" / "blobs" / ".tmp-partial").write_bytes(b"x")     # a write in progress
    assert cache.held() == sorted(p.urn for p in blobs)
    files = CodeCache(tmp_path / "files", kind="file")
    files.put_blob(b"checkpoint", content_urn("file", b"checkpoint"))
    assert files.held() == [content_urn("file", b"checkpoint")]


# -- archive bombs -------------------------------------------------------------------------------


def gnu_sparse(name: str, realsize: int) -> bytes:
    """A GNU sparse member (type S) with no stored data that unpacks to `realsize` zero bytes:
    tarfile has no writer for these, so the header is built by hand."""
    head = bytearray(512)

    def put(at: int, width: int, value: bytes) -> None:
        head[at:at + len(value)] = value
        assert len(value) <= width

    put(0, 100, name.encode())
    put(100, 8, b"0000644\0")
    put(108, 8, b"0000000\0")
    put(116, 8, b"0000000\0")
    put(124, 12, b"%011o\0" % 0)             # stored bytes: none
    put(136, 12, b"%011o\0" % 0)
    head[156:157] = tarfile.GNUTYPE_SPARSE
    put(257, 8, tarfile.GNU_MAGIC)
    put(386, 12, b"%011o\0" % (realsize - 1))   # one sparse run: 0 bytes at the very end
    put(398, 12, b"%011o\0" % 0)
    put(483, 12, b"%011o\0" % realsize)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head) + b"\0" * 1024


def test_a_sparse_member_is_refused_before_its_data_is_read(tmp_path: Path):
    blob = gnu_sparse("main.py", 1 << 20)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:        # the header says what the fuzzer sent
        (info,) = tar.getmembers()
        assert info.issparse() and info.size == 1 << 20
    with pytest.raises(CodeError, match=r"'main\.py' is a sparse file"):
        unpack(blob, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(CodeError, match="sparse"):
        cache.install(blob, content_urn("code", blob))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["blobs"]
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


def test_only_regular_files_folders_and_symlinks_are_unpacked(tmp_path: Path):
    contiguous = tarfile.TarInfo("main.py")
    contiguous.type = tarfile.CONTTYPE
    with pytest.raises(CodeError, match=r"'main\.py' has tar type b'7'"):
        unpack(tar_of((contiguous, b"print(1)\n")), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_unpacked_size_and_member_count_are_capped_from_the_headers(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(code_mod, "MAX_UNPACKED_BYTES", 10)
    with pytest.raises(TooLarge, match=r"add up to more than 10 bytes .* 'b\.py'"):
        unpack(tar_of(reg("a.py", b"x" * 6), reg("b.py", b"y" * 6)), tmp_path / "out")
    monkeypatch.setattr(code_mod, "MAX_UNPACKED_BYTES", 1 << 20)
    monkeypatch.setattr(code_mod, "MAX_MEMBERS", 3)
    with pytest.raises(TooLarge, match="more than 3 members"):
        unpack(tar_of(*[reg(f"m{i}.py") for i in range(4)]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    unpack(tar_of(*[reg(f"m{i}.py") for i in range(3)]), tmp_path / "out")      # at the caps: fine


def test_a_folder_with_more_members_than_a_daemon_unpacks_is_refused_when_packaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(code_mod, "MAX_MEMBERS", 3)
    src = tmp_path / "pkg"
    src.mkdir()
    for i in range(4):
        (src / f"m{i}.py").write_text("print(1)\n")
    with pytest.raises(TooLarge, match="more than 3 files, folders and links"):
        package(src, entry="m0.py")
    (src / "m3.py").unlink()
    assert package(src, entry="m0.py").manifest["files"] == 3


def test_a_header_claiming_more_than_the_cap_is_refused_without_reading(tmp_path: Path):
    info = tarfile.TarInfo("main.py")
    info.size = code_mod.MAX_UNPACKED_BYTES + 1
    blob = info.tobuf(format=tarfile.PAX_FORMAT) + b"\0" * 1024        # no data behind it at all
    with pytest.raises(TooLarge, match="add up to more than"):
        unpack(blob, tmp_path / "out")


def test_the_cache_refuses_an_oversized_blob_before_hashing_it(tmp_path: Path):
    pkg = package(make_project(tmp_path / "proj"))
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(TooLarge, match=f"is {len(pkg.blob)} bytes; a daemon takes code blobs of at most 1000 bytes"):
        cache.install(pkg.blob, pkg.urn, max_size=1000)
    assert not cache.has(pkg.urn)
    assert cache.install(pkg.blob, pkg.urn).is_dir()
