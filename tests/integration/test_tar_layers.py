"""Layer tars as lower layers on a real mount: the same union as with directory lowers, served without extraction."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fusefs.tarindex import build_index, index_path
from mounts import REPO, Union, build_tree, fusefs_cmd, in_full_userns, wait_daemon_gone

pytestmark = pytest.mark.fuse

MTIME = 1_500_000_000


@dataclass
class Tar:
    """A lower layer written as a layer tar (with its index unless INDEX is False).

    TREE maps paths to: bytes/str (a file), None (a directory), ("symlink", target),
    ("hardlink", target), ("whiteout",) (a 0:0 character device), ("dev", major, minor),
    ("fifo",), or ("file", content, attrs) / ("dir", attrs) with attrs among mode, uid,
    gid, mtime, xattrs.  Members are written in the order given, owned by the test user
    unless attrs say otherwise (default_permissions: the user may change only its own).
    """

    tree: dict
    index: bool = True
    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)

    def data(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, spec in self.tree.items():
                info, content = tar_member(rel, spec)
                tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
        return buf.getvalue()

    def write(self, path: Path) -> None:
        """As the image store would: the stream to the file with the index built on the way."""
        with open(path, "wb") as out:
            idx = build_index(io.BytesIO(self.data()), out)
        if self.index:
            idx.save(index_path(os.fsencode(path)))


def tar_member(rel: str, spec: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(rel)
    info.mtime, info.mode = MTIME, 0o644
    attrs: dict = {}
    content = b""
    if spec is None or (isinstance(spec, tuple) and spec[0] == "dir"):
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        attrs = spec[1] if isinstance(spec, tuple) else {}
    elif isinstance(spec, (str, bytes)):
        content = spec.encode() if isinstance(spec, str) else spec
    elif spec[0] == "file":
        content = spec[1].encode() if isinstance(spec[1], str) else spec[1]
        attrs = spec[2]
    elif spec[0] == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, spec[1], 0o777
    elif spec[0] == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, spec[1]
    elif spec[0] == "whiteout":
        info.type = tarfile.CHRTYPE
    elif spec[0] == "dev":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, spec[1], spec[2]
    elif spec[0] == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        raise ValueError(spec)
    info.mode = attrs.get("mode", info.mode)
    info.uid, info.gid = attrs.get("uid", os.getuid()), attrs.get("gid", os.getgid())
    info.mtime = attrs.get("mtime", info.mtime)
    info.pax_headers = {"SCHILY.xattr." + k: v for k, v in attrs.get("xattrs", {}).items()}
    info.size = len(content)
    return info, content


@pytest.fixture
def make_tar_union(tmp_path: Path) -> Iterator[Callable[..., Union]]:
    """make_union (tests/integration/conftest.py) where a layer given as ``Tar(tree)`` is a layer tar."""
    made: list[Union] = []

    def make(layers: dict[str, dict | Tar], upper: bool = True) -> Union:
        base = tmp_path / f"u{len(made)}"
        base.mkdir()
        lowers = []
        for name, spec in layers.items():
            if isinstance(spec, Tar):
                p = base / f"{name}.tar"
                spec.write(p)
            else:
                p = base / name
                p.mkdir()
                build_tree(p, spec)
            lowers.append(p)
        up = wk = None
        if upper:
            up, wk = base / "upper", base / "work"
            up.mkdir()
            wk.mkdir()
        mnt = base / "mnt"
        mnt.mkdir()
        u = Union(base, lowers, up, wk, mnt)
        u.mount()
        made.append(u)
        return u

    yield make
    for u in made:
        try:
            u.unmount()
        finally:
            wait_daemon_gone(u.mnt)


def snapshot(root: Path) -> dict[str, tuple]:
    """What a container sees below ROOT, ownership aside: kinds, sizes, contents, link targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_size, hashlib.sha256(f.read()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            else:
                out[rel] = (stat.S_IFMT(st.st_mode),)
    return out


def upper_kind(u: Union, rel: str) -> str:
    assert u.upper is not None
    p = u.upper / rel
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return "whiteout" if (p.parent / (".wh." + p.name)).exists() else "absent"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


TREE = {
    "etc": None, "etc/hostname": "box\n", "etc/empty": "",
    "usr": None, "usr/bin": None, "usr/bin/tool": "#!/bin/sh\necho hi\n",
    "usr/lib": None, "usr/lib/libx.so.1": b"\x7fELF" + bytes(3000),
    "usr/lib/libx.so": ("symlink", "libx.so.1"), "lib": ("symlink", "usr/lib"),
    "var": None, "var/deep": None, "var/deep/er": None, "var/deep/er/file": "deep",
}


# -- the same union as with directory lowers ------------------------------------------------


def test_a_tar_lower_shows_the_same_tree_as_the_directory_it_was_made_from(make_tar_union):
    as_dir = make_tar_union({"l": TREE})
    as_tar = make_tar_union({"l": Tar(TREE)})
    assert snapshot(as_tar.mnt) == snapshot(as_dir.mnt)
    assert sorted(os.listdir(as_tar.mnt)) == ["etc", "lib", "usr", "var"]
    assert as_tar.path("lib/libx.so").read_bytes()[:4] == b"\x7fELF", "symlinks resolve inside the mount"
    assert os.readlink(as_tar.path("lib")) == "usr/lib"


def test_the_same_changes_give_the_same_tree_over_a_tar_or_a_directory(make_tar_union):
    unions = [make_tar_union({"top": {"etc/extra": "x"}, "l": TREE}),
              make_tar_union({"top": {"etc/extra": "x"}, "l": Tar(TREE)})]
    for u in unions:
        with open(u.path("etc/hostname"), "a") as f:
            f.write("more\n")
        os.unlink(u.path("usr/bin/tool"))
        os.rename(u.path("var/deep"), u.path("var/moved"))
        os.mkdir(u.path("etc/new"))
        os.symlink("../hostname", u.path("etc/new/link"))
        os.truncate(u.path("usr/lib/libx.so.1"), 10)
        os.rmdir(u.path("usr/bin"))
    assert snapshot(unions[0].mnt) == snapshot(unions[1].mnt)
    for u in unions:
        u.remount()
    assert snapshot(unions[0].mnt) == snapshot(unions[1].mnt)
    assert unions[1].path("etc/hostname").read_text() == "box\nmore\n"


def test_whiteouts_and_opaque_dirs_of_a_tar_hide_a_lower_directory_layer(make_tar_union):
    u = make_tar_union({
        "top": Tar({".wh.gone": "", "d/.wh..wh..opq": "", "d/new": "n", "kdev": ("whiteout",),
                    "e/.wh.x": "", "keep": "top"}),
        "bottom": {"gone": "g", "d/old": "o", "kdev": "k", "keep": "bottom", "e/x": "x", "e/y": "y"},
    })
    assert sorted(os.listdir(u.mnt)) == ["d", "e", "keep"]
    assert os.listdir(u.path("d")) == ["new"]
    assert os.listdir(u.path("e")) == ["y"]
    assert u.path("keep").read_text() == "top"
    for hidden in ("gone", "kdev", ".wh.gone", "d/old", "d/.wh..wh..opq", "e/x"):
        assert not os.path.lexists(u.path(hidden)), hidden


def test_a_mix_of_tar_and_directory_lowers_merges_in_order(make_tar_union):
    u = make_tar_union({
        "top": Tar({"shared/a": "top-a", ".wh.mid-only": "", "over": "top"}),
        "mid": {"shared/b": "mid-b", "mid-only": "m", "over": "mid", "shared/a": "mid-a"},
        "bottom": Tar({"shared/c": "bottom-c", "over": "bottom", "bottom-only": "b"}),
    })
    assert sorted(os.listdir(u.mnt)) == ["bottom-only", "over", "shared"]
    assert sorted(os.listdir(u.path("shared"))) == ["a", "b", "c"]
    assert [u.path(f"shared/{n}").read_text() for n in "abc"] == ["top-a", "mid-b", "bottom-c"]
    assert u.path("over").read_text() == "top"
    assert os.stat(u.path("shared")).st_nlink == 2


# -- reading -------------------------------------------------------------------------------


def test_big_and_mostly_zero_files_read_back_exactly_and_nothing_is_copied(make_tar_union):
    big = os.urandom(5 << 20)
    sparse = bytearray(16 << 20)
    for at in (0, 8 << 20, (16 << 20) - 4096):
        sparse[at:at + 4096] = os.urandom(4096)
    u = make_tar_union({"l": Tar({"big": big, "sparse": bytes(sparse), "after": "tail"})})
    assert u.path("big").read_bytes() == big
    assert hashlib.sha256(u.path("sparse").read_bytes()).digest() == hashlib.sha256(sparse).digest()
    fd = os.open(u.path("big"), os.O_RDONLY)
    try:
        assert os.pread(fd, 1000, 3_000_001) == big[3_000_001:3_001_001]
        assert os.pread(fd, 1 << 20, len(big) - 10) == big[-10:], "a read stops at the member's end"
        assert os.pread(fd, 100, len(big) + 5) == b""
    finally:
        os.close(fd)
    assert u.path("after").read_text() == "tail"
    assert os.stat(u.path("big")).st_size == len(big)
    assert u.upper is not None and os.listdir(u.upper) == [], "reading copies nothing up"


def test_owners_modes_times_devices_and_xattrs_come_from_the_tar(make_tar_union):
    u = make_tar_union({"l": Tar({
        "bin": ("dir", {"mode": 0o755, "uid": 0, "gid": 0}),
        "bin/su": ("file", "#!su", {"mode": 0o4755, "uid": 0, "gid": 0, "mtime": 1_234_567_890}),
        "home/user/secret": ("file", "s", {"mode": 0o600, "uid": 1000, "gid": 1000}),
        "home/user/noted": ("file", "n", {"mode": 0o644, "uid": 1000, "gid": 1000, "xattrs": {"user.note": "kept"}}),
        "tmp": ("dir", {"mode": 0o1777, "uid": 0, "gid": 0}),
        "shared": ("dir", {"mode": 0o2775, "uid": 0, "gid": 50}),
        "dev/null": ("dev", 1, 3),
        "run/fifo": ("fifo",),
    })})
    su = os.stat(u.path("bin/su"))
    assert (stat.S_IMODE(su.st_mode), su.st_uid, su.st_gid, su.st_mtime_ns) == (0o4755, 0, 0, 1_234_567_890 * 10**9)
    secret = os.lstat(u.path("home/user/secret"))
    assert (stat.S_IMODE(secret.st_mode), secret.st_uid, secret.st_gid) == (0o600, 1000, 1000)
    with pytest.raises(PermissionError):
        u.path("home/user/secret").read_text()  # the tar's owner and mode are what the kernel checks
    assert os.getxattr(u.path("home/user/noted"), "user.note") == b"kept"
    assert os.listxattr(u.path("home/user/noted")) == ["user.note"]
    home = os.stat(u.path("home"))
    assert (stat.S_IMODE(home.st_mode), home.st_uid) == (0o755, 0), "an implied parent is 0755 root's"
    assert stat.S_IMODE(os.stat(u.path("tmp")).st_mode) == 0o1777
    assert (stat.S_IMODE(os.stat(u.path("shared")).st_mode), os.stat(u.path("shared")).st_gid) == (0o2775, 50)
    null = os.stat(u.path("dev/null"))
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.stat(u.path("run/fifo")).st_mode)


def test_hard_links_of_a_tar_share_one_inode_before_and_after_copy_up(make_tar_union):
    u = make_tar_union({"l": Tar({"a": "shared", "d/b": ("hardlink", "a"), "c": ("hardlink", "a"), "other": "o"})})
    sa, sb, sc = (os.stat(u.path(n)) for n in ("a", "d/b", "c"))
    assert sa.st_ino == sb.st_ino == sc.st_ino and sa.st_nlink == 3
    assert os.stat(u.path("other")).st_ino != sa.st_ino
    with open(u.path("d/b"), "a") as f:
        f.write("+more")
    assert u.path("a").read_text() == u.path("c").read_text() == "shared+more"
    assert os.stat(u.path("a")).st_ino == os.stat(u.path("d/b")).st_ino
    u.remount()
    assert u.path("c").read_text() == "shared+more"
    assert os.stat(u.path("a")).st_nlink == 3


# -- changing ------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["write", "chmod", "truncate", "setxattr", "utime"])
def test_copy_up_from_a_tar_keeps_data_mode_times_and_xattrs(make_tar_union, change):
    blob = os.urandom(3 << 20)
    u = make_tar_union({"l": Tar({
        "f": ("file", blob, {"mode": 0o4751, "mtime": MTIME, "xattrs": {"user.k": "v"}}),
        "g": "neighbour",
    })})
    p = u.path("f")
    expect, mode, mtime = blob, 0o4751, MTIME * 10**9
    if change == "write":
        with open(p, "r+b") as f:
            f.seek(1 << 20)
            f.write(b"XY")
        expect = blob[:1 << 20] + b"XY" + blob[(1 << 20) + 2:]
        mode, mtime = 0o751, None  # the kernel drops setuid on a write by a process without CAP_FSETID
    elif change == "chmod":
        os.chmod(p, 0o640)
        mode = 0o640
    elif change == "truncate":
        os.truncate(p, 1000)
        expect, mode, mtime = blob[:1000], 0o751, None
    elif change == "setxattr":
        os.setxattr(p, "user.other", b"w")
    else:
        os.utime(p, ns=(5, MTIME * 10**9))
    assert upper_kind(u, "f") == "file"
    assert upper_kind(u, "g") == "absent", "only the changed file is copied"
    for _ in range(2):
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == mode and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
        if mtime is not None:
            assert st.st_mtime_ns == mtime
        assert os.getxattr(p, "user.k") == b"v"
        assert p.read_bytes() == expect
        u.remount()


