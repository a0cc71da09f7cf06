"""The layers of a union: one optional writable upper directory over read-only lowers.

Lower layers never change while mounted, so what is read from them (listings,
attributes, recorded owners) is cached for the life of the mount; the upper layer is
always asked afresh.  A lower layer is a directory (:class:`DirLayer`) or a layer tar
served in place (``fusefs.tarlayer.TarLayer``); the union reads both through
:class:`LowerLayer` and never reaches into a lower layer by path.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Protocol

from . import whiteout
from .metadata import Owner, OwnerTable

# What a layer says about a name in one directory.
ABSENT = 0      # nothing here: look further down
WHITEOUT = 1    # deleted here: nothing below counts


@dataclass(frozen=True)
class Listing:
    """One lower directory as read once: visible names with their d_type, hidden names, opacity."""

    names: dict[bytes, int]          # name -> S_IFMT bits of the entry
    hidden: frozenset[bytes]         # names whited out for the layers below
    opaque: bool


class LowerLayer(Protocol):
    """What the union reads from any layer.  Paths are *rel* paths, the same in every layer."""

    root: bytes       # where the layer is: its directory, or its tar file
    index: int        # position in the union, 0 for the upper layer
    dev: int          # with an st_ino from lstat(), the key of one object of this layer
    writable: bool

    def probe(self, dirrel: bytes, name: bytes) -> int | os.stat_result: ...

    def lstat(self, rel: bytes) -> tuple[os.stat_result, Owner | None]: ...

    def is_opaque(self, rel: bytes) -> bool: ...

    def listing(self, rel: bytes) -> Listing | None: ...

    def link_aliases(self, ino: int) -> list[bytes]: ...

    def readlink(self, rel: bytes) -> bytes: ...

    def open_data(self, rel: bytes, flags: int = 0) -> tuple[int, int, int]:
        """A read-only descriptor for REL's data (the caller closes it), where in it the data
        starts, and how long it is (-1: to the end of the file).  FLAGS: more open(2) flags."""
        ...

    def getxattr(self, rel: bytes, name: bytes) -> bytes: ...

    def listxattr(self, rel: bytes) -> list[bytes]: ...

    def close(self) -> None: ...


class DirLayer:
    """A layer that is a directory: the upper layer, or a lower one (read through caches)."""

    def __init__(self, root: bytes, index: int, writable: bool) -> None:
        self.root = root
        self.index = index
        self.writable = writable
        self.dev = os.stat(root).st_dev
        self.owners = OwnerTable(root, writable)
        # Caches, for lower layers only.
        self._listings: dict[bytes, Listing | None] = {}
        self._stats: dict[bytes, tuple[os.stat_result, Owner | None]] = {}
        self._links: dict[int, list[bytes]] | None = None

    def path(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    # -- reading one name ---------------------------------------------------------------

    def probe(self, dirrel: bytes, name: bytes) -> int | os.stat_result:
        """ABSENT, WHITEOUT, or the lstat of NAME in directory DIRREL of this layer."""
        rel = dirrel + b"/" + name if dirrel else name
        if not self.writable:
            listing = self.listing(dirrel)
            if listing is None:
                return ABSENT
            if name in listing.names:
                return self.lstat(rel)[0]
            return WHITEOUT if name in listing.hidden else ABSENT
        try:
            st = os.lstat(self.path(rel))
        except FileNotFoundError:
            try:
                os.lstat(self.path(dirrel) + b"/" + whiteout.WH_PREFIX + name)
                return WHITEOUT
            except FileNotFoundError:
                return ABSENT
        except NotADirectoryError:
            return ABSENT
        return WHITEOUT if whiteout.is_whiteout_stat(st) else st

    def lstat(self, rel: bytes) -> tuple[os.stat_result, Owner | None]:
        """Physical attributes and recorded owner of REL (cached on lower layers)."""
        if not self.writable:
            hit = self._stats.get(rel)
            if hit is not None:
                return hit
        path = self.path(rel)
        st = os.lstat(path)
        result = (st, self.owners.get(path, rel, st.st_mode))
        if not self.writable:
            self._stats[rel] = result
        return result

    def is_opaque(self, rel: bytes) -> bool:
        if not self.writable:
            listing = self.listing(rel)
            return listing is not None and listing.opaque
        path = self.path(rel)
        if whiteout.has_opaque_xattr(path):
            return True
        try:
            os.lstat(path + b"/" + whiteout.OPAQUE_MARKER)
            return True
        except FileNotFoundError:
            return False

    # -- reading a directory --------------------------------------------------------------

    def listing(self, rel: bytes) -> Listing | None:
        """The directory REL of this layer, or None where it is not a directory here."""
        if not self.writable and rel in self._listings:
            return self._listings[rel]
        result = self._read_listing(rel)
        if not self.writable:
            self._listings[rel] = result
        return result

    def _read_listing(self, rel: bytes) -> Listing | None:
        path = self.path(rel)
        names: dict[bytes, int] = {}
        hidden: set[bytes] = set()
        marker = False
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        with it:
            for entry in it:
                name = entry.name
                if name.startswith(whiteout.WH_PREFIX):
                    if name == whiteout.OPAQUE_MARKER:
                        marker = True
                    target = whiteout.whited_name(name)
                    if target is not None:
                        hidden.add(target)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    names[name] = stat.S_IFDIR
                    continue
                st = entry.stat(follow_symlinks=False)
                if whiteout.is_whiteout_stat(st):
                    hidden.add(name)
                else:
                    names[name] = stat.S_IFMT(st.st_mode)
        opaque = marker or whiteout.has_opaque_xattr(path)
        return Listing(names, frozenset(hidden), opaque)

    # -- what a file holds -------------------------------------------------------------------

    def readlink(self, rel: bytes) -> bytes:
        return os.readlink(self.path(rel))

    def open_data(self, rel: bytes, flags: int = 0) -> tuple[int, int, int]:
        return os.open(self.path(rel), os.O_RDONLY | flags | os.O_CLOEXEC), 0, -1

    def getxattr(self, rel: bytes, name: bytes) -> bytes:
        return os.getxattr(self.path(rel), name, follow_symlinks=False)

    def listxattr(self, rel: bytes) -> list[bytes]:
        return [os.fsencode(n) for n in os.listxattr(self.path(rel), follow_symlinks=False)]

    def close(self) -> None:
        pass

    # -- hard links of a lower layer ---------------------------------------------------------

    def link_aliases(self, ino: int) -> list[bytes]:
        """Every path of this (lower) layer that is a hard link to inode INO."""
        if self._links is None:
            links: dict[int, list[bytes]] = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                for fn in filenames:
                    full = dirpath + b"/" + fn
                    try:
                        st = os.lstat(full)
                    except OSError:
                        continue
                    if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                        links.setdefault(st.st_ino, []).append(full[len(self.root) + 1:])
            self._links = links
        return self._links.get(ino, [])


def check_directory(path: bytes, what: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise OSError(e.errno, f"{what} {path.decode(errors='replace')}: {os.strerror(e.errno or errno.EIO)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"{what} {path.decode(errors='replace')} is not a directory")
