"""A container's file system read, and written, straight from its layers, without mounting it.

fusefs' ``Overlay`` is used in-process: the image's layers (directories or layer tars)
under the container's upper layer give the merged tree ``export`` and ``cp`` read, the
image's layers alone tell what the container changed, and for ``cp`` into a stopped
container the same union with its writable upper layer takes the new files (copy-up,
whiteouts and recorded owners as fusefs does them when mounted).  Run it where fusefs
runs: as root of a user namespace with the container's ids (``enter.call``).

Mount targets.  To bind /etc/hosts, /etc/hostname and /etc/resolv.conf the runtime
creates them (empty) in the upper layer where the image lacks them or has a symlink
there, and creates /proc, /dev, /sys (and /etc) where the image lacks them.  Docker
keeps these in an init layer that ``diff``, ``commit`` and ``export`` never show; here
they are told apart by what only the runtime can leave: an empty regular file at one of
those paths over an image that has no regular file there (the bind mount covers it for
as long as the container runs, so the container cannot have written it), and an empty,
root-owned directory at one of those paths the image lacks, or one copied up with the
image's owner and mode and holding nothing but such files.  Those are hidden: the view
shows what the image has there, or nothing.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, BinaryIO

from fusefs import whiteout
from fusefs.metadata import SIDE_TABLE
from fusefs.nodes import Caller, Node
from fusefs.overlay import Overlay

from .tree import CopyError, Meta, join

if TYPE_CHECKING:
    from ..image.store import Store
    from .containers import Container

MOUNT_FILES = (b"etc/hosts", b"etc/hostname", b"etc/resolv.conf")
MOUNT_DIRS = (b"proc", b"dev", b"sys", b"etc")
_ROOT = Caller(0, 0)


@dataclass(frozen=True)
class LayerPaths:
    """Where a container's layers are: its upper and work directories, the image's layers top first."""

    upper: bytes
    work: bytes
    lowers: tuple[bytes, ...]

    @classmethod
    def of(cls, container: Container, store: Store) -> LayerPaths:
        """The layers of CONTAINER: its image's as the container record lists them (bottom first)."""
        diff_ids = container.record.get("Layers") or []
        lowers = tuple(os.fsencode(str(store.layer_path(d))) for d in reversed(diff_ids))
        return cls(os.fsencode(str(container.upper)), os.fsencode(str(container.work)), lowers)


def lookup(ov: Overlay, rel: bytes) -> Node | None:
    """The node at REL of the union OV, or None where nothing is there."""
    node = ov.root
    for part in rel.split(b"/") if rel else []:
        try:
            node = ov.lookup(node, part)
        except (FileNotFoundError, NotADirectoryError):
            return None
    return node


def node_meta(ov: Overlay, node: Node) -> Meta:
    a = ov.getattr(node)
    kind = stat.S_IFMT(a.mode)
    return Meta(kind, stat.S_IMODE(a.mode), a.uid, a.gid, a.size if kind == stat.S_IFREG else 0, a.mtime_ns,
                a.nlink, None if kind == stat.S_IFDIR else (id(ov), a.ino), a.rdev)


class _NodeReader(io.RawIOBase):
    """An open file of a union, read at increasing offsets."""

    def __init__(self, ov: Overlay, node: Node) -> None:
        self._ov = ov
        self._fh = ov.open(node, os.O_RDONLY)
        self._off = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        data = self._ov.read(self._fh, self._off, len(view))
        view[:len(data)] = data
        self._off += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._ov.release(self._fh)
        super().close()


class UnionTree:
    """One union (``Overlay``) as a read-only ``tree.Tree``."""

    def __init__(self, ov: Overlay) -> None:
        self.ov = ov

    def node(self, rel: bytes) -> Node | None:
        return lookup(self.ov, rel)

    def meta(self, rel: bytes) -> Meta | None:
        node = self.node(rel)
        return None if node is None else node_meta(self.ov, node)

    def names(self, rel: bytes) -> list[bytes]:
        node = self.node(rel)
        if node is None or not node.is_dir:
            return []
        return sorted(name for name, _ in self.ov.listdir(node))

    def readlink(self, rel: bytes) -> bytes:
        return self.ov.readlink(self._need(rel))

    def open(self, rel: bytes) -> BinaryIO:
        return _NodeReader(self.ov, self._need(rel))  # type: ignore[return-value]

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        node = self._need(rel)
        out: dict[bytes, bytes] = {}
        try:
            names = self.ov.listxattr(node)
        except OSError:
            return out
        for name in names:
            try:
                out[name] = self.ov.getxattr(node, name)
            except OSError:
                continue
        return out

    def _need(self, rel: bytes) -> Node:
        node = self.node(rel)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(b"/" + rel))
        return node