def test_rename_of_a_tar_directory_moves_its_whole_tree(make_tar_union):
    u = make_tar_union({"l1": Tar({"d/sub/f": "deep", "d/a": "1", "d/link": ("symlink", "a")}),
                        "l2": {"d/b": "2"}})
    os.rename(u.path("d"), u.path("moved"))
    for _ in range(2):
        assert not u.path("d").exists()
        assert sorted(os.listdir(u.path("moved"))) == ["a", "b", "link", "sub"]
        assert u.path("moved/sub/f").read_text() == "deep"
        assert u.path("moved/link").read_text() == "1"
        u.remount()
    os.mkdir(u.path("d"))
    assert os.listdir(u.path("d")) == []


def test_rm_of_tar_names_leaves_whiteouts_that_survive_a_remount(make_tar_union):
    u = make_tar_union({"l": Tar({"f": "x", "d": None, "d/inner": "y", "s": ("symlink", "f"), "keep": "k"})})
    os.unlink(u.path("f"))
    os.unlink(u.path("s"))
    os.unlink(u.path("d/inner"))
    os.rmdir(u.path("d"))
    for rel in ("f", "s", "d"):
        assert upper_kind(u, rel) == "whiteout", rel
    u.remount()
    assert os.listdir(u.mnt) == ["keep"]
    u.path("f").write_text("fresh")
    assert u.path("f").read_text() == "fresh"


