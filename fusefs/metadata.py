"""Ownership and mode recorded without root: what stat shows is not what the disk holds.

An unprivileged user cannot chown, and must keep read/write access to every file it
stores, so the owner and mode a container sees are recorded beside the file: in the
``user.containers.override_stat`` xattr that containers/storage and fuse-overlayfs use
(``uid:gid:mode[:type]``), or, where the kernel refuses user xattrs (symlinks, fifos,
sockets), in a msgpack side table kept at the layer's root.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import NamedTuple

import msgpack

OVERRIDE_XATTR = b"user.containers.override_stat"
SIDE_TABLE = b".wh..wh.fusefs.meta"
#: xattrs that belong to the union's own bookkeeping and are never shown through it.
PRIVATE_XATTR_PREFIXES = (b"user.containers.", b"user.overlay.", b"trusted.overlay.", b"user.fuseoverlayfs.")


class Owner(NamedTuple):
    uid: int
    gid: int
    mode: int  # permission bits, including setuid, setgid and sticky

    def encode(self) -> bytes:
        return b"%d:%d:%04o" % (self.uid, self.gid, self.mode & 0o7777)

    @classmethod
    def decode(cls, raw: bytes) -> Owner | None:
        parts = raw.split(b":")
        if len(parts) < 3:
            return None
        try:
            return cls(int(parts[0]), int(parts[1]), int(parts[2], 8) & 0o7777)
        except ValueError:
            return None


def is_private_xattr(name: bytes) -> bool:
    return name.startswith(PRIVATE_XATTR_PREFIXES)


def xattr_capable(mode: int) -> bool:
    """The kernel allows user.* xattrs on regular files and directories only."""
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


class OwnerTable:
    """Recorded owners of one layer: xattrs for files and directories, a side table for the rest."""

    def __init__(self, root: bytes, writable: bool) -> None:
        self.root = root
        self.writable = writable
        self._side: dict[bytes, Owner] = {}
        self._dirty = False
        self._last_flush = 0.0
        try:
            with open(root + b"/" + SIDE_TABLE, "rb") as f:
                raw = msgpack.unpackb(f.read(), raw=True, strict_map_key=False)
            if isinstance(raw, dict):
                for k, v in raw.items():
                    if isinstance(k, bytes) and isinstance(v, (list, tuple)) and len(v) == 3:
                        self._side[k] = Owner(int(v[0]), int(v[1]), int(v[2]))
        except FileNotFoundError:
            pass
        except (ValueError, msgpack.UnpackException, TypeError) as e:
            raise OSError(errno.EIO, f"corrupt ownership table {(root + b'/' + SIDE_TABLE).decode(errors='replace')}: {e}") from e

    def get(self, path: bytes, rel: bytes, mode: int) -> Owner | None:
        if xattr_capable(mode):
            try:
                return Owner.decode(os.getxattr(path, OVERRIDE_XATTR, follow_symlinks=False))
            except OSError as e:
                if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.ENOENT):
                    return None
                raise
        return self._side.get(rel)

    def set(self, path: bytes, rel: bytes, mode: int, owner: Owner | None) -> None:
        """Record OWNER for the file at PATH (None: the physical owner and mode are the truth)."""
        if xattr_capable(mode):
            try:
                if owner is None:
                    os.removexattr(path, OVERRIDE_XATTR, follow_symlinks=False)
                else:
                    os.setxattr(path, OVERRIDE_XATTR, owner.encode(), follow_symlinks=False)
                return
            except OSError as e:
                if owner is None and e.errno == errno.ENODATA:
                    return
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
        if owner is None:
            if self._side.pop(rel, None) is not None:
                self._dirty = True
        elif self._side.get(rel) != owner:
            self._side[rel] = owner
            self._dirty = True
        self.maybe_flush()

    def forget(self, rel: bytes, *, tree: bool = False) -> None:
        """A name left the layer; with TREE, everything below it went too."""
        if self._side.pop(rel, None) is not None:
            self._dirty = True
        if tree:
            prefix = rel + b"/"
            for k in [k for k in self._side if k.startswith(prefix)]:
                del self._side[k]
                self._dirty = True
        self.maybe_flush()

    def move(self, old: bytes, new: bytes) -> None:
        """A name (and, for a directory, its subtree) was renamed inside the layer."""
        prefix = old + b"/"
        moved = {k: v for k, v in self._side.items() if k == old or k.startswith(prefix)}
        if not moved:
            return
        for k in moved:
            del self._side[k]
        for k, v in moved.items():
            self._side[new + k[len(old):]] = v
        self._dirty = True
        self.maybe_flush()

    def side_entries(self) -> dict[bytes, Owner]:
        return dict(self._side)

    def maybe_flush(self, min_interval: float = 0.2) -> None:
        if self._dirty and time.monotonic() - self._last_flush >= min_interval:
            self.flush()

    def flush(self, durable: bool = False) -> None:
        """Write the side table atomically: temp file, optional fsync, rename."""
        if not self._dirty or not self.writable:
            return
        final = self.root + b"/" + SIDE_TABLE
        tmp = final + b".tmp"
        data = msgpack.packb({k: list(v) for k, v in self._side.items()}, use_bin_type=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        self._dirty = False
        self._last_flush = time.monotonic()

    @property
    def dirty(self) -> bool:
        return self._dirty
