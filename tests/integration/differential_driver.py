"""One differential scenario, run as root of a fresh user+mount namespace: kernel overlayfs and fusefs side by side.

    unshare --user --map-root-user --mount python differential_driver.py SCENARIO.json RESULT.json

SCENARIO holds two lower layers (top first) and a list of operations.  Each side (kernel
overlay, fusefs) gets its own freshly built copy of the layers and its own upper and work
directories; every operation is applied to the kernel first, then to fusefs, and both
outcomes are recorded (each side may keep one descriptor open across operations).  The
merged trees are then snapshotted, the lower layers checked for changes, and everything is
written to RESULT for the test to compare.  Standard library only: this runs outside
pytest, and is also the way to replay a failing scenario by hand.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOUNT_TIMEOUT = 30.0

Outcome = list[Any]  # ["ok", detail...] or ["err", "ENOENT"]


# -- building layers ----------------------------------------------------------------------------

def build_layer(root: str, tree: dict[str, dict[str, Any]]) -> None:
    """Create TREE under ROOT; parents come before children, link targets before links."""
    def order(rel: str) -> tuple[int, int, str]:
        return (tree[rel]["kind"] == "link", rel.count("/"), rel)

    for rel in sorted(tree, key=order):
        spec = tree[rel]
        path = os.path.join(root, rel)
        kind = spec["kind"]
        if kind == "file":
            with open(path, "wb") as f:
                f.write(spec["data"].encode())
            os.chmod(path, spec["mode"])
        elif kind == "dir":
            os.mkdir(path)
            os.chmod(path, spec["mode"])
            if spec.get("opaque"):
                os.setxattr(path, "user.overlay.opaque", b"y")
        elif kind == "symlink":
            os.symlink(spec["target"], path)
        elif kind == "whiteout":
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        elif kind == "link":
            os.link(os.path.join(root, spec["to"]), path)
        else:
            raise ValueError(f"unknown layer entry kind {kind!r} at {rel}")
        if spec.get("xattr") is not None:
            os.setxattr(path, "user.x", spec["xattr"].encode())


# -- mounting -----------------------------------------------------------------------------------

def is_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Side:
    """One union under test: its layers, upper, work and mountpoint below BASE."""

    def __init__(self, base: str, layers: list[dict[str, dict[str, Any]]]) -> None:
        self.base = base
        os.mkdir(base)
        self.lowers = []
        for i, tree in enumerate(layers):
            d = os.path.join(base, f"l{i}")
            os.mkdir(d)
            build_layer(d, tree)
            self.lowers.append(d)
        self.upper = os.path.join(base, "upper")
        self.work = os.path.join(base, "work")
        self.mnt = os.path.join(base, "mnt")
        for d in (self.upper, self.work, self.mnt):
            os.mkdir(d)

    def options(self) -> str:
        return f"lowerdir={':'.join(self.lowers)},upperdir={self.upper},workdir={self.work}"

    def unmount(self) -> None:
        if is_mounted(self.mnt):
            subprocess.run(["umount", self.mnt], check=False, timeout=30)


class KernelSide(Side):
    def mount(self) -> None:
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", self.options() + ",userxattr", self.mnt],
                       check=True, timeout=30)


class FusefsSide(Side):
    """fusefs in the foreground, as our child: we know when it has really exited."""

    proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.log = os.path.join(self.base, "fusefs.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fusefs", "-f", "-o", self.options(), self.mnt],
                                         cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fusefs did not mount {self.mnt}: {self.read_log()}")
            time.sleep(0.02)

    def read_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def unmount(self) -> None:
        super().unmount()
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- operations ---------------------------------------------------------------------------------

class Held:
    """The one descriptor a scenario keeps open across operations (O_RDONLY, file or directory)."""

    fd: int | None = None

    def replace(self, fd: int | None) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd

    def get(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "nothing held")
        return self.fd


def stat_outcome(st: os.stat_result) -> Outcome:
    if stat.S_ISDIR(st.st_mode):
        # A live directory's size and nlink are not comparable; a removed one's nlink (0) is.
        return ["ok", "dir", stat.S_IMODE(st.st_mode), st.st_nlink if st.st_nlink == 0 else None]
    return ["ok", type_name(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_nlink]


def apply(mnt: str, op: dict[str, Any], held: Held) -> Outcome:
    """Do OP on the union mounted at MNT; the outcome is what a program would observe."""
    path = os.path.join(mnt, op.get("path", ""))
    kind = op["op"]
    try:
        if kind == "hold":
            held.replace(None)
            held.replace(os.open(path, os.O_RDONLY))
        elif kind == "fstat_held":
            return stat_outcome(os.fstat(held.get()))
        elif kind == "read_held":
            fd = held.get()
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                return ["ok", sorted(n for n in os.listdir(fd) if not is_phantom(n, fd))]
            return ["ok", os.pread(fd, 1 << 16, 0).decode("latin-1")]
        elif kind == "fchmod_held":
            os.fchmod(held.get(), op["mode"])
        elif kind == "futime_held":
            os.utime(held.get(), ns=(op["atime_ns"], op["mtime_ns"]))
            st = os.fstat(held.get())
            return ["ok", st.st_atime_ns, st.st_mtime_ns]
        elif kind == "fsetxattr_held":
            os.setxattr(held.get(), "user.x", op["value"].encode())
        elif kind == "write":
            fd = os.open(path, os.O_WRONLY)
            try:
                return ["ok", os.pwrite(fd, op["data"].encode(), op["offset"])]
            finally:
                os.close(fd)
        elif kind == "overwrite":
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                return ["ok", os.write(fd, op["data"].encode())]
            finally:
                os.close(fd)
        elif kind == "read":
            with open(path, "rb") as f:
                return ["ok", f.read().decode("latin-1")]
        elif kind == "stat":
            return stat_outcome(os.lstat(path))
        elif kind == "readdir":
            return ["ok", sorted(name for name in os.listdir(path) if not is_phantom(os.path.join(path, name)))]
        elif kind == "append":
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                return ["ok", os.write(fd, op["data"].encode())]
            finally:
                os.close(fd)
        elif kind == "truncate":
            os.truncate(path, op["size"])
        elif kind == "create":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, op["mode"])
            try:
                os.write(fd, op["data"].encode())
            finally:
                os.close(fd)
        elif kind == "mkdir":
            os.mkdir(path, op["mode"])
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "rename":
            os.rename(path, os.path.join(mnt, op["dst"]))
        elif kind == "symlink":
            os.symlink(op["target"], path)
        elif kind == "link":
            os.link(path, os.path.join(mnt, op["dst"]), follow_symlinks=False)
        elif kind == "chmod":
            os.chmod(path, op["mode"])
        elif kind == "utime":
            follow = op["follow"]
            os.utime(path, ns=(op["atime_ns"], op["mtime_ns"]), follow_symlinks=follow)
            st = os.stat(path, follow_symlinks=follow)
            return ["ok", st.st_atime_ns, st.st_mtime_ns]
        elif kind == "setxattr":
            os.setxattr(path, "user.x", op["value"].encode())
        else:
            raise ValueError(f"unknown operation {kind!r}")
    except OSError as e:
        return ["err", errno.errorcode.get(e.errno or 0, str(e.errno))]
    return ["ok"]


def is_phantom(path: str, dir_fd: int | None = None) -> bool:
    """A name readdir shows but lookup denies: the kernel's whiteouts in unmerged directories."""
    try:
        os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    return False


