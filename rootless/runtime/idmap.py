"""Which ids a container gets: the user's /etc/subuid and /etc/subgid ranges through newuidmap, or just the user.

With a range, container uid 0 is the user and uids 1..N are the subordinate ids, as
rootless podman maps them; without one, the container has a single uid, 0, which is the
user (files owned by other uids can then be recorded but not taken on).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import RootlessError


@dataclass(frozen=True)
class Range:
    start: int
    count: int


@dataclass(frozen=True)
class IdMap:
    uid: int                  # the user's own ids, container root
    gid: int
    subuids: Range | None
    subgids: Range | None

    @property
    def full(self) -> bool:
        return self.subuids is not None and self.subgids is not None

    @property
    def size(self) -> int:
        """How many container uids exist: 0..size-1."""
        return 1 + self.subuids.count if self.full and self.subuids else 1


def subordinate_range(path: str, user: str, uid: int) -> Range | None:
    """The first range of USER (by name or uid) in PATH, or None."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
                    if int(parts[2]) > 0:
                        return Range(int(parts[1]), int(parts[2]))
    except OSError:
        pass
    return None


def detect(use_subids: bool = True) -> IdMap:
    """The ids this user can give a container; only the user's own without USE_SUBIDS."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    subuids = subordinate_range("/etc/subuid", user, uid)
    subgids = subordinate_range("/etc/subgid", user, uid)
    if not use_subids or not (shutil.which("newuidmap") and shutil.which("newgidmap")):
        subuids = subgids = None
    return IdMap(uid, gid, subuids, subgids)


def for_record(record: dict[str, object]) -> IdMap:
    """The ids of a container, as chosen when it was made (its files' owners depend on them)."""
    settings = record.get("IdMap")
    return detect(not isinstance(settings, dict) or settings.get("Subids") is not False)


def write_maps(pid: int, ids: IdMap) -> None:
    """Give PID's new user namespace its id maps (called by the parent, outside that namespace)."""
    if ids.full and ids.subuids and ids.subgids:
        # The two maps are independent: both helpers run at once (each is a setuid exec).
        running = [(tool, subprocess.Popen([tool, str(pid), "0", str(own), "1", "1", str(rng.start), str(rng.count)],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True))
                   for tool, own, rng in (("newuidmap", ids.uid, ids.subuids), ("newgidmap", ids.gid, ids.subgids))]
        errors = [(tool, proc.communicate()[1], proc.returncode) for tool, proc in running]
        for tool, err, code in errors:
            if code == 0:
                continue
            raise RootlessError(f"{tool} failed: {err.strip() or 'exit ' + str(code)}",
                                f"check /etc/sub{'uid' if tool == 'newuidmap' else 'gid'} and that {tool} "
                                "is setuid root or has file capabilities (Debian package uidmap)")
        return
    try:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(f"0 {ids.uid} 1\n")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(f"0 {ids.gid} 1\n")
    except OSError as e:
        raise RootlessError(f"cannot write the user namespace's id map: {e.strerror}") from None
