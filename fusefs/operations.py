"""The pyfuse3 adapter: the only place where errors become errnos for the kernel.

Every handler answers ``FUSEError(errno)``; an unexpected exception is logged and answered
with EIO so that one bad request never takes the mount down.
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import Any, Awaitable, Callable, Sequence, TypeVar

import pyfuse3

from .idspace import IdSpace
from .mapping import OwnerMap
from .metadata import Owner
from .overlay import RENAME_EXCHANGE, Attr, Caller, Node, Overlay

log = logging.getLogger(__name__)

#: Lower layers never change and every change to upper passes through us, so the kernel
#: may keep what we tell it for as long as it likes (fuse-overlayfs does the same).
TIMEOUT = 86400.0
#: ENOENT answers are cached too (a PATH search asks the same misses over and over).
NEGATIVE_TIMEOUT = 86400.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def fuse_errors(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("fusefs: unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper  # type: ignore[return-value]


def entry_from(a: Attr, ids: IdSpace, owners: OwnerMap = OwnerMap()) -> pyfuse3.EntryAttributes:
    """The kernel's view of A: its recorded owner as OWNERS maps it to host ids, then as IDS can show it.

    That order because each step answers to a different namespace.  OWNERS (``-o uidmapping=``)
    turns the ids the layers record, the container's, into the ids of the namespace the mount
    serves, where a container id it does not map becomes 65534 as the kernel would show it.
    IDS then fits the result to the namespace the daemon runs in, whose kernel takes only ids
    it maps, so it looks at host ids, never at the container's: 0 for one it cannot take.
    Ids the kernel sends go back through OWNERS alone (``Operations._caller``, ``setattr``):
    a 0 there is a real 0, and ``rename`` carries an owner IDS hid over a rewrite.
    """
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = TIMEOUT
    e.attr_timeout = TIMEOUT
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = ids.uid(owners.host_uid(a.uid))
    e.st_gid = ids.gid(owners.host_gid(a.gid))
    e.st_rdev = a.rdev
    e.st_size = a.size
    e.st_blksize = a.blksize
    e.st_blocks = a.blocks
    e.st_atime_ns = a.atime_ns
    e.st_mtime_ns = a.mtime_ns
    e.st_ctime_ns = a.ctime_ns
    return e


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Overlay, ids: IdSpace | None = None, owners: OwnerMap | None = None) -> None:
        """IDS: the owners the kernel can take; by default those of the namespace serving the mount.
        OWNERS: the uidmapping/gidmapping between the ids recorded in the layers and the kernel's."""
        super().__init__()
        self.fs = fs
        self.ids = ids if ids is not None else IdSpace.of_process()
        self.owners = owners if owners is not None else OwnerMap()

    def _caller(self, ctx: pyfuse3.RequestContext) -> Caller:
        """The creator of a new file, as the layers record it: EINVAL where the mapping has no place for it."""
        return Caller(self.owners.container_uid(ctx.uid), self.owners.container_gid(ctx.gid))

    def _shown(self, owner: Owner) -> tuple[int, int]:
        return (self.ids.uid(self.owners.host_uid(owner.uid)), self.ids.gid(self.owners.host_gid(owner.gid)))

    def _recorded_as(self, uid: int, gid: int) -> tuple[int | None, int | None]:
        """What a chown to the shown UID:GID would record; None for an id it would refuse."""
        def back(convert: Callable[[int], int], value: int) -> int | None:
            try:
                return convert(value)
            except OSError:
                return None
        return back(self.owners.container_uid, uid), back(self.owners.container_gid, gid)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        e = node.cached
        if e is not None:
            return e  # type: ignore[return-value]
        e = entry_from(self.fs.getattr(node), self.ids, self.owners)
        if node.layer != 0 or self.fs.upper is None:
            node.cached = e  # lower layers never change: what we said stays true
        return e

    def _ref_entry(self, node: Node) -> pyfuse3.EntryAttributes:
        e = self._entry(node)
        self.fs.ref(node)
        return e

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        try:
            node = self.fs.lookup(self.fs.get(parent_inode), name)
        except FileNotFoundError:
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0
            e.entry_timeout = NEGATIVE_TIMEOUT
            return e
        return self._ref_entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            try:
                self.fs.forget(ino, n)
            except Exception:
                log.exception("fusefs: forget(%d) failed", ino)

    @fuse_errors
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.get(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        node = self.fs.get(inode)
        self.fs.setattr(
            node,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=self.owners.container_uid(attr.st_uid) if fields.update_uid else None,
            gid=self.owners.container_gid(attr.st_gid) if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            fh=fh,
        )
        return self._entry(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        return self.fs.readlink(self.fs.get(inode))

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._ref_entry(self.fs.mknod(self.fs.get(parent_inode), name, mode, rdev, self._caller(ctx)))

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._ref_entry(self.fs.mkdir(self.fs.get(parent_inode), name, mode, self._caller(ctx)))

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.fs.unlink(self.fs.get(parent_inode), name)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        self.fs.rmdir(self.fs.get(parent_inode), name)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._ref_entry(self.fs.symlink(self.fs.get(parent_inode), name, target, self._caller(ctx)))

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: Any) -> None:
        new_parent = self.fs.get(parent_inode_new)
        replaced = None if flags & RENAME_EXCHANGE else self._hidden_owner(new_parent, name_new)
        self.fs.rename(self.fs.get(parent_inode_old), name_old, new_parent, name_new, flags)
        if replaced is not None:
            self._carry_owner(self.fs.lookup(new_parent, name_new), replaced)

    def _hidden_owner(self, parent: Node, name: bytes) -> Owner | None:
        """The owner of PARENT/NAME where the kernel was shown another in its place (0, or the
        overflow id of a mapping), so that a copy of what it showed would record another; else None."""
        try:
            node = self.fs.lookup(parent, name)
        except OSError:
            return None
        owner = self.fs.owner_of(node)
        self.fs.drop_if_unused(node)
        if self._recorded_as(*self._shown(owner)) == (owner.uid, owner.gid):
            return None  # a copy of what the kernel was shown records the same owner
        return owner

    def _carry_owner(self, node: Node, replaced: Owner) -> None:
        # A file rewritten as a new file renamed over the old one (useradd's /etc/shadow, sed -i)
        # gets the owner the program read and copied: 0 where the old one's could not be shown.
        # That 0 stands for the old owner, which the program could not have named.
        now = self.fs.owner_of(node)
        copied_uid, copied_gid = self._recorded_as(*self._shown(replaced))
        uid = replaced.uid if now.uid == copied_uid != replaced.uid else None
        gid = replaced.gid if now.gid == copied_gid != replaced.gid else None
        if uid is not None or gid is not None:
            self.fs.setattr(node, uid=uid, gid=gid)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> pyfuse3.EntryAttributes:
        return self._ref_entry(self.fs.link(self.fs.get(inode), self.fs.get(new_parent_inode), new_name))

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        fh = self.fs.open(self.fs.get(inode), flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node, fh = self.fs.create(self.fs.get(parent_inode), name, mode, flags, self._caller(ctx))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._ref_entry(node)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.fs.read(fh, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(fh, off, buf)

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here, so there is nothing to flush on close(); ENOSYS tells
        # the kernel to stop asking, which saves one round trip per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.fs.fsync(fh, datasync)

    @fuse_errors
    async def opendir(self, inode: int, ctx: Any) -> int:
        return self.fs.opendir(self.fs.get(inode))

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        fs = self.fs
        h = fs.refresh_dir(fh) if start_id == 0 else fs.dir_handle(fh)
        node = h.node
        # Offsets 1 and 2 are "." and ".."; entry i of the snapshot has offset i + 3.
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self._entry(node), 1):
                return
        if start_id < 2:
            parent = node.names[0][0] if node.names else fs.root
            if not pyfuse3.readdir_reply(token, b"..", self._entry(parent), 2):
                return
            # The kernel takes no reference for "." and "..": nothing to count.
        for i in range(max(0, start_id - 2), len(h.entries)):
            name, _kind = h.entries[i]
            try:
                child = fs.lookup(node, name)
            except FileNotFoundError:
                continue  # removed since the snapshot was taken
            try:
                attrs = self._entry(child)
            except FileNotFoundError:
                fs.drop_if_unused(child)
                continue
            if not pyfuse3.readdir_reply(token, name, attrs, i + 3):
                fs.drop_if_unused(child)
                return
            fs.ref(child)

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.fs.flush_metadata(durable=True)

    @fuse_errors
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        sv = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        for attr in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(out, attr, getattr(sv, attr))
        out.f_namemax = 255
        return out

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        return self.fs.getxattr(self.fs.get(inode), name)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return self.fs.listxattr(self.fs.get(inode))

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self.fs.setxattr(self.fs.get(inode), name, value)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self.fs.removexattr(self.fs.get(inode), name)

    @fuse_errors
    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True  # default_permissions: the kernel already checked

    def destroy(self) -> None:
        try:
            self.fs.close()
        except Exception:
            log.exception("fusefs: closing the union failed")