def is_kernel_dir_rename_refusal(op: dict[str, Any], outcome: Outcome) -> bool:
    """Kernel overlayfs without redirect_dir (always so with userxattr) will not move a lower or
    merged directory; fusefs copies the tree up and moves it.  Neither is applied."""
    return op["op"] == "rename" and outcome == ["err", "EXDEV"]


class Pair:
    """Which names are still the lower hard-link pair, and whether the kernel has broken it.

    Kernel overlayfs without index=on copies up one name of a hard-linked lower file as a
    new inode, leaving the others below; fusefs copies up all names as one inode.  Names
    are followed through the operations and the kernel's upper layer, never by looking
    at the fusefs mount, so that the comparison sends fusefs no requests of its own.
    """

    def __init__(self, kernel: KernelSide, names: list[str]) -> None:
        self.upper = kernel.upper
        self.mnt = kernel.mnt
        self.names = {rel for rel in names if os.path.lexists(os.path.join(kernel.mnt, rel))}
        self.broken = False
        self.held = False  # whether the held descriptor was opened through a name of the pair

    def is_rename_within(self, op: dict[str, Any]) -> bool:
        """For the kernel two names of the pair are two files (rename moves one over the
        other); for fusefs they are one inode (rename does nothing, as POSIX says)."""
        return op["op"] == "rename" and op["path"] in self.names and op["dst"] in self.names

    def observed_by(self, op: dict[str, Any]) -> bool:
        """Whether OP reads a name of a pair the kernel has broken (through symlinks too)."""
        kind = op["op"]
        if kind == "hold":
            self.held = self._resolves_to_pair(op["path"], follow=True)
        if kind in ("fstat_held", "read_held"):
            return self.broken and self.held
        if kind in ("read", "stat"):
            return self.broken and self._resolves_to_pair(op["path"], follow=kind == "read")
        return False

    def _resolves_to_pair(self, rel: str, follow: bool) -> bool:
        path = os.path.join(self.mnt, rel)
        return os.path.relpath(os.path.realpath(path) if follow else path, self.mnt) in self.names

    def follow(self, op: dict[str, Any], outcome: Outcome) -> None:
        if outcome[0] == "ok":
            kind, src = op["op"], op.get("path", "")
            if kind == "unlink":
                self.names.discard(src)
            elif kind == "link" and src in self.names:
                self.names.add(op["dst"])
            elif kind == "rename":
                dst = op["dst"]
                self.names.discard(dst)
                self.names = {dst + rel[len(src):] if rel == src or rel.startswith(src + "/") else rel
                              for rel in self.names}
        self.broken = self.broken or any(self._copied_up(rel) for rel in self.names)

    def _copied_up(self, rel: str) -> bool:
        try:
            st = os.lstat(os.path.join(self.upper, rel))
        except (FileNotFoundError, NotADirectoryError):
            return False
        return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0)


