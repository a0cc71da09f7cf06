"""Copying one object from a lower layer into a staging path: data with holes, xattrs, times.

The caller stages into the work directory and renames into the upper layer, so a
copy-up interrupted at any point (kill -9 included) leaves nothing half-copied in upper.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from .metadata import is_private_xattr

if TYPE_CHECKING:
    from .layers import LowerLayer

CHUNK = 64 << 20


def copy_data(src_fd: int, dst_fd: int, size: int, src_base: int = 0) -> None:
    """Copy SIZE bytes from SRC_BASE on (a member of a layer tar starts inside the tar)
    keeping holes: only the data extents are copied."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src_fd, src_base + pos, os.SEEK_DATA) - src_base
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                break
            if e.errno != errno.EINVAL:
                raise
            data = pos  # SEEK_DATA unsupported: copy everything
        if data >= size:
            break
        try:
            hole = os.lseek(src_fd, src_base + data, os.SEEK_HOLE) - src_base
        except OSError:
            hole = size
        hole = min(hole, size)
        off = data
        while off < hole:
            n = _copy_range(src_fd, dst_fd, src_base + off, off, min(CHUNK, hole - off))
            if n == 0:
                hole = off  # file shrank under us
                break
            off += n
        pos = hole
    os.ftruncate(dst_fd, size)


def _copy_range(src_fd: int, dst_fd: int, src_off: int, dst_off: int, count: int) -> int:
    try:
        return os.copy_file_range(src_fd, dst_fd, count, src_off, dst_off)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    buf = os.pread(src_fd, min(count, 1 << 20), src_off)
    if buf:
        os.pwrite(dst_fd, buf, dst_off)
    return len(buf)


def copy_xattrs(src: LowerLayer, rel: bytes, dst: bytes) -> None:
    """Copy the user's xattrs of REL in layer SRC; the union's own bookkeeping attributes stay behind."""
    try:
        names = src.listxattr(rel)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        if is_private_xattr(name):
            continue
        try:
            os.setxattr(dst, name, src.getxattr(rel, name), follow_symlinks=False)
        except OSError as e:
            # security.* and trusted.* need privileges we may lack; user.* on a symlink is refused.
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.ENODATA):
                raise


def copy_object(src: LowerLayer, rel: bytes, dst: bytes, st: os.stat_result, *, with_data: bool = True) -> None:
    """Create DST as a copy of REL of the layer SRC (lstat ST). Directories are created empty."""
    mode = st.st_mode
    perm = stat.S_IMODE(mode)
    if stat.S_ISREG(mode):
        dst_fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if with_data and st.st_size:
                src_fd, base, _length = src.open_data(rel)
                try:
                    copy_data(src_fd, dst_fd, st.st_size, base)
                finally:
                    os.close(src_fd)
            os.fchmod(dst_fd, perm | 0o600)
        finally:
            os.close(dst_fd)
    elif stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
        os.chmod(dst, perm | 0o700)
    elif stat.S_ISLNK(mode):
        os.symlink(src.readlink(rel), dst)
    elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        os.mknod(dst, stat.S_IFMT(mode) | perm | 0o600)
    else:
        os.mknod(dst, mode, st.st_rdev)  # a device: needs privileges we usually lack (EPERM)
    copy_xattrs(src, rel, dst)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
