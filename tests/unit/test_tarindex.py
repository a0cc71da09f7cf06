"""Layer tars indexed for serving in place: every header kind, the layer semantics, refusals, the saved index."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from fusefs.overlay import Overlay
from fusefs.tarindex import Entry, TarIndex, TarLayerError, build_index, index_file, index_path
from fusefs.tarlayer import TarLayer

MTIME = 1_600_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, uid: int = 0, gid: int = 0,
           mode: int = 0o644, link: str = "", dev: tuple[int, int] = (0, 0), mtime: float = MTIME,
           pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid, info.gid, info.mode, info.mtime = uid, gid, mode, mtime
    info.linkname = link
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT,
             global_pax: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_pax) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


class Stream:
    """A pipe-like source: read() only, short reads."""

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._f.read(min(size, 1000) if size >= 0 else 1000)


def index(data: bytes) -> TarIndex:
    return build_index(Stream(data), io.BytesIO())


def entry(idx: TarIndex, rel: str) -> Entry:
    e = idx.entry(rel.encode())
    assert e is not None, f"{rel} is not in the index"
    return e


def names(idx: TarIndex, rel: str = "") -> list[str]:
    d = idx.directory(rel.encode())
    assert d is not None
    return sorted(n.decode() for n in d.children)


def hidden(idx: TarIndex, rel: str = "") -> list[str]:
    d = idx.directory(rel.encode())
    assert d is not None
    return sorted(n.decode() for n in d.hidden)


def refused(data: bytes, *words: str) -> str:
    with pytest.raises(TarLayerError) as e:
        index(data)
    for w in words:
        assert w in str(e.value)
    return str(e.value)


# -- the stream ------------------------------------------------------------------------


def test_tar_is_copied_unchanged_and_its_diff_id_is_computed_on_the_way() -> None:
    data = make_tar(member("a", data=os.urandom(3000)), member("b", data=b"x" * 70_000)) + bytes(10_240)
    out = io.BytesIO()
    idx = build_index(Stream(data), out)
    assert out.getvalue() == data
    assert idx.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert idx.size == len(data)


def test_file_data_is_found_at_the_recorded_offset() -> None:
    blobs = {"small": b"hello", "empty": b"", "big": os.urandom(2 << 20), "odd": os.urandom(513)}
    data = make_tar(*(member(n, data=b) for n, b in blobs.items()))
    idx = index(data)
    for name, blob in blobs.items():
        e = entry(idx, name)
        assert e.size == len(blob)
        assert data[e.offset:e.offset + e.size] == blob


# -- header kinds ------------------------------------------------------------------------


def test_ustar_members_of_every_kind_keep_type_mode_owner_time_and_device() -> None:
    data = make_tar(
        member("d", tarfile.DIRTYPE, mode=0o1777, uid=1, gid=2),
        member("d/f", data=b"abc", mode=0o4755, uid=1000, gid=1001, mtime=1_234_567_890),
        member("d/l", tarfile.SYMTYPE, link="../target/anywhere", uid=5, gid=6, mode=0o755),
        member("d/p", tarfile.FIFOTYPE, mode=0o640),
        member("d/c", tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
        member("d/b", tarfile.BLKTYPE, dev=(8, 1), mode=0o660),
        fmt=tarfile.USTAR_FORMAT)
    idx = index(data)
    d = entry(idx, "d")
    assert (d.mode, d.uid, d.gid) == (stat.S_IFDIR | 0o1777, 1, 2)
    f = entry(idx, "d/f")
    assert (f.mode, f.uid, f.gid, f.mtime_ns, f.size) == (stat.S_IFREG | 0o4755, 1000, 1001, 1_234_567_890 * 10**9, 3)
    link = entry(idx, "d/l")
    assert stat.S_ISLNK(link.mode) and link.linkname == b"../target/anywhere" and (link.uid, link.gid) == (5, 6)
    assert entry(idx, "d/p").mode == stat.S_IFIFO | 0o640
    assert entry(idx, "d/c").mode == stat.S_IFCHR | 0o666 and entry(idx, "d/c").rdev == os.makedev(1, 3)
    assert entry(idx, "d/b").mode == stat.S_IFBLK | 0o660 and entry(idx, "d/b").rdev == os.makedev(8, 1)


def test_ustar_prefix_field_carries_long_paths() -> None:
    deep = "/".join(["directory%02d" % i for i in range(12)]) + "/file"
    assert len(deep) > 100
    idx = index(make_tar(member(deep, data=b"deep"), fmt=tarfile.USTAR_FORMAT))
    assert entry(idx, deep).size == 4


def test_gnu_longname_and_longlink() -> None:
    long_name = "n" * 200 + "/" + "m" * 150
    long_target = "/t" * 120
    data = make_tar(member(long_name, data=b"x"), member("sym", tarfile.SYMTYPE, link=long_target),
                    member("hard", tarfile.LNKTYPE, link=long_name), fmt=tarfile.GNU_FORMAT)
    assert b"././@LongLink" in data
    idx = index(data)
    assert entry(idx, long_name).size == 1
    assert entry(idx, "sym").linkname == long_target.encode()
    assert entry(idx, "hard").ino == entry(idx, long_name).ino


def test_gnu_base256_numbers() -> None:
    data = make_tar(member("f", uid=70_000_000, gid=3_000_000_000, mtime=2**33 + 5), fmt=tarfile.GNU_FORMAT)
    assert b"\x80" in data[108:148], "tarfile wrote base-256 fields"
    e = entry(index(data), "f")
    assert (e.uid, e.gid, e.mtime_ns) == (70_000_000, 3_000_000_000, (2**33 + 5) * 10**9)


def test_pax_records_path_linkpath_owner_and_exact_fractional_mtime() -> None:
    long_path = "p" * 200 + "/" + "q" * 200
    data = make_tar(
        member("short", data=b"data", pax={"path": long_path, "uid": "4000000000", "gid": "77",
                                           "mtime": "1600000000.123456789"}),
        member("s", tarfile.SYMTYPE, pax={"linkpath": "L" * 300}),
        member("neg", pax={"mtime": "-1.5"}))
    idx = index(data)
    e = entry(idx, long_path)
    assert (e.uid, e.gid, e.mtime_ns, e.size) == (4_000_000_000, 77, 1_600_000_000_123_456_789, 4)
    assert data[e.offset:e.offset + 4] == b"data"
    assert entry(idx, "s").linkname == b"L" * 300
    assert entry(idx, "neg").mtime_ns == -1_500_000_000
    assert names(idx) == ["neg", "p" * 200, "s"]


def test_pax_size_overrides_the_header_size() -> None:
    info, _ = member("f")
    info.size = 5
    info.pax_headers = {"size": "5"}
    data = make_tar((info, b"12345"), member("g", data=b"after"))
    idx = index(data)
    assert entry(idx, "f").size == 5
    g = entry(idx, "g")
    assert data[g.offset:g.offset + g.size] == b"after"


def test_xattrs_from_schily_and_libarchive_records() -> None:
    value = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    data = make_tar(
        member("f", pax={"SCHILY.xattr.user.note": "kept", "SCHILY.xattr.security.capability": value.decode("latin-1")}),
        member("g", pax={"LIBARCHIVE.xattr.user.with%20space": base64.b64encode(b"v\nw").decode()}),
        member("d", tarfile.DIRTYPE, pax={"SCHILY.xattr.user.dir": "yes"}))
    idx = index(data)
    assert entry(idx, "f").xattrs[b"user.note"] == b"kept"
    assert entry(idx, "f").xattrs[b"security.capability"] == value.decode("latin-1").encode()
    assert entry(idx, "g").xattrs == {b"user.with space": b"v\nw"}
    assert entry(idx, "d").xattrs == {b"user.dir": b"yes"}


def test_global_pax_header_is_parsed_and_applies_to_nothing_as_with_docker() -> None:
    data = make_tar(member("f", data=b"x", uid=3), global_pax={"comment": "from git archive", "uid": "99"})
    assert data[156:157] == b"g"
    idx = index(data)
    assert names(idx) == ["f"]
    assert entry(idx, "f").uid == 3


def test_old_style_directory_written_as_a_file_with_a_trailing_slash() -> None:
    info, _ = member("old/")
    info.type = tarfile.AREGTYPE
    idx = index(make_tar((info, b""), member("old/f", data=b"1"), fmt=tarfile.USTAR_FORMAT))
    assert stat.S_ISDIR(entry(idx, "old").mode)
    assert names(idx, "old") == ["f"]


# -- layer semantics ---------------------------------------------------------------------


def test_leading_dot_slash_and_slash_are_dropped_and_paths_normalized() -> None:
    idx = index(make_tar(member("./a", data=b"1"), member("/b", data=b"2"), member("./c//d/./e", data=b"3"),
                         member(".", tarfile.DIRTYPE, mode=0o700, uid=7)))
    assert names(idx) == ["a", "b", "c"]
    assert entry(idx, "c/d/e").size == 1
    root = entry(idx, "")
    assert (root.mode, root.uid) == (stat.S_IFDIR | 0o700, 7)


def test_missing_parents_are_implied_as_root_owned_0755() -> None:
    idx = index(make_tar(member("x/y/z", data=b"1", uid=1000)))
    for rel in ("x", "x/y"):
        e = entry(idx, rel)
        assert (e.mode, e.uid, e.gid) == (stat.S_IFDIR | 0o755, 0, 0)
    assert entry(idx, "x").nlink == 3 and entry(idx, "x/y").nlink == 2


def test_a_later_directory_entry_sets_the_attributes_of_an_implied_one() -> None:
    idx = index(make_tar(member("x/f", data=b"1"), member("x", tarfile.DIRTYPE, mode=0o700, uid=9)))
    assert (entry(idx, "x").mode, entry(idx, "x").uid) == (stat.S_IFDIR | 0o700, 9)
    assert names(idx, "x") == ["f"]


def test_duplicates_the_later_entry_wins() -> None:
    data = make_tar(member("f", data=b"first"), member("f", data=b"second!", mode=0o600),
                    member("s", tarfile.SYMTYPE, link="a"), member("s", data=b"now a file"))
    idx = index(data)
    f = entry(idx, "f")
    assert data[f.offset:f.offset + f.size] == b"second!" and f.mode == stat.S_IFREG | 0o600
    assert stat.S_ISREG(entry(idx, "s").mode) and entry(idx, "s").linkname == b""
    assert names(idx) == ["f", "s"]


def test_a_directory_after_a_directory_merges_with_the_later_attributes() -> None:
    idx = index(make_tar(member("d", tarfile.DIRTYPE, mode=0o755), member("d/a", data=b"a"),
                         member("d", tarfile.DIRTYPE, mode=0o700, uid=4), member("d/b", data=b"b")))
    assert names(idx, "d") == ["a", "b"]
    assert (entry(idx, "d").mode, entry(idx, "d").uid) == (stat.S_IFDIR | 0o700, 4)


def test_a_file_replacing_a_directory_drops_its_whole_subtree() -> None:
    idx = index(make_tar(member("d/sub/deep", data=b"1"), member("d/f", data=b"2"), member("keep", data=b"k"),
                         member("d/sub/hard", tarfile.LNKTYPE, link="keep"), member("d", data=b"file now")))
    assert stat.S_ISREG(entry(idx, "d").mode)
    assert idx.directory(b"d") is None and idx.directory(b"d/sub") is None
    assert idx.entry(b"d/sub/deep") is None
    assert entry(idx, "keep").nlink == 1, "the dropped hard link no longer counts"
    assert sorted(e.path for e in idx.entries()) == [b"", b"d", b"keep"]


def test_hard_links_share_one_inode_and_count_their_names() -> None:
    idx = index(make_tar(member("a", data=b"shared", uid=3), member("dir/b", tarfile.LNKTYPE, link="a"),
                         member("c", tarfile.LNKTYPE, link="./a")))
    a, b, c = entry(idx, "a"), entry(idx, "dir/b"), entry(idx, "c")
    assert a.ino == b.ino == c.ino
    assert a.nlink == b.nlink == 3
    assert (b.size, b.offset, b.uid) == (a.size, a.offset, 3)


def test_hard_link_keeps_the_old_file_when_its_target_name_is_replaced_later() -> None:
    data = make_tar(member("a", data=b"old"), member("b", tarfile.LNKTYPE, link="a"), member("a", data=b"new"))
    idx = index(data)
    a, b = entry(idx, "a"), entry(idx, "b")
    assert a.ino != b.ino
    assert data[b.offset:b.offset + b.size] == b"old" and a.nlink == b.nlink == 1


def test_hard_links_to_missing_targets_or_directories_are_refused() -> None:
    refused(make_tar(member("b", tarfile.LNKTYPE, link="nowhere")), "hard link", "nowhere")
    refused(make_tar(member("b", tarfile.LNKTYPE, link="later"), member("later", data=b"x")), "hard link")
    refused(make_tar(member("d", tarfile.DIRTYPE), member("b", tarfile.LNKTYPE, link="d")), "a directory")
    refused(make_tar(member("a", data=b"x"), member("b", tarfile.LNKTYPE, link="x/../a")), "'..'")


def test_symlinks_are_stored_verbatim_even_when_they_point_outside() -> None:
    idx = index(make_tar(member("up", tarfile.SYMTYPE, link="../../../etc/shadow"),
                         member("abs", tarfile.SYMTYPE, link="/etc/passwd")))
    assert entry(idx, "up").linkname == b"../../../etc/shadow"
    assert entry(idx, "abs").linkname == b"/etc/passwd"
    assert entry(idx, "abs").mode == stat.S_IFLNK | 0o777


def test_oci_whiteouts_and_opaque_markers_are_recorded_not_shown() -> None:
    idx = index(make_tar(member(".wh.gone"), member("d/.wh..wh..opq"), member("d/new", data=b"n"),
                         member("e/.wh.x"), member("dev", tarfile.CHRTYPE, dev=(0, 0))))
    assert names(idx) == ["d", "e"]
    assert hidden(idx) == ["dev", "gone"]
    assert names(idx, "d") == ["new"] and idx.directory(b"d").opaque  # type: ignore[union-attr]
    assert names(idx, "e") == [] and hidden(idx, "e") == ["x"]
    assert not idx.directory(b"e").opaque  # type: ignore[union-attr]
    assert idx.entry(b".wh.gone") is None and idx.entry(b"dev") is None


def test_a_whiteout_hides_only_lower_layers_a_name_of_the_same_layer_stays() -> None:
    idx = index(make_tar(member("x", data=b"mine"), member(".wh.x")))
    assert names(idx) == ["x"] and hidden(idx) == ["x"]


def test_a_later_entry_replaces_a_character_device_whiteout() -> None:
    idx = index(make_tar(member("w", tarfile.CHRTYPE, dev=(0, 0)), member("w", data=b"back")))
    assert names(idx) == ["w"] and hidden(idx) == []


def test_reserved_metadata_names_are_skipped_with_a_warning() -> None:
    idx = index(make_tar(member(".wh..wh.plnk/123.456", data=b"x"), member("d/.wh..wh.aufs", data=b"y"),
                         member("ok", data=b"z")))
    assert names(idx) == ["ok"]
    assert len(idx.warnings) == 2 and all(".wh..wh." in w for w in idx.warnings)


def test_members_below_a_whiteout_are_skipped_and_the_whiteout_stays_hidden() -> None:
    idx = index(make_tar(member(".wh.d", tarfile.DIRTYPE), member(".wh.d/inside", data=b"x"), member("ok", data=b"")))
    assert names(idx) == ["ok"] and hidden(idx) == ["d"]
    assert idx.warnings and "whiteout" in idx.warnings[0]


def test_a_device_node_other_than_a_whiteout_is_an_entry() -> None:
    e = entry(index(make_tar(member("null", tarfile.CHRTYPE, dev=(1, 3)))), "null")
    assert stat.S_ISCHR(e.mode) and e.rdev == os.makedev(1, 3)


# -- refusals ----------------------------------------------------------------------------


def test_dotdot_components_are_refused() -> None:
    for name in ("../escape", "a/../../b", "a/../b", "./.."):
        refused(make_tar(member(name, data=b"x")), "'..'")


def test_names_over_255_bytes_are_refused() -> None:
    refused(make_tar(member("d/" + "n" * 256, data=b"x")), "longer than 255")
    index(make_tar(member("d/" + "n" * 255, data=b"x")))


def test_members_below_a_file_or_symlink_are_refused() -> None:
    refused(make_tar(member("f", data=b"x"), member("f/g", data=b"y")), "not a directory")
    refused(make_tar(member("s", tarfile.SYMTYPE, link="/etc"), member("s/passwd", data=b"y")), "not a directory")


def test_root_as_a_non_directory_and_impossible_owners_are_refused() -> None:
    refused(make_tar(member("./", data=b"")), "root")
    refused(make_tar(member("f", pax={"uid": str(2**32)})), "impossible owner")


def test_sparse_members_are_refused_with_a_hint() -> None:
    info, _ = member("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    refused(make_tar((info, b""), fmt=tarfile.GNU_FORMAT), "sparse", "without")
    refused(make_tar(member("f", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})), "sparse")


def test_truncated_tars_and_corrupt_headers_are_refused() -> None:
    data = make_tar(member("a", data=b"x" * 5000), member("b", data=b"y"))
    refused(data[:2048], "truncated", "'a'")
    refused(data[:700], "truncated")
    end = entry(index(data), "b").offset + 512  # just past b's data: no end-of-archive marker
    assert entry(index(data[:end]), "b").size == 1   # accepted, as docker's Go reader does
    cut_headers = make_tar(member("p" * 200, data=b"z"))       # a pax header, then its entry
    refused(cut_headers[:1024], "ends inside an entry's headers")
    bad = bytearray(data)
    bad[0] ^= 0x20  # the first name changes, the checksum does not
    refused(bytes(bad), "checksum")


def test_oversized_extended_headers_are_refused() -> None:
    refused(make_tar(member("f", pax={"comment": "x" * (1 << 20)})), "extended header")


def test_unknown_member_types_are_refused() -> None:
    info, _ = member("weird")
    info.type = b"Q"
    refused(make_tar((info, b"")), "type")


# -- the index on disk -------------------------------------------------------------------


def sample_tar() -> bytes:
    return make_tar(
        member("etc", tarfile.DIRTYPE), member("etc/passwd", data=b"root:x:0:0\n", mode=0o644),
        member("etc/shadow", data=b"secret", mode=0o640, gid=42), member("bin/sh", data=b"#!", mode=0o755),
        member("bin/dash", tarfile.LNKTYPE, link="bin/sh"), member("lib", tarfile.SYMTYPE, link="usr/lib"),
        member("f", pax={"SCHILY.xattr.user.a": "b", "mtime": "1.000000001"}), member(".wh.old"),
        member("o/.wh..wh..opq"))


def test_save_and_load_give_the_same_index(tmp_path: Path) -> None:
    idx = index(sample_tar())
    path = tmp_path / "layer.tar.idx"
    idx.save(path)
    assert os.listdir(tmp_path) == ["layer.tar.idx"], "no temporary file is left behind"
    again = TarIndex.load(path)
    assert list(again.entries()) == list(idx.entries())
    assert (again.diff_id, again.size, again.warnings) == (idx.diff_id, idx.size, idx.warnings)
    assert hidden(again) == ["old"] and again.directory(b"o").opaque  # type: ignore[union-attr]


def test_a_corrupt_or_foreign_index_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x93garbage")
    with pytest.raises(TarLayerError, match="delete it"):
        TarIndex.load(path)
    path.write_bytes(b"\x81\xa6format\x63")  # {"format": 99}
    with pytest.raises(TarLayerError, match="format"):
        TarIndex.load(path)


def test_index_file_reads_a_tar_on_disk_to_the_same_index(tmp_path: Path) -> None:
    data = sample_tar()
    tar = tmp_path / "layer.tar"
    tar.write_bytes(data)
    on_disk = index_file(tar)
    streamed = index(data)
    assert list(on_disk.entries()) == list(streamed.entries())
    assert on_disk.size == len(data) and on_disk.diff_id is None


def test_compressed_tars_are_refused_with_a_hint(tmp_path: Path) -> None:
    tgz = tmp_path / "layer.tar.gz"
    tgz.write_bytes(gzip.compress(sample_tar()))
    with pytest.raises(TarLayerError, match="decompress"):
        index_file(tgz)
    refused(tgz.read_bytes(), "compressed", "decompress")


# -- the layer the union reads -----------------------------------------------------------


def write_layer(tmp_path: Path, data: bytes, name: str = "layer.tar", *, save_index: bool = True) -> bytes:
    tar = tmp_path / name
    with open(tar, "wb") as out:
        idx = build_index(Stream(data), out)
    if save_index:
        idx.save(index_path(os.fsencode(tar)))
    return os.fsencode(tar)


def test_tar_layer_shows_what_the_tar_records(tmp_path: Path) -> None:
    layer = TarLayer.open(write_layer(tmp_path, sample_tar()), 1)
    try:
        st, owner = layer.lstat(b"etc/shadow")
        assert owner is None, "the tar's attributes are the truth"
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_size) == (stat.S_IFREG | 0o640, 0, 42, 6)
        assert layer.lstat(b"f")[0].st_mtime_ns == 1_000_000_001
        assert layer.lstat(b"bin/sh")[0].st_ino == layer.lstat(b"bin/dash")[0].st_ino
        assert layer.lstat(b"bin/sh")[0].st_nlink == 2
        assert sorted(layer.link_aliases(layer.lstat(b"bin/sh")[0].st_ino)) == [b"bin/dash", b"bin/sh"]
        assert layer.readlink(b"lib") == b"usr/lib"
        assert layer.getxattr(b"f", b"user.a") == b"b" and layer.listxattr(b"f") == [b"user.a"]
        with pytest.raises(OSError) as e:
            layer.getxattr(b"etc/passwd", b"user.a")
        assert e.value.errno == errno.ENODATA
        fd, base, length = layer.open_data(b"etc/passwd")
        try:
            assert os.pread(fd, length, base) == b"root:x:0:0\n"
        finally:
            os.close(fd)
    finally:
        layer.close()


def test_inode_numbers_are_stable_and_devices_distinct_per_layer(tmp_path: Path) -> None:
    tar = write_layer(tmp_path, sample_tar())
    one, two = TarLayer.open(tar, 1), TarLayer.open(tar, 2)
    built = TarLayer(tar, index_file(tar), 3)
    try:
        inos = [layer.lstat(b"etc/passwd")[0].st_ino for layer in (one, two, built)]
        assert len(set(inos)) == 1
        assert len({one.dev, two.dev, built.dev, os.stat(tmp_path).st_dev}) == 4
    finally:
        for layer in (one, two, built):
            layer.close()


def test_an_index_that_does_not_match_its_tar_is_refused(tmp_path: Path) -> None:
    tar = write_layer(tmp_path, sample_tar())
    with open(tar, "ab") as f:
        f.write(bytes(512))
    with pytest.raises(TarLayerError, match="does not belong"):
        TarLayer.open(tar, 1)


def test_overlay_reads_a_tar_lower_without_an_index_file(tmp_path: Path) -> None:
    tar = write_layer(tmp_path, sample_tar(), save_index=False)
    assert not os.path.exists(index_path(tar))
    fs = Overlay([tar])
    try:
        etc = fs.lookup(fs.root, b"etc")
        fh = fs.open(fs.lookup(etc, b"passwd"), os.O_RDONLY)
        assert fs.read(fh, 0, 4096) == b"root:x:0:0\n", "a read stops at the member's end"
        assert fs.read(fh, 5, 3) == b"x:0"
        assert fs.read(fh, 100, 10) == b""
        fs.release(fh)
        assert sorted(n for n, _ in fs.listdir(fs.root)) == [b"bin", b"etc", b"f", b"lib", b"o"]
    finally:
        fs.close()


def test_unlinked_tar_file_held_open_keeps_its_attributes_and_data(tmp_path: Path) -> None:
    tar = write_layer(tmp_path, sample_tar())
    for d in ("up", "wk"):
        (tmp_path / d).mkdir()
    fs = Overlay([tar], os.fsencode(tmp_path / "up"), os.fsencode(tmp_path / "wk"))
    try:
        etc = fs.lookup(fs.root, b"etc")
        node = fs.lookup(etc, b"shadow")
        fh = fs.open(node, os.O_RDONLY)
        fs.unlink(etc, b"shadow")
        assert node.unlinked
        a = fs.getattr(node)
        assert (a.mode, a.gid, a.size) == (stat.S_IFREG | 0o640, 42, 6)
        assert fs.read(fh, 0, 100) == b"secret"
        fh2 = fs.open(node, os.O_RDONLY)
        assert fs.read(fh2, 2, 100) == b"cret"
        fs.release(fh)
        fs.release(fh2)
        f = fs.lookup(fs.root, b"f")
        fh3 = fs.open(f, os.O_RDONLY)
        fs.unlink(fs.root, b"f")
        assert fs.getxattr(f, b"user.a") == b"b"
        fs.release(fh3)
    finally:
        fs.close()


def test_copy_up_from_a_tar_keeps_data_mode_times_and_xattrs(tmp_path: Path) -> None:
    blob = os.urandom(3 << 20)
    data = make_tar(member("big", data=blob, mode=0o4751, mtime=1_500_000_000,
                           pax={"SCHILY.xattr.user.k": "v"}),
                    member("after", data=b"tail"))
    tar = write_layer(tmp_path, data)
    for d in ("up", "wk"):
        (tmp_path / d).mkdir()
    fs = Overlay([tar], os.fsencode(tmp_path / "up"), os.fsencode(tmp_path / "wk"))
    try:
        node = fs.lookup(fs.root, b"big")
        fs.setattr(node, atime_ns=7)
        up = tmp_path / "up" / "big"
        st = os.stat(up)
        assert st.st_mtime_ns == 1_500_000_000 * 10**9 and st.st_atime_ns == 7
        assert up.read_bytes() == blob
        assert os.getxattr(up, "user.k") == b"v"
        a = fs.getattr(node)
        assert a.mode == stat.S_IFREG | 0o4751 and (a.uid, a.gid) == (0, 0)
    finally:
        fs.close()
