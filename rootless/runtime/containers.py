"""Containers on disk: one directory each, with a JSON record replaced whole, and unique names.

    <data_dir>/containers/<id>/config.json   the record (docker's inspect fields, our own below)
                               upper/ work/  the container's writable layer and fusefs' scratch
                               rootfs/       where the union is mounted, in the container's namespaces
                               hosts resolv.conf hostname   generated, bound over /etc's
    <data_dir>/containers/lock               flock'd while a container is created, renamed or removed
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import RootlessError

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ADJECTIVES = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
               "nifty", "quirky", "serene", "sharp", "tender", "vivid", "witty", "zealous")
_NOUNS = ("babbage", "curie", "darwin", "euler", "fermat", "galileo", "hopper", "kepler", "lovelace",
          "noether", "pascal", "ritchie", "shannon", "turing", "wozniak")


class ContainerNotFound(RootlessError):
    """No container has this name or id."""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Container:
    dir: Path
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["Id"])

    @property
    def name(self) -> str:
        return str(self.record["Name"]).lstrip("/")

    @property
    def upper(self) -> Path:
        return self.dir / "upper"

    @property
    def work(self) -> Path:
        return self.dir / "work"

    @property
    def rootfs(self) -> Path:
        return self.dir / "rootfs"

    def save(self) -> None:
        write_atomic(self.dir / "config.json", json.dumps(self.record, indent=1).encode())


class Containers:
    def __init__(self, config: Config) -> None:
        self.root = config.data_dir / "containers"

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def all(self) -> list[Container]:
        out = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                record = json.loads((Path(entry.path) / "config.json").read_bytes())
            except (OSError, ValueError):
                continue
            out.append(Container(Path(entry.path), record))
        out.sort(key=lambda c: str(c.record.get("Created", "")), reverse=True)
        return out

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(32)

    def create(self, name: str | None, record: dict[str, Any], cid: str | None = None) -> Container:
        """A new container directory and record (id CID, else a new one); the name is checked and
        taken under the lock."""
        if name is not None and not _NAME.match(name):
            raise RootlessError(f'Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')
        cid = cid or self.new_id()
        with self.locked():
            taken = {c.name: c for c in self.all()}
            if name is None:
                name = _random_name(set(taken))
            elif name in taken:
                other = taken[name].id
                raise RootlessError(f'Conflict. The container name "/{name}" is already in use by container '
                                    f'"{other}". You have to remove (or rename) that container to be able to '
                                    "reuse that name.", "remove it with rootless rm, or choose another --name")
            stage = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
            for sub in ("upper", "work", "rootfs"):
                (stage / sub).mkdir(mode=0o755)
            container = Container(stage, {"Id": cid, "Name": "/" + name, "Created": now(), **record})
            container.save()
            os.rename(stage, self.root / cid)
            container.dir = self.root / cid
        return container

    def get(self, name_or_id: str) -> Container:
        everything = self.all()
        for c in everything:
            if c.name == name_or_id.lstrip("/") or c.id == name_or_id:
                return c
        matches = [c for c in everything if len(name_or_id) >= 1 and c.id.startswith(name_or_id)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise RootlessError(f"multiple containers found with provided prefix: {name_or_id}",
                                "give more of the id, or the name")
        raise ContainerNotFound(f"No such container: {name_or_id}", "list them with rootless ps -a")

    def remove(self, container: Container) -> None:
        with self.locked():
            trash = self.root / f".rm-{container.id}"
            try:
                os.rename(container.dir, trash)
            except FileNotFoundError:
                return
        remove_tree(str(trash))   # directories the container closed included


def _random_name(taken: set[str]) -> str:
    rng = random.SystemRandom()
    for _ in range(100):
        name = f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}{rng.randrange(1000)}"


def write_atomic(path: Path, data: bytes) -> None:
    """PATH holds DATA whole or not at all: a temp file beside it, fsync'd, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=".write-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_tree(path: str) -> None:
    """rm -rf PATH, whose directories may be closed to their owner: the kernel leaves an
    overlayfs' work/work with mode 0, and an image may ship a directory without u+wx.  Each
    is opened up before it is entered (in-process: a chmod -R was two process starts on every
    --rm run)."""
    def open_up(directory: str) -> None:
        try:
            st = os.lstat(directory)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o700 != 0o700:   # never through a symlink
                os.chmod(directory, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError:
            pass

    open_up(path)
    for top, dirs, _ in os.walk(path, onerror=lambda e: None):
        for name in dirs:
            open_up(os.path.join(top, name))
    shutil.rmtree(path, ignore_errors=True)


# -- state: running or not, across engine exits and reboots ---------------------------------------

def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def is_running(container: Container) -> bool:
    """Recorded as running, and its init is that very process of this boot: not a reused pid, not a ghost
    from before a reboot or of a helper killed with -9."""
    state = container.record.get("State", {})
    if not state.get("Running"):
        return False
    pid = int(state.get("Pid") or 0)
    if pid <= 0 or state.get("BootId") != boot_id():
        return False
    started = process_start_time(pid)
    return started is not None and started == state.get("StartTicks")


def has_ended(container: Container) -> bool:
    """The container's init has exited and the exit is recorded, or nobody is left to record it.

    init's end alone is not enough: its helper writes the exit code a moment later, and
    ``wait`` must print that code, not the one of the running record.
    """
    _reload(container)
    state = container.record.get("State", {})
    if not state.get("Running"):
        return True
    if is_running(container):
        return False
    helper = int(state.get("HelperPid") or 0)
    try:
        os.kill(helper, 0) if helper > 0 else None
    except ProcessLookupError:
        return True
    except PermissionError:
        return True
    return helper <= 0


def status_of(container: Container) -> str:
    state = container.record.get("State", {})
    if is_running(container):
        return "running"
    if state.get("Running"):
        return "exited"     # it died without its helper recording it
    return str(state.get("Status", "created"))


@contextmanager
def _state_lock(container: Container) -> Iterator[bool]:
    """Hold the container's state lock; yields False where the container is gone (an --rm that ended)."""
    try:
        fd = os.open(container.dir / ".state.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield (container.dir / "config.json").exists()
    finally:
        os.close(fd)


def _reload(container: Container) -> None:
    try:
        container.record = json.loads((container.dir / "config.json").read_bytes())
    except (OSError, ValueError):
        pass


def mark_starting(container: Container) -> None:
    """Before the launch: the start time that the helper's exit record and ours are told apart by."""
    with _state_lock(container) as present:
        if present:
            _reload(container)
            container.record["State"].update(Status="created", Running=False, Pid=0, StartedAt=now(),
                                             FinishedAt="0001-01-01T00:00:00Z", ExitCode=0)
            container.save()


def mark_running(container: Container, pid: int, helper_pid: int, **fields: Any) -> None:
    """After the launch: running with init PID, unless the helper has already recorded the end
    (a quick command, maybe an --rm container already removed)."""
    with _state_lock(container) as present:
        if not present:
            return
        started = container.record["State"].get("StartedAt")
        _reload(container)
        state = container.record["State"]
        if state.get("Status") == "exited" and state.get("StartedAt") == started:
            return
        container.record.update(fields)
        state.update(Status="running", Running=True, Pid=pid, HelperPid=helper_pid, ExitCode=0,
                     BootId=boot_id(), StartTicks=process_start_time(pid))
        container.save()


def mark_exited(container: Container, code: int) -> None:
    """Record the end (in the helper); under the lock, re-read first so that nothing is lost."""
    with _state_lock(container) as present:
        if not present:
            return
        _reload(container)
        container.record["State"].update(Status="exited", Running=False, Pid=0, ExitCode=code, FinishedAt=now())
        container.save()


def inspect_doc(container: Container) -> dict[str, Any]:
    """docker's ``inspect`` of a container, from the record (State brought up to date)."""
    r = container.record
    state = dict(r.get("State", {}))
    status = status_of(container)
    running = status == "running"
    if state.get("Running") and not running:
        state.update(ExitCode=state.get("ExitCode") or 137, FinishedAt=state.get("FinishedAt"))
    config = dict(r.get("Config", {}))
    config.setdefault("Tty", False)
    host = dict(r.get("HostConfig", {}))
    return {
        "Id": container.id,
        "Created": r.get("Created", ""),
        "Path": r.get("Path", ""),
        "Args": r.get("Args", []),
        "State": {"Status": status, "Running": running, "Paused": False, "Restarting": False,
                  "OOMKilled": False, "Dead": False, "Pid": state.get("Pid", 0) if running else 0,
                  "ExitCode": state.get("ExitCode", 0), "Error": "",
                  "StartedAt": state.get("StartedAt", ""), "FinishedAt": state.get("FinishedAt", "")},
        "Image": r.get("Image", ""),
        "ResolvConfPath": str(container.dir / "resolv.conf"),
        "HostnamePath": str(container.dir / "hostname"),
        "HostsPath": str(container.dir / "hosts"),
        "LogPath": str(container.dir / "container.log"),
        "Name": r.get("Name", ""),
        "RestartCount": 0,
        "Driver": "fusefs",
        "Platform": "linux",
        "HostConfig": host,
        "GraphDriver": {"Name": r.get("Storage") or "fusefs",
                        "Data": {"UpperDir": str(container.upper), "WorkDir": str(container.work),
                                 "MergedDir": str(container.rootfs),
                                 "LowerDir": ":".join(r.get("Launch", {}).get("Lowers", [])),
                                 # overlay storage: the image's shared read-only mount (shared.py)
                                 **({"SharedLowerDir": r["SharedLower"]} if r.get("SharedLower") else {})}},
        "Mounts": r.get("Mounts", []),
        "Config": config,
        "NetworkSettings": r.get("NetworkSettings", {}),
    }