class ContainerFS:
    """The container's tree as its layers hold it, the runtime's mount targets hidden (a ``tree.Tree``).

    ``image`` is the tree of the image alone; ``hidden`` the rel paths of the mount targets
    the upper layer holds.  Close it when done: the layer tars stay open until then.
    """

    def __init__(self, paths: LayerPaths) -> None:
        self.paths = paths
        self.merged = UnionTree(Overlay([paths.upper, *paths.lowers]))
        self.image: UnionTree | None = UnionTree(Overlay(list(paths.lowers))) if paths.lowers else None
        self.hidden = self._mount_targets()

    def close(self) -> None:
        self.merged.ov.close()
        if self.image is not None:
            self.image.ov.close()

    def __enter__(self) -> ContainerFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image_meta(self, rel: bytes) -> Meta | None:
        return self.image.meta(rel) if self.image is not None else None

    def is_hidden(self, rel: bytes) -> bool:
        return any(rel == h or rel.startswith(h + b"/") for h in self.hidden)

    def _source(self, rel: bytes) -> UnionTree | None:
        return self.image if self.is_hidden(rel) else self.merged

    # -- tree.Tree -----------------------------------------------------------------------------

    def meta(self, rel: bytes) -> Meta | None:
        src = self._source(rel)
        return None if src is None else src.meta(rel)

    def names(self, rel: bytes) -> list[bytes]:
        src = self._source(rel)
        if src is None:
            return []
        names = src.names(rel)
        if src is self.merged and self.hidden:
            names = [n for n in names if not (join(rel, n) in self.hidden and self.image_meta(join(rel, n)) is None)]
        return names

    def readlink(self, rel: bytes) -> bytes:
        return self._need(rel).readlink(rel)

    def open(self, rel: bytes) -> BinaryIO:
        return self._need(rel).open(rel)

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        return self._need(rel).xattrs(rel)

    def _need(self, rel: bytes) -> UnionTree:
        src = self._source(rel)
        if src is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(b"/" + rel))
        return src

    # -- the runtime's mount targets -------------------------------------------------------------

    def _upper_lstat(self, rel: bytes) -> os.stat_result | None:
        try:
            return os.lstat(self.paths.upper + b"/" + rel)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _mount_targets(self) -> set[bytes]:
        hidden: set[bytes] = set()
        for rel in MOUNT_FILES:
            st = self._upper_lstat(rel)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != 0:
                continue
            below = self.image_meta(rel)
            if below is None or below.kind != stat.S_IFREG:
                hidden.add(rel)
        for rel in MOUNT_DIRS:
            st = self._upper_lstat(rel)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            path = self.paths.upper + b"/" + rel
            if whiteout.has_opaque_xattr(path):
                continue
            left = [n for n in os.listdir(path) if join(rel, n) not in hidden and n != SIDE_TABLE]
            if left:
                continue   # whiteouts and opaque markers are changes too
            mine = self.merged.meta(rel)
            below = self.image_meta(rel)
            if mine is None:
                continue
            if below is None:
                if (mine.uid, mine.gid) == (0, 0):
                    hidden.add(rel)
            elif below.is_dir and (below.perm, below.uid, below.gid) == (mine.perm, mine.uid, mine.gid):
                hidden.add(rel)
        return hidden


class LayerSink:
    """A stopped container's union with its writable layer, as a ``tree.Sink``: what is written
    goes to the upper layer as fusefs would put it there (copy-up, whiteouts, recorded owners)."""

    def __init__(self, paths: LayerPaths) -> None:
        self.ov = Overlay(list(paths.lowers), paths.upper, paths.work)
        self.warnings: list[str] = []

    def close(self) -> None:
        self.ov.close()

    def _parent(self, rel: bytes) -> tuple[Node, bytes]:
        dirrel, _, name = rel.rpartition(b"/")
        node = lookup(self.ov, dirrel)
        if node is None or not node.is_dir:
            raise CopyError(f"/{os.fsdecode(dirrel)} is not a directory in the container")
        return node, name

    def kind(self, rel: bytes) -> int | None:
        node = lookup(self.ov, rel)
        return None if node is None else node.kind

    def remove(self, rel: bytes) -> None:
        parent, name = self._parent(rel)
        node = self.ov.lookup(parent, name)
        if node.is_dir:
            for child, _ in self.ov.listdir(node):
                self.remove(join(rel, child))
            self.ov.rmdir(parent, name)
        else:
            self.ov.unlink(parent, name)

    def mkdir(self, rel: bytes) -> None:
        parent, name = self._parent(rel)
        self.ov.mkdir(parent, name, 0o755, _ROOT)

    def write(self, rel: bytes, data: IO[bytes], size: int) -> None:
        parent, name = self._parent(rel)
        _node, fh = self.ov.create(parent, name, 0o644, os.O_WRONLY, _ROOT)
        try:
            off = 0
            while chunk := data.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    n = self.ov.write(fh, off, bytes(view))
                    view = view[n:]
                    off += n
        finally:
            self.ov.release(fh)

    def symlink(self, rel: bytes, target: bytes) -> None:
        parent, name = self._parent(rel)
        self.ov.symlink(parent, name, target, _ROOT)

    def link(self, rel: bytes, target: bytes) -> None:
        parent, name = self._parent(rel)
        node = lookup(self.ov, target)
        if node is None:
            raise CopyError(f"cannot link /{os.fsdecode(rel)} to /{os.fsdecode(target)}: it does not exist")
        self.ov.link(node, parent, name)

    def mkfifo(self, rel: bytes) -> None:
        parent, name = self._parent(rel)
        self.ov.mknod(parent, name, stat.S_IFIFO | 0o644, 0, _ROOT)

    def settle(self, rel: bytes, meta: Meta, owner: tuple[int, int] | None, xattrs: dict[bytes, bytes]) -> None:
        node = lookup(self.ov, rel)
        if node is None:
            return
        uid, gid = owner if owner is not None else (None, None)
        for key, value in xattrs.items():
            try:
                self.ov.setxattr(node, key, value)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
        self.ov.setattr(node, uid=uid, gid=gid, mode=None if meta.kind == stat.S_IFLNK else meta.perm,
                        atime_ns=meta.mtime_ns, mtime_ns=meta.mtime_ns)
