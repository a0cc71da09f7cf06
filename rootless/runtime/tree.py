"""File trees to tar streams and back: one writer and one extractor over any tree.

A tree is a host directory, the inside of a running container, or a container's layers
(``rootfs``); ``export``, ``commit`` and ``cp`` all go through the same two functions,
so they agree on names, owners, modes, times, xattrs and hard links.  Paths inside a
tree are *rel* paths (``b"etc/passwd"``, the root is ``b""``).

Extraction never follows a symlink it meets below the destination: each name is made
relative to an open directory reached with ``O_NOFOLLOW``, so a tree that holds a link
to ``/`` cannot make a copy land outside it.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Protocol

from fusefs.metadata import is_private_xattr

from ..errors import RootlessError

_CHUNK = 1 << 20
MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: xattrs a tar may carry and an unprivileged extractor can never set: skipped quietly.
_IGNORED_SET_ERRORS = (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL)


class CopyError(RootlessError):
    """A copy that cannot be done as asked: a missing path, a directory onto a file..."""


@dataclass(frozen=True)
class Meta:
    """What a tar header says of one object: type, recorded owner and mode, size, time."""

    kind: int                # S_IFMT bits
    perm: int                # permission bits with setuid, setgid and sticky
    uid: int
    gid: int
    size: int = 0
    mtime_ns: int = 0
    nlink: int = 1
    key: object = None       # shared by the names of one hard-linked file; None: not linkable
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR


class Tree(Protocol):
    """A tree to read: nothing is ever followed, a symlink is an object of its own."""

    def meta(self, rel: bytes) -> Meta | None:
        """REL's attributes, or None where there is nothing (or a non-directory on the way)."""
        ...

    def names(self, rel: bytes) -> list[bytes]: ...

    def readlink(self, rel: bytes) -> bytes: ...

    def open(self, rel: bytes) -> BinaryIO: ...

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]: ...


class Sink(Protocol):
    """A tree to write.  Every method takes a rel path whose parent exists and is a directory."""

    def kind(self, rel: bytes) -> int | None:
        """S_IFMT of REL, not following a symlink; None where there is nothing."""
        ...

    def remove(self, rel: bytes) -> None:
        """Remove REL, a whole directory tree included."""
        ...

    def mkdir(self, rel: bytes) -> None: ...

    def write(self, rel: bytes, data: IO[bytes], size: int) -> None: ...

    def symlink(self, rel: bytes, target: bytes) -> None: ...

    def link(self, rel: bytes, target: bytes) -> None: ...

    def mkfifo(self, rel: bytes) -> None: ...

    def settle(self, rel: bytes, meta: Meta, owner: tuple[int, int] | None, xattrs: dict[bytes, bytes]) -> None:
        """Give REL its final owner (None: as created), mode, time and xattrs."""
        ...


def join(dirrel: bytes, name: bytes) -> bytes:
    return dirrel + b"/" + name if dirrel else name


def split(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p and p != b"."]


def resolve(tree: Tree, path: bytes, *, follow_last: bool) -> bytes:
    """PATH (absolute or relative to the root) as a rel path of TREE, with the symlinks on
    the way followed as the kernel would in a chroot: ``..`` and absolute targets never
    leave the root.  The last component is followed only with FOLLOW_LAST.  Components
    that do not exist are kept as they are."""
    parts = deque(split(path))
    resolved: list[bytes] = []
    links = 0
    while parts:
        name = parts.popleft()
        if name == b"..":
            if resolved:
                resolved.pop()
            continue
        rel = b"/".join([*resolved, name])
        meta = tree.meta(rel)
        if meta is not None and meta.kind == stat.S_IFLNK and (parts or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(path))
            target = tree.readlink(rel)
            if target.startswith(b"/"):
                resolved = []
            parts.extendleft(reversed(split(target)))
            continue
        resolved.append(name)
    return b"/".join(resolved)


# -- writing a tar --------------------------------------------------------------------------------