# -- snapshots ----------------------------------------------------------------------------------

def type_name(mode: int) -> str:
    for name, test in (("dir", stat.S_ISDIR), ("file", stat.S_ISREG), ("symlink", stat.S_ISLNK),
                       ("chr", stat.S_ISCHR), ("blk", stat.S_ISBLK), ("fifo", stat.S_ISFIFO),
                       ("sock", stat.S_ISSOCK)):
        if test(mode):
            return name
    return "unknown"


def describe(path: str) -> dict[str, Any]:
    st = os.lstat(path)
    e: dict[str, Any] = {
        "type": type_name(st.st_mode),
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "nlink": st.st_nlink,
    }
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            e["content"] = f.read().decode("latin-1")
        e["size"] = st.st_size
    elif stat.S_ISLNK(st.st_mode):
        e["target"] = os.readlink(path)
        e["size"] = st.st_size
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        e["xattrs"] = f"listxattr: {errno.errorcode.get(err.errno or 0)}"
    else:
        e["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False).decode("latin-1")
                       for n in sorted(names) if n.startswith("user.")}
    return e


def snapshot(mnt: str) -> dict[str, Any]:
    """Every entry below MNT ("" is the root itself), plus any readdir anomalies."""
    entries: dict[str, Any] = {}
    anomalies: list[str] = []

    def walk(rel: str) -> None:
        here = os.path.join(mnt, rel) if rel else mnt
        names = os.listdir(here)
        if len(names) != len(set(names)):
            anomalies.append(f"readdir of {rel or '/'} repeats names: {sorted(names)}")
        for name in sorted(set(names)):
            child = f"{rel}/{name}" if rel else name
            try:
                entries[child] = describe(os.path.join(mnt, child))
            except OSError as err:
                entries[child] = {"type": "error", "error": errno.errorcode.get(err.errno or 0)}
                continue
            if entries[child]["type"] == "dir":
                entries[child]["subdirs"] = 0
                walk(child)
        subdirs = sum(1 for n in set(names) if entries[f"{rel}/{n}" if rel else n]["type"] == "dir")
        entries[rel]["subdirs"] = subdirs

    entries[""] = describe(mnt)
    walk("")
    return {"entries": entries, "anomalies": anomalies}


# -- one scenario -------------------------------------------------------------------------------

def run(scenario: dict[str, Any], scratch: str) -> dict[str, Any]:
    os.umask(0o022)
    base = tempfile.mkdtemp(prefix="diff-", dir=scratch)
    kernel = KernelSide(os.path.join(base, "kernel"), scenario["layers"])
    fusefs = FusefsSide(os.path.join(base, "fusefs"), scenario["layers"])
    lowers_before = {side: [digest(d) for d in s.lowers] for side, s in (("kernel", kernel), ("fusefs", fusefs))}
    held = {"kernel": Held(), "fusefs": Held()}
    result: dict[str, Any] = {"steps": []}
    try:
        kernel.mount()
        fusefs.mount()
        pair = Pair(kernel, scenario.get("pair", []))
        for op in scenario["ops"]:
            if pair.is_rename_within(op):
                result["steps"].append({"kernel": None, "fusefs": None,
                                        "skipped": "rename between two names of the lower hard-link pair"})
                continue
            observes_pair = pair.observed_by(op)
            k = apply(kernel.mnt, op, held["kernel"])
            if is_kernel_dir_rename_refusal(op, k):
                result["steps"].append({"kernel": k, "fusefs": None, "skipped": "kernel EXDEV on rename"})
                continue
            f = apply(fusefs.mnt, op, held["fusefs"])
            result["steps"].append({"kernel": k, "fusefs": f, "observes_broken_pair": observes_pair})
            if not fusefs.alive():
                raise RuntimeError(f"fusefs died during {op}: {fusefs.read_log()}")
            if k != f and not observes_pair:
                break  # the trees have diverged; later outcomes would only echo this one
            pair.follow(op, k)
        for h in held.values():
            h.replace(None)
        result["pair"] = sorted(pair.names)
        result["pair_broken"] = pair.broken
        result["kernel"] = snapshot(kernel.mnt)
        result["fusefs"] = snapshot(fusefs.mnt)
        if not fusefs.alive():
            raise RuntimeError(f"fusefs died: {fusefs.read_log()}")
    finally:
        for h in held.values():
            h.replace(None)  # an open descriptor would make umount fail with EBUSY
        fusefs.unmount()
        kernel.unmount()
        result["fusefs_log"] = fusefs.read_log() if fusefs.proc is not None else ""
        result["fusefs_exit"] = fusefs.proc.returncode if fusefs.proc is not None else None
        # A union must never write to its lower layers, whatever was done through it.
        result["lowers_changed"] = {
            side: [f"l{i}/{rel}: {before[rel]} -> {after.get(rel)}"
                   for i, (d, before) in enumerate(zip(s.lowers, lowers_before[side]))
                   for after in [digest(d)] for rel in sorted(before.keys() | after.keys())
                   if before.get(rel) != after.get(rel)]
            for side, s in (("kernel", kernel), ("fusefs", fusefs))}
        # Only root of this namespace can remove the kernel's work/work (mode 000).
        shutil.rmtree(base, ignore_errors=True)
    return result


def digest(root: str) -> dict[str, str]:
    """What a layer holds, atimes aside (reading through a union may update them)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            what = [type_name(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_nlink,
                    st.st_mtime_ns, st.st_rdev]
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what.append(f.read())
            elif stat.S_ISLNK(st.st_mode):
                what.append(os.readlink(path))
            if not stat.S_ISLNK(st.st_mode):
                what.append({n: os.getxattr(path, n) for n in os.listxattr(path)})
            out[os.path.relpath(path, root)] = repr(what)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: differential_driver.py SCENARIO.json RESULT.json  (as root of a user+mount namespace)",
              file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        scenario = json.load(f)
    result = run(scenario, os.path.dirname(os.path.abspath(argv[1])))
    with open(argv[1], "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
