"""The index of an uncompressed layer tar, so that fusefs can serve the tar in place instead of extracting it.

:func:`build_index` copies a tar stream to a file byte for byte (so the file's sha256 is
the layer's diff_id) and parses every header on the way; :func:`index_file` indexes a
tar already on disk by seeking over the file data.  The headers are parsed here, not by
``tarfile``: a layer is thousands of small members, and ``tarfile`` takes twice as long
only to list a Debian layer's 8,700 members (0.26 s) as this module takes to index it.

A layer is applied the way Docker and containerd apply it: a leading ``./`` or ``/``
is dropped, a later entry replaces an earlier one of the same name (a directory after a
directory merges), missing parent directories are implied (0755, 0:0), a hard link
shares the identity of an earlier entry, and OCI whiteouts (``.wh.NAME``,
``.wh..wh..opq``) and overlayfs whiteouts (0:0 character devices) hide names of the
layers below instead of showing up themselves.  Whatever could not be served safely or
faithfully (``..``, over-long names, a link to nothing, sparse members) is refused with
:class:`TarLayerError`.

The index is a few flat arrays (one slot per inode) and one record per directory whose
names are decoded only when the directory is first read, so loading the index of that
layer from disk takes under a millisecond.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import sys
import tempfile
from array import array
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, Protocol

import msgpack

from .whiteout import META_PREFIX, OPAQUE_MARKER, WH_PREFIX

__all__ = ["TarLayerError", "TarIndex", "Entry", "Directory", "build_index", "index_file", "index_path", "load_index"]

FORMAT = 1
BLOCK = 512
CHUNK = 1 << 20
NAME_MAX = 255
PATH_MAX = 4095
MAX_DEPTH = 512
_MAX_ID = 2**32 - 1
_NS_MAX = 2**63 - 1
_ZERO_BLOCK = bytes(BLOCK)
_META = frozenset((b"x", b"g", b"L", b"K"))
_META_MAX = 1 << 20  # as Go's reader: a bigger pax or long-name header is an attack, not a name
# name mode uid gid size mtime chksum typeflag linkname magic, (version uname gname), devmajor devminor prefix
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s66x8s8s155s12x")
#: A 0:0 character device in a directory's children: overlayfs' whiteout of that name.
_WHITEOUT = -1
_CORRUPT = "the layer tar is corrupt, truncated or hostile; pull the image again"
_COMPRESSED = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # gzip, zstd
_DECOMPRESS = "decompress it first (gunzip, zstd -d) and use the plain .tar"

# S_IFMT for each tar type flag; b"\0" is a regular file too (pre-POSIX tars).
_KINDS = {
    b"0": stat.S_IFREG, b"\0": stat.S_IFREG, b"7": stat.S_IFREG,
    b"1": 0,  # a hard link: the kind of its target
    b"2": stat.S_IFLNK, b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"5": stat.S_IFDIR, b"6": stat.S_IFIFO,
}


class TarLayerError(ValueError):
    """A layer tar that fusefs will not serve: corrupt, truncated, hostile, or of a kind it cannot read."""

    def __init__(self, message: str, hint: str = _CORRUPT) -> None:
        super().__init__(f"{message}; {hint}" if hint else message)
        self.message = message
        self.hint = hint


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def index_path(tar: bytes) -> bytes:
    """Where the index of the layer tar TAR is kept: beside it, as ``TAR.idx``."""
    return tar + b".idx"


def load_index(tar: bytes) -> TarIndex:
    """The index of the layer tar TAR: ``TAR.idx``, or where there is none, one made now from the tar."""
    try:
        return TarIndex.load(index_path(tar))
    except FileNotFoundError:
        return index_file(tar)


# -- what the index holds ------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One name of the layer as a container sees it (for tools and tests; fusefs reads the arrays)."""

    path: bytes          # relative to the layer's root, b"" for the root
    ino: int             # the entry's inode in the index; hard links share it
    mode: int            # st_mode: file type and permission bits as recorded
    uid: int
    gid: int
    mtime_ns: int
    size: int            # bytes of file data (0 for anything but a regular file)
    offset: int          # where the data starts in the tar
    nlink: int
    linkname: bytes      # a symlink's target, verbatim
    rdev: int            # a device node's number
    xattrs: dict[bytes, bytes]


