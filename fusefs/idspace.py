"""Which owners the kernel can be told: an id this user namespace does not map is shown as its root.

The kernel turns the uid and gid a FUSE server answers into ids of the namespace that
mounted it.  An id that namespace does not map becomes the overflow id (65534), and the
kernel then refuses every write, chmod and chown of that file, even to the namespace's
root (``HAS_UNMAPPED_ID``: EACCES, EOVERFLOW).  In a namespace holding only the user
(no subordinate ids) that is every file not owned by root: /etc/gshadow (group shadow)
could not be written by useradd, nor apt's _apt-owned directories by apt.  Such a file is
shown as owned by 0, the one id every container has; its recorded owner is not changed,
so what commit, diff and export write is still the image's owner.  A program that rewrites
such a file as a new one renamed over it copies the owner it was shown, 0: the rename
carries the hidden owner over (``Operations.rename``), or useradd would leave /etc/shadow
root:root in the layer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IdSpace:
    """The inside ids of a user namespace's uid_map and gid_map: (first, count) ranges."""

    uids: tuple[tuple[int, int], ...]
    gids: tuple[tuple[int, int], ...]

    @classmethod
    def everything(cls) -> IdSpace:
        whole = ((0, 1 << 32),)
        return cls(whole, whole)

    @classmethod
    def of_process(cls, pid: str = "self") -> IdSpace:
        """The namespace PID is in; read after its maps were written (they never change after)."""
        return cls(_read_map(f"/proc/{pid}/uid_map"), _read_map(f"/proc/{pid}/gid_map"))

    def uid(self, uid: int) -> int:
        return uid if _within(self.uids, uid) else 0

    def gid(self, gid: int) -> int:
        return gid if _within(self.gids, gid) else 0


def _within(ranges: tuple[tuple[int, int], ...], value: int) -> bool:
    return any(first <= value < first + count for first, count in ranges)


def _read_map(path: str) -> tuple[tuple[int, int], ...]:
    try:
        with open(path) as f:
            rows = [line.split() for line in f]
    except OSError:
        return IdSpace.everything().uids   # no /proc: nothing to say, show owners as they are
    ranges = tuple((int(row[0]), int(row[2])) for row in rows if len(row) == 3)
    return ranges or IdSpace.everything().uids   # not mapped yet: no namespace to fit owners to
