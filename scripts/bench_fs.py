"""Benchmark fusefs against fuse-overlayfs, kernel overlayfs and a plain directory.

Started by scripts/bench-fs with the repo's .venv python.  Roles of this one file:

* root (euid 0): makes a journaled ext4 image under /tmp, loop-mounts it, hands it to
  --user, runs the benchmark as that user (setpriv) and answers its "drop caches"
  requests (sync; echo 3 > /proc/sys/vm/drop_caches); cleans up on exit.
* bench (the unprivileged user): generates the layers, drives the contenders, prints
  the tables, writes the JSON.
* agent (--agent): one per contender and pin mode; mounts the union and runs the timed
  operations on request (JSON lines on stdin/stdout).  The kernel-overlay agent runs
  inside `unshare --user --map-root-user --mount`, so that its mount is visible to it;
  pinned agents run under `taskset -c 0`, and so do the FUSE daemons and the find/tar/rm
  processes they start.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(REPO, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
SELF = os.path.abspath(__file__)

CONTENDERS = ["plain", "kernel", "fuse-overlayfs", "fusefs"]
HEADERS = {"plain": "plain", "kernel": "kernel-ovl", "fuse-overlayfs": "fuse-ovlfs", "fusefs": "fusefs"}

# (key, label, slow?, target ratio fusefs/fuse-overlayfs or None)
OPS = [
    ("read_cold", "seq read big, cold", True, 2.0),
    ("read_warm", "seq read big, warm", False, 1.2),
    ("randread", "4K random reads, warm", False, 1.2),
    ("find", "find MNT, warm", False, 1.5),
    ("stat_all", "lstat all (os.walk), warm", False, 1.5),
    ("tar", "tar cf - . | cat, warm", False, 1.5),
    ("untar", "untar small files", True, None),
    ("copyup", "copy-up big (append 1B)", True, None),
    ("rmrf", "rm -rf tree", True, None),
]

MiB = 1 << 20
OP_TIMEOUT = 600.0


def log(msg: str) -> None:
    print(f"bench-fs: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- agent

def _mounted(mnt: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == mnt:
                return True
    return False


class Agent:
    def __init__(self, kind: str, logdir: str):
        self.kind = kind
        self.logdir = logdir
        self.daemon: subprocess.Popen | None = None
        self.mnt: str | None = None

    def mount(self, lower: str, upper: str, work: str, mnt: str) -> dict:
        self.mnt = mnt
        if self.kind == "plain":
            return {}
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        if self.kind == "kernel":
            r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "userxattr," + opts, mnt],
                               capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"kernel overlay mount failed: {r.stderr.strip()}")
            return {}
        if self.kind == "fuse-overlayfs":
            cmd = ["fuse-overlayfs", "-f", "-o", opts, mnt]
            env = None
        else:
            cmd = [PY, "-m", "fusefs", "-f", "-o", opts, mnt]
            env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        logpath = os.path.join(self.logdir, f"{self.kind}-daemon.log")
        logf = open(logpath, "ab")
        start = logf.tell()
        self.daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env)
        logf.close()
        deadline = time.monotonic() + 30
        while not _mounted(mnt):
            if self.daemon.poll() is not None:
                self.daemon = None
                with open(logpath, "rb") as f:
                    f.seek(start)
                    tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{self.kind} exited before mounting: " + " | ".join(tail))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not mount within 30 s")
            time.sleep(0.01)
        return {}

    def umount(self) -> dict:
        mnt, self.mnt = self.mnt, None
        if self.kind == "plain" or mnt is None:
            return {}
        if self.kind == "kernel":
            subprocess.run(["umount", mnt], check=True)
            return {}
        r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
        if r.returncode:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        if self.daemon is not None:
            try:
                self.daemon.wait(30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None
        return {"warning": r.stderr.strip()} if r.returncode else {}


def _run(cmd, **kw) -> None:
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", subprocess.DEVNULL),
                       stderr=subprocess.PIPE, **kw)
    if r.returncode:
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{cmd[0] if isinstance(cmd, list) else cmd} exited {r.returncode}: "
                           + " | ".join(err[-3:]))


def op_read_seq(path: str) -> dict:
    buf = bytearray(MiB)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            n += k
    return {"bytes": n}


def op_randread(path: str, count: int, seed: int) -> dict:
    size = os.path.getsize(path)
    rng = random.Random(seed)
    offs = [rng.randrange(0, max(1, size // 4096)) * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for off in offs:
            os.pread(fd, 4096, off)
        return {"t": time.perf_counter() - t0}
    finally:
        os.close(fd)


def op_stat_all(top: str) -> dict:
    n = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
        for name in filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return {"entries": n}


def op_copyup(path: str) -> dict:
    with open(path, "ab", buffering=0) as f:
        f.write(b"x")
    return {}


def agent_main(kind: str, logdir: str) -> int:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # children must not write into the reply channel
    agent = Agent(kind, logdir)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        try:
            if cmd == "exit":
                break
            if cmd == "mount":
                res = agent.mount(**req)
            elif cmd == "umount":
                res = agent.umount()
            elif cmd == "fadvise":
                for p in req["paths"]:
                    fd = os.open(p, os.O_RDONLY)
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
                res = {}
            elif cmd == "truncate":
                os.truncate(req["path"], req["size"])
                res = {}
            elif cmd == "op":
                os.sync()  # no writeback from an earlier step in the timed window
                name, a = req["op"], req["args"]
                t0 = time.perf_counter()
                if name == "read_seq":
                    res = op_read_seq(a["path"])
                elif name == "randread":
                    res = op_randread(a["path"], a["count"], a["seed"])
                elif name == "find":
                    _run(["find", a["path"]])
                    res = {}
                elif name == "stat_all":
                    res = op_stat_all(a["path"])
                elif name == "tar":
                    # GNU tar skips reading when its output is /dev/null: make it a pipe.
                    _run(["bash", "-o", "pipefail", "-c", 'tar cf - -C "$1" . | cat > /dev/null', "tar", a["path"]])
                    res = {}
                elif name == "untar":
                    os.mkdir(a["dest"])
                    _run(["tar", "xf", a["archive"], "--no-same-owner", "-C", a["dest"]])
                    res = {}
                elif name == "copyup":
                    res = op_copyup(a["path"])
                elif name == "rmrf":
                    _run(["rm", "-rf", a["path"]])
                    res = {}
                else:
                    raise ValueError(f"unknown op {name}")
                t = time.perf_counter() - t0
                res.setdefault("t", t)
            else:
                raise ValueError(f"unknown command {cmd}")
            res["ok"] = True
        except Exception as e:  # reported to the bench process, which records it
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(res) + "\n")
    try:
        agent.umount()
    except Exception:
        pass
    return 0


class AgentClient:
    """The bench side of an agent process."""

    def __init__(self, kind: str, pinned: bool, logdir: str):
        self.kind = kind
        cmd = [PY, SELF, "--agent", kind, "--logdir", logdir]
        if kind == "kernel":
            cmd = ["unshare", "--user", "--map-root-user", "--mount", "--"] + cmd
        if pinned:
            cmd = ["taskset", "-c", "0"] + cmd
        self.logf = open(os.path.join(logdir, f"agent-{kind}-{'pinned' if pinned else 'unpinned'}.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logf,
                                     start_new_session=True)
        self.buf = b""
        self.mnt: str | None = None

    def call(self, timeout: float = OP_TIMEOUT, **req) -> dict:
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise RuntimeError(f"timed out after {timeout:.0f} s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"agent died (rc={self.proc.wait()})")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        res = json.loads(line)
        if not res.pop("ok"):
            raise RuntimeError(res["error"])
        return res

    def mount(self, lower, upper, work, mnt):
        self.call(cmd="mount", lower=lower, upper=upper, work=work, mnt=mnt, timeout=60)
        self.mnt = mnt

    def umount(self):
        self.mnt = None
        self.call(cmd="umount", timeout=60)

    def op(self, name, **args) -> float:
        return self.call(cmd="op", op=name, args=args)["t"]

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if self.mnt and self.kind in ("fusefs", "fuse-overlayfs"):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        self.mnt = None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        self.kill()
        self.logf.close()


# --------------------------------------------------------------------------- workload

def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def generate(data: str, a) -> dict:
    """Lower layer: tree/ (a.files files in a.dirs directories, a.tree_mb MiB) and big.bin."""
    rng = random.Random(a.seed)
    pool = rng.randbytes(8 * MiB)
    lower = os.path.join(data, "lower")
    tree = os.path.join(lower, "tree")
    os.makedirs(tree)
    dirs = [tree]
    for i in range(1, a.dirs):
        parent = dirs[rng.randrange(0, i)]
        d = os.path.join(parent, f"d{i:04d}")
        os.mkdir(d)
        dirs.append(d)
    sizes = [min(int(rng.lognormvariate(8.3, 2.0)), 32 * MiB) for _ in range(a.files)]
    scale = a.tree_mb * MiB / max(1, sum(sizes))
    sizes = [min(int(s * scale), 64 * MiB) for s in sizes]
    total = 0
    for i, size in enumerate(sizes):
        path = os.path.join(dirs[rng.randrange(0, len(dirs))], f"f{i:05d}.dat")
        with open(path, "wb") as f:
            left = size
            while left:
                off = rng.randrange(0, len(pool) - 1)
                k = min(left, len(pool) - off, 4 * MiB)
                f.write(pool[off:off + k])
                left -= k
        total += size
    big = os.path.join(lower, "big.bin")
    with open(big, "wb") as f:
        left = a.big_mb * MiB
        while left:
            off = rng.randrange(0, 7) * MiB
            k = min(left, MiB)
            f.write(pool[off:off + k])
            left -= k
        f.flush()
        os.fsync(f.fileno())
    # The archive for the untar test: a.untar_files small files in ~1% as many directories.
    archive = os.path.join(data, "small.tar")
    ndirs = max(1, a.untar_files // 100)
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in range(ndirs):
            ti = tarfile.TarInfo(f"s{d:03d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tf.addfile(ti)
        for i in range(a.untar_files):
            size = rng.randrange(0, 8192)
            ti = tarfile.TarInfo(f"s{i % ndirs:03d}/u{i:05d}.txt")
            ti.size, ti.mode, ti.mtime = size, 0o644, 1_700_000_000
            off = rng.randrange(0, len(pool) - size)
            tf.addfile(ti, io.BytesIO(pool[off:off + size]))
    os.sync()
    return {"lower": lower, "tree": tree, "big": big, "archive": archive,
            "tree_bytes": total, "tree_files": a.files, "tree_dirs": a.dirs,
            "big_bytes": a.big_mb * MiB, "untar_files": a.untar_files}


def rmtree(path: str) -> None:
    """rm -rf that also copes with mode-000 directories (overlay workdirs)."""
    if not os.path.lexists(path):
        return
    subprocess.run(["chmod", "-R", "u+rwx", path], stderr=subprocess.DEVNULL)
    subprocess.run(["rm", "-rf", path], check=True)


# --------------------------------------------------------------------------- bench

class Bench:
    def __init__(self, a, work: str, drop):
        self.a = a
        self.work = work
        self.drop = drop  # callable that drops the page cache, or None
        self.logdir = os.path.join(work, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.seq = 0

    def fresh(self, name: str) -> tuple[str, str, str]:
        self.seq += 1
        base = os.path.join(self.work, "run", f"{self.seq:03d}-{name}")
        dirs = tuple(os.path.join(base, d) for d in ("upper", "work", "mnt"))
        for d in dirs:
            os.makedirs(d)
        return dirs

    def cleanup_runs(self):
        rmtree(os.path.join(self.work, "run"))

    def cold_prep(self, ag: AgentClient):
        if self.drop:
            self.drop()
        else:
            ag.call(cmd="fadvise", paths=[self.d["big"]])

    # Phases are the outer loop and contenders the inner one: each contender's cold read
    # drops every cache, so running all cold reads first lets the warm phase start from
    # the same (warm) lower layer for everyone instead of re-reading the tree from disk.
    PHASES = ("cold", "warm", "untar", "copyup", "rmrf")
    PHASE_OPS = {"cold": ["read_cold"], "warm": ["read_warm", "randread", "find", "stat_all", "tar"],
                 "untar": ["untar"], "copyup": ["copyup"], "rmrf": ["rmrf"]}

    def run_mode(self, pinned: bool, results: dict) -> None:
        agents: dict[str, AgentClient] = {}
        try:
            for phase in self.PHASES:
                if phase in ("untar", "copyup", "rmrf") and self.a.only_ops and phase not in self.a.only_ops:
                    continue
                for kind in self.a.contenders:
                    if kind not in agents:
                        agents[kind] = AgentClient(kind, pinned, self.logdir)
                    t0 = time.monotonic()
                    try:
                        getattr(self, "phase_" + phase)(kind, agents[kind], results)
                    except Exception as e:
                        log(f"  {kind}: {phase} failed: {e}")
                        for op in self.PHASE_OPS[phase]:
                            by = results.setdefault(op, {})
                            if not isinstance(by.get(kind), dict):
                                by[kind] = {"error": str(e), "partial": by.get(kind) or []}
                        agents.pop(kind).close()
                        self.cleanup_runs()
                    else:
                        log(f"  {kind}: {phase} done in {time.monotonic() - t0:.1f} s")
        except BaseException:  # interrupted: no graceful exit for agents that may be mid-operation
            for ag in agents.values():
                ag.kill()
                ag.logf.close()
            raise
        for ag in agents.values():
            ag.close()

    # -- helpers for the phases
    def record(self, results, kind, op, fn, n):
        times = results.setdefault(op, {}).setdefault(kind, [])
        for _ in range(n):
            try:
                times.append(fn())
            except Exception as e:
                results[op][kind] = {"error": str(e), "partial": times}
                raise

    def mount(self, kind, ag, tag) -> str:
        if kind == "plain":
            ag.mnt = self.d["lower"]
            return self.d["lower"]
        upper, workd, mnt = self.fresh(f"{kind}-{tag}")
        ag.mount(self.d["lower"], upper, workd, mnt)
        return mnt

    def unmount(self, kind, ag):
        if kind != "plain":
            ag.umount()
        ag.mnt = None
        self.cleanup_runs()

    # -- the phases
    def phase_cold(self, kind, ag, results):
        for _ in range(self.a.repeat_slow):
            big = os.path.join(self.mount(kind, ag, "cold"), "big.bin")
            self.cold_prep(ag)
            self.record(results, kind, "read_cold", lambda: ag.op("read_seq", path=big), 1)
            self.unmount(kind, ag)

    def phase_warm(self, kind, ag, results):
        a, rf = self.a, self.a.repeat
        mnt = self.mount(kind, ag, "warm")
        big = os.path.join(mnt, "big.bin")
        ag.op("read_seq", path=big)  # warm-up: all of it in the page cache
        self.record(results, kind, "read_warm", lambda: ag.op("read_seq", path=big), rf)
        self.record(results, kind, "randread", lambda: ag.op("randread", path=big, count=a.randreads, seed=a.seed), rf)
        ag.op("find", path=mnt)  # warm-up: the first walk fills the dentry/attribute caches
        self.record(results, kind, "find", lambda: ag.op("find", path=mnt), rf)
        self.record(results, kind, "stat_all", lambda: ag.op("stat_all", path=mnt), rf)
        ag.op("tar", path=mnt)  # warm-up: the tree's file data
        self.record(results, kind, "tar", lambda: ag.op("tar", path=mnt), rf)
        self.unmount(kind, ag)

    def phase_untar(self, kind, ag, results):
        for _ in range(self.a.repeat_slow):
            if kind == "plain":
                base = os.path.join(self.work, "run", "plain-untar")
                os.makedirs(base)
                dest = os.path.join(base, "dest")
            else:
                dest = os.path.join(self.mount(kind, ag, "untar"), "untar")
            self.record(results, kind, "untar", lambda: ag.op("untar", archive=self.d["archive"], dest=dest), 1)
            self.unmount(kind, ag)

    def phase_copyup(self, kind, ag, results):
        for _ in range(self.a.repeat_slow):
            big = os.path.join(self.mount(kind, ag, "copyup"), "big.bin")
            self.record(results, kind, "copyup", lambda: ag.op("copyup", path=big), 1)
            if kind == "plain":  # no copy-up in a plain directory: the baseline is the append
                ag.call(cmd="truncate", path=big, size=self.d["big_bytes"])
            self.unmount(kind, ag)

    def phase_rmrf(self, kind, ag, results):
        for _ in range(self.a.repeat_slow):
            if kind == "plain":
                base = os.path.join(self.work, "run", "plain-copy")
                os.makedirs(base)
                subprocess.run(["cp", "-a", self.d["tree"], base], check=True)
                target = os.path.join(base, "tree")
            else:
                target = os.path.join(self.mount(kind, ag, "rmrf"), "tree")
            self.record(results, kind, "rmrf", lambda: ag.op("rmrf", path=target), 1)
            self.unmount(kind, ag)

    def run(self) -> dict:
        a = self.a
        data = os.path.join(self.work, "data")
        if os.path.exists(data):
            rmtree(data)
        os.makedirs(data)
        t0 = time.monotonic()
        log(f"generating {a.files} files in {a.dirs} dirs ({a.tree_mb} MiB) + {a.big_mb} MiB file under {data}")
        self.d = generate(data, a)
        log(f"generated in {time.monotonic() - t0:.1f} s")
        out = {"config": {k: v for k, v in vars(a).items() if not k.startswith("_")},
               "workload": self.d, "cold_method": self.cold_method(), "modes": {}}
        for mode in a.modes:
            log(f"[{mode}]")
            results: dict = {}
            self.run_mode(mode == "pinned", results)
            out["modes"][mode] = results
            print(table(mode, results, a.contenders, self.cold_method()), flush=True)
        return out

    def cold_method(self) -> str:
        if self.drop:
            return "fresh mount + sync; echo 3 > /proc/sys/vm/drop_caches (as root)"
        return "fresh mount + posix_fadvise(DONTNEED) on the lower big file (not root: no drop_caches)"


def median(v):
    if isinstance(v, list) and v:
        return statistics.median(v)
    return None


def table(mode: str, results: dict, contenders: list[str], cold: str) -> str:
    cols = [c for c in CONTENDERS if c in contenders]
    lines = [f"\n== {mode} ==  (seconds, median; cold = {cold})"]
    hdr = f"{'operation':<27}" + "".join(f"{HEADERS[c]:>11}" for c in cols)
    hdr += f"  {'fusefs/fuse-ovl':>22}  {'fusefs/kernel':>13}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for key, label, slow, target in OPS:
        if key not in results:
            continue
        row = f"{label:<27}"
        for c in cols:
            v = results[key].get(c)
            m = median(v)
            row += f"{m:>11.3f}" if m is not None else f"{'FAIL' if isinstance(v, dict) else '-':>11}"
        f, o, k = (median(results[key].get(c)) for c in ("fusefs", "fuse-overlayfs", "kernel"))
        if f is not None and o:
            r = f / o
            mark = ""
            if target:
                mark = f" (<={target:g} {'ok' if r <= target else 'MISS'})"
            row += f"  {f'{r:.2f}x{mark}':>22}"
        else:
            row += f"  {'-':>22}"
        row += f"  {f'{f / k:.2f}x' if f is not None and k else '-':>13}"
        lines.append(row)
    errs = [(key, c, v["error"]) for key, by in results.items() for c, v in by.items() if isinstance(v, dict)]
    grouped: dict = {}
    for key, c, e in errs:
        grouped.setdefault((c, e), []).append(key)
    for (c, e), keys in grouped.items():
        lines.append(f"  FAIL {c} ({', '.join(keys)}): {e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse(argv):
    p = argparse.ArgumentParser(prog="bench-fs", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="~10x smaller workload (smoke run)")
    p.add_argument("--files", type=int, help="files in the tree (default 20000; quick 2000)")
    p.add_argument("--dirs", type=int, help="directories in the tree (default 2000; quick 200)")
    p.add_argument("--tree-mb", type=int, help="tree size in MiB (default 500; quick 50)")
    p.add_argument("--big-mb", type=int, help="big file size in MiB (default 1024; quick 100)")
    p.add_argument("--untar-files", type=int, help="files in the untar archive (default 10000; quick 1000)")
    p.add_argument("--randreads", type=int, help="4 KiB random reads (default 20000; quick 2000)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeat", type=int, default=3, help="repeats of the fast ops (default 3)")
    p.add_argument("--repeat-slow", type=int, default=1, help="repeats of cold read, untar, copy-up, rm -rf (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pin", action="store_true", help="only the pinned run (everything under taskset -c 0)")
    g.add_argument("--no-pin", action="store_true", help="only the unpinned run")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    p.add_argument("--only-ops", default="", help="write phases to run: untar,copyup,rmrf (default all)")
    p.add_argument("--json", help="write the raw numbers here")
    p.add_argument("--user", help="as root: run the benchmark as this user (default: tester)")
    p.add_argument("--dir", help="work directory (not root: default under $TMPDIR; as root: skip the loop image)")
    p.add_argument("--image-gb", type=float, help="as root: size of the ext4 image (default from the workload)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    # internal
    p.add_argument("--agent", help=argparse.SUPPRESS)
    p.add_argument("--logdir", help=argparse.SUPPRESS)
    p.add_argument("--bench-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--drop-fds", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    q = a.quick
    for name, full, quick in (("files", 20000, 2000), ("dirs", 2000, 200), ("tree_mb", 500, 50),
                              ("big_mb", 1024, 100), ("untar_files", 10000, 1000), ("randreads", 20000, 2000)):
        if getattr(a, name) is None:
            setattr(a, name, quick if q else full)
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = set(a.contenders) - set(CONTENDERS)
    if bad:
        p.error(f"unknown contenders: {', '.join(sorted(bad))}")
    a.only_ops = [o for o in a.only_ops.split(",") if o]
    a.modes = ["pinned"] if a.pin else ["unpinned"] if a.no_pin else ["unpinned", "pinned"]
    return a


def bench_as_user(a, work: str, drop) -> dict:
    os.makedirs(work, exist_ok=True)
    b = Bench(a, work, drop)
    try:
        return b.run()
    finally:
        try:
            b.cleanup_runs()
        except Exception as e:
            log(f"cleanup of {work}/run failed: {e}")


def write_json(path: str, out: dict) -> None:
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)


def check_journal(path: str) -> str | None:
    """A warning if PATH is on ext4 without a journal (or we cannot tell)."""
    st = os.stat(path)
    best, fstype, dev = "", "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].encode().decode("unicode_escape")
            sep = fields.index("-")
            if fields[2] == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" and len(mp) >= len(best) \
                    and (path + "/").startswith(mp.rstrip("/") + "/"):
                best, fstype, dev = mp, fields[sep + 1], fields[sep + 2]
    if fstype == "ext4":
        name = os.path.basename(dev)
        jbd = [j for j in os.listdir("/proc/fs/jbd2")] if os.path.isdir("/proc/fs/jbd2") else []
        if not any(j.startswith(name + "-") for j in jbd):
            return (f"{path} is on ext4 {dev} WITHOUT a journal: file creation after mass deletion is "
                    f"4-12x slower there, so untar/rm -rf results may be skewed; run as root for a "
                    f"journaled loop image, or pass --dir on another filesystem")
        return None
    if fstype in ("tmpfs",):
        return f"{path} is on tmpfs: kernel overlay and the FUSE daemons see a RAM filesystem; cold reads mean little"
    return f"{path} is on {fstype or 'an unknown fs'}: results may be skewed if it is an unjournaled filesystem"


def main_user(a) -> int:
    drop = None
    if a.drop_fds:
        rfd, wfd = (int(x) for x in a.drop_fds.split(","))
        req, ans = os.fdopen(wfd, "w", buffering=1), os.fdopen(rfd, "r")

        def drop():
            req.write("drop\n")
            if ans.readline().strip() != "ok":
                raise RuntimeError("root helper failed to drop caches")
    if a.dir:
        work = os.path.abspath(a.dir)
        os.makedirs(work, exist_ok=True)
        own = False
    else:
        work = tempfile.mkdtemp(prefix="bench-fs.")
        own = True
    if not a.bench_child:
        warn = check_journal(work)
        log(f"WARNING: {warn}" if warn else f"{work} is on a journaled ext4")
        if os.geteuid() != 0:
            log("not root: cold reads use a fresh mount + posix_fadvise(DONTNEED), not drop_caches")
    try:
        out = bench_as_user(a, work, drop)
        out["host"] = {"uname": os.uname().release, "cpus": os.cpu_count(), "user": pwd.getpwuid(os.getuid()).pw_name,
                       "workdir": work, "fs_warning": check_journal(work)}
        dest = a.json if a.json and not a.bench_child else (os.path.join(work, "results.json") if a.bench_child else None)
        if dest:
            write_json(dest, out)
            if not a.bench_child:
                log(f"raw numbers in {dest}")
    finally:
        if own and not a.keep:
            rmtree(work)
    return 0


def main_root(a, argv) -> int:
    user = a.user or "tester"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        log(f"user {user!r} does not exist; pass --user NAME (an unprivileged account)")
        return 2
    if pw.pw_uid == 0:
        log("--user must be an unprivileged account")
        return 2
    top = tempfile.mkdtemp(prefix="bench-fs.", dir="/tmp")
    os.chmod(top, 0o755)
    mnt = os.path.join(top, "fs")
    img = os.path.join(top, "ext4.img")
    loopdev = None
    mounted = False
    child = None
    try:
        if a.dir:
            work = os.path.join(os.path.abspath(a.dir), "bench-fs-work")
            os.makedirs(work, exist_ok=True)
        else:
            need = 2 * a.tree_mb * MiB + 2 * a.big_mb * MiB + 1024 * MiB
            size = int(a.image_gb * (1 << 30)) if a.image_gb else max(need, 1 << 30)
            os.mkdir(mnt)
            with open(img, "wb") as f:
                f.truncate(size)
            subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
            r = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", img], capture_output=True, text=True)
            if r.returncode:
                log(f"losetup --direct-io=on failed ({r.stderr.strip()}); using a buffered loop device")
                r = subprocess.run(["losetup", "-f", "--show", img], capture_output=True, text=True, check=True)
            loopdev = r.stdout.strip()
            subprocess.run(["mount", "-t", "ext4", loopdev, mnt], check=True)
            mounted = True
            work = os.path.join(mnt, "work")
            os.mkdir(work)
            log(f"journaled ext4 image {human(size)} on {loopdev} at {mnt}; benchmarking as {user}")
        os.chown(work, pw.pw_uid, pw.pw_gid)
        warn = check_journal(work)
        if warn:
            log(f"WARNING: {warn}")
        req_r, req_w = os.pipe()  # child -> root: "drop"
        ans_r, ans_w = os.pipe()  # root -> child: "ok"
        args = [x for x in argv if True]
        # the child gets --dir work and the drop pipe; --json is written by us
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
               "env", f"HOME={pw.pw_dir}", f"USER={user}", f"LOGNAME={user}",
               f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
               PY, SELF, *strip_opts(args, ("--json", "--dir", "--user", "--image-gb")),
               "--bench-child", "--dir", work, "--drop-fds", f"{ans_r},{req_w}"]
        child = subprocess.Popen(cmd, pass_fds=(ans_r, req_w), cwd="/")
        os.close(ans_r)
        os.close(req_w)

        def helper():
            with os.fdopen(req_r) as rq, os.fdopen(ans_w, "w", buffering=1) as an:
                for line in rq:
                    if line.strip() == "drop":
                        try:
                            os.sync()
                            with open("/proc/sys/vm/drop_caches", "w") as f:
                                f.write("3\n")
                            an.write("ok\n")
                        except OSError as e:
                            an.write(f"error {e}\n")

        threading.Thread(target=helper, daemon=True).start()
        rc = child.wait()
        child = None
        res = os.path.join(work, "results.json")
        if a.json and os.path.exists(res):
            shutil.copyfile(res, a.json)
            log(f"raw numbers in {a.json}")
        return rc
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        # Leftover FUSE mounts (a killed run) would keep the image busy.
        with open("/proc/mounts") as f:
            for line in f:
                mp = line.split()[1].encode().decode("unicode_escape")
                if mp.startswith(top + "/") and line.split()[2].startswith("fuse"):
                    subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        if mounted:
            if subprocess.run(["umount", mnt]).returncode:
                subprocess.run(["umount", "-l", mnt])
        if loopdev:
            subprocess.run(["losetup", "-d", loopdev], stderr=subprocess.DEVNULL)
        if a.dir and not a.keep:
            rmtree(os.path.join(os.path.abspath(a.dir), "bench-fs-work"))
        shutil.rmtree(top, ignore_errors=True)


def strip_opts(argv, names):
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
            continue
        if x in names:
            skip = True
            continue
        if any(x.startswith(n + "=") for n in names):
            continue
        out.append(x)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    if a.agent:
        return agent_main(a.agent, a.logdir)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    try:
        if os.geteuid() == 0 and not a.bench_child:
            rc = main_root(a, argv)
        else:
            rc = main_user(a)
    except KeyboardInterrupt:
        return 130
    if not a.bench_child:
        log(f"total {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
