"""What this host allows an unprivileged user, and which way of running containers follows from it.

Each probe returns a ``Check``: whether the piece is usable, what was found, and what to
do where it is not.  The probes that must touch the system (a forked child trying a user
namespace, a file in the store given an xattr) are thin; what they found is interpreted
by pure functions that take the readings as arguments, so every explanation is unit-tested
with made-up readings (``tests/unit/test_host_probes.py``).

Three ways to run, best first: ``userns`` (a user namespace with the subordinate id
ranges mapped through newuidmap/newgidmap), ``userns (single uid)`` (a user namespace
holding only the user, as container root), and ``proot`` (no namespace at all: ptrace
fakes the root and the ids, see ``proot.py``).  ``ROOTLESS_RUNTIME=userns|proot`` forces one.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import time
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import linux
from .idmap import Range, subordinate_range

if TYPE_CHECKING:
    from .network import Backend

USERNS = "userns"
USERNS_SINGLE = "userns (single uid)"
PROOT = "proot"
UNUSABLE = "unusable"
#: The environment variable that overrides the automatic choice (tests, and hosts where
#: user namespaces exist but misbehave).
RUNTIME_ENV = "ROOTLESS_RUNTIME"


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str        # what was found, shown as the value in ``rootless info``
    hint: str = ""     # what to do about it, where it is not ok

    def as_json(self) -> dict[str, object]:
        return {"Ok": self.ok, "Detail": self.detail, "Hint": self.hint}


def read_sysctl(name: str) -> str | None:
    """``kernel.foo`` -> the contents of /proc/sys/kernel/foo, or None where the kernel has no such knob."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def process_status(field: str, path: str = "/proc/self/status") -> str | None:
    """A field of /proc/self/status (``Seccomp``, ``NoNewPrivs``), or None."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == field:
                    return value.strip()
    except OSError:
        pass
    return None


# -- user namespaces ------------------------------------------------------------------------------

@dataclass(frozen=True)
class UsernsTrial:
    """How far a forked child got: ``step`` is where it failed (None: all of it worked)."""

    step: str | None      # "fork", "unshare", "uid_map" or "mount namespace"
    errno: int = 0

    @property
    def ok(self) -> bool:
        return self.step is None


def try_userns() -> UsernsTrial:
    """Make a user namespace in a forked child, map the user to root in it and use a capability
    there (a mount namespace).  AppArmor's restriction (Ubuntu 24.04) lets the unshare succeed
    and takes the capabilities away afterwards, so unshare alone proves nothing.

    The caller must be single-threaded, as for any fork that does more than exec.
    """
    uid, gid = os.getuid(), os.getgid()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return UsernsTrial("fork", e.errno or 0)
    if pid == 0:
        step = "unshare"
        try:
            os.close(r)
            linux.unshare(linux.CLONE_NEWUSER)
            step = "uid_map"
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1\n"), ("gid_map", f"0 {gid} 1\n")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            step = "mount namespace"
            linux.unshare(linux.CLONE_NEWNS)
            os.write(w, b"ok")
        except OSError as e:
            try:
                os.write(w, f"{step}:{e.errno or 0}".encode())
            except OSError:
                pass
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read().decode(errors="replace")
    while True:
        try:
            os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break
    if answer == "ok":
        return UsernsTrial(None)
    step, _, number = answer.rpartition(":")
    return UsernsTrial(step or "unshare", int(number) if number.isdigit() else 0)


def explain_userns(trial: UsernsTrial, sysctl: Callable[[str], str | None], seccomp: str | None) -> Check:
    """Name what stopped the trial: a sysctl, AppArmor, a seccomp filter, or just the errno."""
    if trial.ok:
        return Check(True, "yes")
    what = os.strerror(trial.errno) if trial.errno else "failed"
    clone = sysctl("kernel.unprivileged_userns_clone")
    limit = sysctl("user.max_user_namespaces")
    apparmor = sysctl("kernel.apparmor_restrict_unprivileged_userns")
    if trial.step == "unshare":
        if trial.errno == errno.ENOSPC or limit == "0":
            return Check(False, f"no: unshare(CLONE_NEWUSER): {what}; user.max_user_namespaces is {limit}",
                         "as root: sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d to keep it)")
        if clone == "0":
            return Check(False, f"no: unshare(CLONE_NEWUSER): {what}; kernel.unprivileged_userns_clone is 0",
                         "as root: sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d to keep it)")
        if seccomp == "2":
            return Check(False, f"no: unshare(CLONE_NEWUSER): {what}, refused by a seccomp filter on this process "
                                "(a container's runtime, or a sandbox)",
                         "run rootless outside that sandbox, or allow unshare/clone with CLONE_NEWUSER in its profile")
        return Check(False, f"no: unshare(CLONE_NEWUSER): {what}",
                     "the kernel may be built without CONFIG_USER_NS, or a security module forbids it")
    if trial.step in ("uid_map", "mount namespace"):
        doing = "writing its uid_map" if trial.step == "uid_map" else "making a mount namespace in it"
        if apparmor == "1":
            return Check(False, f"no: a user namespace is made, but {doing} fails ({what}): AppArmor restricts "
                                "unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)",
                         "as root: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give rootless an "
                         "AppArmor profile with the 'userns,' rule")
        if seccomp == "2":
            return Check(False, f"no: a user namespace is made, but {doing} fails ({what}); a seccomp filter is "
                                "active on this process", "run rootless outside that sandbox")
        return Check(False, f"no: a user namespace is made, but {doing} fails ({what})",
                     "a security module (AppArmor, SELinux) may restrict user namespaces")
    return Check(False, f"no: cannot fork to try one: {what}", "")


def userns() -> Check:
    return explain_userns(try_userns(), read_sysctl, process_status("Seccomp"))


#: A warm process (rootless/warm.py) probes once a minute and its command processes inherit
#: the answer: (time.monotonic() of the probe, the answer).
_userns_seen: tuple[float, bool] | None = None
USERNS_PROBE_TTL = 60.0


def userns_available(max_age: float = 0.0) -> bool:
    """Whether a user namespace can be made; a probe of at most MAX_AGE seconds ago is reused."""
    global _userns_seen
    if _userns_seen is not None and time.monotonic() - _userns_seen[0] <= max_age:
        return _userns_seen[1]
    ok = try_userns().ok
    _userns_seen = (time.monotonic(), ok)
    return ok


def runtime_mode(environ: Mapping[str, str] | None = None) -> str:
    """What ``run`` uses: ``userns`` where a user namespace can be made, else ``proot``.

    ``ROOTLESS_RUNTIME`` forces one.  Cheap enough for every run: one fork, or none in a
    command process of a warm process that probed less than a minute ago.
    """
    environ = os.environ if environ is None else environ
    forced = environ.get(RUNTIME_ENV, "").strip()
    if forced in (USERNS, PROOT):
        return forced
    return USERNS if userns_available(USERNS_PROBE_TTL) else PROOT


# -- subordinate ids and the setuid helpers ---------------------------------------------------------

def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def subids(path: str, user: str, uid: int) -> Check:
    """The user's range in /etc/subuid or /etc/subgid."""
    kind = "uid" if path.endswith("subuid") else "gid"
    found: Range | None = subordinate_range(path, user, uid)
    if found is None:
        why = "no such file" if not os.path.exists(path) else f"no range for {user}"
        return Check(False, f"none ({path}: {why})",
                     f"as root: usermod --add-sub{kind}s 100000-165535 {user}; without a range a container "
                     "has a single uid, 0")
    return Check(True, f"{found.start}-{found.start + found.count - 1} ({found.count})")


def setid_helper(name: str, which: Callable[[str], str | None] = shutil.which,
                 stat_path: Callable[[str], os.stat_result] = os.stat,
                 file_caps: Callable[[str], bool] | None = None,
                 no_new_privs: str | None = None, package: str = "uidmap") -> Check:
    """A helper that must gain privilege at exec: setuid root, or file capabilities (newuidmap may
    have either).  ``no_new_privs`` is /proc/self/status' NoNewPrivs: where it is 1, neither works."""
    path = which(name)
    if path is None:
        return Check(False, "not found", f"as root: apt-get install {package}")
    st = stat_path(path)
    caps = (file_caps or has_file_caps)(path)
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        how = "setuid root"
    elif caps:
        how = "file capabilities"
    else:
        if st.st_uid == overflow_uid() and st.st_mode & stat.S_ISUID:
            return Check(False, f"{path} (its owner is not mapped in this user namespace, so setuid has no effect "
                                "here)", "run rootless in the host's user namespace, not inside another one")
        owner = "root" if st.st_uid == 0 else f"uid {st.st_uid}"
        return Check(False, f"{path} (owned by {owner}, mode {stat.S_IMODE(st.st_mode):04o}: neither setuid root "
                            "nor file capabilities)", f"as root: chmod u+s {path} (or reinstall {package})")
    if no_new_privs == "1":
        return Check(False, f"{path} ({how}, but no_new_privs is set on this process: it cannot gain privilege)",
                     "run rootless from a process without no_new_privs (a container started with it set, "
                     "or systemd's NoNewPrivileges=, passes it on)")
    return Check(True, f"{path} ({how})")