class _Exact(io.RawIOBase):
    """SIZE bytes of F: a file that shrank while it was read (a running container) is padded with
    zeros, and one that grew is cut, so the tar stays well formed."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        want = min(len(view), self._left)
        if want <= 0:
            return 0
        data = self._f.read(want) or b"\0" * want
        view[:len(data)] = data
        self._left -= len(data)
        return len(data)


class TarWriter:
    """Members into a PAX tar on OUT (a file or a pipe): names and owners as given, xattrs as
    ``SCHILY.xattr.*`` records, the later names of a hard-linked file as links to the first."""

    def __init__(self, out: BinaryIO) -> None:
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self._links: dict[object, str] = {}
        self.data_bytes = 0
        self.warnings: list[str] = []

    def close(self) -> None:
        self.tar.close()

    def add(self, tree: Tree, rel: bytes, name: bytes, meta: Meta) -> None:
        """One member NAME for REL of TREE, whose attributes are META."""
        info = tarfile.TarInfo(os.fsdecode(name))
        info.mode = meta.perm
        info.uid, info.gid = meta.uid, meta.gid
        info.uname = info.gname = ""
        info.mtime = meta.mtime_ns // 1_000_000_000
        kind = meta.kind
        if kind == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
        elif kind == stat.S_IFREG:
            first = self._links.get(meta.key) if meta.key is not None and meta.nlink > 1 else None
            if first is not None:
                info.type, info.linkname = tarfile.LNKTYPE, first
            else:
                if meta.key is not None and meta.nlink > 1:
                    self._links[meta.key] = info.name
                info.type, info.size = tarfile.REGTYPE, meta.size
        elif kind == stat.S_IFLNK:
            info.type, info.linkname = tarfile.SYMTYPE, os.fsdecode(tree.readlink(rel))
        elif kind == stat.S_IFIFO:
            info.type = tarfile.FIFOTYPE
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            info.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(meta.rdev), os.minor(meta.rdev)
        else:
            self.warnings.append(f"skipped /{os.fsdecode(rel)}: a socket cannot be archived")
            return
        if info.type != tarfile.LNKTYPE:
            xattrs = tree.xattrs(rel)
            if xattrs:
                info.pax_headers = {"SCHILY.xattr." + k.decode("utf-8", "surrogateescape"):
                                    v.decode("utf-8", "surrogateescape") for k, v in sorted(xattrs.items())}
        if info.type == tarfile.REGTYPE:
            with tree.open(rel) as f:
                self.tar.addfile(info, io.BufferedReader(_Exact(f, meta.size), _CHUNK))
            self.data_bytes += meta.size
        else:
            self.tar.addfile(info)

    def add_tree(self, tree: Tree, rel: bytes, name: bytes, meta: Meta | None = None) -> None:
        """REL and, for a directory, everything below it, as NAME and below; parents before children."""
        if meta is None:
            meta = tree.meta(rel)
            if meta is None:
                return   # gone meanwhile (a running container)
        self.add(tree, rel, name, meta)
        if meta.is_dir:
            self.add_children(tree, rel, name)

    def add_children(self, tree: Tree, rel: bytes, name: bytes) -> None:
        for child in tree.names(rel):
            self.add_tree(tree, join(rel, child), join(name, child))

    def add_marker(self, name: bytes) -> None:
        """An empty file that only says something by its name: a whiteout or an opaque marker."""
        info = tarfile.TarInfo(os.fsdecode(name))
        info.mode = 0o644
        info.uname = info.gname = ""
        self.tar.addfile(info)


# -- extracting a tar -----------------------------------------------------------------------------


@dataclass
class Extract:
    """How to extract: where, under which names, with which owners.

    DEST is the (existing) directory of the sink the members go into.  RENAME maps the
    archive's top name to another one, or with None drops it so that what is below it
    lands in DEST itself (``cp dir/. dest``).  KEEP_OWNERS takes the archive's uid:gid,
    else DEFAULT_OWNER (None: whoever the sink creates as).
    """

    dest: bytes = b""
    rename: tuple[bytes, bytes | None] | None = None
    keep_owners: bool = False
    default_owner: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)
    data_bytes: int = 0


def extract(src: BinaryIO, sink: Sink, how: Extract) -> None:
    """Unpack the tar read from SRC into SINK as HOW says; a member that replaces another
    removes it first, except a directory over a directory, which merges."""
    try:
        tar = tarfile.open(fileobj=src, mode="r|", errorlevel=2)
    except tarfile.ReadError as e:
        raise CopyError(f"the archive is not a tar archive: {e}") from None
    known_dirs: set[bytes] = {how.dest}
    settle_later: list[tuple[bytes, Meta, tuple[int, int] | None, dict[bytes, bytes]]] = []
    try:
        for m in tar:
            name = _member_name(m.name, how)
            if name is None:
                continue
            rel = join(how.dest, name)
            _make_parents(sink, rel, how, known_dirs)
            meta = Meta(_kind(m), m.mode & 0o7777, m.uid, m.gid, m.size, int(m.mtime * 1_000_000_000),
                        rdev=os.makedev(m.devmajor, m.devminor) if (m.ischr() or m.isblk()) else 0)
            if m.ischr() or m.isblk():
                how.warnings.append(f"skipped {m.name}: a device cannot be created without root")
                continue
            existing = sink.kind(rel)
            if existing is not None and not (existing == stat.S_IFDIR and m.isdir()):
                sink.remove(rel)
                existing = None
            owner = (m.uid, m.gid) if how.keep_owners else how.default_owner
            xattrs = {k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
                      for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            if m.isdir():
                if existing is None:
                    sink.mkdir(rel)
                known_dirs.add(rel)
                settle_later.append((rel, meta, owner, xattrs))   # children change its time
                continue
            if m.isreg():
                f = tar.extractfile(m)
                assert f is not None
                sink.write(rel, f, m.size)
                how.data_bytes += m.size
            elif m.issym():
                sink.symlink(rel, os.fsencode(m.linkname))
            elif m.islnk():
                target = _member_name(m.linkname, how)
                if target is None:
                    raise CopyError(f"the archive's hard link {m.name} points outside what is copied ({m.linkname})")
                sink.link(rel, join(how.dest, target))
                continue
            elif m.isfifo():
                sink.mkfifo(rel)
            else:
                how.warnings.append(f"skipped {m.name}: a member of type {m.type!r} cannot be extracted")
                continue
            sink.settle(rel, meta, owner, xattrs)
    except tarfile.TarError as e:
        raise CopyError(f"the archive is damaged: {e}") from None
    for rel, meta, owner, xattrs in sorted(settle_later, key=lambda item: item[0].count(b"/"), reverse=True):
        sink.settle(rel, meta, owner, xattrs)


def _kind(m: tarfile.TarInfo) -> int:
    if m.isdir():
        return stat.S_IFDIR
    if m.issym():
        return stat.S_IFLNK
    if m.isfifo():
        return stat.S_IFIFO
    if m.ischr():
        return stat.S_IFCHR
    if m.isblk():
        return stat.S_IFBLK
    return stat.S_IFREG


def _member_name(raw: str, how: Extract) -> bytes | None:
    """The member's rel path below DEST after HOW.rename; None for one to skip."""
    parts = split(os.fsencode(raw))
    if b".." in parts:
        raise CopyError(f"the archive's member {raw!r} leads out of the destination", "refusing it")
    if not parts:
        return None   # "./": the destination itself
    if how.rename is not None:
        top, new = how.rename
        if parts[0] != top:
            return None
        parts = parts[1:] if new is None else [*split(new), *parts[1:]]
        if not parts:
            return None
    return b"/".join(parts)


