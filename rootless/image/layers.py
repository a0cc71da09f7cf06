"""Unpacking one layer tar, without root, into a directory fusefs serves as a lower layer.

An unprivileged user cannot chown, mknod or keep setuid files, so what the tar records
that the disk cannot hold is written beside the files the way fusefs reads it back
(``fusefs.metadata``): owner and mode in the ``user.containers.override_stat`` xattr,
or in the layer's side table for symlinks and fifos.  OCI whiteouts stay as the
``.wh.`` files they are; fusefs reads them in lower layers.

A layer is hostile input.  Every name is created relative to an open directory with
``O_NOFOLLOW``, never through a path the tar could have redirected with a symlink it
planted earlier, and the layer is built in a staging directory that is renamed into
place only when complete, so a failure or a crash leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Protocol, Self, cast

import zstandard

from fusefs import whiteout
from fusefs.metadata import Owner, OwnerTable

from ..errors import LayerError

NAME_MAX = 255
#: Longer paths could not be served: fusefs and the container reach files by path.
PATH_MAX = 4095
#: Deeper trees would overflow Python's recursion in the tree walks that follow (rmtree, os.walk).
MAX_DEPTH = 512
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
# zstd can expand a few bytes into a block of 128 KiB; small input chunks bound the
# memory a decompression bomb can take in one call.
_ZSTD_FEED = 16 << 10
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_ID = 2**32 - 1
# tarfile's "end of archive" marker; typeshed does not list the class.
_EOF_HEADER: type[Exception] = getattr(tarfile, "EOFHeaderError")
_CORRUPT_HINT = "the layer blob is corrupt, truncated or hostile; delete it and pull again"


@dataclass(frozen=True)
class UnpackedLayer:
    """What unpacking a layer found: its diff_id, its uncompressed size, what it skipped."""

    diff_id: str                 # "sha256:<hex>" of the uncompressed tar stream
    size: int                    # bytes of the uncompressed tar stream
    warnings: tuple[str, ...] = ()


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def unpack(src: Readable, dest: str | os.PathLike[str], *, work_dir: str | os.PathLike[str] | None = None) -> UnpackedLayer:
    """Unpack the layer tar read from SRC (gzip, zstd or plain) into the new directory DEST.

    The layer is built in a staging directory in WORK_DIR (default: DEST's parent,
    which must be on the same file system) and renamed to DEST when complete and
    synced.  Raises LayerError, and leaves nothing behind, for a corrupt or hostile tar.
    """
    dest = Path(dest)
    if os.path.lexists(dest):
        raise LayerError(f"cannot unpack a layer into {dest}: it already exists", "remove it first")
    try:
        staging = tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=work_dir if work_dir is not None else dest.parent)
    except OSError as e:
        raise LayerError(f"cannot create a staging directory for {dest}: {e.strerror}") from None
    try:
        result = _unpack_into(src, os.fsencode(staging))
        _syncfs(staging)
        try:
            os.rename(staging, dest)
        except OSError as e:
            raise LayerError(f"cannot move the unpacked layer to {dest}: {e.strerror}") from None
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


# -- the uncompressed stream ------------------------------------------------------------


class _Plain:
    def __init__(self, src: Readable, head: bytes) -> None:
        self._src = src
        self._head = head

    def chunk(self) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        return self._src.read(_CHUNK)


class _Frames:
    """Compressed frames one after another, each checked to its end: gzip members (as
    ``gzip -c a b`` writes and Go's reader accepts) or zstd frames."""

    def __init__(self, raw: _Plain, kind: str, new: Callable[[], Any],
                 step: Callable[[Any, bytes], tuple[bytes, bytes]], error: type[Exception]) -> None:
        self._raw = raw
        self._kind = kind
        self._new = new
        self._step = step        # (decompressor, pending) -> (output, pending left over)
        self._error = error
        self._d = new()
        self._started = False
        self._pending = b""

    def chunk(self) -> bytes:
        while True:
            if not self._pending:
                self._pending = self._raw.chunk()
                if not self._pending:
                    if self._started:
                        raise LayerError(f"the layer's {self._kind} stream is truncated", _CORRUPT_HINT)
                    return b""
            self._started = True
            try:
                out, self._pending = self._step(self._d, self._pending)
            except self._error as e:
                raise LayerError(f"the layer is not valid {self._kind}: {e}", _CORRUPT_HINT) from None
            if self._d.eof:
                self._pending = self._d.unused_data + self._pending
                self._d = self._new()
                self._started = False
            if out:
                return out


def _gzip(raw: _Plain) -> _Frames:
    def step(d: Any, pending: bytes) -> tuple[bytes, bytes]:
        out = d.decompress(pending, _CHUNK)  # bounded output: no decompression bomb in memory
        # At a member's end zlib leaves the rest in unused_data *and* unconsumed_tail:
        # _Frames starts the next member from unused_data, so nothing is pending here.
        return out, b"" if d.eof else d.unconsumed_tail

    return _Frames(raw, "gzip", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), step, zlib.error)


def _zstd(raw: _Plain) -> _Frames:
    dctx = zstandard.ZstdDecompressor()

    def step(d: Any, pending: bytes) -> tuple[bytes, bytes]:
        return d.decompress(pending[:_ZSTD_FEED]), pending[_ZSTD_FEED:]

    return _Frames(raw, "zstd", dctx.decompressobj, step, zstandard.ZstdError)


class _TarStream:
    """The uncompressed tar as tarfile reads it, hashed and counted on the way through."""

    def __init__(self, src: Readable) -> None:
        head = b""
        while len(head) < 4:
            more = src.read(4 - len(head))
            if not more:
                break
            head += more
        raw = _Plain(src, head)
        self._source: _Plain | _Frames
        if head.startswith(GZIP_MAGIC):
            self._source = _gzip(raw)
        elif head.startswith(ZSTD_MAGIC):
            self._source = _zstd(raw)
        else:
            self._source = raw
        self._buf = bytearray()
        self._eof = False
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buf) < size):
            data = self._source.chunk()
            if data:
                self._buf += data
            else:
                self._eof = True
        if size < 0 or size >= len(self._buf):
            out = bytes(self._buf)
            self._buf.clear()
        else:
            out = bytes(self._buf[:size])
            del self._buf[:size]  # cheap: bytearray drops a prefix without moving the rest
        self.sha256.update(out)
        self.size += len(out)
        return out

    def drain(self) -> None:
        """Read to the end: the diff_id covers the padding after the end-of-archive marker too."""
        while self.read(_CHUNK):
            pass


class _Header(tarfile.TarInfo):
    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except Exception as e:
            # tarfile ends the archive quietly at a zero block, but also at a missing,
            # short or corrupt header; only the first is a complete tar.
            if isinstance(tf, _LayerTar):
                tf.end = e
            raise


class _LayerTar(tarfile.TarFile):
    tarinfo = _Header
    members: list[tarfile.TarInfo]  # set by TarFile; typeshed leaves it out
    end: Exception | None = None


# -- writing members -------------------------------------------------------------------


def _unpack_into(src: Readable, root: bytes) -> UnpackedLayer:
    writer: _Writer | None = None
    try:
        stream = _TarStream(src)
        writer = _Writer(root)
        os.chmod(root, 0o755)
        with _LayerTar.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
            while True:
                member = tar.next()
                if member is None:
                    break
                tar.members.clear()  # a stream is read once; keep memory flat on big layers
                writer.add(tar, member)
            if not isinstance(tar.end, _EOF_HEADER):
                raise LayerError("the layer tar is truncated or corrupt: it ends without the end-of-archive marker",
                                 _CORRUPT_HINT)
        stream.drain()
        writer.finish()
    except LayerError:
        raise
    except (tarfile.TarError, EOFError) as e:
        raise LayerError(f"the layer is not a valid tar archive: {e}", _CORRUPT_HINT) from None
    except OSError as e:
        raise LayerError(f"cannot unpack the layer: {e}") from None
    except RecursionError:
        raise LayerError("the layer's directory tree is too deep to unpack", _CORRUPT_HINT) from None
    finally:
        if writer is not None:
            writer.close()
    return UnpackedLayer("sha256:" + stream.sha256.hexdigest(), stream.size, tuple(writer.warnings))


