"""cp's table of cases, container paths resolved as in a chroot, trees through tar and back, and
the config a commit makes: no FUSE or namespaces needed."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from rootless.runtime.commit import committed_env
from rootless.runtime.copy import Plan, plan, source_name, split_arg
from rootless.runtime.spec import DEFAULT_PATH
from rootless.runtime.tree import CopyError, DiskTree, Extract, TarWriter, extract, resolve, walk


def test_arguments_name_a_container_unless_they_start_with_slash_or_dot() -> None:
    assert split_arg("web:/etc/hosts") == ("web", "/etc/hosts")
    assert split_arg("web:etc") == ("web", "etc")
    assert split_arg("/tmp/a:b") == (None, "/tmp/a:b")
    assert split_arg("./a:b") == (None, "./a:b")
    assert split_arg("-") == (None, "-")
    assert split_arg("plain") == (None, "plain")


def test_the_source_names_the_stream() -> None:
    assert source_name("/etc/hosts") == ("hosts", False)
    assert source_name("/etc/") == ("etc", False)
    assert source_name("/etc/.") == ("etc", True)
    assert source_name("/")[1] is True


def test_dockers_table_for_a_file() -> None:
    assert plan("/a/f", False, "/dst/new", None) == Plan("/dst", "new")
    assert plan("/a/f", False, "/dst", "dir") == Plan("/dst", "f")
    assert plan("/a/f", False, "/dst/old", "file") == Plan("/dst", "old")
    with pytest.raises(CopyError, match="no such directory"):
        plan("/a/f", False, "/dst/missing/", None)
    with pytest.raises(CopyError, match="not a directory"):
        plan("/a/f/", False, "/dst", "dir")


def test_dockers_table_for_a_directory() -> None:
    assert plan("/a/d", True, "/dst/new", None) == Plan("/dst", "new")
    assert plan("/a/d/.", True, "/dst/new", None) == Plan("/dst", "new")
    assert plan("/a/d", True, "/dst", "dir") == Plan("/dst", "d")
    assert plan("/a/d/", True, "/dst", "dir") == Plan("/dst", "d")
    assert plan("/a/d/.", True, "/dst", "dir") == Plan("/dst", None)
    with pytest.raises(CopyError, match="cannot copy a directory to a file"):
        plan("/a/d", True, "/dst/file", "file")


def _tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root\n")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "abs").symlink_to("/etc")
    (root / "up").symlink_to("../../../../etc")
    (root / "loop").symlink_to("loop")


def test_container_paths_resolve_inside_the_root(tmp_path: Path) -> None:
    _tree(tmp_path)
    t = DiskTree(os.fsencode(tmp_path))
    assert resolve(t, b"/lib/x", follow_last=False) == b"usr/lib/x"
    assert resolve(t, b"/lib", follow_last=False) == b"lib"
    assert resolve(t, b"/lib", follow_last=True) == b"usr/lib"
    assert resolve(t, b"/abs/passwd", follow_last=False) == b"etc/passwd"
    assert resolve(t, b"/up/passwd", follow_last=False) == b"etc/passwd"    # .. stops at the root
    assert resolve(t, b"etc/../../etc/./passwd", follow_last=False) == b"etc/passwd"
    with pytest.raises(OSError):
        resolve(t, b"/loop", follow_last=True)


def test_a_tree_through_tar_keeps_modes_times_links_and_xattrs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"data" * 1000)
    os.link(src / "d" / "f", src / "d" / "hard")
    (src / "d" / "sym").symlink_to("f")
    os.mkfifo(src / "d" / "fifo")
    os.chmod(src / "d" / "f", 0o751)
    os.chmod(src / "d" / "sub", 0o555)   # read-only: its content must still be extracted
    (src / "d" / "sub2").mkdir()
    (src / "d" / "sub2" / "x").write_text("x")
    os.utime(src / "d" / "f", ns=(1_600_000_000_000_000_000,) * 2)
    try:
        os.setxattr(src / "d" / "f", "user.note", b"\xffbinary")
        has_xattrs = True
    except OSError:
        has_xattrs = False
    buf = io.BytesIO()
    writer = TarWriter(buf)
    writer.add_tree(DiskTree(os.fsencode(src)), b"d", b"d")
    writer.close()
    names = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue()))}
    assert names["d/hard"].islnk() and names["d/hard"].linkname == "d/f" or names["d/f"].islnk()

    dest = tmp_path / "dest"
    dest.mkdir()
    buf.seek(0)
    extract(buf, DiskTree(os.fsencode(dest)), Extract(b"", (b"d", b"renamed")))
    out = dest / "renamed"
    assert (out / "f").read_bytes() == b"data" * 1000
    assert stat.S_IMODE(os.stat(out / "f").st_mode) == 0o751
    assert os.stat(out / "f").st_mtime_ns == 1_600_000_000_000_000_000
    assert os.stat(out / "f").st_ino == os.stat(out / "hard").st_ino
    assert os.readlink(out / "sym") == "f"
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert stat.S_IMODE(os.stat(out / "sub").st_mode) == 0o555
    if has_xattrs:
        assert os.getxattr(out / "f", "user.note") == b"\xffbinary"

    # Contents only (dir/.): the top entry is dropped, what is below lands in the destination.
    flat = tmp_path / "flat"
    flat.mkdir()
    buf.seek(0)
    extract(buf, DiskTree(os.fsencode(flat)), Extract(b"", (b"d", None)))
    assert sorted(os.listdir(flat)) == ["f", "fifo", "hard", "sub", "sub2", "sym"]

    # Over what exists: a file replaces a directory and the reverse; directories merge.
    (flat / "sym").unlink()
    (flat / "sym").mkdir()
    (flat / "sub2" / "keep").write_text("k")
    buf.seek(0)
    extract(buf, DiskTree(os.fsencode(flat)), Extract(b"", (b"d", None)))
    assert os.path.islink(flat / "sym") and (flat / "sub2" / "keep").exists()
    assert [rel for rel, _ in walk(DiskTree(os.fsencode(flat)), b"sub2")] == [b"sub2/keep", b"sub2/x"]


def test_extraction_never_leaves_the_destination(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        f = tarfile.TarInfo("escape/planted")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    buf.seek(0)
    with pytest.raises(CopyError, match="is not a directory"):
        extract(buf, DiskTree(os.fsencode(dest)), Extract())
    assert not (outside / "planted").exists()
    # A directory entry replaces the link instead of going through it.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        d = tarfile.TarInfo("escape")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        f = tarfile.TarInfo("escape/planted")
        f.size = 1
        tar.addfile(f, io.BytesIO(b"x"))
    buf.seek(0)
    extract(buf, DiskTree(os.fsencode(dest)), Extract())
    assert (dest / "escape" / "planted").is_file() and not (outside / "planted").exists()
    bad = io.BytesIO()
    with tarfile.open(fileobj=bad, mode="w") as tar:
        f = tarfile.TarInfo("../up")
        tar.addfile(f, io.BytesIO(b""))
    bad.seek(0)
    with pytest.raises(CopyError, match="leads out"):
        extract(bad, DiskTree(os.fsencode(dest)), Extract())


def test_a_commit_keeps_the_environment_the_container_was_given() -> None:
    ran = [f"PATH={DEFAULT_PATH}", "HOSTNAME=abc", "TERM=xterm", "A=1", "B=flag"]
    assert committed_env(["A=1"], ran, "abc", True) == ["A=1", "B=flag"]
    # What the image itself set stays, whatever its value.
    assert committed_env([f"PATH={DEFAULT_PATH}", "TERM=xterm"], ran, "abc", True) == [
        f"PATH={DEFAULT_PATH}", "TERM=xterm", "A=1", "B=flag"]