@dataclass(frozen=True)
class Directory:
    """One directory of the layer as the union reads it."""

    ino: int
    children: dict[bytes, int]     # visible name -> inode, in tar order
    hidden: frozenset[bytes]       # names whited out for the layers below
    opaque: bool                   # the layers below contribute nothing here


class TarIndex:
    """Every entry of one layer tar: inode attributes in flat arrays, names per directory.

    ``diff_id`` is ``"sha256:<hex>"`` of the tar stream when :func:`build_index` read it
    all (None where :func:`index_file` skipped the data); ``size`` is the stream's
    length in bytes, which a mount checks against the tar file.
    """

    def __init__(self, *, diff_id: str | None, size: int, mode: array[int], uid: array[int], gid: array[int],
                 mtime: array[int], length: array[int], offset: array[int], rdev: array[int], nlink: array[int],
                 dirs: dict[bytes, list[Any]], links: dict[int, bytes], xattrs: dict[int, dict[bytes, bytes]],
                 warnings: tuple[str, ...] = ()) -> None:
        self.diff_id = diff_id
        self.size = size
        self.mode, self.uid, self.gid, self.mtime = mode, uid, gid, mtime
        self.length, self.offset, self.rdev, self.nlink = length, offset, rdev, nlink
        # rel -> [ino, opaque, names joined by "/", inodes as uint32 bytes, hidden joined by "/"]:
        # "/" cannot occur in a name, and decoding waits until a directory is read.
        self._dirs = dirs
        self.links = links
        self.xattrs = xattrs
        self.warnings = warnings
        self._decoded: dict[bytes, Directory] = {}

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of inodes (entries that are hard links of another count once)."""
        return len(self.mode)

    def directory(self, rel: bytes) -> Directory | None:
        """The directory REL, or None where the layer has no directory of that name."""
        d = self._decoded.get(rel)
        if d is not None:
            return d
        raw = self._dirs.get(rel)
        if raw is None:
            return None
        ino, opaque, names, inos, hidden = raw
        nums = _array("I", inos)
        d = Directory(ino, dict(zip(names.split(b"/"), nums)) if names else {},
                      frozenset(hidden.split(b"/")) if hidden else frozenset(), bool(opaque))
        self._decoded[rel] = d
        return d

    def lookup(self, rel: bytes) -> int | None:
        """The inode at REL, or None."""
        raw = self._dirs.get(rel)
        if raw is not None:
            return int(raw[0])
        head, _, name = rel.rpartition(b"/")
        d = self.directory(head)
        return None if d is None else d.children.get(name)

    def directories(self) -> Iterator[bytes]:
        return iter(self._dirs)

    def entry(self, rel: bytes) -> Entry | None:
        ino = self.lookup(rel)
        return None if ino is None else self._entry(rel, ino)

    def entries(self) -> Iterator[Entry]:
        """Every visible name, parents before children."""
        for rel in self._dirs:
            d = self.directory(rel)
            assert d is not None
            if not rel:
                yield self._entry(rel, d.ino)
            for name, ino in d.children.items():
                yield self._entry(rel + b"/" + name if rel else name, ino)

    def _entry(self, rel: bytes, ino: int) -> Entry:
        return Entry(rel, ino, self.mode[ino], self.uid[ino], self.gid[ino], self.mtime[ino], self.length[ino],
                     self.offset[ino], self.nlink[ino], self.links.get(ino, b""), self.rdev[ino],
                     dict(self.xattrs.get(ino, {})))

    # -- on disk -------------------------------------------------------------------------

    def dumps(self) -> bytes:
        return msgpack.packb({
            "format": FORMAT, "diff_id": self.diff_id, "size": self.size,
            "mode": _le(self.mode), "uid": _le(self.uid), "gid": _le(self.gid), "mtime": _le(self.mtime),
            "length": _le(self.length), "offset": _le(self.offset), "rdev": _le(self.rdev),
            "nlink": _le(self.nlink), "dirs": self._dirs, "links": self.links, "xattrs": self.xattrs,
            "warnings": list(self.warnings),
        }, use_bin_type=True)

    @classmethod
    def loads(cls, data: bytes, what: str = "the layer index") -> TarIndex:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise TarLayerError(f"{what} has a format this fusefs does not read",
                                    "delete it: fusefs indexes the tar again at mount")
            a = {k: _array(t, raw[k]) for k, t in _ARRAYS.items()}
            if len({len(v) for v in a.values()}) != 1 or not isinstance(raw["dirs"], dict):
                raise ValueError("its tables do not agree")
            return cls(diff_id=raw["diff_id"], size=int(raw["size"]), mode=a["mode"], uid=a["uid"], gid=a["gid"],
                       mtime=a["mtime"], length=a["length"], offset=a["offset"], rdev=a["rdev"],
                       nlink=a["nlink"], dirs=raw["dirs"], links=raw["links"], xattrs=raw["xattrs"],
                       warnings=tuple(raw["warnings"]))
        except TarLayerError:
            raise
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise TarLayerError(f"{what} is corrupt ({e})", "delete it: fusefs indexes the tar again at mount") from None

    def save(self, path: bytes | str) -> None:
        """Write the index to PATH atomically: a temporary file, fsync, rename, fsync of the directory."""
        path = os.fsencode(path)
        parent = os.path.dirname(path) or b"."
        fd, tmp = tempfile.mkstemp(prefix=b".idx-", dir=parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.dumps())
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @classmethod
    def load(cls, path: bytes | str) -> TarIndex:
        """Read an index written by :meth:`save` (FileNotFoundError where there is none)."""
        with open(path, "rb") as f:
            data = f.read()
        return cls.loads(data, f"the layer index {os.fsdecode(path)}")


_ARRAYS = {"mode": "I", "uid": "I", "gid": "I", "mtime": "q", "length": "Q", "offset": "Q", "rdev": "Q", "nlink": "I"}


def _le(a: array[int]) -> bytes:
    if sys.byteorder == "little":
        return a.tobytes()
    b = array(a.typecode, a)
    b.byteswap()
    return b.tobytes()


def _array(typecode: str, data: bytes) -> array[int]:
    a = array(typecode)
    a.frombytes(data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


# -- reading the stream --------------------------------------------------------------------


class _Stream:
    """The tar as it arrives from SRC: copied to OUT and hashed a chunk at a time, headers taken from the chunks."""

    def __init__(self, src: Readable, out: BinaryIO | None) -> None:
        self._src = src
        self._out = out
        self._sha = hashlib.sha256()
        self.size = 0
        self._buf = b""
        self._pos = 0
        self.offset = 0  # of _buf[_pos] in the stream

    def _more(self) -> bool:
        chunk = self._src.read(CHUNK)
        if not chunk:
            return False
        if not isinstance(chunk, bytes):
            chunk = bytes(chunk)
        if self._out is not None:
            view = memoryview(chunk)
            while view:  # an unbuffered file may take less than it is given
                n = self._out.write(view)
                if not n:
                    raise OSError(errno.EIO, "the layer tar could not be written (the file took no bytes)")
                view = view[n:]
        self._sha.update(chunk)
        self.size += len(chunk)
        rest = len(self._buf) - self._pos
        self._buf = self._buf[self._pos:] + chunk if rest else chunk
        self._pos = 0
        return True

    def take(self, n: int) -> bytes:
        """The next N bytes; fewer only at the end of the stream."""
        while len(self._buf) - self._pos < n:
            if not self._more():
                break
        out = self._buf[self._pos:self._pos + n]
        self._pos += len(out)
        self.offset += len(out)
        return out

    def skip(self, n: int) -> bool:
        """Pass over N bytes; False where the stream ended first."""
        while n > len(self._buf) - self._pos:
            gone = len(self._buf) - self._pos
            n -= gone
            self.offset += gone
            self._buf, self._pos = b"", 0
            if not self._more():
                return False
        self._pos += n
        self.offset += n
        return True

    def finish(self) -> str:
        """Read to the end (the diff_id covers what follows the end-of-archive marker too)."""
        while self._more():
            self._buf, self._pos = b"", 0
        return "sha256:" + self._sha.hexdigest()


class _File:
    """A tar file on disk, read a window at a time and skipped over by seeking."""

    WINDOW = 16 << 10

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size
        self.offset = 0
        self._win = b""
        self._win_at = 0

    def take(self, n: int) -> bytes:
        start = self.offset - self._win_at
        if start < 0 or start + n > len(self._win):
            self._win = os.pread(self._fd, max(n, self.WINDOW), self.offset)
            self._win_at = self.offset
            start = 0
        out = self._win[start:start + n]
        self.offset += len(out)
        return out

    def skip(self, n: int) -> bool:
        self.offset += n
        return self.offset <= self.size


# -- parsing -------------------------------------------------------------------------------


def build_index(src: Readable, tar_out: BinaryIO | None) -> TarIndex:
    """Index the plain tar read from SRC, writing every byte of it unchanged to TAR_OUT.

    SRC is read with ``read(n)`` only (a pipe, a decompressor); the caller decompresses.
    TAR_OUT may be None to index without keeping the tar.  The returned index carries
    the stream's diff_id and size.  Raises TarLayerError for a tar that cannot be served.
    """
    reader = _Stream(src, tar_out)
    builder = _Builder()
    _parse(reader, builder)
    diff_id = reader.finish()
    return builder.finish(diff_id, reader.size)


def index_file(path: bytes | str) -> TarIndex:
    """Index the plain tar file at PATH in place, reading its headers and seeking over file data.

    The data is never read, so the index has no diff_id.  A compressed file is refused
    with a hint to decompress it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 4, 0)
        if head.startswith(_COMPRESSED):
            raise TarLayerError(f"{os.fsdecode(path)} is compressed; fusefs serves plain tars only", _DECOMPRESS)
        reader = _File(fd)
        builder = _Builder()
        _parse(reader, builder)
        return builder.finish(None, reader.size)
    finally:
        os.close(fd)