class _Writer:
    """Creates the members of one layer below ROOT, always relative to an open directory."""

    def __init__(self, root: bytes) -> None:
        self.root = root
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.owners = OwnerTable(root, writable=True)
        self.warnings: list[str] = []
        self._dir_mtimes: dict[bytes, int] = {}
        self._last: tuple[tuple[bytes, ...], int] | None = None  # the directory opened last

    def close(self) -> None:
        self._forget_last()
        os.close(self.root_fd)

    def add(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _clean(m.name, m.name)
        if not (0 <= m.uid <= _MAX_ID and 0 <= m.gid <= _MAX_ID):
            raise LayerError(f"layer member {m.name!r} has an impossible owner {m.uid}:{m.gid}", _CORRUPT_HINT)
        if not parts:
            if not m.isdir():
                raise LayerError(f"layer member {m.name!r} names the layer's root but is not a directory", _CORRUPT_HINT)
            self._root_dir(m)
            return
        name = parts[-1]
        if any(p.startswith(whiteout.META_PREFIX) for p in parts[:-1]) or (
                name.startswith(whiteout.META_PREFIX) and name != whiteout.OPAQUE_MARKER):
            # aufs' metadata (.wh..wh.plnk/) and our own side table: never taken from a tar.
            self.warnings.append(f"skipped {m.name}: names starting with .wh..wh. are reserved for layer metadata")
            return
        if m.ischr() or m.isblk():
            if m.ischr() and m.devmajor == 0 and m.devminor == 0:
                self._overlay_whiteout(m, parts)
            else:
                kind = "character" if m.ischr() else "block"
                self.warnings.append(f"skipped {m.name}: a {kind} device ({m.devmajor}:{m.devminor}) "
                                     "cannot be created without root")
            return
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise LayerError(f"layer member {m.name!r} has a type rootless cannot unpack ({m.type!r})", _CORRUPT_HINT)
        parent = self._open_dir(parts[:-1], m.name, create=True)
        rel = b"/".join(parts)
        try:
            if m.isreg():
                self._file(tar, m, parent, name, rel)
            elif m.isdir():
                self._dir(m, parent, name, rel)
            elif m.issym():
                self._symlink(m, parent, name, rel)
            elif m.islnk():
                self._hardlink(m, parent, name, rel)
            else:
                self._fifo(m, parent, name, rel)
        except OSError as e:
            raise LayerError(f"cannot unpack layer member {m.name!r}: {os.strerror(e.errno or errno.EIO)}") from None
        finally:
            os.close(parent)

    def finish(self) -> None:
        self.owners.flush(durable=True)
        # Directory times last: creating each child changed its parent's.
        for rel in sorted(self._dir_mtimes, key=lambda r: r.count(b"/") + bool(r), reverse=True):
            try:
                fd = self._open_dir(rel.split(b"/") if rel else [], rel.decode(errors="replace"), create=False)
            except LayerError:
                continue  # replaced by a non-directory later in the tar
            try:
                _set_mtime(fd, self._dir_mtimes[rel])
            finally:
                os.close(fd)

    # -- one member of each kind ---------------------------------------------------------

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, name: bytes, rel: bytes) -> None:
        self._clear(parent, name, rel)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            data = tar.extractfile(m)
            left = m.size
            while left > 0 and data is not None:
                buf = data.read(min(_CHUNK, left))
                if not buf:
                    break
                view = memoryview(buf)
                while view:
                    view = view[os.write(fd, view):]
                left -= len(buf)
            if left:
                raise LayerError(f"the layer tar is truncated inside {m.name!r}", _CORRUPT_HINT)
            os.fchmod(fd, (m.mode & 0o777) | 0o600)
            self._record(rel, stat.S_IFREG, Owner(m.uid, m.gid, m.mode & 0o7777))
            _set_mtime(fd, _mtime_ns(m))
        finally:
            os.close(fd)

    def _dir(self, m: tarfile.TarInfo, parent: int, name: bytes, rel: bytes) -> None:
        st = _lstat(parent, name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            # A directory after a directory merges, as with tar; anything else is replaced.
            self._clear(parent, name, rel)
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            os.fchmod(fd, (m.mode & 0o777) | 0o700)
        finally:
            os.close(fd)
        self._record(rel, stat.S_IFDIR, Owner(m.uid, m.gid, m.mode & 0o7777))
        self._dir_mtimes[rel] = _mtime_ns(m)

    def _root_dir(self, m: tarfile.TarInfo) -> None:
        os.fchmod(self.root_fd, (m.mode & 0o777) | 0o700)
        self._record(b"", stat.S_IFDIR, Owner(m.uid, m.gid, m.mode & 0o7777))
        self._dir_mtimes[b""] = _mtime_ns(m)

    def _symlink(self, m: tarfile.TarInfo, parent: int, name: bytes, rel: bytes) -> None:
        self._clear(parent, name, rel)
        # The target is stored, never followed: it is the container's business.
        os.symlink(os.fsencode(m.linkname), name, dir_fd=parent)
        self._record(rel, stat.S_IFLNK, Owner(m.uid, m.gid, 0o777))
        try:
            os.utime(name, ns=(_mtime_ns(m),) * 2, dir_fd=parent, follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            pass

    def _hardlink(self, m: tarfile.TarInfo, parent: int, name: bytes, rel: bytes) -> None:
        target = _clean(m.linkname, m.name)
        if not target:
            raise LayerError(f"layer member {m.name!r} is a hard link to the layer's root", _CORRUPT_HINT)
        if any(p.startswith(whiteout.META_PREFIX) for p in target):
            raise LayerError(f"layer member {m.name!r} is a hard link to {m.linkname!r}, a name reserved "
                             "for layer metadata", _CORRUPT_HINT)
        trel = b"/".join(target)
        if trel == rel:
            return
        tparent = self._open_dir(target[:-1], m.name, create=False)
        try:
            tst = _lstat(tparent, target[-1])
            if tst is None or stat.S_ISDIR(tst.st_mode):
                what = "a directory" if tst is not None else "missing"
                raise LayerError(f"layer member {m.name!r} is a hard link to {m.linkname!r}, which is {what}",
                                 "a hard link must name a file earlier in the same layer; " + _CORRUPT_HINT)
            self._clear(parent, name, rel)
            os.link(target[-1], name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tparent)
        # Files and directories carry their owner in the shared inode; a side-table entry is per name.
        owner = self.owners.get(self._path(trel), trel, tst.st_mode)
        if owner is not None:
            self._record(rel, stat.S_IFMT(tst.st_mode), owner)

    def _fifo(self, m: tarfile.TarInfo, parent: int, name: bytes, rel: bytes) -> None:
        self._clear(parent, name, rel)
        os.mkfifo(name, 0o600, dir_fd=parent)
        os.chmod(name, (m.mode & 0o777) | 0o600, dir_fd=parent)  # our new fifo: nothing to follow
        self._record(rel, stat.S_IFIFO, Owner(m.uid, m.gid, m.mode & 0o7777))
        try:
            os.utime(name, ns=(_mtime_ns(m),) * 2, dir_fd=parent, follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            pass

    def _overlay_whiteout(self, m: tarfile.TarInfo, parts: list[bytes]) -> None:
        """A 0:0 character device is overlayfs' whiteout: store it in the OCI form fusefs reads."""
        name = whiteout.WH_PREFIX + parts[-1]
        if len(name) > NAME_MAX:
            raise LayerError(f"layer member {m.name!r}: its whiteout name would be longer than {NAME_MAX} bytes",
                             _CORRUPT_HINT)
        parent = self._open_dir(parts[:-1], m.name, create=True)
        try:
            self._clear(parent, parts[-1], b"/".join(parts))
            self._clear(parent, name, b"/".join([*parts[:-1], name]))
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=parent))
        except OSError as e:
            raise LayerError(f"cannot unpack layer member {m.name!r}: {os.strerror(e.errno or errno.EIO)}") from None
        finally:
            os.close(parent)

    # -- helpers ---------------------------------------------------------------------------

    def _path(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def _record(self, rel: bytes, kind: int, owner: Owner) -> None:
        """Record the tar's owner and mode always, not only where they differ from the disk:
        the disk's owner reads differently in the user namespace fusefs runs in."""
        self.owners.set(self._path(rel), rel, kind, owner)

    def _open_dir(self, parts: list[bytes], member: str, *, create: bool) -> int:
        """Open the directory PARTS below the root without following a symlink; missing
        directories are created (owned by root, 0755, as docker does) where CREATE."""
        key = tuple(parts)
        if self._last is not None and self._last[0] == key:
            return os.dup(self._last[1])  # tars list a directory's files together
        fd = os.dup(self.root_fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise LayerError(f"layer member {member!r} refers to {'/'.join(_show(parts[:i + 1]))!r}, "
                                         "which is not in the layer", _CORRUPT_HINT) from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nfd, 0o755)
                    self._record(b"/".join(parts[:i + 1]), stat.S_IFDIR, Owner(0, 0, 0o755))
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise LayerError(f"layer member {member!r} goes through {'/'.join(_show(parts[:i + 1]))!r}, "
                                     "which is a symlink or not a directory",
                                     "a layer may not create files through a symlink or below a file; "
                                     + _CORRUPT_HINT) from None
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        self._forget_last()
        self._last = (key, os.dup(fd))
        return fd

    def _forget_last(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def _clear(self, parent: int, name: bytes, rel: bytes) -> None:
        """Remove what NAME is now (a later member replaces an earlier one), without following it."""
        st = _lstat(parent, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget_last()  # it may be this directory or one below it
            shutil.rmtree(os.fsdecode(name), dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        self.owners.forget(rel, tree=True)


def _clean(name: str, member: str) -> list[bytes]:
    """NAME's components below the layer root: a leading '/' dropped and '..' resolved, as docker does."""
    out: list[bytes] = []
    for comp in os.fsencode(name).split(b"/"):
        if comp in (b"", b"."):
            continue
        if comp == b"..":
            if not out:
                link = f" (a link to {name!r})" if name != member else ""
                raise LayerError(f"layer member {member!r}{link} points outside the layer",
                                 "the image is hostile or corrupt; it was not unpacked")
            out.pop()
            continue
        if len(comp) > NAME_MAX:
            raise LayerError(f"layer member {member[:80]!r}...: a name is longer than {NAME_MAX} bytes", _CORRUPT_HINT)
        out.append(comp)
    if len(out) > MAX_DEPTH or sum(map(len, out)) + len(out) > PATH_MAX:
        raise LayerError(f"layer member {member[:80]!r}...: its path is deeper than {MAX_DEPTH} directories "
                         f"or longer than {PATH_MAX} bytes", _CORRUPT_HINT)
    return out


def _show(parts: list[bytes]) -> list[str]:
    return [p.decode(errors="replace") for p in parts]


def _lstat(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _mtime_ns(m: tarfile.TarInfo) -> int:
    return int(m.mtime * 1_000_000_000) if isinstance(m.mtime, float) else int(m.mtime) * 1_000_000_000


def _set_mtime(fd: int, ns: int) -> None:
    try:
        os.utime(fd, ns=(ns, ns))
    except (OSError, OverflowError, ValueError):
        pass  # a time the file system cannot hold is not worth failing the layer over


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: str) -> None:
    """Make the whole staged tree durable with one syncfs(2), not an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (AttributeError, OSError):
        os.sync()
    finally:
        os.close(fd)
