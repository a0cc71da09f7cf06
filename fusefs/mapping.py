"""fuse-overlayfs' ``uidmapping=`` and ``gidmapping=``: owners in the layers are container ids, the kernel sees host ids.

podman hands these to its mount program when a container has an id mapping of its own
and the layers were not chowned for it: the files keep the owners the image gave them
(container ids), and the mount, made outside the container's user namespace, must show
each one as the host id that namespace maps to it, or inside the container every file
would be owned by nobody.  Ids the kernel gives us (a chown's arguments, the creator of a
new file) are host ids and go the other way before they are recorded.

A container id outside the mapping is shown as the overflow id, as the kernel shows an
id a namespace cannot map; a host id outside it cannot be recorded at all (EINVAL, the
kernel's answer to a chown to an id it cannot map).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

#: What the kernel shows for an id the namespace does not map (/proc/sys/kernel/overflowuid).
OVERFLOW_ID = 65534
#: Ids are 32 bits; (uid_t)-1 means "leave unchanged" to chown, so no range may reach it.
ID_LIMIT = (1 << 32) - 1


class MappingError(ValueError):
    """A malformed uidmapping= or gidmapping= value: the message says what and the form expected."""


@dataclass(frozen=True)
class IdMap:
    """(container, host, size) ranges; none overlaps another on either side, so each id has one image."""

    ranges: tuple[tuple[int, int, int], ...]

    @classmethod
    def parse(cls, option: str, value: str) -> IdMap:
        """OPTION=VALUE as fuse-overlayfs takes it: ``CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]``."""
        form = f"expected {option}=CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]"
        fields = value.split(":")
        if not value or len(fields) % 3:
            raise MappingError(f"{option}={value}: ids must come in threes; {form}")
        numbers = []
        for f in fields:
            if not f.isdigit() or not f.isascii():
                raise MappingError(f"{option}={value}: {f!r} is not a number; {form}")
            numbers.append(int(f))
        ranges = tuple((numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3))
        for container, host, size in ranges:
            if size == 0:
                raise MappingError(f"{option}={value}: the range {container}:{host}:0 maps nothing; "
                                   f"SIZE must be 1 or more; {form}")
            if max(container, host) + size > ID_LIMIT:
                raise MappingError(f"{option}={value}: the range {container}:{host}:{size} goes past "
                                   f"the largest id {ID_LIMIT - 1}; {form}")
        for side, index in (("container", 0), ("host", 1)):
            spans = sorted((r[index], r[index] + r[2]) for r in ranges)
            for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise MappingError(f"{option}={value}: {side} ids {a0}-{a1 - 1} and {b0}-{b1 - 1} "
                                       f"overlap; {form}, no two ranges sharing an id")
        return cls(ranges)

    def to_host(self, container: int) -> int:
        for first, host, size in self.ranges:
            if first <= container < first + size:
                return host + container - first
        return OVERFLOW_ID

    def to_container(self, host: int) -> int | None:
        for container, first, size in self.ranges:
            if first <= host < first + size:
                return container + host - first
        return None


@dataclass(frozen=True)
class OwnerMap:
    """The uid and gid mappings of one mount; where one is not given, ids pass unchanged."""

    uids: IdMap | None = None
    gids: IdMap | None = None

    def host_uid(self, uid: int) -> int:
        return uid if self.uids is None else self.uids.to_host(uid)

    def host_gid(self, gid: int) -> int:
        return gid if self.gids is None else self.gids.to_host(gid)

    def container_uid(self, uid: int) -> int:
        """The container id to record for host id UID; OSError(EINVAL) where it maps none."""
        return uid if self.uids is None else _recordable(self.uids.to_container(uid), "uid", uid)

    def container_gid(self, gid: int) -> int:
        return gid if self.gids is None else _recordable(self.gids.to_container(gid), "gid", gid)


def _recordable(container: int | None, kind: str, host: int) -> int:
    if container is None:
        raise OSError(errno.EINVAL, f"{kind} {host} is outside the mount's {kind}mapping")
    return container