class _Reader(Protocol):
    offset: int

    def take(self, n: int) -> bytes: ...

    def skip(self, n: int) -> bool: ...


def _parse(r: _Reader, b: _Builder) -> None:
    pax: dict[bytes, bytes] | None = None
    longname: bytes | None = None
    longlink: bytes | None = None
    kinds = _KINDS
    unpack = _HEADER.unpack
    while True:
        at = r.offset
        block = r.take(BLOCK)
        if at == 0 and block.startswith(_COMPRESSED):
            raise TarLayerError("the layer is compressed; fusefs indexes plain tars only", _DECOMPRESS)
        if not block and pax is None and longname is None and longlink is None:
            # Ended at a header boundary without the two zero blocks: Go's archive/tar, and so
            # docker and containerd, take that as the end; the blob's digest vouches for it.
            return
        if len(block) < BLOCK:
            raise TarLayerError("the layer tar ends inside an entry's headers" if not block
                                else f"the layer tar is truncated inside the header at byte {at}")
        if block == _ZERO_BLOCK:
            return  # the end of the archive; what follows is padding
        (name, f_mode, f_uid, f_gid, f_size, f_mtime, f_sum, typeflag, linkname, magic, f_major, f_minor,
         prefix) = unpack(block)
        if _octal(f_sum, at) != sum(block) - sum(f_sum) + 256:
            _check_signed_sum(block, at)
        size = _octal(f_size, at)
        if size < 0:
            raise TarLayerError(f"the layer tar has a corrupt header at byte {at} (negative size)")
        if typeflag in _META:
            if size > _META_MAX:
                raise TarLayerError(f"the layer tar has an extended header of {size} bytes at byte {at}")
            data = r.take(size)
            if len(data) < size or not r.skip(-size % BLOCK):
                raise TarLayerError(f"the layer tar is truncated inside the header at byte {at}")
            if typeflag == b"x":
                pax = (pax or {}) | _pax_records(data, at)
            elif typeflag == b"g":
                # Go's archive/tar, and so Docker, containerd and podman, hand a global header
                # back as an entry of its own and apply it to nothing; so do we.
                _pax_records(data, at)
            elif typeflag == b"L":
                longname = data.split(b"\0", 1)[0]
            else:
                longlink = data.split(b"\0", 1)[0]
            continue
        kind = kinds.get(typeflag)
        if longname is not None:
            name = longname
        else:
            name = name.split(b"\0", 1)[0]
            if magic == b"ustar\0" and prefix[0]:
                name = prefix.split(b"\0", 1)[0] + b"/" + name
        linkname = linkname.split(b"\0", 1)[0] if longlink is None else longlink
        uid = _octal(f_uid, at)
        gid = _octal(f_gid, at)
        mtime_ns = _octal(f_mtime, at) * 1_000_000_000
        rdev = 0
        xattrs: dict[bytes, bytes] | None = None
        if pax is not None:
            name, linkname, size, uid, gid, mtime_ns, xattrs = _apply_pax(
                pax, at, name, linkname, size, uid, gid, mtime_ns)
            if (kind == stat.S_IFCHR or kind == stat.S_IFBLK) and (
                    b"SCHILY.devmajor" in pax or b"SCHILY.devminor" in pax):
                rdev = _makedev(_pax_int(pax.get(b"SCHILY.devmajor", b"0"), at),
                                _pax_int(pax.get(b"SCHILY.devminor", b"0"), at), at)
            pax = None
        longname = longlink = None
        if kind is None:
            what = "a sparse file" if typeflag == b"S" else f"of type {typeflag!r}"
            raise TarLayerError(f"layer member {_show(name)} is {what}, which fusefs does not serve",
                                "rebuild the image without sparse or unusual members (tar --format=posix, no -S)"
                                if typeflag == b"S" else _CORRUPT)
        offset = r.offset
        if kind == stat.S_IFREG:
            if typeflag == b"\0" and name.endswith(b"/"):
                kind, size = stat.S_IFDIR, 0  # a directory, as tars before POSIX wrote it
            elif not r.skip(size + (-size % BLOCK)):
                raise TarLayerError(f"the layer tar is truncated inside {_show(name)}")
        else:
            size = 0  # other members carry no data whatever their size field says (as Go's reader)
            if (kind == stat.S_IFCHR or kind == stat.S_IFBLK) and not rdev:
                rdev = _makedev(_octal(f_major, at), _octal(f_minor, at), at)
        b.add(name, kind, _octal(f_mode, at) & 0o7777, uid, gid, mtime_ns, size, offset, linkname, rdev, xattrs)


