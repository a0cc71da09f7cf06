"""The union itself: nodes, lookup through the layers, copy-up, and every change to the tree.

Nothing here knows FUSE.  Methods take and return nodes and raise ``OSError`` with the
errno a local filesystem would give; ``operations.py`` turns that into FUSE replies.
Names and paths are bytes, as the kernel hands them over; a path inside the union is a
*rel* path (``b"usr/bin"``, the root is ``b""``), the same in every layer since
directories are never redirected.  Lower layers are read only through the
``LowerLayer`` interface (a directory or a layer tar); only the upper layer has paths.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import itertools
import logging
import os
import stat
from typing import Iterator

from . import whiteout
from .copyup import copy_object
from .layers import ABSENT, WHITEOUT, DirLayer, LowerLayer, check_directory
from .metadata import OVERRIDE_XATTR, Owner, is_private_xattr
from .nodes import ROOT_INO, Attr, Caller, DirHandle, FileHandle, Node
from .tarlayer import TarLayer

log = logging.getLogger(__name__)

NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_NOCTTY

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Overlay:
    """A union of LOWERS (top first) under an optional writable UPPER staged through WORK.

    A lower that is a directory is a layer as it is on disk; one that is a regular file
    is a layer tar served in place (``fusefs.tarlayer``), with its index ``FILE.idx``
    or, where there is none, one made now.  A tar that cannot be served raises
    ``fusefs.tarindex.TarLayerError`` (a ValueError).
    """

    def __init__(self, lowers: list[bytes], upper: bytes | None = None, work: bytes | None = None) -> None:
        if not lowers and upper is None:
            raise _err(errno.EINVAL)
        tars = [_check_lower(path) for path in lowers]
        if upper is not None:
            if work is None:
                raise OSError(errno.EINVAL, "an upperdir needs a workdir (-o workdir=DIR)")
            check_directory(upper, "upperdir")
            check_directory(work, "workdir")
            if os.stat(upper).st_dev != os.stat(work).st_dev:
                raise OSError(errno.EXDEV, "workdir and upperdir must be on the same filesystem")
        self.upper: DirLayer | None = DirLayer(os.path.abspath(upper), 0, True) if upper is not None else None
        self.layers: list[LowerLayer] = [self.upper] if self.upper is not None else []
        try:
            for path, is_tar in zip(lowers, tars):
                path = os.path.abspath(path)
                self.layers.append(TarLayer.open(path, len(self.layers)) if is_tar
                                   else DirLayer(path, len(self.layers), False))
        except BaseException:
            for layer in self.layers:
                layer.close()
            raise
        self.stage_dir: bytes | None = None
        if work is not None:
            self.stage_dir = os.path.abspath(work) + b"/fusefs-stage"
            self._clean_stage()
        self._stage_seq = itertools.count()
        self.uid = os.geteuid()
        self.gid = os.getegid()
        self.nodes: dict[int, Node] = {}
        self._ino_by_key: dict[tuple[int, int], int] = {}
        self._next_ino = ROOT_INO + 1
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = 1
        root = Node(ROOT_INO, stat.S_IFDIR, 0, self._root_layers())
        root.nlookup = 1
        self.nodes[ROOT_INO] = root
        self.root = root

    def _root_layers(self) -> tuple[int, ...]:
        out = []
        for layer in self.layers:
            out.append(layer.index)
            if layer.is_opaque(b""):
                break
        return tuple(out)

    def _clean_stage(self) -> None:
        """Leftovers of a copy-up cut short (kill -9) are removed at mount, never used."""
        assert self.stage_dir is not None
        try:
            os.mkdir(self.stage_dir, 0o700)
        except FileExistsError:
            for dirpath, dirnames, filenames in os.walk(self.stage_dir, topdown=False):
                for fn in filenames:
                    os.unlink(dirpath + b"/" + fn)
                for dn in dirnames:
                    p = dirpath + b"/" + dn
                    if os.path.islink(p):
                        os.unlink(p)
                    else:
                        os.rmdir(p)

    # -- paths and identity -----------------------------------------------------------------

    @staticmethod
    def rel(node: Node) -> bytes:
        parts = []
        while node.names:
            parent, name = node.names[0]
            parts.append(name)
            node = parent
        if node.ino != ROOT_INO:
            raise _err(errno.ENOENT)  # detached: it was unlinked
        return b"/".join(reversed(parts))

    @staticmethod
    def join(dirrel: bytes, name: bytes) -> bytes:
        return dirrel + b"/" + name if dirrel else name

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ESTALE) from None

    def _identify(self, parent: Node, name: bytes, layer: int, st: os.stat_result,
                  dirlayers: tuple[int, ...]) -> Node:
        key = (self.layers[layer].dev, st.st_ino)
        ino = self._ino_by_key.get(key)
        known = self.nodes.get(ino) if ino is not None else None
        if known is not None:
            if known.kind == stat.S_IFMT(st.st_mode):
                if (parent, name) not in known.names:
                    known.names.append((parent, name))  # another hard link to a known inode
                parent.children[name] = known
                return known
            ino = None  # the disk reused a number we still hold for another object
        if ino is None:
            ino = self._next_ino
            self._next_ino += 1
            self._ino_by_key[key] = ino
        node = Node(ino, stat.S_IFMT(st.st_mode), layer, dirlayers)
        node.names.append((parent, name))
        parent.children[name] = node
        self.nodes[ino] = node
        return node

    def _register(self, node: Node, layer: int, st_ino: int) -> None:
        self._ino_by_key[(self.layers[layer].dev, st_ino)] = node.ino

    def _forget_upper_key(self, st_ino: int) -> None:
        """An upper inode is gone; its number may be reused by the disk for a new file."""
        assert self.upper is not None
        self._ino_by_key.pop((self.upper.dev, st_ino), None)

    # -- lookup ------------------------------------------------------------------------------

    def lookup(self, parent: Node, name: bytes) -> Node:
        if not parent.is_dir:
            raise _err(errno.ENOTDIR)
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if name == b".":
            return parent
        if name == b"..":
            return parent.names[0][0] if parent.names else self.root
        child = parent.children.get(name)
        if child is not None:
            return child
        if whiteout.is_reserved_name(name):
            raise _err(errno.ENOENT)
        found = self._resolve(parent, name)
        if found is None:
            raise _err(errno.ENOENT)
        layer, st, dirlayers = found
        return self._identify(parent, name, layer, st, dirlayers)

    def _resolve(self, parent: Node, name: bytes) -> tuple[int, os.stat_result, tuple[int, ...]] | None:
        """Walk PARENT's layers top-down for NAME: the top layer and, for a directory, all merged ones."""
        dirrel = self.rel(parent)
        rel = self.join(dirrel, name)
        top: tuple[int, os.stat_result] | None = None
        dirlayers: list[int] = []
        for li in parent.dirlayers:
            layer = self.layers[li]
            got = layer.probe(dirrel, name)
            if got is WHITEOUT:
                break
            if got is ABSENT:
                continue
            assert isinstance(got, os.stat_result)
            is_dir = stat.S_ISDIR(got.st_mode)
            if top is None:
                top = (li, got)
                if not is_dir:
                    break
            elif not is_dir:
                break  # a non-directory below a directory is hidden, and so is all beneath it
            dirlayers.append(li)
            if layer.is_opaque(rel):
                break
        if top is None:
            return None
        return top[0], top[1], tuple(dirlayers)

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        """Does a lower layer show NAME in PARENT (so deleting it needs a whiteout)?"""
        dirrel = self.rel(parent)
        for li in parent.dirlayers:
            if li == 0 and self.upper is not None:
                continue
            got = self.layers[li].probe(dirrel, name)
            if got is WHITEOUT:
                return False
            if got is not ABSENT:
                return True
        return False

    def ref(self, node: Node) -> None:
        node.nlookup += 1

    def forget(self, ino: int, n: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup = max(0, node.nlookup - n)
        self.drop_if_unused(node)

    def drop_if_unused(self, node: Node) -> None:
        """Drop a node nobody refers to. A node with live children stays: they point at it."""
        while (node.ino != ROOT_INO and node.nlookup == 0 and not node.handles
               and not node.children and self.nodes.get(node.ino) is node):
            del self.nodes[node.ino]
            parents = [p for p, n in node.names if p.children.get(n) is node and p.children.pop(n)]
            if len(parents) != 1:
                for p in parents:
                    self.drop_if_unused(p)
                return
            node = parents[0]

    # -- attributes --------------------------------------------------------------------------

    def getattr(self, node: Node) -> Attr:
        if node.unlinked:
            return self._fd_attr(node)
        rel = self.rel(node)
        st, owner = self.layers[node.layer].lstat(rel)
        nlink = st.st_nlink
        if node.is_dir and len(node.dirlayers) > 1:
            if node.nsubdirs is None:
                node.nsubdirs = sum(1 for _, kind in self._merged(node, rel) if kind == stat.S_IFDIR)
            nlink = 2 + node.nsubdirs
        return self._attr(node, st, owner, nlink)

    def _fd_attr(self, node: Node) -> Attr:
        if node.ghost is not None:
            return node.ghost
        for h in node.handles:
            if h.lower_rel is not None:
                # A lower file keeps its name in its own layer, whatever became of it in the union.
                st, owner = self.layers[node.layer].lstat(h.lower_rel)
                return self._attr(node, st, owner, st.st_nlink)
            st = os.fstat(h.fd)
            owner = None
            if self.upper is not None:
                try:
                    owner = Owner.decode(os.getxattr(h.fd, OVERRIDE_XATTR))
                except OSError:
                    owner = None
            return self._attr(node, st, owner, st.st_nlink)
        raise _err(errno.ENOENT)

    @staticmethod
    def _attr(node: Node, st: os.stat_result, owner: Owner | None, nlink: int) -> Attr:
        if owner is None:
            mode, uid, gid = st.st_mode, st.st_uid, st.st_gid
        else:
            mode, uid, gid = stat.S_IFMT(st.st_mode) | owner.mode, owner.uid, owner.gid
        return Attr(node.ino, mode, nlink, uid, gid, st.st_rdev, st.st_size, st.st_blksize,
                    st.st_blocks, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

    def owner_of(self, node: Node) -> Owner:
        a = self.getattr(node)
        return Owner(a.uid, a.gid, stat.S_IMODE(a.mode))

    # -- directories -------------------------------------------------------------------------

    def _merged(self, node: Node, rel: bytes) -> Iterator[tuple[bytes, int]]:
        """Names of directory NODE across its layers, without duplicates or whiteouts."""
        seen: set[bytes] = set()
        for li in node.dirlayers:
            listing = self.layers[li].listing(rel)
            if listing is None:
                continue
            for name, kind in listing.names.items():
                if name not in seen:
                    seen.add(name)
                    yield name, kind
            seen.update(listing.hidden)

    def listdir(self, node: Node) -> list[tuple[bytes, int]]:
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.unlinked:
            return []  # a removed directory read through a descriptor still held: empty
        return list(self._merged(node, self.rel(node)))

    def opendir(self, node: Node) -> int:
        """A handle whose snapshot is taken by the first read at offset 0 (refresh_dir)."""
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        return self._new_handle(DirHandle(node))

    def refresh_dir(self, fh: int) -> DirHandle:
        h = self.dir_handle(fh)
        h.entries = self.listdir(h.node)
        return h

    def dir_handle(self, fh: int) -> DirHandle:
        h = self._handles.get(fh)
        if not isinstance(h, DirHandle):
            raise _err(errno.EBADF)
        return h

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def _is_empty(self, node: Node) -> bool:
        return next(iter(self._merged(node, self.rel(node))), None) is None

    # -- copy-up -----------------------------------------------------------------------------

    def _require_upper(self) -> DirLayer:
        if self.upper is None:
            raise _err(errno.EROFS)
        return self.upper

    def _stage(self) -> bytes:
        assert self.stage_dir is not None
        return self.stage_dir + b"/%d" % next(self._stage_seq)

    def copy_up(self, node: Node, *, with_data: bool = True) -> bytes:
        """Make sure NODE lives in the upper layer; return its upper path."""
        upper = self._require_upper()
        if node.layer == 0:
            return upper.path(self.rel(node))
        if node.unlinked:
            raise _err(errno.ENOENT)
        parent, name = node.names[0]
        self.copy_up(parent)
        rel = self.rel(node)
        src_layer = self.layers[node.layer]
        st, owner = src_layer.lstat(rel)
        dst = upper.path(rel)
        # A copy-up is no change to the parent: its times are put back afterwards, as
        # kernel overlayfs does (else diff and commit would see every parent as modified).
        parent_dir = os.path.dirname(dst)
        parent_st = os.lstat(parent_dir)
        staged = self._stage()
        try:
            copy_object(src_layer, rel, staged, st, with_data=with_data)
            want = owner or Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                self._record(staged, rel, want, fresh=True)  # an xattr: it moves with the rename
            os.rename(staged, dst)
        except BaseException:
            _remove_quietly(staged)
            raise
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            self._record(dst, rel, want)  # a side-table entry, keyed by the final name
        os.utime(parent_dir, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns), follow_symlinks=False)
        new_st = os.lstat(dst)
        node.layer = 0
        node.cached = None
        if node.is_dir:
            node.dirlayers = (0,) + node.dirlayers
        self._register(node, 0, new_st.st_ino)
        for h in node.handles:
            fd = os.open(dst, h.flags)
            os.close(h.fd)
            h.fd, h.base, h.length, h.lower_rel = fd, 0, -1, None
        if not node.is_dir and st.st_nlink > 1:
            self._link_aliases(node, src_layer, st, rel)
        return dst

    def _link_aliases(self, node: Node, src_layer: LowerLayer, st: os.stat_result, rel: bytes) -> None:
        """The other names of a hard-linked lower file become hard links of its upper copy."""
        upper = self._require_upper()
        for alias in src_layer.link_aliases(st.st_ino):
            if alias == rel:
                continue
            try:
                parent = self._walk(os.path.dirname(alias))
                name = os.path.basename(alias)
                found = self._resolve(parent, name)
                if found is None or found[0] != src_layer.index or found[1].st_ino != st.st_ino:
                    continue  # that name is shadowed or deleted in the union
                self.copy_up(parent)
                os.link(upper.path(rel), upper.path(alias))
                if (parent, name) not in node.names:
                    node.names.append((parent, name))
                parent.children[name] = node
            except OSError as e:
                log.warning("could not keep hard link %r to %r: %s", alias, rel, e)

    def _walk(self, rel: bytes) -> Node:
        """The node at REL, looked up from the root (internal use: no kernel reference)."""
        node = self.root
        for part in rel.split(b"/") if rel else []:
            node = self.lookup(node, part)
        return node

    def copy_up_tree(self, node: Node) -> None:
        """Copy a whole directory into upper and make it opaque: it can then move anywhere."""
        if node.dirlayers == (0,):
            return
        path = self.copy_up(node)
        rel = self.rel(node)
        for name, _kind in list(self._merged(node, rel)):
            child = self.lookup(node, name)
            try:
                if child.is_dir:
                    self.copy_up_tree(child)
                else:
                    self.copy_up(child)
            finally:
                self.drop_if_unused(child)
        whiteout.clear_dir_markers(path)
        whiteout.mark_opaque(path)
        node.dirlayers = (0,)
        node.nsubdirs = None

    # -- recording owners --------------------------------------------------------------------

    def _record(self, path: bytes, rel: bytes, want: Owner, *, st: os.stat_result | None = None,
                fresh: bool = False) -> None:
        """Record WANT for the upper file at PATH where it differs from what the disk shows.

        FRESH: the file was just created, so there is no old record to remove.
        """
        upper = self._require_upper()
        if st is None:
            st = os.lstat(path)
        if want != Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)):
            upper.owners.set(path, rel, st.st_mode, want)
        elif not fresh:
            upper.owners.set(path, rel, st.st_mode, None)

    def _new_owner(self, parent: Node, caller: Caller, mode: int) -> Owner:
        gid = caller.gid
        pattr = self.getattr(parent)
        if pattr.mode & stat.S_ISGID:
            gid = pattr.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Owner(caller.uid, gid, stat.S_IMODE(mode))

    # -- creating ----------------------------------------------------------------------------

    def _prepare_new(self, parent: Node, name: bytes) -> tuple[bytes, bytes, bool]:
        """Checks shared by every create: returns (rel, upper path, whether a whiteout was replaced)."""
        upper = self._require_upper()
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if whiteout.is_reserved_name(name):
            raise _err(errno.EINVAL)
        try:
            self.lookup(parent, name)
        except FileNotFoundError:
            pass
        else:
            raise _err(errno.EEXIST)
        parent_path = self.copy_up(parent)
        replaced = whiteout.remove_whiteout(parent_path, name)
        rel = self.join(self.rel(parent), name)
        return rel, upper.path(rel), replaced

    def _finish_new(self, parent: Node, name: bytes, path: bytes, rel: bytes, want: Owner) -> Node:
        st = os.lstat(path)
        self._record(path, rel, want, st=st, fresh=True)
        dirlayers = (0,) if stat.S_ISDIR(st.st_mode) else ()
        # A fresh inode: a stale mapping of a deleted file with the same disk inode must not match.
        self._forget_upper_key(st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            parent.nsubdirs = None
        return self._identify(parent, name, 0, st, dirlayers)

    def mkdir(self, parent: Node, name: bytes, mode: int, caller: Caller) -> Node:
        rel, path, replaced = self._prepare_new(parent, name)
        want = self._new_owner(parent, caller, stat.S_IFDIR | mode)
        os.mkdir(path, 0o700)
        try:
            os.chmod(path, (want.mode & 0o777) | 0o700)
            if replaced or self._lower_has(parent, name):
                whiteout.mark_opaque(path)
            return self._finish_new(parent, name, path, rel, want)
        except BaseException:
            _remove_quietly(path)
            raise

    def create(self, parent: Node, name: bytes, mode: int, flags: int, caller: Caller) -> tuple[Node, int]:
        rel, path, _ = self._prepare_new(parent, name)
        want = self._new_owner(parent, caller, stat.S_IFREG | mode)
        fd = os.open(path, (flags & ~_OPEN_STRIP & ~os.O_ACCMODE) | os.O_RDWR | os.O_CREAT | os.O_EXCL,
                     (want.mode & 0o777) | 0o600)
        try:
            node = self._finish_new(parent, name, path, rel, want)
        except BaseException:
            os.close(fd)
            _remove_quietly(path)
            raise
        return node, self._open_handle(node, fd, os.O_RDWR)

    def mknod(self, parent: Node, name: bytes, mode: int, rdev: int, caller: Caller) -> Node:
        rel, path, _ = self._prepare_new(parent, name)
        want = self._new_owner(parent, caller, mode)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, (want.mode & 0o777) | 0o600))
        elif kind in (stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(path, kind | 0o600 | (want.mode & 0o777))
        else:
            os.mknod(path, mode, rdev)
        try:
            return self._finish_new(parent, name, path, rel, want)
        except BaseException:
            _remove_quietly(path)
            raise

    def symlink(self, parent: Node, name: bytes, target: bytes, caller: Caller) -> Node:
        rel, path, _ = self._prepare_new(parent, name)
        want = self._new_owner(parent, caller, stat.S_IFLNK | 0o777)
        want = Owner(want.uid, want.gid, 0o777)
        os.symlink(target, path)
        try:
            return self._finish_new(parent, name, path, rel, want)
        except BaseException:
            _remove_quietly(path)
            raise

    def link(self, node: Node, parent: Node, name: bytes) -> Node:
        if node.is_dir:
            raise _err(errno.EPERM)
        rel, path, _ = self._prepare_new(parent, name)
        src = self.copy_up(node)
        os.link(src, path)
        if self.upper is not None and not stat.S_ISREG(node.kind):
            self.upper.owners.set(path, rel, node.kind, self.upper.owners.get(src, self.rel(node), node.kind))
        node.names.append((parent, name))
        parent.children[name] = node
        return node

    # -- deleting ----------------------------------------------------------------------------

    def _detach(self, parent: Node, name: bytes, node: Node) -> None:
        if parent.children.get(name) is node:
            del parent.children[name]
        if (parent, name) in node.names:
            node.names.remove((parent, name))
        node.cached = None
        if node.is_dir:
            parent.nsubdirs = None

    def unlink(self, parent: Node, name: bytes) -> None:
        node = self.lookup(parent, name)
        if node.is_dir:
            raise _err(errno.EISDIR)
        self._remove(parent, name, node)

    def rmdir(self, parent: Node, name: bytes) -> None:
        if name == b".":
            raise _err(errno.EINVAL)
        node = self.lookup(parent, name)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if not self._is_empty(node):
            raise _err(errno.ENOTEMPTY)
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: bytes, node: Node) -> None:
        self._require_upper()
        lower_has = self._lower_has(parent, name)
        parent_path = self.copy_up(parent)
        rel = self.join(self.rel(parent), name)
        if node.layer == 0:
            self._delete_upper(node, rel)
        elif node.is_dir:
            node.ghost = dataclasses.replace(self.getattr(node), nlink=0)
        if lower_has:
            whiteout.make_whiteout(parent_path, name)
        self._detach(parent, name, node)
        self.drop_if_unused(node)

    def _delete_upper(self, node: Node, rel: bytes) -> None:
        """Remove NODE's upper copy at REL; a removed directory keeps its attributes for held descriptors."""
        upper = self._require_upper()
        path = upper.path(rel)
        if node.is_dir:
            node.ghost = dataclasses.replace(self.getattr(node), nlink=0)
        st = os.lstat(path)
        if node.is_dir:
            whiteout.clear_dir_markers(path)
            os.rmdir(path)
            upper.owners.forget(rel, tree=True)
        else:
            os.unlink(path)
            upper.owners.forget(rel)
        if node.is_dir or st.st_nlink <= 1:
            self._forget_upper_key(st.st_ino)

    # -- renaming ----------------------------------------------------------------------------

    def rename(self, old_parent: Node, old_name: bytes, new_parent: Node, new_name: bytes, flags: int = 0) -> None:
        upper = self._require_upper()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        if len(new_name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if whiteout.is_reserved_name(new_name):
            raise _err(errno.EINVAL)
        src = self.lookup(old_parent, old_name)
        try:
            dst: Node | None = self.lookup(new_parent, new_name)
        except FileNotFoundError:
            dst = None
        if src.is_dir and self._is_ancestor(src, new_parent):
            raise _err(errno.EINVAL)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _err(errno.ENOENT)
            return self._exchange(old_parent, old_name, src, new_parent, new_name, dst)
        if dst is src:
            return  # two names of one inode: POSIX says do nothing
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            if src.is_dir and not dst.is_dir:
                raise _err(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise _err(errno.EISDIR)
            if dst.is_dir and not self._is_empty(dst):
                raise _err(errno.ENOTEMPTY)
        if src.is_dir:
            self.copy_up_tree(src)
        else:
            self.copy_up(src)
        old_lower = self._lower_has(old_parent, old_name)
        new_lower = self._lower_has(new_parent, new_name)
        new_parent_path = self.copy_up(new_parent)
        old_rel = self.join(self.rel(old_parent), old_name)
        new_rel = self.join(self.rel(new_parent), new_name)
        if dst is not None and dst.layer == 0:
            self._delete_upper(dst, new_rel)
        else:
            whiteout.remove_whiteout(new_parent_path, new_name)
        os.rename(upper.path(old_rel), upper.path(new_rel))
        upper.owners.move(old_rel, new_rel)
        if src.is_dir and new_lower:
            whiteout.mark_opaque(upper.path(new_rel))
        if old_lower:
            whiteout.make_whiteout(upper.path(self.rel(old_parent)), old_name)
        if dst is not None:
            self._detach(new_parent, new_name, dst)
            self.drop_if_unused(dst)
        self._detach(old_parent, old_name, src)
        src.names.append((new_parent, new_name))
        new_parent.children[new_name] = src
        if src.is_dir:
            new_parent.nsubdirs = None

    def _exchange(self, op: Node, on: bytes, a: Node, np: Node, nn: bytes, b: Node) -> None:
        upper = self._require_upper()
        for n in (a, b):
            if n.is_dir:
                self.copy_up_tree(n)
            else:
                self.copy_up(n)
        self.copy_up(op)
        self.copy_up(np)
        arel, brel = self.join(self.rel(op), on), self.join(self.rel(np), nn)
        renameat2(upper.path(arel), upper.path(brel), RENAME_EXCHANGE)
        tmp = b"\0exchange"
        upper.owners.move(arel, tmp)
        upper.owners.move(brel, arel)
        upper.owners.move(tmp, brel)
        self._detach(op, on, a)
        self._detach(np, nn, b)
        a.names.append((np, nn))
        b.names.append((op, on))
        np.children[nn] = a
        op.children[on] = b
        op.nsubdirs = np.nsubdirs = None
        # A directory arriving where a lower layer has that name must hide what is below.
        for node, parent, name in ((a, np, nn), (b, op, on)):
            if node.is_dir and self._lower_has(parent, name):
                whiteout.mark_opaque(upper.path(self.join(self.rel(parent), name)))

    @staticmethod
    def _is_ancestor(node: Node, other: Node) -> bool:
        while True:
            if other is node:
                return True
            if not other.names:
                return False
            other = other.names[0][0]

    # -- changing attributes -----------------------------------------------------------------

    def setattr(self, node: Node, *, size: int | None = None, mode: int | None = None,
                uid: int | None = None, gid: int | None = None,
                atime_ns: int | None = None, mtime_ns: int | None = None, fh: int | None = None) -> None:
        self._require_upper()
        handle = self._handles.get(fh) if fh is not None else None
        if node.unlinked:
            if node.ghost is not None:
                self._check_ghost_writable(node)
                g = node.ghost
                node.ghost = dataclasses.replace(
                    g, mode=stat.S_IFMT(g.mode) | stat.S_IMODE(mode) if mode is not None else g.mode,
                    uid=g.uid if uid is None else uid, gid=g.gid if gid is None else gid,
                    atime_ns=g.atime_ns if atime_ns is None else atime_ns,
                    mtime_ns=g.mtime_ns if mtime_ns is None else mtime_ns)
                return
            if not node.handles:
                raise _err(errno.ENOENT)
            if node.layer != 0:
                # The only copy is in a read-only lower layer and its name is gone, so there is
                # nowhere to copy it up to; kernel overlayfs refuses this the same way.
                raise _err(errno.EEXIST)
            fd = handle.fd if isinstance(handle, FileHandle) else next(iter(node.handles)).fd
            if size is not None:
                os.ftruncate(fd, size)
            if mode is not None:
                os.fchmod(fd, (mode & 0o777) | 0o600)
            if atime_ns is not None or mtime_ns is not None:
                st = os.fstat(fd)
                os.utime(fd, ns=(atime_ns if atime_ns is not None else st.st_atime_ns,
                                 mtime_ns if mtime_ns is not None else st.st_mtime_ns))
            return
        path = self.copy_up(node, with_data=not (size == 0))
        rel = self.rel(node)
        if size is not None:
            if isinstance(handle, FileHandle) and handle.flags != os.O_RDONLY:
                os.ftruncate(handle.fd, size)
            else:
                os.truncate(path, size)
        if mode is not None or uid is not None or gid is not None:
            cur = self.owner_of(node)
            want = Owner(cur.uid if uid is None else uid, cur.gid if gid is None else gid,
                         cur.mode if mode is None else stat.S_IMODE(mode))
            if mode is not None and not stat.S_ISLNK(node.kind):
                os.chmod(path, (want.mode & 0o777) | (0o700 if node.is_dir else 0o600), follow_symlinks=False)
            self._record(path, rel, want)
        if atime_ns is not None or mtime_ns is not None:
            st = os.lstat(path)
            os.utime(path, ns=(atime_ns if atime_ns is not None else st.st_atime_ns,
                               mtime_ns if mtime_ns is not None else st.st_mtime_ns),
                     follow_symlinks=False)

    @staticmethod
    def _check_ghost_writable(node: Node) -> None:
        """A removed directory that never reached upper has nothing writable left: the kernel
        answers ENOTDIR there (it cannot copy up a directory without a name), and so do we."""
        if node.layer != 0:
            raise _err(errno.ENOTDIR)

    def readlink(self, node: Node) -> bytes:
        if node.kind != stat.S_IFLNK:
            raise _err(errno.EINVAL)
        return self.layers[node.layer].readlink(self.rel(node))

    # -- xattrs ------------------------------------------------------------------------------

    def _xsource(self, node: Node) -> tuple[LowerLayer, bytes] | int:
        """Where a node's xattrs are: a layer and a name in it, or for an unlinked upper file
        still open, a descriptor (a lower file keeps its name in its layer)."""
        if node.unlinked and node.handles:
            h = next(iter(node.handles))
            if h.lower_rel is None:
                return h.fd
            return self.layers[node.layer], h.lower_rel
        return self.layers[node.layer], self.rel(node)

    def getxattr(self, node: Node, name: bytes) -> bytes:
        if is_private_xattr(name):
            raise _err(errno.ENODATA)
        where = self._xsource(node)
        if isinstance(where, int):
            return os.getxattr(where, name)
        return where[0].getxattr(where[1], name)

    def listxattr(self, node: Node) -> list[bytes]:
        where = self._xsource(node)
        if isinstance(where, int):
            names = [os.fsencode(n) for n in os.listxattr(where)]
        else:
            names = where[0].listxattr(where[1])
        return [n for n in names if not is_private_xattr(n)]

    def setxattr(self, node: Node, name: bytes, value: bytes, flags: int = 0) -> None:
        if is_private_xattr(name):
            raise _err(errno.EPERM)
        if node.unlinked:
            if node.ghost is not None:
                self._check_ghost_writable(node)
                return  # accepted but not kept: the directory is gone from disk
            if node.layer != 0:
                raise _err(errno.EEXIST)  # only a lower copy, and no name to copy it up to
            if node.handles:
                os.setxattr(next(iter(node.handles)).fd, name, value, flags)
                return
        path = self.copy_up(node)
        os.setxattr(path, name, value, flags, follow_symlinks=False)

    def removexattr(self, node: Node, name: bytes) -> None:
        if is_private_xattr(name):
            raise _err(errno.ENODATA)
        self.getxattr(node, name)  # ENODATA before any copy-up
        os.removexattr(self.copy_up(node), name, follow_symlinks=False)

    # -- file data ---------------------------------------------------------------------------

    def _new_handle(self, h: FileHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = h
        return fh

    def _open_handle(self, node: Node, fd: int, flags: int, base: int = 0, length: int = -1,
                     lower_rel: bytes | None = None) -> int:
        h = FileHandle(node, fd, flags, base, length, lower_rel)
        node.add_handle(h)
        return self._new_handle(h)

    def open(self, node: Node, flags: int) -> int:
        if node.is_dir:
            raise _err(errno.EISDIR)
        acc = flags & os.O_ACCMODE
        writing = acc != os.O_RDONLY or flags & os.O_TRUNC
        # Reads and writes go through pread/pwrite at the kernel's offsets: never O_APPEND here.
        extra = flags & ~_OPEN_STRIP & ~os.O_ACCMODE & ~os.O_DIRECT
        if writing:
            path = self.copy_up(node, with_data=not flags & os.O_TRUNC)
        elif node.unlinked:
            h = next(iter(node.handles))
            return self._open_handle(node, os.dup(h.fd), os.O_RDONLY, h.base, h.length, h.lower_rel)
        elif node.layer != 0 or self.upper is None:
            rel = self.rel(node)
            fd, base, length = self.layers[node.layer].open_data(rel, extra)
            return self._open_handle(node, fd, os.O_RDONLY, base, length, rel)
        else:
            path = self.upper.path(self.rel(node))
        phys = os.O_RDWR if writing else os.O_RDONLY
        fd = os.open(path, phys | extra | os.O_CLOEXEC)
        try:
            if flags & os.O_TRUNC:
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return self._open_handle(node, fd, phys)

    def file_handle(self, fh: int) -> FileHandle:
        h = self._handles.get(fh)
        if not isinstance(h, FileHandle):
            raise _err(errno.EBADF)
        return h

    def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.file_handle(fh)
        if h.length < 0:
            return os.pread(h.fd, size, off)
        # A slice of a layer tar: its member's bytes and nothing after them.
        return os.pread(h.fd, max(0, min(size, h.length - off)), h.base + off)

    def write(self, fh: int, off: int, data: bytes) -> int:
        return os.pwrite(self.file_handle(fh).fd, data, off)

    def fsync(self, fh: int, datasync: bool) -> None:
        fd = self.file_handle(fh).fd
        (os.fdatasync if datasync else os.fsync)(fd)
        if self.upper is not None:
            self.upper.owners.flush(durable=True)

    def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if isinstance(h, FileHandle):
            os.close(h.fd)
            h.node.drop_handle(h)
            self.drop_if_unused(h.node)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.layers[0].root)

    def flush_metadata(self, durable: bool = False) -> None:
        if self.upper is not None:
            self.upper.owners.flush(durable=durable)

    def close(self) -> None:
        for h in list(self._handles.values()):
            if isinstance(h, FileHandle):
                try:
                    os.close(h.fd)
                except OSError:
                    pass
        self._handles.clear()
        self.flush_metadata(durable=True)
        for layer in self.layers:
            layer.close()


def _check_lower(path: bytes) -> bool:
    """Whether the lower PATH is a layer tar (a regular file) rather than a directory."""
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return True
    except OSError:
        pass
    check_directory(path, "lowerdir")
    return False


def _remove_quietly(path: bytes) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass
