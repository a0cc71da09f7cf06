"""Overlay storage: one read-only fusefs mount of an image's layers, shared by its containers.

Each container's FUSE mount keeps a page cache of its own, so ten containers of an image
cache its files ten times.  With ``"storage-driver": "overlay"`` a container's root is
instead a kernel overlayfs, made in its own user namespace (``userxattr``), whose lower
layer is one fusefs mount of the image's layers in the user's mount namespace, shared by
every container with the same layers and id map: the kernel caches a file once.  That
mount reports owners as the ids the containers' namespace maps them to (fusefs'
``uidmapping``/``gidmapping``) and is made with ``allow_other`` so that their ids may
read it.  The container's upper layer then holds its files with their real (subordinate)
owners, in the kernel's format that fusefs reads too (0:0 whiteouts, user.overlay.opaque),
so diff, commit, export and cp read it as they read a fusefs upper layer.

Lifetime, under ``RUNTIME_DIR/lowers/KEY/``: ``users.lock`` is held shared by each
container's helper for as long as the container runs (the file descriptor is inherited
across the fork, and the lock goes with the last process that holds it, even killed);
``mount.lock`` is held exclusively while the mount is checked and made.  A watcher started
with the mount (a shell loop) takes ``users.lock`` exclusively once no container holds it
and unmounts; an acquirer waits on its shared lock meanwhile and mounts again.  A mount
whose daemon died (ENOTCONN) is detached and made again.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import RootlessError
from . import linux
from .containers import remove_tree, write_atomic
from .idmap import IdMap

#: How long fusefs may take to mount the image's layers.
MOUNT_TIMEOUT = 120
#: How often the watcher looks whether any container still uses the mount.
WATCH_SECONDS = 10
_WATCHER = ('while sleep "$3"; do '
            'flock -n -x "$1" fusermount3 -u -z "$2" 2>/dev/null && exit 0; '
            'mountpoint -q "$2" || exit 0; '
            'done')


@dataclass
class SharedLower:
    path: str          # the mount point: the overlayfs' lowerdir
    users_fd: int      # holds users.lock shared; whoever keeps it open keeps the mount

    def close(self) -> None:
        """This process's hold (a forked helper keeps its own copy)."""
        if self.users_fd >= 0:
            os.close(self.users_fd)
            self.users_fd = -1


def mapping_options(ids: IdMap) -> str:
    """fusefs' uidmapping/gidmapping for a namespace of ids.uid as 0 and the subordinate ranges from 1."""
    if not (ids.full and ids.subuids and ids.subgids):
        raise RootlessError("overlay storage needs a subordinate id range (/etc/subuid and /etc/subgid)",
                            'without one, leave "storage-driver" at fusefs')
    return (f"uidmapping=0:{ids.uid}:1:1:{ids.subuids.start}:{ids.subuids.count},"
            f"gidmapping=0:{ids.gid}:1:1:{ids.subgids.start}:{ids.subgids.count}")


def usable_path(path: str) -> bool:
    """overlayfs' mount options cannot hold these in a layer's path."""
    return not any(c in path for c in ",:\\\n")


def acquire(runtime_dir: Path, lowers: list[str], ids: IdMap) -> SharedLower:
    """The shared mount of LOWERS (top first) for a namespace of IDS, made if needed; held until closed."""
    mapping = mapping_options(ids)
    for path in lowers:
        if not usable_path(path):
            raise RootlessError(f"overlay storage cannot use the layer path {path} (it holds , : or \\)",
                                'move the store, or leave "storage-driver" at fusefs')
    key = hashlib.sha256("\n".join([*lowers, mapping]).encode()).hexdigest()[:20]
    home = runtime_dir / "lowers" / key
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    mnt = home / "mnt"
    mnt.mkdir(exist_ok=True, mode=0o700)
    users = os.open(home / "users.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(users, fcntl.LOCK_SH)   # waits while the watcher unmounts
        guard = os.open(home / "mount.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if not _mounted(str(mnt)):
                _mount(lowers, mapping, home, str(mnt))
        finally:
            os.close(guard)
    except BaseException:
        os.close(users)
        raise
    return SharedLower(str(mnt), users)


def _mounted(mnt: str) -> bool:
    try:
        os.stat(mnt)
    except OSError as e:
        if e.errno == errno.ENOTCONN:   # its daemon is gone: detach the dead mount
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            return False
        raise
    return os.path.ismount(mnt)


def _mount(lowers: list[str], mapping: str, home: Path, mnt: str) -> None:
    log = home / "fusefs.log"
    cmd = [sys.executable, "-m", "fusefs", "-o", f"lowerdir={':'.join(lowers)},{mapping},allow_other", mnt]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        returncode = linux.wait_child(proc, MOUNT_TIMEOUT)   # it returns once the mount is ready
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RootlessError(f"the image's shared mount was not ready within {MOUNT_TIMEOUT} s",
                            f"see {log}") from None
    if returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RootlessError(f"the image's shared mount failed: {tail[0]}", f"see {log}")
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        subprocess.Popen(["sh", "-c", _WATCHER, "rootless-lower-watcher", str(home / "users.lock"), mnt,
                          str(WATCH_SECONDS)], stdin=null_in, stdout=null_out, stderr=null_out,
                         start_new_session=True, close_fds=True)


# -- whether this kernel and this store can do it -------------------------------------------------

DRIVERS = ("auto", "overlay", "fusefs")


def choose(driver: object, ids: IdMap, store_dir: Path) -> str:
    """The storage of a new container for the config's "storage-driver" DRIVER: "overlay" or "fusefs"."""
    return decide(driver, ids, store_dir)[0]


def decide(driver: object, ids: IdMap, store_dir: Path, make: bool = True) -> tuple[str, str]:
    """choose(), and why (``rootless info`` says it).  overlay needs a full id map (the shared
    mount's owners are the namespace's) and, for auto, the default, also a user namespace (not
    proot) and a kernel and store that take an unprivileged overlayfs; overlay asked for
    outright is taken wherever the ids allow it.  MAKE: see overlay_usable."""
    from . import host

    if driver not in DRIVERS:
        raise RootlessError(f'unknown "storage-driver" {driver!r} in the config file', "use " + ", ".join(DRIVERS))
    if driver == "fusefs":
        return "fusefs", '"storage-driver": "fusefs" in the config file'
    if not ids.full:
        return "fusefs", "containers get no subordinate id range, which the shared image mount needs"
    if driver == "overlay":
        return "overlay", '"storage-driver": "overlay" in the config file'
    if host.runtime_mode() != host.USERNS:
        return "fusefs", "containers run under proot here, without a user namespace to mount overlayfs in"
    if not overlay_usable(store_dir, make):
        return "fusefs", f"an unprivileged overlayfs with its upper layer in {store_dir} failed (tried once)"
    return "overlay", "auto: kernel overlayfs over one shared fusefs mount of each image"


def live_mounts(runtime_dir: Path) -> list[str]:
    """The shared image mounts there are now (each serves the running containers of one image)."""
    # a dead one (ENOTCONN) is not counted: the next acquire detaches it
    return [str(mnt) for mnt in sorted((runtime_dir / "lowers").glob("*/mnt")) if os.path.ismount(mnt)]


PROBE_FILE = "overlay-probe.json"


def overlay_usable(store_dir: Path, make: bool = True) -> bool:
    """Whether an unprivileged kernel overlayfs (``userxattr``) with its upper layer in STORE_DIR
    works here: tried once for real (a mount, a file, a whiteout) in a throwaway user namespace,
    and the answer kept in STORE_DIR per kernel and filesystem.  No: a kernel before 5.11, a
    store on NFS or another file system without user xattrs, a seccomp or LSM policy.  Without
    MAKE a store that does not exist yet is not made: the closest directory above it that does
    is tried instead (the same file system, most likely), and nothing is kept."""
    if not make and not store_dir.exists():
        above = next(p for p in store_dir.parents if p.is_dir())
        return _probe(above)
    store_dir.mkdir(parents=True, exist_ok=True)
    key = {"kernel": os.uname().release, "dev": os.stat(store_dir).st_dev}
    stamp = store_dir / PROBE_FILE
    try:
        seen = json.loads(stamp.read_text())
        if {k: seen.get(k) for k in key} == key:
            return bool(seen.get("ok"))
    except (OSError, ValueError, AttributeError):
        pass
    ok = _probe(store_dir)
    write_atomic(stamp, json.dumps({**key, "ok": ok}).encode())
    return ok


def _probe(store_dir: Path) -> bool:
    scratch = Path(tempfile.mkdtemp(prefix=".overlay-probe-", dir=store_dir))
    try:
        for d in ("lower", "upper", "work", "merged"):
            (scratch / d).mkdir()
        (scratch / "lower" / "gone").write_text("x")
        uid, gid = os.getuid(), os.getgid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
                for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1\n"), ("gid_map", f"0 {gid} 1\n")):
                    with open(f"/proc/self/{name}", "w") as f:
                        f.write(text)
                merged = str(scratch / "merged")
                linux.mount("overlay", merged, "overlay", 0,
                            f"lowerdir={scratch}/lower,upperdir={scratch}/upper,workdir={scratch}/work,userxattr")
                with open(merged + "/made", "w") as f:
                    f.write("y")
                os.unlink(merged + "/gone")    # a whiteout in the upper layer
                code = 0 if not os.path.exists(merged + "/gone") else 1
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) == 0
    finally:
        remove_tree(str(scratch))


def empty_writable_layer(upper: str, work: str, ids: IdMap) -> None:
    """An overlay container's writable layer holds files of its subordinate ids, which only its
    user namespace may delete: emptied there.  Enough by itself in the container's own helper
    (its user namespace's root already); elsewhere done in a fresh user namespace mapped as IDS."""
    from . import enter

    def child() -> None:
        for path in (upper, work):
            remove_tree(path)

    child()
    if not (os.path.exists(upper) or os.path.exists(work)):
        return
    try:
        enter.call(child, ids=ids)
    except RootlessError:
        pass   # what is left, the directory's removal leaves too
