"""Unpacking layer tars without root: owners and modes kept as fusefs reads them, hostile tars refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from fusefs.layers import Layer
from fusefs.metadata import OVERRIDE_XATTR, SIDE_TABLE, Owner
from rootless.errors import LayerError, RootlessError
from rootless.image.layers import UnpackedLayer, unpack

MTIME = 1_600_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, uid: int = 0, gid: int = 0,
           mode: int = 0o644, link: str = "", dev: tuple[int, int] = (0, 0)) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, MTIME
    info.linkname = link
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def make_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


class Stream:
    """A pipe-like source: read() only, no seek, short reads."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(min(size, 1000) if size >= 0 else 1000)


def unpack_bytes(data: bytes, dest: Path) -> UnpackedLayer:
    return unpack(Stream(data), dest)


def xattr(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, OVERRIDE_XATTR, follow_symlinks=False)
    except OSError:
        return None


def shown(root: Path, rel: str) -> Owner | None:
    """The owner fusefs shows for REL of the layer ROOT."""
    return Layer(os.fsencode(root), 0, writable=False).lstat(rel.encode())[1]


# -- what a layer keeps -------------------------------------------------------------------


def test_owners_and_modes_are_recorded_without_root(tmp_path: Path) -> None:
    raw = make_tar(
        member("bin", tarfile.DIRTYPE, mode=0o755),
        member("bin/su", data=b"#!su", mode=0o4755),
        member("etc", tarfile.DIRTYPE, mode=0o755),
        member("etc/secret", data=b"s3cret", uid=1000, gid=1000, mode=0o640),
        member("tmp", tarfile.DIRTYPE, mode=0o1777),
        member("locked", data=b"x", mode=0o000),
        member("link", tarfile.SYMTYPE, uid=5, gid=5, mode=0o777, link="bin/su"),
        member("pipe", tarfile.FIFOTYPE, uid=7, gid=8, mode=0o620),
        member("usr/lib/deep", data=b"d", uid=2, gid=3, mode=0o600),
    )
    root = tmp_path / "layer"
    result = unpack_bytes(raw, root)
    assert result.warnings == ()

    su = os.lstat(root / "bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o755, "setuid is recorded, never set on disk"
    assert xattr(root / "bin/su") == Owner(0, 0, 0o4755).encode() == b"0:0:4755"
    assert (root / "bin/su").read_bytes() == b"#!su"
    assert su.st_mtime == MTIME
    assert stat.S_IMODE(os.lstat(root / "etc/secret").st_mode) == 0o640
    assert shown(root, "etc/secret") == Owner(1000, 1000, 0o640)
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o777
    assert shown(root, "tmp") == Owner(0, 0, 0o1777)
    assert os.lstat(root / "tmp").st_mtime == MTIME
    assert stat.S_IMODE(os.lstat(root / "locked").st_mode) == 0o600, "the owner must keep read/write access"
    assert shown(root, "locked") == Owner(0, 0, 0o000)

    assert os.readlink(root / "link") == "bin/su"
    assert shown(root, "link") == Owner(5, 5, 0o777)
    assert xattr(root / "link") is None
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    assert shown(root, "pipe") == Owner(7, 8, 0o620)
    assert (root / SIDE_TABLE.decode()).is_file()

    # Directories the tar never listed are made as docker makes them: root's, 0755.
    assert shown(root, "usr") == Owner(0, 0, 0o755) == shown(root, "usr/lib")
    assert shown(root, "usr/lib/deep") == Owner(2, 3, 0o600)

    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_uid == os.getuid()
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)


