"""What a writable layer changed, for ``diff`` and for a commit into an OCI layer.

Read from the upper directory alone (plus the lowers, directories or layer tars, to tell
added from changed), after
the union is unmounted or at least quiet: whiteouts become deletions, opaque directories
are flagged so that a layer writer emits ``.wh..wh..opq``, and every entry carries the
owner and mode recorded for it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from . import whiteout
from .metadata import Owner, OwnerTable
from .tarindex import load_index

ADDED, CHANGED, DELETED = "A", "C", "D"


@dataclass(frozen=True)
class Change:
    path: bytes            # relative to the union's root, e.g. b"etc/passwd"
    kind: str              # ADDED, CHANGED or DELETED
    mode: int = 0          # full st_mode (type and recorded permission bits); 0 for a deletion
    uid: int = 0
    gid: int = 0
    opaque: bool = False   # a directory that hides everything below it
    source: bytes = b""    # where the content is on disk (in the upper layer)


def list_changes(upper: bytes | str, lowers: Sequence[bytes | str] = ()) -> Iterator[Change]:
    """Yield the changes recorded in UPPER, parents before children, names sorted."""
    root = os.fsencode(os.path.abspath(upper))
    lower_has = [_has(os.fsencode(os.path.abspath(p))) for p in lowers]
    owners = OwnerTable(root, writable=False)
    yield from _walk(root, b"", lower_has, owners)


def _has(lower: bytes) -> Callable[[bytes], bool]:
    """Whether the lower layer LOWER (a directory or a layer tar) has a name."""
    if os.path.isfile(lower):
        toc = load_index(lower)
        return lambda rel: toc.lookup(rel) is not None
    return lambda rel: os.path.lexists(lower + b"/" + rel)


def _walk(root: bytes, dirrel: bytes, lowers: list[Callable[[bytes], bool]],
          owners: OwnerTable) -> Iterator[Change]:
    dirpath = root + b"/" + dirrel if dirrel else root
    with os.scandir(dirpath) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        if name.startswith(whiteout.META_PREFIX):
            continue  # .wh..wh..opq, the side table: bookkeeping, reported through their owners
        rel = dirrel + b"/" + name if dirrel else name
        target = whiteout.whited_name(name)
        if target is not None:
            yield Change(dirrel + b"/" + target if dirrel else target, DELETED)
            continue
        st = entry.stat(follow_symlinks=False)
        if whiteout.is_whiteout_stat(st):
            yield Change(rel, DELETED)
            continue
        owner = owners.get(entry.path, rel, st.st_mode) or Owner(st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        in_lower = any(has(rel) for has in lowers)
        opaque = stat.S_ISDIR(st.st_mode) and (
            whiteout.has_opaque_xattr(entry.path) or os.path.lexists(entry.path + b"/" + whiteout.OPAQUE_MARKER))
        yield Change(rel, CHANGED if in_lower else ADDED, stat.S_IFMT(st.st_mode) | owner.mode,
                     owner.uid, owner.gid, opaque, entry.path)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, rel, lowers, owners)
