"""How layers mark deleted names and opaque directories, in every dialect we meet.

OCI layers use ``.wh.NAME`` files and ``.wh..wh..opq``; kernel overlayfs uses 0:0
character devices and an ``overlay.opaque`` xattr (``trusted.`` as root, ``user.``
with ``userxattr``).  We read all of them and write the kernel's form where the
kernel lets an unprivileged user, falling back to the OCI form.
"""

from __future__ import annotations

import errno
import os
import stat

WH_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
#: ``.wh..wh.*`` names are reserved for metadata (aufs' convention); never shown.
META_PREFIX = b".wh..wh."
OPAQUE_XATTRS = (b"user.overlay.opaque", b"trusted.overlay.opaque", b"user.fuseoverlayfs.opaque")


def is_whiteout_stat(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_reserved_name(name: bytes) -> bool:
    """Names no user may create or see: they would read back as whiteouts."""
    return name.startswith(WH_PREFIX)


def whited_name(name: bytes) -> bytes | None:
    """For ``.wh.NAME`` return NAME; None for other names and metadata names."""
    if name.startswith(WH_PREFIX) and not name.startswith(META_PREFIX):
        return name[len(WH_PREFIX):]
    return None


def has_opaque_xattr(path: bytes) -> bool:
    for attr in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError as e:
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise
    return False


def make_whiteout(dirpath: bytes, name: bytes) -> None:
    """Hide NAME of the layers below; the kernel form first, then the OCI form."""
    path = dirpath + b"/" + name
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EACCES, errno.EINVAL):
            raise
    fd = os.open(dirpath + b"/" + WH_PREFIX + name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.close(fd)


def remove_whiteout(dirpath: bytes, name: bytes) -> bool:
    """Drop a whiteout of NAME in this directory, whichever form; True if there was one."""
    path = dirpath + b"/" + name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if is_whiteout_stat(st):
            os.unlink(path)
            return True
        return False
    try:
        os.unlink(dirpath + b"/" + WH_PREFIX + name)
        return True
    except FileNotFoundError:
        return False


def mark_opaque(dirpath: bytes) -> None:
    try:
        os.setxattr(dirpath, b"user.overlay.opaque", b"y", follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            raise
        fd = os.open(dirpath + b"/" + OPAQUE_MARKER, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def clear_dir_markers(dirpath: bytes) -> None:
    """Empty an upper directory of whiteouts and markers so that rmdir succeeds."""
    with os.scandir(dirpath) as it:
        for entry in it:
            name = entry.name
            if name.startswith(WH_PREFIX) or is_whiteout_stat(entry.stat(follow_symlinks=False)):
                os.unlink(dirpath + b"/" + name)