def test_root_entry_sets_the_layer_roots_owner(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    unpack_bytes(make_tar(member("./", tarfile.DIRTYPE, mode=0o755), member("./f", data=b"1")), root)
    assert shown(root, "") == Owner(0, 0, 0o755)
    assert (root / "f").read_bytes() == b"1"


def test_whiteouts_are_kept_as_fusefs_reads_them(tmp_path: Path) -> None:
    raw = make_tar(
        member(".wh.gone"),
        member("dir", tarfile.DIRTYPE),
        member("dir/.wh..wh..opq"),
        member("old", tarfile.CHRTYPE, mode=0),  # overlayfs' whiteout: a 0:0 char device
        member("dev/null", tarfile.CHRTYPE, dev=(1, 3)),
        member("dev/sda", tarfile.BLKTYPE, dev=(8, 0)),
    )
    root = tmp_path / "layer"
    result = unpack_bytes(raw, root)
    assert (root / ".wh.gone").stat().st_size == 0
    assert (root / ".wh.old").is_file()
    assert not os.path.lexists(root / "old")
    assert (root / "dir/.wh..wh..opq").is_file()
    layer = Layer(os.fsencode(root), 0, writable=False)
    top = layer.listing(b"")
    assert top is not None and {b"gone", b"old"} <= top.hidden
    listing = layer.listing(b"dir")
    assert listing is not None and listing.opaque
    assert not os.path.lexists(root / "dev/null") and not os.path.lexists(root / "dev/sda")
    assert len(result.warnings) == 2
    assert any("dev/null" in w and "character device" in w for w in result.warnings)
    assert any("dev/sda" in w and "block device" in w for w in result.warnings)


def test_hard_links_are_real_hard_links(tmp_path: Path) -> None:
    raw = make_tar(
        member("a", data=b"shared", uid=3, gid=4, mode=0o755),
        member("sub/b", tarfile.LNKTYPE, link="a"),
        member("s", tarfile.SYMTYPE, uid=9, gid=9, link="a"),
        member("s2", tarfile.LNKTYPE, link="/s"),  # absolute: docker strips the '/'
    )
    root = tmp_path / "layer"
    unpack_bytes(raw, root)
    assert os.lstat(root / "a").st_ino == os.lstat(root / "sub/b").st_ino
    assert shown(root, "sub/b") == Owner(3, 4, 0o755)
    assert os.lstat(root / "s").st_ino == os.lstat(root / "s2").st_ino
    assert shown(root, "s2") == Owner(9, 9, 0o777)


def test_a_later_member_replaces_an_earlier_one(tmp_path: Path) -> None:
    raw = make_tar(
        member("f", data=b"first"),
        member("f", data=b"second", uid=1, gid=1),
        member("d", tarfile.DIRTYPE),
        member("d/child", data=b"c"),
        member("d", data=b"now a file"),
        member("x", data=b"file"),
        member("x", tarfile.DIRTYPE, mode=0o750),
        member("m", tarfile.DIRTYPE),
        member("m/kept", data=b"k"),
        member("m", tarfile.DIRTYPE, uid=3, gid=3, mode=0o700),
        member("l", tarfile.SYMTYPE, uid=6, gid=6, link="f"),
        member("l", data=b"plain"),
    )
    root = tmp_path / "layer"
    unpack_bytes(raw, root)
    assert (root / "f").read_bytes() == b"second"
    assert shown(root, "f") == Owner(1, 1, 0o644)
    assert (root / "d").read_bytes() == b"now a file"
    assert (root / "x").is_dir() and shown(root, "x") == Owner(0, 0, 0o750)
    assert (root / "m/kept").read_bytes() == b"k", "a directory after a directory merges"
    assert shown(root, "m") == Owner(3, 3, 0o700)
    assert not (root / "l").is_symlink() and (root / "l").read_bytes() == b"plain"
    assert shown(root, "l") == Owner(0, 0, 0o644)


def test_names_are_cleaned_as_docker_does(tmp_path: Path) -> None:
    raw = make_tar(member("/abs/file", data=b"a"), member("x/../y", data=b"y"), member("./z", data=b"z"))
    root = tmp_path / "layer"
    unpack_bytes(raw, root)
    assert (root / "abs/file").read_bytes() == b"a"
    assert (root / "y").read_bytes() == b"y"
    assert (root / "z").read_bytes() == b"z"


def test_a_tar_cannot_plant_layer_metadata(tmp_path: Path) -> None:
    raw = make_tar(member(".wh..wh.fusefs.meta", data=b"\xc1not msgpack"),
                   member(".wh..wh.plnk/123.456", data=b"aufs"),
                   member("l", tarfile.SYMTYPE, uid=4, gid=4, link="x"))
    root = tmp_path / "layer"
    result = unpack_bytes(raw, root)
    assert shown(root, "l") == Owner(4, 4, 0o777)
    assert not os.path.lexists(root / ".wh..wh.plnk")
    assert len(result.warnings) == 2 and all("reserved for layer metadata" in w for w in result.warnings)


# -- the diff_id and compression ------------------------------------------------------------


def sample_tar() -> bytes:
    return make_tar(member("a", data=os.urandom(50_000)), member("b", tarfile.DIRTYPE), member("b/c", data=b"c" * 70_000),
                    member("big", data=os.urandom(3_000_000)))


@pytest.mark.parametrize("compress", [
    pytest.param(lambda raw: raw, id="plain"),
    pytest.param(lambda raw: gzip.compress(raw), id="gzip"),
    pytest.param(lambda raw: gzip.compress(raw[:3000]) + gzip.compress(raw[3000:]), id="gzip-two-members"),
    # Members over the 1 MiB output bound: zlib then leaves input both unused and unconsumed.
    pytest.param(lambda raw: gzip.compress(raw[:len(raw) // 2]) + gzip.compress(raw[len(raw) // 2:]),
                 id="gzip-two-big-members"),
    pytest.param(lambda raw: zstandard.ZstdCompressor().compress(raw), id="zstd"),
    pytest.param(lambda raw: zstandard.ZstdCompressor().compress(raw[:5000]) + zstandard.ZstdCompressor().compress(raw[5000:]),
                 id="zstd-two-frames"),
])
def test_diff_id_is_the_sha256_of_the_uncompressed_tar(tmp_path: Path, compress) -> None:
    raw = sample_tar()
    result = unpack_bytes(compress(raw), tmp_path / "layer")
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    assert (tmp_path / "layer/b/c").read_bytes() == b"c" * 70_000


def test_empty_layer(tmp_path: Path) -> None:
    raw = make_tar()
    result = unpack_bytes(gzip.compress(raw), tmp_path / "layer")
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert os.listdir(tmp_path / "layer") == []


def test_destination_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "layer").mkdir()
    with pytest.raises(LayerError, match="already exists"):
        unpack_bytes(make_tar(member("f")), tmp_path / "layer")


# -- hostile and broken input ------------------------------------------------------------------


def _truncated_in_data() -> bytes:
    raw = make_tar(member("big", data=b"x" * 20_000))
    return raw[:5000]


def _without_end_marker() -> bytes:
    raw = make_tar(member("a", data=b"x" * 512), member("b", data=b"y" * 512))
    # Cut right after the first member (pax header, header, data): a tidy block boundary.
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        second = tar.getmembers()[1]
    return raw[:second.offset]


def _corrupt_second_header() -> bytes:
    raw = bytearray(make_tar(member("a", data=b"x"), member("b", data=b"y")))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        second = tar.getmembers()[1]
    raw[second.offset + 148:second.offset + 156] = b"9999999\0"  # the checksum field
    return bytes(raw)


OUTSIDE_LINK = "../outside"

HOSTILE = {
    "dotdot": lambda out: make_tar(member("../evil", data=b"pwned")),
    "dotdot-deep": lambda out: make_tar(member("a/../../evil", data=b"pwned")),
    "dotdot-dir": lambda out: make_tar(member("../outside/newdir", tarfile.DIRTYPE)),
    "write-through-relative-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=OUTSIDE_LINK), member("a/evil", data=b"pwned")),
    "write-through-absolute-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=str(out)), member("a/keep", data=b"pwned")),
    "mkdir-through-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=OUTSIDE_LINK), member("a/sub", tarfile.DIRTYPE)),
    "symlink-through-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=OUTSIDE_LINK), member("a/l", tarfile.SYMTYPE, link="/")),
    "whiteout-through-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=OUTSIDE_LINK), member("a/keep", tarfile.CHRTYPE)),
    "hardlink-escapes": lambda out: make_tar(member("evil", tarfile.LNKTYPE, link="../outside/keep")),
    "hardlink-absolute-missing": lambda out: make_tar(member("evil", tarfile.LNKTYPE, link=str(out / "keep"))),
    "hardlink-through-symlink": lambda out: make_tar(
        member("a", tarfile.SYMTYPE, link=OUTSIDE_LINK), member("evil", tarfile.LNKTYPE, link="a/keep")),
    "hardlink-to-side-table": lambda out: make_tar(
        member("l", tarfile.SYMTYPE, uid=5, gid=5, link="x"), member("t", tarfile.LNKTYPE, link=".wh..wh.fusefs.meta")),
    "hardlink-missing": lambda out: make_tar(member("evil", tarfile.LNKTYPE, link="nothere")),
    "hardlink-to-directory": lambda out: make_tar(member("d", tarfile.DIRTYPE), member("evil", tarfile.LNKTYPE, link="d")),
    "name-too-long": lambda out: make_tar(member("d/" + "n" * 256, data=b"x")),
    "path-too-deep": lambda out: make_tar(member("a/" * 600 + "f", data=b"x")),
    "path-too-long": lambda out: make_tar(member("/".join(["n" * 250] * 20), data=b"x")),
    "file-under-a-file": lambda out: make_tar(member("f", data=b"x"), member("f/child", data=b"y")),
    "truncated-in-data": lambda out: _truncated_in_data(),
    "truncated-at-a-header": lambda out: _without_end_marker(),
    "corrupt-header": lambda out: _corrupt_second_header(),
    "not-a-tar": lambda out: b"hello, this is not a tar archive" * 40,
    "empty-input": lambda out: b"",
    "bad-gzip": lambda out: b"\x1f\x8b\x08\x00" + b"garbage" * 100,
    "truncated-gzip": lambda out: gzip.compress(sample_tar())[:-100],
    "gzip-trailing-garbage": lambda out: gzip.compress(sample_tar()) + b"junk",
    "gzip-bad-crc": lambda out: (lambda g: g[:-8] + bytes([g[-8] ^ 1]) + g[-7:])(gzip.compress(sample_tar())),
    "truncated-zstd": lambda out: zstandard.ZstdCompressor().compress(sample_tar())[:-50],
    "bad-zstd": lambda out: b"\x28\xb5\x2f\xfd" + b"garbage" * 100,
    "unknown-member-type": lambda out: make_tar(member("v", b"V")),
}


def snapshot(root: Path) -> dict[str, tuple[int, bytes | str]]:
    seen: dict[str, tuple[int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content: bytes | str = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                open(p, "rb").read() if stat.S_ISREG(st.st_mode) else "")
            seen[os.path.relpath(p, root)] = (st.st_mode, content)
    return seen


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_or_broken_layer_is_refused_and_writes_nothing(tmp_path: Path, case: str) -> None:
    sandbox = tmp_path / "sandbox"
    outside = sandbox / "outside"
    outside.mkdir(parents=True)
    (outside / "keep").write_bytes(b"original")
    before = snapshot(sandbox)
    with pytest.raises(LayerError) as info:
        unpack_bytes(HOSTILE[case](outside), sandbox / "layer")
    assert isinstance(info.value, RootlessError) and info.value.message
    assert sorted(os.listdir(sandbox)) == ["outside"], "no layer and no staging directory are left"
    assert snapshot(sandbox) == before
    assert not os.path.lexists(tmp_path / "evil")


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    outside = sandbox / "outside"
    outside.mkdir(parents=True)
    (outside / "keep").write_bytes(b"original")
    raw = make_tar(member("a", tarfile.SYMTYPE, link="../outside/keep"), member("a", data=b"mine"),
                   member("b", tarfile.SYMTYPE, link="../outside"), member("b", tarfile.DIRTYPE),
                   member("b/keep", data=b"inside"))
    unpack_bytes(raw, sandbox / "layer")
    assert (outside / "keep").read_bytes() == b"original"
    assert sorted(os.listdir(outside)) == ["keep"]
    assert (sandbox / "layer/a").read_bytes() == b"mine"
    assert (sandbox / "layer/b/keep").read_bytes() == b"inside"


def test_symlinks_pointing_anywhere_are_stored_as_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "layer"
    unpack_bytes(make_tar(member("etc", tarfile.SYMTYPE, link="/etc"), member("up", tarfile.SYMTYPE, link="../../..")), root)
    assert os.readlink(root / "etc") == "/etc"
    assert os.readlink(root / "up") == "../../.."