def _makedev(major: int, minor: int, at: int) -> int:
    try:
        return os.makedev(major, minor)
    except (OverflowError, ValueError):
        raise TarLayerError(f"the layer tar has an impossible device number at byte {at}") from None


def _octal(field: bytes, at: int) -> int:
    """A numeric header field: octal text ended by NUL or space, or GNU's base-256 for big values."""
    try:
        return int(field.rstrip(b" \0") or b"0", 8)
    except ValueError:
        pass
    if field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarLayerError(f"the layer tar has a corrupt header at byte {at} (bad number {text!r})") from None


def _check_signed_sum(block: bytes, at: int) -> None:
    """Some old writers summed signed chars; anything else with a wrong sum is corrupt."""
    recorded = _octal(block[148:156], at)
    signed = sum(c - 256 if c > 127 else c for c in block[:148] + b" " * 8 + block[156:])
    if recorded != signed:
        raise TarLayerError(f"the layer tar has a corrupt header at byte {at} (bad checksum)")


def _pax_records(data: bytes, at: int) -> dict[bytes, bytes]:
    """``LEN key=value\\n`` records; LEN counts the whole record, so values may hold anything."""
    out: dict[bytes, bytes] = {}
    pos, end = 0, len(data)
    while pos < end and data[pos]:
        sp = data.find(b" ", pos, pos + 24)
        try:
            length = int(data[pos:sp]) if sp > pos else 0
        except ValueError:
            length = 0
        rec = data[sp + 1:pos + length]
        if length <= 0 or pos + length > end or not rec.endswith(b"\n") or b"=" not in rec:
            raise TarLayerError(f"the layer tar has a corrupt pax header at byte {at}")
        key, _, value = rec[:-1].partition(b"=")
        if key.startswith(b"GNU.sparse."):
            raise TarLayerError("the layer tar holds a sparse file, which fusefs does not serve",
                                "rebuild the image without sparse members (tar without -S)")
        out[key] = value
        pos += length
    return out