def test_a_read_only_union_of_tars_refuses_changes(make_tar_union):
    u = make_tar_union({"l": Tar({"f": "x"})}, upper=False)
    assert u.path("f").read_text() == "x"
    with pytest.raises(OSError) as e:
        u.path("f").write_text("no")
    assert e.value.errno == 30  # EROFS


# -- the command line ----------------------------------------------------------------------


def test_a_tar_without_an_index_is_indexed_at_mount(make_tar_union):
    u = make_tar_union({"l": Tar(TREE, index=False)})
    assert not os.path.exists(str(u.lowers[0]) + ".idx")
    assert u.path("var/deep/er/file").read_text() == "deep"


def mount_fails(tmp_path: Path, lower: Path) -> str:
    mnt = tmp_path / "mnt"
    mnt.mkdir(exist_ok=True)
    proc = subprocess.run(fusefs_cmd("-o", f"lowerdir={lower}", str(mnt)), cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    return proc.stderr


def test_compressed_tars_and_corrupt_indexes_are_refused_with_a_hint(tmp_path):
    tgz = tmp_path / "layer.tar.gz"
    tgz.write_bytes(gzip.compress(Tar({"f": "x"}).data()))
    assert "decompress" in mount_fails(tmp_path, tgz)
    tar = tmp_path / "layer.tar"
    Tar({"f": "x"}).write(tar)
    Path(str(tar) + ".idx").write_bytes(b"not msgpack at all")
    err = mount_fails(tmp_path, tar)
    assert "corrupt" in err and "delete it" in err
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(Tar({"../escape": "x"}).data())
    assert "'..'" in mount_fails(tmp_path, hostile)


# -- as root of a container --------------------------------------------------------------------


STAT = (f"{sys.executable} -c 'import os,sys; [print(p.rsplit(\"/\",1)[-1], *(lambda s: (s.st_uid, s.st_gid, "
        f"oct(s.st_mode & 0o7777), s.st_size))(os.lstat(p))) for p in sys.argv[1:]]'")


@pytest.mark.userns
def test_container_root_changes_root_owned_tar_files_and_the_commit_sees_them(tmp_path):
    from fusefs import list_changes

    tar = tmp_path / "layer.tar"
    Tar({
        "etc": ("dir", {"uid": 0, "gid": 0}),
        "etc/motd": ("file", "hello\n", {"uid": 0, "gid": 0, "mode": 0o644, "mtime": MTIME}),
        "etc/big": ("file", b"b" * (2 << 20), {"uid": 0, "gid": 0, "mode": 0o600}),
        "bin": ("dir", {"uid": 0, "gid": 0}),
        "bin/tool": ("file", "#!tool", {"uid": 0, "gid": 0, "mode": 0o755}),
        "home": ("dir", {"uid": 0, "gid": 0}),
        "home/file": ("file", "mine", {"uid": 0, "gid": 0, "mode": 0o644}),
        "keep": ("file", "k", {"uid": 0, "gid": 0}),
    }).write(tar)
    for d in ("up", "wk", "mnt"):
        (tmp_path / d).mkdir()
    m = tmp_path / "mnt"
    opts = f"lowerdir={tar},upperdir={tmp_path}/up,workdir={tmp_path}/wk"
    r = in_full_userns(f"""
        mountit() {{ {sys.executable} -m fusefs -o {opts} {m}; }}
        unmountit() {{ umount {m}; for i in $(seq 100); do pgrep -f "fusefs .*{m}$" >/dev/null || break; sleep 0.05; done; }}
        mountit
        echo more >> {m}/etc/motd
        chmod 4750 {m}/bin/tool
        chown 1000:1000 {m}/home/file
        truncate -s 2 {m}/etc/big
        {STAT} {m}/etc/motd {m}/bin/tool {m}/home/file {m}/etc/big {m}/keep
        unmountit
        echo remount
        mountit
        {STAT} {m}/etc/motd {m}/bin/tool {m}/home/file {m}/etc/big {m}/keep
        cat {m}/etc/motd
        unmountit
    """)
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.split("remount\n")
    expected = ["motd 0 0 0o644 11", "tool 0 0 0o4750 6", "file 1000 1000 0o644 4", "big 0 0 0o600 2", "keep 0 0 0o644 1"]
    assert before.split("\n")[:5] == expected
    assert after.split("\n")[:6] == expected + ["hello"]
    assert after.split("\n")[6] == "more"
    got = {c.path: c for c in list_changes(tmp_path / "up", [tar])}
    assert {p: c.kind for p, c in got.items()} == {
        b"etc": "C", b"etc/motd": "C", b"etc/big": "C", b"bin": "C", b"bin/tool": "C", b"home": "C", b"home/file": "C"}
    assert (got[b"bin/tool"].uid, got[b"bin/tool"].mode & 0o7777) == (0, 0o4750)