def overflow_uid() -> int:
    """The uid stat shows for an owner this user namespace does not map (usually 65534)."""
    value = read_sysctl("kernel.overflowuid")
    return int(value) if value and value.isdigit() else 65534


def has_file_caps(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


# -- FUSE -------------------------------------------------------------------------------------------

def dev_fuse(path: str = "/dev/fuse") -> Check:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Check(False, f"{path} does not exist",
                     "load the fuse module (as root: modprobe fuse), or pass --device /dev/fuse to the container "
                     "this runs in")
    if not stat.S_ISCHR(st.st_mode):
        return Check(False, f"{path} is not a character device", "as root: rm it and modprobe fuse")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return Check(False, f"{path}: {e.strerror}", f"as root: chmod 0666 {path}")
    return Check(True, "yes")


def fusermount(no_new_privs: str | None = None, euid: int | None = None,
               which: Callable[[str], str | None] = shutil.which,
               stat_path: Callable[[str], os.stat_result] = os.stat) -> Check:
    """fusermount3 mounts FUSE for users outside a user namespace (the proot mode, standalone fusefs)."""
    check = setid_helper("fusermount3", which, stat_path, None, no_new_privs, package="fuse3")
    if not check.ok and (os.geteuid() if euid is None else euid) == 0 and which("fusermount3") is not None:
        return Check(True, "not needed: running as uid 0, libfuse mounts directly")
    if check.ok:
        version = tool_version(["fusermount3", "-V"])
        if version:
            return Check(True, f"{check.detail}, version {version}")
    return check


def fuse_conf(path: str = "/etc/fuse.conf") -> Check:
    """``user_allow_other``: lets fusermount3 mount with allow_other, so other uids can use a mount."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except OSError as e:
        return Check(False, f"no ({path}: {e.strerror})",
                     f"only needed to share a standalone fusefs mount with other users: add user_allow_other to "
                     f"{path}")
    if "user_allow_other" in lines:
        return Check(True, f"yes ({path})")
    return Check(False, f"no ({path})", f"only needed to share a standalone fusefs mount with other users: add "
                                         f"user_allow_other to {path}")


# -- proot, network helpers, versions ---------------------------------------------------------------

def tool_version(argv: list[str], timeout: float = 10) -> str:
    """The first dotted version number a tool prints about itself, or ''."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (done.stdout + done.stderr).splitlines():
        if "://" in line or "GPL" in line or "Copyright" in line:
            continue    # licence and web addresses carry numbers too
        m = re.search(r"\b(\d+\.\d+(?:\.\d+)*)\b", line)
        if m:
            return m.group(1)
    return ""


def proot(which: Callable[[str], str | None] = shutil.which, try_it: bool = True) -> Check:
    """proot is there, and can trace (ptrace may be forbidden by seccomp or Yama's ptrace_scope=3)."""
    path = which("proot")
    if path is None:
        return Check(False, "not found", "as root: apt-get install proot (the fallback where user namespaces are "
                                         "unavailable)")
    version = tool_version([path, "-V"])
    shown = f"{path} ({version})" if version else path
    if try_it:
        try:
            done = subprocess.run([path, "-v", "-1", "-r", "/", "true"], capture_output=True, text=True,
                                  timeout=30, stdin=subprocess.DEVNULL, cwd="/")
        except (OSError, subprocess.TimeoutExpired) as e:
            return Check(False, f"{shown}: running it failed: {e}", "")
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            return Check(False, f"{shown}: cannot trace: {said[0] if said else 'exit ' + str(done.returncode)}",
                         "ptrace may be forbidden here (seccomp, or kernel.yama.ptrace_scope=3)")
    return Check(True, shown)


def network_tools(backends: Sequence[Backend] | None = None, tun: str = "/dev/net/tun") -> dict[str, Check]:
    """pasta and slirp4netns as network.py judges them (--network private), and the tun device."""
    from .network import available_backends

    out = {}
    for b in available_backends() if backends is None else backends:
        detail = b.detail
        if b.usable and b.path:
            version = tool_version([b.path, "--version"])
            detail = f"{b.path} ({version})" if version else b.path
        out[b.name] = Check(b.usable, detail, b.hint)
    try:
        fd = os.open(tun, os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        out["tun"] = Check(True, "yes")
    except OSError as e:
        out["tun"] = Check(False, f"{tun}: {e.strerror}", "as root: modprobe tun; chmod 0666 /dev/net/tun")
    return out


def os_release(path: str = "/etc/os-release") -> str:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "PRETTY_NAME":
                    return value.strip('"')
    except OSError:
        pass
    return platform.system()


# -- the store's filesystem -------------------------------------------------------------------------

#: statfs(2) f_type magic numbers that matter for a store, by name.
FS_MAGIC = {
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs", 0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs", 0x6969: "nfs", 0x0BD00BD0: "lustre", 0x47504653: "gpfs", 0x794C7630: "overlay",
    0x61756673: "aufs", 0x65735546: "fuse", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x517B: "smb",
    0x00C36400: "ceph", 0x19830326: "beegfs", 0xAAD7AAEA: "panfs", 0x5346414F: "afs", 0x01021997: "9p",
    0x73717368: "squashfs", 0x858458F6: "ramfs",
}
NETWORK_FS = {"nfs", "lustre", "gpfs", "cifs", "smb2", "smb", "ceph", "beegfs", "panfs", "afs", "9p"}
STACKED_FS = {"overlay", "aufs", "fuse"}

_libc = ctypes.CDLL("libc.so.6", use_errno=True)   # by soname: find_library would run ldconfig


def statfs_type(path: str) -> int:
    """statfs(2)'s f_type (Python's os.statvfs leaves it out)."""
    buf = ctypes.create_string_buffer(256)   # struct statfs is 120 bytes on 64-bit Linux
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    if platform.machine() == "s390x":        # the one 64-bit ABI with a 32-bit f_type
        return ctypes.c_uint.from_buffer(buf).value
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def mount_fstype(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The filesystem type mountinfo gives the mount PATH is on (``nfs4``, ``fuse.sshfs``), or None."""
    try:
        dev = os.stat(path).st_dev
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 7 or ":" not in fields[2]:
                    continue
                major, minor = fields[2].split(":")
                if os.makedev(int(major), int(minor)) == dev and "-" in fields:
                    return fields[fields.index("-") + 1]
    except (OSError, ValueError):
        pass
    return None


def existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def classify_fs(magic: int | None, fstype: str | None) -> Check:
    """A warning for stores on network, cluster and stacked filesystems; the name either way.

    MAGIC (statfs' f_type) decides where it is known; else mountinfo's FSTYPE (``nfs4``).
    """
    kind = FS_MAGIC.get(magic) if magic is not None else None
    if kind is None and fstype:
        base = fstype.split(".")[0]
        kind = next((k for k in sorted(NETWORK_FS | STACKED_FS) if base.startswith(k)), base)
    name = fstype or kind or "unknown"
    if kind in NETWORK_FS:
        return Check(False, f"{name} (a network or cluster filesystem: user xattrs and file locks may fail or "
                            "be slow)", "keep the store on a local disk: --root DIR, or \"root\" in config.json")
    if kind in STACKED_FS:
        return Check(False, f"{name} (a stacked filesystem, e.g. inside a container: user xattrs may be refused)",
                     "keep the store on a local disk or a volume: --root DIR, or \"root\" in config.json")
    return Check(True, name)


def store_filesystem(path: str) -> Check:
    where = existing_ancestor(path)
    try:
        magic: int | None = statfs_type(where)
    except OSError:
        magic = None
    return classify_fs(magic, mount_fstype(where))


def store_xattrs_and_locks(path: str) -> tuple[Check, Check]:
    """Set ``user.rootless.probe`` on, and flock, a scratch file where the store is (or will be)."""
    where = existing_ancestor(path)
    try:
        fd, scratch = tempfile.mkstemp(prefix=".rootless-probe-", dir=where)
    except OSError as e:
        failed = Check(False, f"cannot tell: cannot create a file in {where}: {e.strerror}",
                       "make the store's directory writable")
        return failed, failed
    try:
        try:
            os.setxattr(fd, "user.rootless.probe", b"1")
            if os.getxattr(fd, "user.rootless.probe") != b"1":
                raise OSError(errno.EIO, "the value read back differs")
            xattrs = Check(True, "yes")
        except OSError as e:
            xattrs = Check(False, f"no: setting user.rootless.probe in {where}: {e.strerror}",
                           "fusefs records owners and modes in user xattrs: keep the store on ext4, xfs or btrfs "
                           "(--root DIR)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            locks = Check(True, "yes")
        except OSError as e:
            locks = Check(False, f"no: flock in {where}: {e.strerror}",
                          "concurrent pulls and container creation rely on flock: keep the store on a local disk")
    finally:
        os.close(fd)
        try:
            os.unlink(scratch)
        except OSError:
            pass
    return xattrs, locks


# -- which mode -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    name: str        # userns | userns (single uid) | proot | unusable
    reason: str      # why this one and not a better one ('' for full userns)


def choose_mode(checks: Mapping[str, Check], forced: str = "") -> Mode:
    """The mode ``run`` gets here, from the checks ``collect`` made (keys as there)."""
    fuse = checks["dev_fuse"]
    if not fuse.ok:
        return Mode(UNUSABLE, f"/dev/fuse is not usable ({fuse.detail}): every mode mounts the container's root "
                              "with fusefs")
    full_missing = [label for key, label in (("subuid", "an /etc/subuid range"), ("subgid", "an /etc/subgid range"),
                                             ("newuidmap", "a usable newuidmap"), ("newgidmap", "a usable newgidmap"))
                    if not checks[key].ok]
    userns_ok = checks["userns"].ok
    if forced == PROOT or (not userns_ok and forced != USERNS):
        why = f"forced by {RUNTIME_ENV}" if forced == PROOT else f"user namespaces are unavailable: {checks['userns'].detail.removeprefix('no: ')}"
        missing = [f"proot ({checks['proot'].detail})"] if not checks["proot"].ok else []
        if not checks["fusermount3"].ok:
            missing.append(f"fusermount3 ({checks['fusermount3'].detail})")
        if missing:
            return Mode(UNUSABLE, f"{why}; the proot fallback needs {' and '.join(missing)}")
        return Mode(PROOT, why)
    if not userns_ok:
        return Mode(UNUSABLE, f"{RUNTIME_ENV}=userns, but user namespaces are unavailable: "
                              f"{checks['userns'].detail.removeprefix('no: ')}")
    if full_missing:
        return Mode(USERNS_SINGLE, f"no {', no '.join(full_missing)}: only the user's own uid maps into containers")
    return Mode(USERNS, "")


def collect(store_dir: str, environ: Mapping[str, str] | None = None) -> dict[str, Check]:
    """Every probe, keyed as ``choose_mode`` and ``rootless info`` expect."""
    environ = os.environ if environ is None else environ
    uid = os.getuid()
    name = user_name(uid)
    nnp = process_status("NoNewPrivs")
    checks = {
        "userns": userns(),
        "subuid": subids("/etc/subuid", name, uid),
        "subgid": subids("/etc/subgid", name, uid),
        "newuidmap": setid_helper("newuidmap", no_new_privs=nnp),
        "newgidmap": setid_helper("newgidmap", no_new_privs=nnp),
        "dev_fuse": dev_fuse(),
        "fusermount3": fusermount(no_new_privs=nnp),
        "user_allow_other": fuse_conf(),
        "proot": proot(),
        "store_fs": store_filesystem(store_dir),
    }
    checks["store_xattrs"], checks["store_locks"] = store_xattrs_and_locks(store_dir)
    for key, check in network_tools().items():
        checks[key] = check
    return checks