def _apply_pax(pax: dict[bytes, bytes], at: int, name: bytes, linkname: bytes, size: int, uid: int, gid: int,
               mtime_ns: int) -> tuple[bytes, bytes, int, int, int, int, dict[bytes, bytes] | None]:
    xattrs: dict[bytes, bytes] | None = None
    for key, value in pax.items():
        if not value:
            continue  # an empty value withdraws the record: the header field counts
        if key == b"path":
            name = value
        elif key == b"linkpath":
            linkname = value
        elif key == b"size":
            size = _pax_int(value, at)
        elif key == b"uid":
            uid = _pax_int(value, at)
        elif key == b"gid":
            gid = _pax_int(value, at)
        elif key == b"mtime":
            mtime_ns = _pax_time(value, at)
        elif key.startswith(b"SCHILY.xattr."):
            xattrs = xattrs or {}
            xattrs[key[13:]] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            # libarchive writes the name %-escaped and the value in base64 (rare: imported here).
            import base64
            import urllib.parse
            xattrs = xattrs or {}
            try:
                xattrs[urllib.parse.unquote_to_bytes(key[17:])] = base64.b64decode(value, validate=True)
            except ValueError:
                raise TarLayerError(f"the layer tar has a corrupt xattr record at byte {at}") from None
    if size < 0:
        raise TarLayerError(f"the layer tar has a corrupt pax header at byte {at} (negative size)")
    return name, linkname, size, uid, gid, mtime_ns, xattrs