def _make_parents(sink: Sink, rel: bytes, how: Extract, known: set[bytes]) -> None:
    """Create the missing directories above REL (root-owned 0755, as docker does)."""
    parts = rel.split(b"/")[:-1]
    missing = []
    for i in range(len(parts), 0, -1):
        parent = b"/".join(parts[:i])
        if parent in known:
            break
        kind = sink.kind(parent)
        if kind == stat.S_IFDIR:
            known.add(parent)
            break
        if kind is not None:
            raise CopyError(f"cannot extract /{os.fsdecode(rel)}: /{os.fsdecode(parent)} is not a directory",
                            "the archive lists no directory there to replace it")
        missing.append(parent)
    for parent in reversed(missing):
        sink.mkdir(parent)
        sink.settle(parent, Meta(stat.S_IFDIR, 0o755, 0, 0), how.default_owner, {})
        known.add(parent)


# -- a directory on disk --------------------------------------------------------------------------


class DiskTree:
    """The directory ROOT as a tree (a host path, or ``/`` inside a running container): read
    with lstat, written relative to directories opened without following symlinks.

    OWNERS: set owners when settling (in a user namespace where the ids exist); a failure
    to is a warning.  Without, the files stay the extracting user's, as docker's client does.
    """

    def __init__(self, root: bytes, *, owners: bool = False) -> None:
        self.root = root.rstrip(b"/") or b"/"
        self.owners = owners
        self.warnings: list[str] = []

    def path(self, rel: bytes) -> bytes:
        if not rel:
            return self.root
        return (self.root if self.root != b"/" else b"") + b"/" + rel

    # -- reading ----------------------------------------------------------------------------

    def meta(self, rel: bytes) -> Meta | None:
        try:
            st = os.lstat(self.path(rel))
        except (FileNotFoundError, NotADirectoryError):
            return None
        key = None if stat.S_ISDIR(st.st_mode) else (st.st_dev, st.st_ino)
        return Meta(stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_size if stat.S_ISREG(st.st_mode) else 0, st.st_mtime_ns, st.st_nlink, key, st.st_rdev)

    def names(self, rel: bytes) -> list[bytes]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def readlink(self, rel: bytes) -> bytes:
        return os.readlink(self.path(rel))

    def open(self, rel: bytes) -> BinaryIO:
        fd = os.open(self.path(rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        return os.fdopen(fd, "rb", buffering=0)  # type: ignore[return-value]

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        path = self.path(rel)
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return out
        for name in names:
            key = os.fsencode(name)
            if is_private_xattr(key):
                continue
            try:
                out[key] = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
        return out

    # -- writing ----------------------------------------------------------------------------

    def _parent(self, rel: bytes) -> tuple[int, bytes]:
        """An open descriptor of REL's directory, reached without following a symlink below the root."""
        parts = rel.split(b"/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def kind(self, rel: bytes) -> int | None:
        if not rel:
            return stat.S_IFDIR
        fd, name = self._parent(rel)
        try:
            return stat.S_IFMT(os.lstat(name, dir_fd=fd).st_mode)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def remove(self, rel: bytes) -> None:
        fd, name = self._parent(rel)
        try:
            if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                _make_writable(fd, name)
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def mkdir(self, rel: bytes) -> None:
        fd, name = self._parent(rel)
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        finally:
            os.close(fd)

    def write(self, rel: bytes, data: IO[bytes], size: int) -> None:
        fd, name = self._parent(rel)
        try:
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        finally:
            os.close(fd)
        with os.fdopen(out, "wb") as f:
            shutil.copyfileobj(data, f, _CHUNK)

    def symlink(self, rel: bytes, target: bytes) -> None:
        fd, name = self._parent(rel)
        try:
            os.symlink(target, name, dir_fd=fd)
        finally:
            os.close(fd)

    def link(self, rel: bytes, target: bytes) -> None:
        fd, name = self._parent(rel)
        try:
            tfd, tname = self._parent(target)
            try:
                os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(tfd)
        finally:
            os.close(fd)

    def mkfifo(self, rel: bytes) -> None:
        fd, name = self._parent(rel)
        try:
            os.mkfifo(name, 0o600, dir_fd=fd)
        finally:
            os.close(fd)

    def settle(self, rel: bytes, meta: Meta, owner: tuple[int, int] | None, xattrs: dict[bytes, bytes]) -> None:
        if not rel:
            fd, name = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), b"."
        else:
            fd, name = self._parent(rel)
        try:
            if meta.kind == stat.S_IFLNK:
                if owner is not None and self.owners:
                    self._chown(lambda: os.chown(name, *owner, dir_fd=fd, follow_symlinks=False), rel, owner)
                os.utime(name, ns=(meta.mtime_ns, meta.mtime_ns), dir_fd=fd, follow_symlinks=False)
                return
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            obj = os.open(name, flags, dir_fd=fd)
            try:
                if owner is not None and self.owners:
                    self._chown(lambda: os.fchown(obj, *owner), rel, owner)
                for key, value in xattrs.items():
                    try:
                        os.setxattr(obj, key, value)
                    except OSError as e:
                        if e.errno not in _IGNORED_SET_ERRORS:
                            raise
                os.fchmod(obj, meta.perm)
                os.utime(obj, ns=(meta.mtime_ns, meta.mtime_ns))
            finally:
                os.close(obj)
        finally:
            os.close(fd)

    def _chown(self, do: Callable[[], None], rel: bytes, owner: tuple[int, int]) -> None:
        try:
            do()
        except OSError as e:
            if e.errno == errno.EPERM:
                return   # on the host, an unprivileged user keeps the files: as docker's client without root
            if e.errno != errno.EINVAL:
                raise
            self.warnings.append(f"/{os.fsdecode(rel)}: the owner {owner[0]}:{owner[1]} does not exist in the "
                                 "container (no subordinate id for it); it stays root's")


def _make_writable(dir_fd: int, name: bytes) -> None:
    """A tree with 0555 directories cannot be emptied by its unprivileged owner: open them up first."""
    st = os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        return
    if st.st_mode & 0o700 != 0o700:
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            subdirs = [os.fsencode(e.name) for e in it if e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            _make_writable(fd, sub)
    finally:
        os.close(fd)


def walk(tree: Tree, rel: bytes = b"") -> Iterator[tuple[bytes, Meta]]:
    """Every object below REL (REL excluded), parents before children, names sorted."""
    for name in tree.names(rel):
        child = join(rel, name)
        meta = tree.meta(child)
        if meta is None:
            continue
        yield child, meta
        if meta.is_dir:
            yield from walk(tree, child)
