"""A local POSIX filesystem's behaviour through the union, as programs rely on it."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import stat

import pytest

pytestmark = pytest.mark.fuse

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old, new, flags) -> None:
    if libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def errno_of(fn) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno


@pytest.fixture
def u(make_union):
    return make_union({"l": {"lowfile": "lower data", "lowdir/inner": "i", "lowdir/sub": None}})


def test_symlinks_fifos_sockets(u):
    os.symlink("lowfile", u.path("link"))
    assert os.readlink(u.path("link")) == "lowfile"
    assert u.path("link").read_text() == "lower data"
    os.mkfifo(u.path("fifo"))
    assert stat.S_ISFIFO(os.lstat(u.path("fifo")).st_mode)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(u.path("sock")))
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(u.path("sock")).st_mode)


def test_user_xattrs(u):
    os.setxattr(u.path("lowfile"), "user.a", b"1")
    assert os.getxattr(u.path("lowfile"), "user.a") == b"1"
    assert "user.a" in os.listxattr(u.path("lowfile"))
    os.removexattr(u.path("lowfile"), "user.a")
    assert errno_of(lambda: os.getxattr(u.path("lowfile"), "user.a")) == errno.ENODATA
    # The union's own bookkeeping never shows.
    os.chmod(u.path("lowfile"), 0o600)
    assert not [x for x in os.listxattr(u.path("lowfile")) if "overlay" in x or "containers" in x]


def test_statfs_and_fsync(u):
    sv = os.statvfs(u.mnt)
    assert sv.f_namemax == 255 and sv.f_blocks > 0
    fd = os.open(u.path("synced"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)


def test_truncate_append_trunc_excl(u):
    p = u.path("f")
    p.write_bytes(b"0123456789")
    os.truncate(p, 4)
    assert p.read_bytes() == b"0123"
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"AB")
    os.ftruncate(fd, 5)
    os.write(fd, b"C")  # O_APPEND writes at the end, whatever the offset
    os.close(fd)
    assert p.read_bytes() == b"0123AC"
    fd = os.open(u.path("lowfile"), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert u.path("lowfile").read_bytes() == b""
    assert errno_of(lambda: os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)) == errno.EEXIST


def test_sparse_file_beyond_4gib(u):
    p = u.path("big")
    with open(p, "wb") as f:
        f.seek(5 << 30)
        f.write(b"end")
    st = os.stat(p)
    assert st.st_size == (5 << 30) + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(p, "rb") as f:
        f.seek(5 << 30)
        assert f.read() == b"end"
        f.seek(1 << 30)
        assert f.read(4) == b"\0\0\0\0"


def test_shared_writable_mmap(u):
    p = u.path("lowfile")
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[0:5] = b"UPPER"
        m.flush()
        m.close()
    assert p.read_bytes() == b"UPPER data"
    assert (u.upper / "lowfile").read_bytes() == b"UPPER data"


def test_rename_noreplace_and_exchange(u):
    a, b = u.path("a"), u.path("b")
    a.write_text("A")
    b.write_text("B")
    assert errno_of(lambda: renameat2(a, b, RENAME_NOREPLACE)) == errno.EEXIST
    renameat2(a, b, RENAME_EXCHANGE)
    assert a.read_text() == "B" and b.read_text() == "A"
    renameat2(a, u.path("c"), RENAME_NOREPLACE)
    assert not a.exists() and u.path("c").read_text() == "B"
    # Exchange a lower file with an upper directory.
    os.mkdir(u.path("newdir"))
    renameat2(u.path("lowfile"), u.path("newdir"), RENAME_EXCHANGE)
    assert u.path("newdir").read_text() == "lower data"
    assert u.path("lowfile").is_dir()


def test_nanosecond_times(u):
    os.utime(u.path("lowfile"), ns=(1_234_567_891, 9_876_543_219))
    st = os.stat(u.path("lowfile"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_234_567_891, 9_876_543_219)
    os.symlink("x", u.path("l"))
    os.utime(u.path("l"), ns=(3, 4), follow_symlinks=False)
    assert os.lstat(u.path("l")).st_mtime_ns == 4


def test_errnos(u):
    long = "n" * 256
    assert errno_of(lambda: os.stat(u.path(long))) == errno.ENAMETOOLONG
    assert errno_of(lambda: u.path(long).write_text("x")) == errno.ENAMETOOLONG
    assert errno_of(lambda: os.rmdir(u.path("lowdir"))) == errno.ENOTEMPTY
    assert errno_of(lambda: os.unlink(u.path("lowdir"))) == errno.EISDIR
    assert errno_of(lambda: os.listdir(u.path("lowfile"))) == errno.ENOTDIR
    assert errno_of(lambda: os.stat(u.path("lowfile/x"))) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(u.path("lowdir"), u.path("lowfile"))) == errno.ENOTDIR
    assert errno_of(lambda: os.rename(u.path("lowfile"), u.path("lowdir"))) == errno.EISDIR
    assert errno_of(lambda: os.rename(u.path("lowdir"), u.path("lowdir/sub/x"))) == errno.EINVAL
    assert errno_of(lambda: os.mkdir(u.path("lowdir"))) == errno.EEXIST
    assert errno_of(lambda: os.link(u.path("lowdir"), u.path("dl"))) == errno.EPERM


def test_permissions_are_enforced(u):
    if os.geteuid() == 0:
        pytest.skip("root bypasses permission checks")
    p = u.path("private")
    p.write_text("secret")
    os.chmod(p, 0o000)
    assert errno_of(lambda: p.read_text()) == errno.EACCES
    os.chmod(p, 0o600)
    assert p.read_text() == "secret"
    assert errno_of(lambda: os.chown(p, 0, 0)) == errno.EPERM


def test_unlinked_open_file_stays_usable(u):
    f = open(u.path("lowfile"), "r+b")
    g = open(u.path("tmpfile"), "w+b")
    try:
        os.unlink(u.path("lowfile"))
        os.unlink(u.path("tmpfile"))
        assert f.read() == b"lower data"
        g.write(b"still here")
        g.flush()
        g.seek(0)
        assert g.read() == b"still here"
        assert os.fstat(g.fileno()).st_nlink == 0
    finally:
        f.close()
        g.close()
    assert not u.path("lowfile").exists()


def test_inode_numbers_unique_and_stable(u):
    u.path("new").write_text("n")
    inos = {p: os.lstat(u.path(p)).st_ino for p in ("lowfile", "lowdir", "lowdir/inner", "new", "")}
    assert len(set(inos.values())) == len(inos)
    with open(u.path("lowfile"), "a") as f:  # copy-up must not change it
        f.write("!")
    os.rename(u.path("lowdir"), u.path("moved"))
    assert os.lstat(u.path("lowfile")).st_ino == inos["lowfile"]
    assert os.lstat(u.path("moved")).st_ino == inos["lowdir"]
    assert os.lstat(u.path("moved/inner")).st_ino == inos["lowdir/inner"]


def test_directory_nlink(u):
    assert os.stat(u.path("lowdir")).st_nlink == 3  # ., .. in the parent, sub/..
    os.mkdir(u.path("lowdir/sub2"))
    assert os.stat(u.path("lowdir")).st_nlink == 4
    os.rmdir(u.path("lowdir/sub"))
    assert os.stat(u.path("lowdir")).st_nlink == 3


def test_readdir_offsets_survive_changes(u):
    d = u.path("many")
    d.mkdir()
    for i in range(300):
        (d / f"f{i:03}").write_text("")
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]

    def name_of(ent: int) -> str:
        return ctypes.string_at(ent + 19).decode()  # struct dirent: d_name at offset 19 on Linux

    dp = libc.opendir(os.fsencode(d))
    try:
        seen = [name_of(libc.readdir(dp)) for _ in range(150)]
        pos = libc.telldir(dp)
        expected = name_of(libc.readdir(dp))
        for i in range(0, 300, 7):
            os.unlink(d / f"f{i:03}")
        (d / "added").write_text("")
        libc.seekdir(dp, pos)
        assert name_of(libc.readdir(dp)) == expected
        rest = []
        while True:
            ent = libc.readdir(dp)
            if not ent:
                break
            rest.append(name_of(ent))
        names = seen + [expected] + rest
        assert len(names) == len(set(names)), "no entry twice"
    finally:
        libc.closedir(dp)