def _pax_int(value: bytes, at: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise TarLayerError(f"the layer tar has a corrupt pax header at byte {at} (bad number {value!r})") from None


def _pax_time(value: bytes, at: int) -> int:
    """Seconds with an optional fraction, to nanoseconds exactly (a float would round)."""
    neg = value.startswith(b"-")
    whole, _, frac = value.lstrip(b"-").partition(b".")
    if not (whole.isdigit() or not whole) or not (frac.isdigit() or not frac) or not (whole or frac):
        raise TarLayerError(f"the layer tar has a corrupt pax header at byte {at} (bad time {value!r})")
    ns = int(whole or b"0") * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    return -ns if neg else ns


def _show(name: bytes) -> str:
    text = name.decode(errors="replace")
    return repr(text if len(text) <= 120 else text[:120] + "...")


# -- applying members ----------------------------------------------------------------------


class _Dir:
    __slots__ = ("ino", "children", "whiteouts", "opaque")

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.children: dict[bytes, int] = {}   # name -> inode, _WHITEOUT for a 0:0 character device
        self.whiteouts: set[bytes] = set()     # names hidden by a .wh.NAME member
        self.opaque = False


class _Builder:
    """The layer as its members are applied one after another, the way an unpacker would."""

    def __init__(self) -> None:
        self.mode: list[int] = []
        self.uid: list[int] = []
        self.gid: list[int] = []
        self.mtime: list[int] = []
        self.length: list[int] = []
        self.offset: list[int] = []
        self.rdev: list[int] = []
        self.nlink: list[int] = []
        self.links: dict[int, bytes] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.warnings: list[str] = []
        self.dirs: dict[bytes, _Dir] = {b"": _Dir(self._inode(stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 0))}

    def _inode(self, mode: int, uid: int, gid: int, mtime_ns: int, size: int, offset: int, rdev: int) -> int:
        self.mode.append(mode)
        self.uid.append(uid)
        self.gid.append(gid)
        self.mtime.append(max(-_NS_MAX, min(_NS_MAX, mtime_ns)))
        self.length.append(size)
        self.offset.append(offset)
        self.rdev.append(rdev)
        self.nlink.append(1)
        return len(self.mode) - 1

    def _set_attrs(self, ino: int, perm: int, uid: int, gid: int, mtime_ns: int) -> None:
        self.mode[ino] = stat.S_IFMT(self.mode[ino]) | perm
        self.uid[ino], self.gid[ino] = uid, gid
        self.mtime[ino] = max(-_NS_MAX, min(_NS_MAX, mtime_ns))

    def add(self, name: bytes, kind: int, perm: int, uid: int, gid: int, mtime_ns: int, size: int, offset: int,
            linkname: bytes, rdev: int, xattrs: dict[bytes, bytes] | None) -> None:
        rel = _clean(name)
        if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
            raise TarLayerError(f"layer member {_show(name)} has an impossible owner {uid}:{gid}")
        if not rel:
            if kind != stat.S_IFDIR:
                raise TarLayerError(f"layer member {_show(name)} names the layer's root but is not a directory")
            self._set_attrs(0, perm, uid, gid, mtime_ns)
            if xattrs:
                self.xattrs.setdefault(0, {}).update(xattrs)
            return
        dirrel, _, base = rel.rpartition(b"/")
        if WH_PREFIX in rel:
            if b"/" + WH_PREFIX in b"/" + dirrel:
                # Below aufs' bookkeeping (.wh..wh.plnk/) or below a whiteout: nothing a container sees.
                self.warnings.append(f"skipped {_show(name)}: it is inside a whiteout or layer metadata")
                return
            if base.startswith(META_PREFIX) and base != OPAQUE_MARKER:
                self.warnings.append(f"skipped {_show(name)}: names starting with .wh..wh. are reserved for "
                                     "layer metadata")
                return
            if base.startswith(WH_PREFIX):
                d = self.dirs.get(dirrel) or self._make_parents(dirrel, name)
                if base == OPAQUE_MARKER:
                    d.opaque = True
                else:
                    d.whiteouts.add(base[len(WH_PREFIX):])
                return
        d = self.dirs.get(dirrel) or self._make_parents(dirrel, name)
        if kind == 0:
            self._hardlink(d, rel, base, name, linkname)
            return
        if kind == stat.S_IFCHR and rdev == 0:
            self._replace(d, rel, base, _WHITEOUT)
            return
        old = d.children.get(base)
        if kind == stat.S_IFDIR and old is not None and old >= 0 and stat.S_ISDIR(self.mode[old]):
            ino = old  # a directory after a directory: one directory, the later attributes
            self._set_attrs(ino, perm, uid, gid, mtime_ns)
        else:
            if kind == stat.S_IFLNK:
                perm = 0o777
            ino = self._inode(kind | perm, uid, gid, mtime_ns, size, offset, rdev)
            if old is None:
                d.children[base] = ino
            else:
                self._replace(d, rel, base, ino)
            if kind == stat.S_IFDIR:
                self.dirs[rel] = _Dir(ino)
            elif kind == stat.S_IFLNK:
                self.links[ino] = linkname
        if xattrs:
            self.xattrs.setdefault(ino, {}).update(xattrs)

    def _hardlink(self, d: _Dir, rel: bytes, base: bytes, name: bytes, linkname: bytes) -> None:
        target = _clean(linkname)
        tdirrel, _, tbase = target.rpartition(b"/")
        tdir = self.dirs.get(tdirrel) if target else None
        ino = tdir.children.get(tbase) if tdir is not None else None
        if ino is None or ino < 0 or stat.S_ISDIR(self.mode[ino]):
            what = "a directory" if ino is not None and ino >= 0 else "not in the layer before it"
            raise TarLayerError(f"layer member {_show(name)} is a hard link to {_show(linkname)}, which is {what}",
                                "a hard link must name a file earlier in the same layer; " + _CORRUPT)
        if d.children.get(base) == ino:
            return  # a second link of a name to itself
        self._replace(d, rel, base, ino)
        self.nlink[ino] += 1

    def _replace(self, d: _Dir, rel: bytes, base: bytes, ino: int) -> None:
        """NAME now means INO; what it meant before loses that name (a directory: its whole tree)."""
        old = d.children.get(base)
        if old is not None and old >= 0:
            if stat.S_ISDIR(self.mode[old]):
                self._drop_tree(rel)
            else:
                self.nlink[old] -= 1
        d.children[base] = ino

    def _drop_tree(self, rel: bytes) -> None:
        stack = [rel]
        while stack:
            cur = stack.pop()
            gone = self.dirs.pop(cur)
            self.nlink[gone.ino] = 0
            for name, ino in gone.children.items():
                if ino < 0:
                    continue
                if stat.S_ISDIR(self.mode[ino]):
                    stack.append(cur + b"/" + name)
                else:
                    self.nlink[ino] -= 1

    def _make_parents(self, dirrel: bytes, member: bytes) -> _Dir:
        """Imply the missing directories of DIRREL (0755, owned by root, as Docker does)."""
        d = self.dirs[b""]
        rel = b""
        for comp in dirrel.split(b"/"):
            rel = rel + b"/" + comp if rel else comp
            nxt = self.dirs.get(rel)
            if nxt is None:
                if comp in d.children:
                    raise TarLayerError(f"layer member {_show(member)} goes through {_show(rel)}, which is not a "
                                        "directory", "a layer may not put files below a file, symlink or whiteout; "
                                        + _CORRUPT)
                nxt = _Dir(self._inode(stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0, 0))
                d.children[comp] = nxt.ino
                self.dirs[rel] = nxt
            d = nxt
        return d

    def finish(self, diff_id: str | None, size: int) -> TarIndex:
        nlink = self.nlink
        for d in self.dirs.values():
            nlink[d.ino] = 2
        for rel in self.dirs:
            if rel:
                nlink[self.dirs[rel.rpartition(b"/")[0]].ino] += 1
        dirs: dict[bytes, list[Any]] = {}
        for rel, d in self.dirs.items():
            names = [n for n, i in d.children.items() if i >= 0]
            inos = array("I", [i for i in d.children.values() if i >= 0])
            hidden = d.whiteouts | {n for n, i in d.children.items() if i < 0}
            dirs[rel] = [d.ino, d.opaque, b"/".join(names), _le(inos), b"/".join(sorted(hidden))]
        return TarIndex(
            diff_id=diff_id, size=size, mode=array("I", self.mode), uid=array("I", self.uid),
            gid=array("I", self.gid), mtime=array("q", self.mtime), length=array("Q", self.length),
            offset=array("Q", self.offset), rdev=array("Q", self.rdev), nlink=array("I", nlink),
            dirs=dirs, links=self.links, xattrs=self.xattrs, warnings=tuple(self.warnings))


def _clean(name: bytes) -> bytes:
    """NAME below the layer root, normalized; a leading ``/`` or ``./`` means nothing, ``..`` is refused."""
    rel = name.strip(b"/")
    while rel.startswith(b"./"):
        rel = rel[2:].lstrip(b"/")
    if rel == b".":
        return b""
    if len(rel) <= NAME_MAX and b".." not in rel and b"//" not in rel and b"/./" not in rel \
            and not rel.endswith(b"/.") and b"\0" not in rel:
        return rel  # the common case, decided without splitting
    parts = [p for p in rel.split(b"/") if p and p != b"."]
    for p in parts:
        if p == b"..":
            raise TarLayerError(f"layer member {_show(name)} has a '..' component",
                                "a layer may only name paths inside itself; the image is hostile or corrupt")
        if len(p) > NAME_MAX:
            raise TarLayerError(f"layer member {_show(name)} has a name longer than {NAME_MAX} bytes")
        if b"\0" in p:
            raise TarLayerError(f"layer member {_show(name)} has a NUL byte in its name")
    rel = b"/".join(parts)
    if len(parts) > MAX_DEPTH or len(rel) > PATH_MAX:
        raise TarLayerError(f"layer member {_show(name)} is deeper than {MAX_DEPTH} directories "
                            f"or longer than {PATH_MAX} bytes")
    return rel
