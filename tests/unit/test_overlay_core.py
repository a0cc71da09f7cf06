"""The union's logic without FUSE: Overlay called directly on directories."""

from __future__ import annotations

import errno
import os
import stat
from types import SimpleNamespace

import pytest
import trio

from fusefs.cli import UsageError, parse_args, split_lowerdirs
from fusefs.metadata import Owner
from fusefs.overlay import Caller, Overlay

ME = Caller(os.getuid(), os.getgid())


@pytest.fixture
def layers(tmp_path):
    top, bottom, up, wk = (tmp_path / n for n in ("top", "bottom", "up", "wk"))
    for d in (top, bottom, up, wk):
        d.mkdir()
    (bottom / "a").write_text("bottom")
    (bottom / "b").write_text("b")
    (bottom / "d").mkdir()
    (bottom / "d" / "x").write_text("x")
    (top / "a").write_text("top")
    (top / ".wh.b").write_text("")
    (top / "d").mkdir()
    (top / "d" / "y").write_text("y")
    return tmp_path


def overlay(tmp_path, upper=True) -> Overlay:
    return Overlay([os.fsencode(tmp_path / "top"), os.fsencode(tmp_path / "bottom")],
                   os.fsencode(tmp_path / "up") if upper else None,
                   os.fsencode(tmp_path / "wk") if upper else None)


def names(fs, node):
    return sorted(n for n, _ in fs.listdir(node))


def test_lookup_whiteouts_and_merging(layers):
    fs = overlay(layers)
    assert names(fs, fs.root) == [b"a", b"d"]
    a = fs.lookup(fs.root, b"a")
    assert fs.layers[a.layer].root.endswith(b"/top")
    with pytest.raises(FileNotFoundError):
        fs.lookup(fs.root, b"b")
    d = fs.lookup(fs.root, b"d")
    assert names(fs, d) == [b"x", b"y"]
    assert len(d.dirlayers) == 2


def test_reserved_names_are_refused(layers):
    fs = overlay(layers)
    with pytest.raises(FileNotFoundError):
        fs.lookup(fs.root, b".wh.b")
    with pytest.raises(OSError) as e:
        fs.mkdir(fs.root, b".wh.x", 0o755, ME)
    assert e.value.errno == errno.EINVAL


def test_unlink_then_recreate(layers):
    fs = overlay(layers)
    fs.unlink(fs.root, b"a")
    assert stat.S_ISCHR(os.lstat(layers / "up" / "a").st_mode)
    node, fh = fs.create(fs.root, b"a", 0o644, os.O_WRONLY, ME)
    fs.write(fh, 0, b"fresh")
    fs.release(fh)
    assert (layers / "up" / "a").read_bytes() == b"fresh"


def test_rmdir_mkdir_is_opaque(layers):
    fs = overlay(layers)
    d = fs.lookup(fs.root, b"d")
    fs.unlink(d, b"x")
    fs.unlink(d, b"y")
    fs.rmdir(fs.root, b"d")
    d2 = fs.mkdir(fs.root, b"d", 0o755, ME)
    assert d2.dirlayers == (0,)
    assert fs.listdir(d2) == []
    assert os.getxattr(layers / "up" / "d", "user.overlay.opaque") == b"y"
    fresh = overlay(layers)
    assert fresh.listdir(fresh.lookup(fresh.root, b"d")) == []


def test_rename_dir_copies_tree_and_keeps_identity(layers):
    fs = overlay(layers)
    d = fs.lookup(fs.root, b"d")
    fs.ref(d)
    x = fs.lookup(d, b"x")
    fs.ref(x)  # as the kernel does for what it has looked up
    unreferenced_ino = fs.lookup(d, b"y").ino
    fs.rename(fs.root, b"d", fs.root, b"e")
    assert fs.lookup(fs.root, b"e") is d
    assert fs.lookup(d, b"x") is x
    assert fs.lookup(d, b"y").ino == unreferenced_ino
    assert (layers / "up" / "e" / "x").read_text() == "x"
    assert stat.S_ISCHR(os.lstat(layers / "up" / "d").st_mode)


def test_chown_records_owner_without_touching_disk(layers):
    fs = overlay(layers)
    a = fs.lookup(fs.root, b"a")
    fs.setattr(a, uid=1234, gid=5678, mode=0o4700)
    attr = fs.getattr(a)
    assert (attr.uid, attr.gid, stat.S_IMODE(attr.mode)) == (1234, 5678, 0o4700)
    st = os.lstat(layers / "up" / "a")
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o600 == 0o600
    assert Owner.decode(os.getxattr(layers / "up" / "a", "user.containers.override_stat")) == Owner(1234, 5678, 0o4700)


def test_read_only_union(layers):
    fs = overlay(layers, upper=False)
    with pytest.raises(OSError) as e:
        fs.unlink(fs.root, b"a")
    assert e.value.errno == errno.EROFS


def test_missing_lowerdir_and_cross_device_workdir(tmp_path):
    with pytest.raises(OSError) as e:
        Overlay([os.fsencode(tmp_path / "nope")])
    assert "lowerdir" in str(e.value) and "nope" in str(e.value)


def test_owner_encoding_round_trip():
    assert Owner(0, 42, 0o640).encode() == b"0:42:0640"
    assert Owner.decode(b"1:2:0755:dir") == Owner(1, 2, 0o755)
    assert Owner.decode(b"garbage") is None


def test_cli_option_parsing():
    mo = parse_args(["-o", "lowerdir=/a:/b\\:c,upperdir=/u,workdir=/w,fsync=0,allow_other", "/m"])
    assert mo.lowerdirs == ["/a", "/b:c"] and mo.upperdir == "/u" and mo.workdir == "/w"
    assert "allow_other" in mo.fuse and "fsync=0" in mo.ignored
    assert parse_args(["-f", "-olowerdir=/a", "src", "/m"]).foreground
    assert split_lowerdirs("x::y") == ["x", "y"]
    with pytest.raises(UsageError, match="lowerdir"):
        parse_args(["/m"])
    with pytest.raises(UsageError, match="workdir"):
        parse_args(["-o", "lowerdir=/a,upperdir=/u", "/m"])


def test_unexpected_exception_in_handler_answers_eio(layers):
    import pyfuse3

    from fusefs.operations import Operations

    class Broken(Overlay):
        def getattr(self, node):
            raise RuntimeError("bug")

    ops = Operations(Broken([os.fsencode(layers / "top")]))

    async def call():
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getattr(1)
        assert e.value.errno == errno.EIO
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.unlink(1, b"a", None)
        assert e.value.errno == errno.EROFS

    trio.run(call)


def test_owners_a_single_uid_namespace_cannot_map_are_shown_as_root_and_kept(layers):
    """Without subordinate ids only 0 exists: the kernel refuses writes to a file it is told
    belongs to anyone else (useradd could not write /etc/gshadow, root:shadow)."""
    import pyfuse3

    from fusefs.idspace import IdSpace
    from fusefs.operations import Operations

    fs = overlay(layers)
    a = fs.lookup(fs.root, b"a")
    fs.setattr(a, uid=0, gid=42, mode=0o640)
    single = Operations(fs, IdSpace(((0, 1),), ((0, 1),)))
    full = Operations(fs, IdSpace(((0, 65537),), ((0, 65537),)))
    fields = SimpleNamespace(update_size=False, update_mode=True, update_uid=False, update_gid=False,
                             update_atime=False, update_mtime=False)
    change = pyfuse3.EntryAttributes()
    change.st_mode = stat.S_IFREG | 0o600

    async def call():
        shown = await single.getattr(a.ino)
        assert (shown.st_uid, shown.st_gid, stat.S_IMODE(shown.st_mode)) == (0, 0, 0o640)
        await single.setattr(a.ino, change, fields, None, None)  # type: ignore[arg-type]   # chmod as the kernel sends it: mode only
        assert fs.owner_of(a) == Owner(0, 42, 0o600)
        shown = await full.getattr(a.ino)
        assert (shown.st_uid, shown.st_gid) == (0, 42)

    trio.run(call)
    assert IdSpace(((0, 1), (1, 65536)), ((0, 1),)).uid(65536) == 65536
    assert IdSpace(((0, 1), (1, 65536)), ((0, 1),)).uid(65537) == 0


def test_a_rename_over_a_file_with_a_hidden_owner_keeps_that_owner(layers):
    """useradd writes /etc/shadow+ with the owner it read (0:0, as shown) and renames it over /etc/shadow."""
    from fusefs.idspace import IdSpace
    from fusefs.operations import Operations

    fs = overlay(layers)
    ops = Operations(fs, IdSpace(((0, 1),), ((0, 1),)))
    fs.setattr(fs.lookup(fs.root, b"a"), uid=0, gid=42, mode=0o640)
    for name, owner in ((b"new", (0, 0)), (b"mine", (0, 0))):
        made, fh = fs.create(fs.root, name, 0o600, os.O_WRONLY, Caller(*owner))
        fs.release(fh)

    async def call():
        await ops.rename(1, b"new", 1, b"a", 0, None)
        await ops.rename(1, b"mine", 1, b"fresh", 0, None)   # nothing replaced: nothing carried

    trio.run(call)
    assert fs.owner_of(fs.lookup(fs.root, b"a")) == Owner(0, 42, 0o600)
    assert fs.owner_of(fs.lookup(fs.root, b"fresh")) == Owner(0, 0, 0o600)
