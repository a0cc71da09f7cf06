"""A read-only lower layer served in place from a layer tar and its index: nothing is extracted.

What stat shows is what the tar records (owner, mode with setuid/setgid/sticky, mtime,
device numbers); file data is read with pread from one descriptor on the tar, bounded
to the member's bytes; xattrs come from the tar's pax records.  Inode numbers are the
index's, so hard links of the tar share one, and they stay the same on every mount.
"""

from __future__ import annotations

import errno
import os
import stat

from .layers import ABSENT, WHITEOUT, Listing
from .metadata import Owner
from .tarindex import TarIndex, TarLayerError, index_path, load_index

#: Added to a layer's position to make its st_dev: above any real device number (the
#: kernel's dev_t has 32 bits), so a tar's synthetic inodes never meet a directory's.
TAR_DEV = 1 << 48
_BLKSIZE = 4096


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class TarLayer:
    """The layer tar TAR at position INDEX of a union, described by TOC."""

    writable = False

    def __init__(self, tar: bytes, toc: TarIndex, index: int) -> None:
        self.root = tar
        self.index = index
        self.dev = TAR_DEV + index
        self.toc = toc
        fd = os.open(tar, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
        if size != toc.size:
            os.close(fd)
            raise TarLayerError(f"the index of {os.fsdecode(tar)} does not belong to it "
                                f"(it describes {toc.size} bytes, the file has {size})",
                                f"delete {os.fsdecode(index_path(tar))}: fusefs indexes the tar again at mount")
        self._fd = fd
        self._listings: dict[bytes, Listing | None] = {}
        self._aliases: dict[int, list[bytes]] | None = None

    @classmethod
    def open(cls, tar: bytes, index: int) -> TarLayer:
        """The layer tar TAR with its index ``TAR.idx``, or, where there is none, one made now."""
        return cls(tar, load_index(tar), index)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- names ---------------------------------------------------------------------------

    def _ino(self, rel: bytes) -> int:
        ino = self.toc.lookup(rel)
        if ino is None:
            raise _err(errno.ENOENT)
        return ino

    def probe(self, dirrel: bytes, name: bytes) -> int | os.stat_result:
        listing = self.listing(dirrel)
        if listing is None:
            return ABSENT
        if name in listing.names:
            return self.lstat(dirrel + b"/" + name if dirrel else name)[0]
        return WHITEOUT if name in listing.hidden else ABSENT

    def lstat(self, rel: bytes) -> tuple[os.stat_result, Owner | None]:
        """The tar's attributes are the truth, so there is no recorded owner to apply."""
        # Made each time, not kept: the union keeps its reply for a lower node, and a few
        # hundred bytes for each of thousands of files is a container's daemon's memory.
        return self._stat(self._ino(rel)), None

    def _stat(self, ino: int) -> os.stat_result:
        t = self.toc
        mode = t.mode[ino]
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFREG:
            size = t.length[ino]
        elif kind == stat.S_IFLNK:
            size = len(t.links.get(ino, b""))
        elif kind == stat.S_IFDIR:
            size = _BLKSIZE
        else:
            size = 0
        ns = t.mtime[ino]
        sec = ns // 1_000_000_000
        return os.stat_result(
            (mode, ino + 1, self.dev, t.nlink[ino], t.uid[ino], t.gid[ino], size, sec, sec, sec),
            {"st_atime": ns / 1e9, "st_mtime": ns / 1e9, "st_ctime": ns / 1e9,
             "st_atime_ns": ns, "st_mtime_ns": ns, "st_ctime_ns": ns,
             "st_blksize": _BLKSIZE, "st_blocks": (size + 511) // 512, "st_rdev": t.rdev[ino]})

    def is_opaque(self, rel: bytes) -> bool:
        d = self.toc.directory(rel)
        return d is not None and d.opaque

    def listing(self, rel: bytes) -> Listing | None:
        if rel in self._listings:
            return self._listings[rel]
        d = self.toc.directory(rel)
        result = None
        if d is not None:
            mode = self.toc.mode
            result = Listing({n: stat.S_IFMT(mode[i]) for n, i in d.children.items()}, d.hidden, d.opaque)
        self._listings[rel] = result
        return result

    def link_aliases(self, ino: int) -> list[bytes]:
        """Every name of the layer that is a hard link to the inode whose st_ino is INO."""
        if self._aliases is None:
            aliases: dict[int, list[bytes]] = {}
            nlink, mode = self.toc.nlink, self.toc.mode
            for rel in self.toc.directories():
                d = self.toc.directory(rel)
                assert d is not None
                for name, i in d.children.items():
                    if nlink[i] > 1 and not stat.S_ISDIR(mode[i]):
                        aliases.setdefault(i + 1, []).append(rel + b"/" + name if rel else name)
            self._aliases = aliases
        return self._aliases.get(ino, [])

    # -- what a file holds ---------------------------------------------------------------

    def readlink(self, rel: bytes) -> bytes:
        target = self.toc.links.get(self._ino(rel))
        if target is None:
            raise _err(errno.EINVAL)
        return target

    def open_data(self, rel: bytes, flags: int = 0) -> tuple[int, int, int]:
        """The tar itself, at the member's data: opening a file copies nothing."""
        ino = self._ino(rel)
        if not stat.S_ISREG(self.toc.mode[ino]):
            raise _err(errno.EINVAL)
        if self._fd < 0:
            raise _err(errno.EBADF)
        return os.dup(self._fd), self.toc.offset[ino], self.toc.length[ino]

    def getxattr(self, rel: bytes, name: bytes) -> bytes:
        value = self.toc.xattrs.get(self._ino(rel), {}).get(name)
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def listxattr(self, rel: bytes) -> list[bytes]:
        return list(self.toc.xattrs.get(self._ino(rel), {}))
