"""-o uidmapping=/gidmapping=: parsing, and owners shown as host ids and recorded as container ids (no FUSE)."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from fusefs.cli import UsageError, parse_args
from fusefs.idspace import IdSpace
from fusefs.mapping import OVERFLOW_ID, IdMap, MappingError, OwnerMap
from fusefs.metadata import Owner
from fusefs.operations import Operations
from fusefs.overlay import Caller, Overlay

#: podman's shape: container root is the user (1001 here), the rest comes from /etc/subuid.
PODMAN = IdMap(((0, 1001, 1), (1, 100000, 65536)))
MAPPED = OwnerMap(PODMAN, IdMap(((0, 1002, 1), (1, 200000, 65536))))


def test_parsing_takes_fuse_overlayfs_form():
    mo = parse_args(["-o", "lowerdir=/a,uidmapping=0:1001:1:1:100000:65536,gidmapping=0:1002:1", "/m"])
    assert mo.owners == OwnerMap(PODMAN, IdMap(((0, 1002, 1),)))
    assert mo.ignored == []
    only_uids = parse_args(["-o", "lowerdir=/a,uidmapping=0:5:10", "/m"]).owners
    assert (only_uids.host_uid(3), only_uids.host_gid(3)) == (8, 3), "no gidmapping: gids unchanged"
    assert parse_args(["-o", "lowerdir=/a", "/m"]).owners == OwnerMap()


@pytest.mark.parametrize("value, complaint", [
    ("0:1001", "threes"),
    ("", "threes"),
    ("0:1001:1:1:100000", "threes"),
    ("0:x:1", "'x' is not a number"),
    ("0:-1:1", "'-1' is not a number"),
    ("0:1001: 1", "' 1' is not a number"),
    ("0:1001:0", "SIZE must be 1 or more"),
    ("0:1001:10:5:200000:10", "container ids 0-9 and 5-14 overlap"),
    ("0:1001:1:1:1001:10", "host ids 1001-1001 and 1001-1010 overlap"),
    ("0:4294967290:10", "goes past the largest id"),
])
def test_malformed_mappings_are_refused_with_the_expected_form(value, complaint):
    for option in ("uidmapping", "gidmapping"):
        with pytest.raises(UsageError) as e:
            parse_args(["-o", f"lowerdir=/a,{option}={value}", "/m"])
        message = str(e.value)
        assert complaint in message and "\n" not in message
        assert f"{option}={value}:" in message
        assert f"expected {option}=CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]" in message


def test_translation_both_ways():
    assert [PODMAN.to_host(i) for i in (0, 1, 1000, 65536, 65537)] == [1001, 100000, 100999, 165535, OVERFLOW_ID]
    assert [PODMAN.to_container(i) for i in (1001, 100000, 100999, 165535)] == [0, 1, 1000, 65536]
    assert PODMAN.to_container(0) is None and PODMAN.to_container(165536) is None
    with pytest.raises(OSError) as e:
        MAPPED.container_uid(0)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(MappingError):
        IdMap.parse("uidmapping", "1:2")


@pytest.fixture
def fs(tmp_path):
    low, up, wk = (tmp_path / n for n in ("low", "up", "wk"))
    for d in (low, up, wk):
        d.mkdir()
    for name in ("root", "user", "stray"):
        (low / name).write_text(name)
    union = Overlay([os.fsencode(low)], os.fsencode(up), os.fsencode(wk))
    for name, uid in ((b"root", 0), (b"user", 1000), (b"stray", 70000)):
        union.setattr(union.lookup(union.root, name), uid=uid, gid=uid, mode=0o644)
    return union


def ctx(uid: int, gid: int) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, gid=gid, pid=0, umask=0o022)


def shown(ops: Operations, fs: Overlay, name: bytes) -> tuple[int, int]:
    async def call():
        return await ops.lookup(1, name, None)
    e = trio.run(call)
    return e.st_uid, e.st_gid


def test_owners_are_shown_as_host_ids_and_unmapped_ones_as_overflow(fs):
    ops = Operations(fs, IdSpace.everything(), MAPPED)
    assert shown(ops, fs, b"root") == (1001, 1002)
    assert shown(ops, fs, b"user") == (100999, 200999)
    assert shown(ops, fs, b"stray") == (OVERFLOW_ID, OVERFLOW_ID)
    assert fs.owner_of(fs.lookup(fs.root, b"user")) == Owner(1000, 1000, 0o644), "the record is left alone"


def test_the_daemons_namespace_fits_the_mapped_ids_not_the_containers(fs):
    # The daemon's namespace maps 0-65535 only: the host ids 100999 and 200999 are beyond it
    # and become 0, while 1001 is shown as it is (although container id 0 is what is recorded).
    small = IdSpace(((0, 65536),), ((0, 65536),))
    ops = Operations(fs, small, MAPPED)
    assert shown(ops, fs, b"root") == (1001, 1002)
    assert shown(ops, fs, b"user") == (0, 0)
    assert shown(ops, fs, b"stray") == (OVERFLOW_ID, OVERFLOW_ID), "65534 is an id this namespace has"


def test_chown_and_creators_are_recorded_as_container_ids(fs):
    ops = Operations(fs, IdSpace.everything(), MAPPED)
    fields = SimpleNamespace(update_size=False, update_mode=False, update_uid=True, update_gid=True,
                             update_atime=False, update_mtime=False)
    change = pyfuse3.EntryAttributes()
    change.st_uid, change.st_gid = 100041, 200007
    stray = fs.lookup(fs.root, b"stray")

    async def call():
        e = await ops.setattr(stray.ino, change, fields, None, ctx(0, 0))  # type: ignore[arg-type]
        assert (e.st_uid, e.st_gid) == (100041, 200007)
        info, e = await ops.create(1, b"made", 0o640, os.O_WRONLY, ctx(1001, 1002))
        await ops.release(info.fh)
        assert (e.st_uid, e.st_gid) == (1001, 1002)
        e = await ops.mkdir(1, b"dir", 0o755, ctx(100004, 200005))
        assert (e.st_uid, e.st_gid) == (100004, 200005)

    trio.run(call)
    assert fs.owner_of(stray) == Owner(42, 8, 0o644)
    assert fs.owner_of(fs.lookup(fs.root, b"made")) == Owner(0, 0, 0o640)
    assert fs.owner_of(fs.lookup(fs.root, b"dir")) == Owner(5, 6, 0o755)


@pytest.mark.parametrize("uid, gid", [(0, 1002), (1001, 5), (165536, 1002)])
def test_host_ids_outside_the_mapping_are_refused(fs, uid, gid):
    ops = Operations(fs, IdSpace.everything(), MAPPED)
    fields = SimpleNamespace(update_size=False, update_mode=False, update_uid=True, update_gid=True,
                             update_atime=False, update_mtime=False)
    change = pyfuse3.EntryAttributes()
    change.st_uid, change.st_gid = uid, gid
    root = fs.lookup(fs.root, b"root")

    async def call():
        for attempt in (lambda: ops.setattr(root.ino, change, fields, None, ctx(0, 0)),  # type: ignore[arg-type]
                        lambda: ops.create(1, b"new", 0o644, os.O_WRONLY, ctx(uid, gid)),
                        lambda: ops.symlink(1, b"link", b"target", ctx(uid, gid))):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await attempt()
            assert e.value.errno == errno.EINVAL

    trio.run(call)
    assert fs.owner_of(root) == Owner(0, 0, 0o644)
    assert sorted(n for n, _ in fs.listdir(fs.root)) == [b"root", b"stray", b"user"]


def test_a_rename_over_a_file_the_daemons_namespace_hid_keeps_its_owner(fs):
    """useradd's rewrite of /etc/shadow in a daemon namespace of one id, through a mapping: the
    old file (container 1000, host 100999) was shown as 0, the copy was chowned to 0, recorded
    as container 0; that 0 stands for the old owner, which the rename carries over."""
    ops = Operations(fs, IdSpace(((0, 1),), ((0, 1),)),
                     OwnerMap(IdMap(((0, 0, 1), (1, 100000, 65536))), IdMap(((0, 0, 1), (1, 200000, 65536)))))
    assert shown(ops, fs, b"user") == (0, 0)
    for name in (b"copy", b"other"):
        made, fh = fs.create(fs.root, name, 0o600, os.O_WRONLY, Caller(0, 0))
        fs.release(fh)

    async def call():
        await ops.rename(1, b"copy", 1, b"user", 0, None)
        await ops.rename(1, b"other", 1, b"root", 0, None)   # root was shown as itself: nothing to carry

    trio.run(call)
    assert fs.owner_of(fs.lookup(fs.root, b"user")) == Owner(1000, 1000, 0o600)
    assert fs.owner_of(fs.lookup(fs.root, b"root")) == Owner(0, 0, 0o600)
