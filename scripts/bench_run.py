"""Benchmark starting containers, exec into them and what idle ones cost: rootless against podman and ch-run.

Started by scripts/bench-run with the repo's .venv python.

As root it sets up what scripts/bench-pull sets up (and with its code): a journaled ext4
image under /tmp, loop-mounted, for every store; docker-registry on 127.0.0.1 holding
busybox and debian from base_images.py; the contenders run as --user through setpriv
with a clean environment.  rootless and podman pull both images into their own stores
before anything is timed; ch-run gets a flat directory made from the same layer with
ch-convert.  Timed commands go round the contenders in turn, so that a slow spell of
the host is spread over all of them; the load average is printed with each table.

Contenders:

* rootless: ``rootless --root STORE run --rm --network MODE IMG true`` for host, none
  and the default mode, whose backend (pasta or slirp4netns) the row names.  These go
  through its warm process (rootless/warm.py), which the warm-up try starts; the
  ``rootless (no warm)`` rows run with ROOTLESS_WARM=0: the engine loaded by every command.
  Its storage is the default, ``auto``: overlay storage where it works (here it does).
* rootless-fusefs: the same with ``"storage-driver": "fusefs"``: each container on a
  fusefs mount of its own.
* podman: rootless podman 4 with the overlay driver and fuse-overlayfs as
  mount_program (as bench-pull runs it), ``--runtime runc``: crun 1.8 refuses to start
  anything on a host whose cgroup v2 hierarchy holds a controller while v1 is mounted
  too ("cgroups in hybrid mode not supported"), and runc refuses ``--cgroups=disabled``,
  so cgroups stay on and runc, rootless on cgroup v1, leaves them alone.  Its default
  network is slirp4netns.  The pause process that holds its user namespace is started
  by the pulls, before anything is timed, and killed at the end.
* ch-run: charliecloud's ``ch-run DIR -- CMD``: no daemon, no storage driver, no
  network namespace, no exec; the floor for a container in a user namespace.
* references: ``unshare -Ur true`` (a user namespace and nothing else) and ``true``
  (what the harness, setpriv and env, costs by itself; it is in every row).

Parts:

1. start: ``run --rm IMG true``, median of --tries after one warm-up, page cache warm.
2. exec: ``exec NAME true`` into a running ``sleep 1000`` container.
3. one idle container (``run -d IMG sleep 1000``) per network mode: RSS and PSS
   (/proc/PID/smaps_rollup) of the engine's processes that stay, i.e. every new process
   that carries this run's marker in its environment or names the engine's store or
   runtime directory on its command line, less the container's own process tree.
   podman's pause process is one per user, whatever the number of containers: it is
   shown apart, as is rootless's warm process (one per user, gone after 10 minutes idle).
4. ten idle containers of debian (not with --quick; root only: it drops the page cache
   first): the engines' PSS, and the page cache the image takes, measured with fincore
   on the files the engine serves the containers from (rootless: the layer tar and its
   index; podman: the layer's diff directory; ch-run: the flat directory) and, where a
   container's root is a FUSE mount of its own, through /proc/PID/root from inside the
   container's user namespace (a FUSE mount's page cache is its own, not the backing
   file's).  Measured after starting the ten, after ``cat`` of every file under /usr in
   the first, and in all ten; /proc/meminfo's Cached+Buffers alongside, which counts
   everything on the host.  ch-run has no exec: its cats are new ch-runs on the same
   directory.

Not root: no loop image, no drop_caches and no part 4; the contenders run as yourself.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import base_images
import bench_pull
from bench_fs import check_journal, human
from bench_pull import SYSTEM_PATH, Runner, User, drop_caches, kill_pause_processes, log, rmtree

IMAGES = {"busybox": "busybox:latest", "debian": "debian:bookworm"}
MARKER = "BENCH_RUN_ID"
#: A command that reads every file of the image's /usr once.
CAT_USR = ["sh", "-c", "find /usr -type f -exec cat {} + > /dev/null"]
IDLE = ["sleep", "1000"]
TEN = 10
#: Tries of the ten-container part of one engine while someone else keeps dropping the caches.
ATTEMPTS = 3
HOST, NONE, DEFAULT = "host", "none", "default"
COLD = "rootless (no warm)"


# --------------------------------------------------------------------------- processes and memory

@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    name: str
    ours: bool     # carries this run's marker, or names one of its directories on its command line


def processes(marker: bytes, paths: tuple[bytes, ...]) -> dict[int, Proc]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry.name}/status").read_text()
            cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            try:
                environ = Path(f"/proc/{entry.name}/environ").read_bytes()
            except PermissionError:   # not root: others' processes
                environ = b""
        except OSError:               # gone meanwhile
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        ours = marker in environ.split(b"\0") or any(p in cmdline for p in paths)
        found[int(entry.name)] = Proc(int(entry.name), int(fields.get("PPid", "0")), fields.get("Name", "?"), ours)
    return found


def descendants(procs: dict[int, Proc], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, ()))
    return seen


def engine_processes(procs: dict[int, Proc], before: set[int], extra: Iterable[int], containers: Iterable[int]) -> list[Proc]:
    """The new processes the engine keeps for its containers: ours, EXTRA (conmon) and their children,
    less the containers' own trees."""
    inside = descendants(procs, containers)
    roots = {p.pid for p in procs.values() if p.ours and p.pid not in before} | set(extra)
    return [procs[pid] for pid in sorted(descendants(procs, roots) - inside - before)]


@dataclass
class Memory:
    """Summed over processes: RSS, PSS (shared pages split among their users) and USS (pages
    no other process maps: what ending the processes would give back)."""

    rss: int = 0
    pss: int | None = 0       # None (both) where smaps_rollup could not be read
    uss: int | None = 0
    count: int = 0
    names: dict[str, int] = field(default_factory=dict)

    def add(self, proc: Proc) -> None:
        if not os.path.exists(f"/proc/{proc.pid}"):
            return   # ended since the snapshot (an exec session's helper)
        rss, pss, uss = memory_of(proc.pid)
        self.rss += rss
        self.pss = None if pss is None or self.pss is None else self.pss + pss
        self.uss = None if uss is None or self.uss is None else self.uss + uss
        self.count += 1
        self.names[proc.name] = self.names.get(proc.name, 0) + 1

    def describe(self) -> str:
        if not self.count:
            return "none"
        return ", ".join(f"{n} x{k}" if k > 1 else n for n, k in sorted(self.names.items()))


def memory_of(pid: int) -> tuple[int, int | None, int | None]:
    """RSS, PSS and USS in bytes; PSS and USS None where smaps_rollup is not readable (RSS is then VmRSS)."""
    try:
        values = {}
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                values[key] = int(rest.split()[0]) * 1024
        return values["Rss"], values["Pss"], values["Private_Clean"] + values["Private_Dirty"]
    except (OSError, KeyError, ValueError):
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024, None, None
    except OSError:
        pass
    return 0, None, None


def measure(procs: Iterable[Proc]) -> Memory:
    m = Memory()
    for p in procs:
        m.add(p)
    return m


def cache_drops() -> tuple[int, int]:
    """How often anyone wrote to /proc/sys/vm/drop_caches: page cache (1, 3) and slab (2, 3)."""
    counts = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        counts[key] = int(value or 0)
    return counts.get("drop_pagecache", 0), counts.get("drop_slab", 0)


def meminfo_cache() -> int:
    """Cached + Buffers from /proc/meminfo, in bytes: the whole host's page cache."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Cached", "Buffers"):
            total += int(rest.split()[0]) * 1024
    return total


def fincore(paths: list[str], userns_of: int | None = None) -> int:
    """Bytes of PATHS in the page cache; with USERNS_OF, asked from inside that process's user
    namespace, where its FUSE mounts let us in."""
    total = 0
    for i in range(0, len(paths), 400):
        cmd = ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", *paths[i:i + 400]]
        if userns_of is not None:
            cmd = ["nsenter", "-U", "-t", str(userns_of), *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        total += sum(int(x) for x in done.stdout.split() if x.isdigit())
        if done.returncode and not done.stdout:
            raise RuntimeError(f"fincore failed: {done.stderr.strip()[-300:]}")
    return total


def files_under(top: Path) -> list[str]:
    """Every regular file below TOP (a file is itself), symlinks not followed."""
    if top.is_file():
        return [str(top)]
    out = []
    for dirpath, _, names in os.walk(top):
        out += [os.path.join(dirpath, n) for n in names if os.path.isfile(os.path.join(dirpath, n))
                and not os.path.islink(os.path.join(dirpath, n))]
    return out


def own_fuse_root(pid: int) -> bool:
    """Whether the container's / is a FUSE mount (its page cache is then the mount's own)."""
    fstype = ""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == "/" and "-" in fields:
                fstype = fields[fields.index("-") + 1]   # the last one mounted on / is the one seen
    return fstype.startswith("fuse")


@dataclass
class CachePoint:
    """The page cache an image takes at one moment."""

    layer_files: int          # the files the engine serves the containers from
    mounts: list[int]         # each container's own FUSE root, where it has one
    meminfo_growth: int       # Cached+Buffers since the drop: the whole host

    @property
    def image(self) -> int:
        return self.layer_files + sum(self.mounts)


@dataclass
class Idle:
    contender: str
    network: str
    kind: str
    memory: Memory


@dataclass
class Ten:
    """Part 4 for one engine."""

    backing_files: int = 0
    idle: Memory | None = None
    after_cats: Memory | None = None
    points: dict[str, CachePoint] = field(default_factory=dict)   # after_start, after_cat_1, after_cat_all
    cat_seconds: list[float] = field(default_factory=list)
    foreign_drops: int = 0    # drop_caches writes by someone else meanwhile: the page cache rows are void
    error: str | None = None

    def total(self) -> int:
        assert self.after_cats is not None
        return (self.after_cats.pss or self.after_cats.rss) + self.points["after_cat_all"].image


# --------------------------------------------------------------------------- the contenders

@dataclass
class Box:
    """A running container as the benchmark sees it."""

    name: str
    pid: int                              # the container's first process, on the host
    lowers: list[str]                     # the files or directories its image is served from
    extra: list[int] = field(default_factory=list)   # engine processes not found by marker (conmon)


class Engine:
    """What the benchmark asks of a container engine; the commands run as the user."""

    name = ""

    def __init__(self, runner: Runner, env: dict[str, str], refs: dict[str, str]) -> None:
        self.runner = runner
        self.env = env
        self.refs = refs                  # image name -> what run takes
        self.problem: str | None = None
        self.default_network = DEFAULT

    def base(self) -> list[str]:
        raise NotImplementedError

    def call(self, args: list[str], timeout: float = 120) -> bench_pull.Outcome:
        return self.runner.run([*self.base(), *args], self.env, timeout)

    def check(self, args: list[str], timeout: float = 120) -> str:
        out = self.call(args, timeout)
        if out.rc:
            raise RuntimeError(f"{self.name} {' '.join(args)}: exit {out.rc}: {tail(out.output)}")
        return out.output

    def net(self, network: str) -> list[str]:
        return [] if network == DEFAULT else ["--network", network]

    def start_cmd(self, image: str, network: str) -> list[str]:
        return [*self.base(), "run", "--rm", *self.net(network), self.refs[image], "true"]

    def exec_cmd(self, name: str, argv: list[str]) -> list[str] | None:
        return [*self.base(), "exec", name, *argv]

    def detach(self, image: str, name: str, network: str) -> Box:
        self.check(["run", "-d", "--name", name, *self.net(network), self.refs[image], *IDLE])
        return self.inspect(name)

    def inspect(self, name: str) -> Box:
        record = json.loads(self.check(["inspect", name]))[0]
        lowers = record["GraphDriver"]["Data"]["LowerDir"].split(":")
        return Box(name, int(record["State"]["Pid"]), lowers, self.extra_pids(record))

    def extra_pids(self, record: dict) -> list[int]:  # type: ignore[type-arg]
        return []

    def remove(self, names: list[str]) -> None:
        if names:
            self.call(["rm", "-f", *names], 300)

    def remove_all(self) -> None:
        raise NotImplementedError

    def probe_default(self, image: str) -> None:
        """Run once in the default network mode; learn its name, or why the engine does not run."""
        out = self.call(["run", "--name", "bench-probe", self.refs[image], "true"])
        try:
            if out.rc:
                self.problem = f"run fails: exit {out.rc}: {tail(out.output)}"
                return
            record = json.loads(self.check(["inspect", "bench-probe"]))[0]
            mode = record["HostConfig"].get("NetworkMode") or "?"
            backend = (record.get("NetworkSettings") or {}).get("Backend")
            self.default_network = f"{mode} ({backend})" if backend else mode
        finally:
            self.call(["rm", "-f", "bench-probe"])


class Rootless(Engine):
    name = "rootless"

    def __init__(self, runner: Runner, env: dict[str, str], refs: dict[str, str], store: Path) -> None:
        # A warm process of this run's own: the user's would serve these commands too (it is
        # the same user), but without the run's marker, which is how its containers' engine
        # processes are found. Another idle time is another warm process (rootless/warm.py).
        super().__init__(runner, {**env, "ROOTLESS_WARM": f"{600 + secrets.randbelow(1000) / 1000:.3f}"}, refs)
        self.store = store

    def base(self) -> list[str]:
        return [bench_pull.rootless_bin(), "--root", str(self.store)]

    def remove_all(self) -> None:
        out = self.call(["ps", "-aq"])
        self.remove(out.output.split() if out.rc == 0 else [])
        # Overlay storage's image mounts outlive their last container by up to a watcher's
        # round (10 s), and the run's sweep kills their daemons with the rest: unmounted here.
        self.runner.run(["sh", "-c", 'for m in "$0"/run/lowers/*/mnt; do fusermount3 -u -z "$m"; done; true',
                         str(self.store)], self.env, 60)

    def inspect(self, name: str) -> Box:
        box = super().inspect(name)
        data = json.loads(self.check(["inspect", name]))[0]["GraphDriver"]["Data"]
        if data.get("SharedLowerDir"):
            box.lowers.append(data["SharedLowerDir"])
        return box

    def cold_env(self) -> dict[str, str]:
        """The environment of a rootless that loads the engine itself: no warm process."""
        return {**self.env, "ROOTLESS_WARM": "0"}

    def warm_pid(self, marker: bytes) -> int | None:
        """The warm process its commands started (it carries their environment, marker included)."""
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                    environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
                    if b"rootless.warm" in argv and marker in environ:
                        return int(entry.name)
        return None


class RootlessFusefs(Rootless):
    """rootless with ``"storage-driver": "fusefs"``, on a store of its own: each container on a
    fusefs mount of its own, served by its helper (the default, ``auto``, takes overlay storage
    where it works: rootless/runtime/shared.py).  Both are served from the layer tars; overlay
    containers also from the image's shared mount, whose page cache counts once."""

    name = "rootless-fusefs"

    def __init__(self, runner: Runner, env: dict[str, str], refs: dict[str, str], store: Path, config: Path) -> None:
        super().__init__(runner, env, refs, store)
        self.env = {**self.env, "ROOTLESS_CONFIG": str(config)}


class Podman(Engine):
    name = "podman"

    def __init__(self, runner: Runner, env: dict[str, str], refs: dict[str, str], store: Path, runroot: Path) -> None:
        super().__init__(runner, env, refs)
        self.store = store
        self.runroot = runroot

    def base(self) -> list[str]:
        return [*bench_pull.podman_command(self.store, self.runroot), "--runtime", "runc"]

    def extra_pids(self, record: dict) -> list[int]:  # type: ignore[type-arg]
        return [int(record["State"]["ConmonPid"])] if record["State"].get("ConmonPid") else []

    def remove(self, names: list[str]) -> None:
        if names:
            self.call(["rm", "-f", "-t", "0", *names], 300)

    def remove_all(self) -> None:
        self.call(["rm", "-a", "-f", "-t", "0"], 300)

    def pause_pid(self) -> int | None:
        for pidfile in glob.glob(os.path.join(self.env["XDG_RUNTIME_DIR"], "**", "pause.pid"), recursive=True):
            with contextlib.suppress(OSError, ValueError):
                return int(Path(pidfile).read_text().strip())
        return None


class ChRun(Engine):
    """ch-run over flat directories: refs map image names to them.  Its idle containers are
    ch-run processes of our own (it execs the command: no engine process stays)."""

    name = "ch-run"

    def __init__(self, runner: Runner, env: dict[str, str], refs: dict[str, str]) -> None:
        super().__init__(runner, env, refs)
        self.default_network = "host (no netns)"
        self.boxes: dict[str, subprocess.Popen[bytes]] = {}

    def base(self) -> list[str]:
        return ["ch-run"]

    def start_cmd(self, image: str, network: str) -> list[str]:
        return ["ch-run", self.refs[image], "--", "true"]

    def exec_cmd(self, name: str, argv: list[str]) -> list[str] | None:
        return None

    def run_in(self, image: str, argv: list[str]) -> list[str]:
        return ["ch-run", self.refs[image], "--", *argv]

    def detach(self, image: str, name: str, network: str) -> Box:
        proc = subprocess.Popen(self.runner.user.command(self.run_in(image, IDLE), self.env), cwd="/",
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.boxes[name] = proc
        deadline = time.monotonic() + 30
        while not Path(f"/proc/{proc.pid}/comm").read_text().startswith("sleep"):  # setpriv, env, ch-run exec on
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ch-run {self.refs[image]} -- sleep did not start (exit {proc.poll()})")
            time.sleep(0.01)
        return Box(name, proc.pid, [self.refs[image]])

    def remove(self, names: list[str]) -> None:
        for name in names:
            proc = self.boxes.pop(name, None)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait()

    def remove_all(self) -> None:
        self.remove(list(self.boxes))


@dataclass(frozen=True)
class Load:
    """How busy the host is: the 1-minute load average, and the processes in uninterruptible
    sleep (a hung FUSE request, say), which count in it without taking any CPU."""

    average: float
    blocked: int
    drops: int        # writes to drop_caches so far, by anyone

    @classmethod
    def now(cls) -> Load:
        blocked = 0
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_blocked "):
                blocked = int(line.split()[1])
        return cls(os.getloadavg()[0], blocked, sum(cache_drops()))


def load_line(load: tuple[Load, Load], drops: bool = True) -> str:
    """DROPS: this run dropped no caches meanwhile, so that any drop counted is someone else's."""
    start, end = load
    text = (f"load average {start.average:.2f} at the start, {end.average:.2f} at the end, of which "
            f"{start.blocked} and {end.blocked} blocked processes; {os.cpu_count()} CPUs")
    if drops and end.drops > start.drops:
        text += f"; someone else dropped the caches {end.drops - start.drops} times meanwhile"
    return text


def size(n: int | None) -> str:
    return human(n) if n is not None else "?"


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------- timed rows

@dataclass
class Row:
    """One line of a latency table: a command timed over the tries."""

    contender: str
    network: str              # what the row shows
    kind: str                 # host, none, default or "-": which podman row its ratio is taken against
    command: list[str] | None  # None: not available (reason in error)
    env: dict[str, str]
    times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.error else None


def time_rows(runner: Runner, rows: list[Row], tries: int, what: str) -> None:
    """Try 0 warms up; tries 1..TRIES count.  Rounds go over all rows, so that noise spreads."""
    for n in range(tries + 1):
        for row in rows:
            if row.error or row.command is None:
                continue
            out = runner.run(row.command, row.env, 120)
            if out.rc:
                row.error = f"exit {out.rc}: {tail(out.output)}"
                log(f"  {what} {row.contender} {row.network}: FAILED ({row.error})")
            elif n:
                row.times.append(out.seconds)
        log(f"  {what}: round {n}/{tries} done" + (" (warm-up)" if n == 0 else ""))


def latency_table(title: str, results: dict[str, list[Row]], load: tuple[Load, Load]) -> str:
    lines = [f"\n== {title} ==", load_line(load)]
    hdr = f"{'image':<18}{'contender':<20}{'network':<24}{'median':>8}{'min':>8}{'max':>8}{'vs podman':>11}"
    lines += [hdr, "-" * len(hdr)]
    for image, rows in results.items():
        podman = {r.kind: r.median for r in rows if r.contender == "podman"}
        for i, r in enumerate(rows):
            line = f"{image if i == 0 else '':<18}{r.contender:<20}{r.network:<24}"
            if r.command is None or r.error:
                line += f"{'n/a' if r.command is None else 'FAIL':>8}   {r.error or ''}"
            else:
                m = r.median
                assert m is not None
                base = podman.get(r.kind if r.kind != "-" else HOST)
                ratio = f"{m / base:.2f}x" if base else "-"
                line += f"{m * 1e3:>8.1f}{min(r.times) * 1e3:>8.1f}{max(r.times) * 1e3:>8.1f}{ratio:>11}"
            lines.append(line)
    lines.append("  milliseconds, wall clock of the whole command as the user (setpriv and env included: the "
                 "'true' row); ch-run and the references are compared with podman --network host")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, a: argparse.Namespace, runner: Runner, engines: list[Engine], marker: str,
                 paths: tuple[bytes, ...]) -> None:
        self.a = a
        self.runner = runner
        self.engines = engines
        self.marker = f"{MARKER}={marker}".encode()
        self.paths = paths
        self.by_name = {e.name: e for e in engines}

    def ready(self) -> list[Engine]:
        return [e for e in self.engines if not e.problem]

    def snapshot(self) -> dict[int, Proc]:
        return processes(self.marker, self.paths)

    # -- 1. start
    def start(self, env: dict[str, str]) -> dict[str, list[Row]]:
        results = {}
        for image in self.a.images:
            rows = []
            for e in self.engines:
                modes = [HOST, NONE, DEFAULT] if e.name != "ch-run" else [DEFAULT]
                for mode in modes:
                    shown = e.default_network if mode == DEFAULT else mode
                    rows.append(Row(e.name, shown, mode if e.name != "ch-run" else "-",
                                    None if e.problem else e.start_cmd(image, mode), e.env, error=e.problem))
                if type(e) is Rootless:
                    rows.append(Row(COLD, HOST, HOST, None if e.problem else e.start_cmd(image, HOST), e.cold_env(),
                                    error=e.problem))
            rows.append(Row("unshare -Ur true", "-", "-", ["unshare", "-Ur", "true"], env))
            rows.append(Row("true (harness)", "-", "-", ["true"], env))
            log(f"start: {IMAGES[image]}, {self.a.tries} tries")
            time_rows(self.runner, rows, self.a.tries, f"start {image}")
            results[IMAGES[image]] = rows
        return results

    # -- 2. exec
    def exec(self) -> dict[str, list[Row]]:
        results = {}
        for image in self.a.images:
            rows, started = [], []
            try:
                for e in self.engines:
                    command = e.exec_cmd("bench-exec", ["true"])
                    row = Row(e.name, HOST if command else "-", HOST, command, e.env,
                              error=e.problem or (None if command else "no exec"))
                    if command is not None and not e.problem:
                        e.detach(image, "bench-exec", HOST)
                        started.append(e)
                    rows.append(row)
                    if type(e) is Rootless:
                        rows.append(Row(COLD, HOST, HOST, command, e.cold_env(), error=row.error))
                log(f"exec: {IMAGES[image]}, {self.a.tries} tries")
                time_rows(self.runner, rows, self.a.tries, f"exec {image}")
            finally:
                for e in started:
                    e.remove(["bench-exec"])
            results[IMAGES[image]] = rows
        return results

    # -- 3. one idle container
    def idle(self, image: str) -> list[Idle]:
        out = []
        for e in self.ready():
            modes = [HOST, NONE, DEFAULT] if e.name != "ch-run" else [DEFAULT]
            for mode in modes:
                before = set(self.snapshot())
                box = e.detach(image, "bench-idle", mode)
                try:
                    time.sleep(1)   # let whatever the start leaves behind settle
                    procs = self.snapshot()
                    mem = measure(engine_processes(procs, before, box.extra, [box.pid]))
                finally:
                    e.remove(["bench-idle"])
                shown = e.default_network if mode == DEFAULT else mode
                out.append(Idle(e.name, shown, mode if e.name != "ch-run" else HOST, mem))
                log(f"  idle {e.name} {shown}: {mem.describe()}, PSS {size(mem.pss)}")
        return out

    def pause(self) -> tuple[int, int | None, int | None] | None:
        """RSS, PSS and USS of podman's pause process."""
        podman = self.by_name.get("podman")
        pid = podman.pause_pid() if isinstance(podman, Podman) and not podman.problem else None
        return memory_of(pid) if pid is not None else None

    def warm(self) -> tuple[int, int | None, int | None] | None:
        """RSS, PSS and USS of rootless's warm process."""
        rootless = self.by_name.get("rootless")
        pid = rootless.warm_pid(self.marker) if isinstance(rootless, Rootless) and not rootless.problem else None
        return memory_of(pid) if pid is not None else None

    # -- 4. ten idle containers
    def ten(self, image: str, usr_files: list[str]) -> dict[str, Ten]:
        results = {}
        for e in self.ready():
            for attempt in range(1, ATTEMPTS + 1):
                log(f"ten: {e.name}" + (f", attempt {attempt}" if attempt > 1 else ""))
                results[e.name] = r = Ten()
                before = cache_drops()
                try:
                    self.ten_of(e, image, usr_files, r)
                except RuntimeError as err:
                    r.error = str(err)
                    log(f"  ten {e.name}: FAILED ({err})")
                # Ours is one of each; CI's second pass, for one, drops the inode cache every 0.2 s, and
                # a FUSE inode dropped takes its page cache with it.
                r.foreign_drops = sum(after - was - 1 for after, was in zip(cache_drops(), before))
                if not r.foreign_drops or r.error:
                    break
                log(f"  ten {e.name}: someone else dropped the caches {r.foreign_drops} times meanwhile")
        return results

    def ten_of(self, e: Engine, image: str, usr_files: list[str], r: Ten) -> None:
        names = [f"bench-ten-{i}" for i in range(TEN)]
        before = set(self.snapshot())
        drop_caches()
        m0 = meminfo_cache()
        boxes: list[Box] = []
        try:
            for name in names:
                boxes.append(e.detach(image, name, HOST))
            time.sleep(1)
            backing = sorted({f for box in boxes for lower in box.lowers for f in files_under(Path(lower))}
                             | {f + ".idx" for box in boxes for f in box.lowers if os.path.isfile(f + ".idx")})
            r.backing_files = len(backing)
            r.idle = measure(engine_processes(self.snapshot(), before, [p for b in boxes for p in b.extra],
                                              [b.pid for b in boxes]))
            r.points["after_start"] = self.cache_point(m0, backing, boxes, usr_files)
            for i, box in enumerate(boxes):
                command = e.exec_cmd(box.name, CAT_USR)
                if command is None:
                    assert isinstance(e, ChRun)
                    command = e.run_in(image, CAT_USR)
                out = self.runner.run(command, e.env, 900)
                if out.rc:
                    raise RuntimeError(f"{e.name}: cat /usr in {box.name}: exit {out.rc}: {tail(out.output)}")
                r.cat_seconds.append(out.seconds)
                if i == 0:
                    r.points["after_cat_1"] = self.cache_point(m0, backing, boxes, usr_files)
            time.sleep(1)   # the exec sessions' own processes (podman's conmon) must be gone
            r.after_cats = measure(engine_processes(self.snapshot(), before, [p for b in boxes for p in b.extra],
                                                    [b.pid for b in boxes]))
            r.points["after_cat_all"] = self.cache_point(m0, backing, boxes, usr_files)
        finally:
            e.remove(names)

    def cache_point(self, m0: int, backing: list[str], boxes: list[Box], usr_files: list[str]) -> CachePoint:
        """The page cache now: the backing files, each container's own FUSE root, the host's growth."""
        grown = meminfo_cache() - m0   # first: the fincore runs below cost a little cache of their own
        mounts = []
        for box in boxes:
            if own_fuse_root(box.pid):
                mounts.append(fincore([f"/proc/{box.pid}/root{f}" for f in usr_files], userns_of=box.pid))
        return CachePoint(fincore(backing), mounts, grown)


def ten_table(image: str, ten: dict[str, Ten], load: tuple[Load, Load]) -> str:
    names = list(ten)
    lines = [f"\n== {TEN} idle containers of {image} (network host; sync + drop_caches first) ==",
             load_line(load, drops=False)]
    hdr = f"{'':<46}" + "".join(f"{n:>18}" for n in names)
    lines += [hdr, "-" * len(hdr)]

    def line(label: str, value: Callable[[Ten], str]) -> None:
        cells = []
        for n in names:
            try:
                cells.append("FAIL" if ten[n].error else value(ten[n]))
            except (KeyError, AttributeError, AssertionError, ZeroDivisionError, statistics.StatisticsError):
                cells.append("-")
        lines.append(f"{label:<46}" + "".join(f"{c:>18}" for c in cells))

    def at(key: str, part: Callable[[CachePoint], int]) -> Callable[[Ten], str]:
        return lambda r: human(part(r.points[key]))

    def pss(m: Memory | None) -> str:
        assert m is not None
        return human(m.pss) if m.pss is not None else f"RSS {human(m.rss)}"

    line("engine processes", lambda r: str(r.idle.count if r.idle else "-"))
    line("engine PSS, idle", lambda r: pss(r.idle))
    line("engine PSS, after the cats", lambda r: pss(r.after_cats))
    line("engine USS, after the cats", lambda r: human(r.after_cats.uss) if r.after_cats and r.after_cats.uss is not None
         else "?")
    for label, key in (("after starting", "after_start"), ("after cat /usr in 1", "after_cat_1"),
                       (f"after cat /usr in all {TEN}", "after_cat_all")):
        lines.append(f"page cache {label}:")
        for what, part in (("  the image's layer files (fincore)", lambda c: c.layer_files),
                           ("  the containers' own FUSE mounts (fincore)", lambda c: sum(c.mounts)),
                           ("  Cached+Buffers growth (/proc/meminfo)", lambda c: c.meminfo_growth)):
            line(what, at(key, part))
    line(f"image page cache, {TEN} cats / 1 cat",
         lambda r: f"{r.points['after_cat_all'].image / r.points['after_cat_1'].image:.2f}x")
    line(f"engine PSS + image page cache, {TEN} cats", lambda r: human(r.total()))
    if "podman" in ten:
        line("  vs podman", lambda r: f"{r.total() / ten['podman'].total():.2f}x")
    line("cat /usr in the first container (cold), s", lambda r: f"{r.cat_seconds[0]:.2f}")
    line(f"cat /usr in the other {TEN - 1}, median, s", lambda r: f"{statistics.median(r.cat_seconds[1:]):.2f}")
    line("caches dropped by someone else meanwhile", lambda r: str(r.foreign_drops))
    lines += [f"  {n}: {r.error}" for n, r in ten.items() if r.error]
    lines += [f"  WARNING: {n}: someone else dropped the caches {r.foreign_drops} times during its last attempt "
              f"(CI's second pass does, every 0.2 s): its page cache rows are void; rerun on a quieter host"
              for n, r in ten.items() if r.foreign_drops]
    lines.append("  ch-run has no exec: its cats are new ch-runs over the same directory")
    return "\n".join(lines)


def idle_table(image: str, rows: list[Idle], pause: tuple[int, int | None, int | None] | None,
               warm: tuple[int, int | None, int | None] | None) -> str:
    lines = [f"\n== one idle container ({image}, {' '.join(IDLE)}): the engine's processes that stay =="]
    hdr = (f"{'contender':<18}{'network':<20}{'processes':<40}{'RSS':>11}{'PSS':>11}{'USS':>11}"
           f"{'PSS vs podman':>15}")
    lines += [hdr, "-" * len(hdr)]
    podman = {r.kind: r.memory.pss for r in rows if r.contender == "podman"}

    for r in rows:
        base, pss = podman.get(r.kind), r.memory.pss
        ratio = f"{pss / base:.2f}x" if pss is not None and base else "-"
        lines.append(f"{r.contender:<18}{r.network:<20}{r.memory.describe():<40}{size(r.memory.rss):>11}"
                     f"{size(pss):>11}{size(r.memory.uss):>11}{ratio:>15}")
    if pause:
        lines.append(f"  plus podman's pause process, one per user for all its containers: RSS {size(pause[0])}, "
                     f"PSS {size(pause[1])}, USS {size(pause[2])}")
    if warm:
        lines.append(f"  plus rootless's warm process, one per user for all its commands (gone after 10 minutes idle): "
                     f"RSS {size(warm[0])}, PSS {size(warm[1])}, USS {size(warm[2])}")
    lines.append("  ch-run execs the command: nothing of it stays")
    return "\n".join(lines)


# --------------------------------------------------------------------------- setup and main

def parse(argv: list[str]) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(prog="bench-run", description=doc[0], epilog="\n\n".join(doc[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"3 tries, busybox only, no {TEN}-container part")
    p.add_argument("--tries", type=int, help="timed tries after the warm-up; the median counts (default 10)")
    bench_pull.add_setup_options(p, image_gb=4, keep="keep the work directory")
    a = p.parse_args(argv)
    a.tries = a.tries or (3 if a.quick else 10)
    if a.tries < 1:
        p.error("--tries must be at least 1")
    a.images = ["busybox"] if a.quick else list(IMAGES)
    return a


def problems(runner: Runner, env: dict[str, str]) -> dict[str, str]:
    """Why a contender cannot run here, by name."""
    found = {}
    if not os.access(bench_pull.rootless_bin(), os.X_OK):
        found["rootless"] = found["rootless-fusefs"] = (f"not installed at {bench_pull.rootless_bin()} "
                                                         "(run scripts/setup)")
    for name, progs in (("podman", ("podman", "fuse-overlayfs", "runc")), ("ch-run", ("ch-run", "ch-convert"))):
        for prog in progs:
            if shutil.which(prog, path=SYSTEM_PATH) is None:
                found[name] = f"{prog} is not installed"
    for prog in ("fincore", "nsenter"):
        if shutil.which(prog, path=SYSTEM_PATH) is None:
            raise SystemExit(f"bench-run: {prog} is missing (util-linux)")
    return found


def flat_directory(runner: Runner, env: dict[str, str], layout: base_images.Layout, dest: Path, scratch: Path) -> None:
    """ch-convert the image's one layer (a gzipped tar of a whole tree) into DEST, as the user."""
    if len(layout.layers) != 1:
        raise RuntimeError(f"{layout.ref} has {len(layout.layers)} layers; ch-run's directory needs one")
    blob = layout.path / "blobs" / "sha256" / layout.layers[0].digest.split(":", 1)[1]
    tarball = scratch / f"{layout.name}.tar.gz"
    shutil.copyfile(blob, tarball)     # the cache may be root's alone
    if os.geteuid() == 0:
        os.chown(tarball, runner.user.uid, runner.user.gid)
    out = runner.run(["ch-convert", "-i", "tar", "-o", "dir", str(tarball), str(dest)], env, 600)
    tarball.unlink()
    if out.rc:
        raise RuntimeError(f"ch-convert {layout.ref}: exit {out.rc}: {tail(out.output)}")


def make_env(user: User, home: Path, tmp: Path, runtime_dir: Path, marker: str) -> dict[str, str]:
    return {"HOME": str(home), "USER": user.name, "LOGNAME": user.name, "PATH": SYSTEM_PATH,
            "XDG_RUNTIME_DIR": str(runtime_dir), "TMPDIR": str(tmp), "LANG": "C.UTF-8", MARKER: marker}


def sweep(marker: str, paths: tuple[bytes, ...]) -> None:
    """Kill what this run started and left behind: processes with its marker or naming its directories."""
    for p in processes(f"{MARKER}={marker}".encode(), paths).values():
        if p.ours and p.pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)


def bench(a: argparse.Namespace) -> int:
    try:
        return measure_all(a)
    except RuntimeError as e:   # a contender that fails where the benchmark cannot go on without it
        log(f"error: {e}")
        return 1


def measure_all(a: argparse.Namespace) -> int:
    user = bench_pull.resolve_user(a)
    bench_pull._ROOTLESS[0] = (str(Path(a.rootless).resolve()) if os.sep in a.rootless
                               else (shutil.which(a.rootless) or a.rootless))
    helper = bench_pull.load_registry_helper()
    if not os.access(helper.REGISTRY_BIN, os.X_OK):
        log(f"{helper.REGISTRY_BIN} is missing (as root: apt-get install docker-registry)")
        return 2
    root = os.geteuid() == 0
    if not root:
        log(f"not root: no loop image, no drop_caches, no {TEN}-container part; contenders run as yourself")
    runner = Runner(user)
    marker = secrets.token_hex(8)
    top = Path(tempfile.mkdtemp(prefix="bench-run.", dir="/tmp" if root else None))
    runroot = Path(tempfile.mkdtemp(prefix="br.", dir="/tmp"))   # podman's sockets: the path must be short
    paths = (str(top).encode(), str(runroot).encode())
    engines: list[Engine] = []
    loads: dict[str, tuple[Load, Load]] = {}
    try:
        os.chmod(top, 0o755)
        user.mkdir(runroot, 0o700)
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(bench_pull.bench_filesystem(a, top, user))
            warning = check_journal(str(work))
            if warning:
                log(f"WARNING: {warning}")

            def env_for(name: str) -> dict[str, str]:
                return make_env(user, user.mkdir(work / f"home-{name}", 0o700), user.mkdir(work / f"tmp-{name}", 0o700),
                                user.mkdir(top / f"xdg-{name}", 0o700), marker)

            plain_env = env_for("plain")
            missing = problems(runner, plain_env)
            layouts = {lay.name: lay for lay in bench_pull.build_layouts(a.images,
                                                                         Path(a.cache_dir) if a.cache_dir else None)}
            host = stack.enter_context(bench_pull.serving(helper, work / "registry", list(layouts.values())))
            refs = {name: f"{host}/{IMAGES[name]}" for name in layouts}
            chdirs = {name: str(work / "ch" / name) for name in layouts}
            user.mkdir(work / "ch")
            fusefs_config = work / "rootless-fusefs.json"
            fusefs_config.write_text(json.dumps({"storage-driver": "fusefs"}))
            os.chmod(fusefs_config, 0o644)
            engines = [Rootless(runner, env_for("rootless"), refs, user.mkdir(work / "rootless-store")),
                       RootlessFusefs(runner, env_for("rootless-fusefs"), refs,
                                      user.mkdir(work / "rootless-fusefs-store"), fusefs_config),
                       Podman(runner, env_for("podman"), refs, user.mkdir(work / "podman-store"), runroot),
                       ChRun(runner, env_for("ch-run"), chdirs)]
            for e in engines:
                e.problem = missing.get(e.name)
            for e in engines:
                if e.problem:
                    continue
                try:
                    for name, layout in layouts.items():
                        if isinstance(e, ChRun):
                            flat_directory(runner, e.env, layout, Path(chdirs[name]), work / "tmp-ch-run")
                        else:
                            pull = ["pull", "--quiet", "--tls-verify=false"] if e.name == "podman" else ["pull"]
                            e.check([*pull, refs[name]], 900)
                    if not isinstance(e, ChRun):
                        e.probe_default(a.images[0])
                except RuntimeError as err:
                    e.problem = str(err)
                log(f"{e.name}: " + (e.problem or f"ready; default network {e.default_network}"))
            b = Bench(a, runner, engines, marker, paths)
            report: dict[str, object] = {}
            tables = []

            load0 = Load.now()
            start = b.start(plain_env)
            loads["start"] = (load0, Load.now())
            tables.append(latency_table(f"run --rm IMAGE true: median of {a.tries} after one warm-up, page cache warm",
                                        start, loads["start"]))
            print(tables[-1], flush=True)
            report["start"] = {image: [asdict(r) | {"median": r.median} for r in rows] for image, rows in start.items()}

            load0 = Load.now()
            execs = b.exec()
            loads["exec"] = (load0, Load.now())
            tables.append(latency_table(f"exec NAME true into a running container: median of {a.tries} after one "
                                        "warm-up", execs, loads["exec"]))
            print(tables[-1], flush=True)
            report["exec"] = {image: [asdict(r) | {"median": r.median} for r in rows] for image, rows in execs.items()}

            idle_image = "busybox" if a.quick else "debian"
            log(f"idle: one {idle_image} container per engine and network mode")
            idle = b.idle(idle_image)
            pause, warm = b.pause(), b.warm()
            tables.append(idle_table(IMAGES[idle_image], idle, pause, warm))
            print(tables[-1], flush=True)
            report["idle"] = {"image": IMAGES[idle_image], "rows": [asdict(r) for r in idle], "podman_pause": pause,
                              "rootless_warm": warm}

            if not a.quick and root:
                usr = Path(chdirs["debian"]) / "usr"
                usr_files = [f[len(chdirs["debian"]):] for f in files_under(usr)]
                load0 = Load.now()
                ten = b.ten("debian", usr_files)
                loads["ten"] = (load0, Load.now())
                tables.append(ten_table(IMAGES["debian"], ten, loads["ten"]))
                print(tables[-1], flush=True)
                report["ten"] = {"image": IMAGES["debian"], "usr_files": len(usr_files),
                                 "results": {n: asdict(r) for n, r in ten.items()}}

            if a.json:
                out = {"config": {k: v for k, v in vars(a).items()},
                       "host": {"uname": os.uname().release, "cpus": os.cpu_count(), "user": user.name,
                                "workdir": str(work), "fs_warning": warning,
                                "load": {k: [asdict(x) for x in v] for k, v in loads.items()}},
                       "engines": {e.name: {"command": e.base(), "default_network": e.default_network,
                                            "problem": e.problem} for e in engines},
                       "images": {lay.ref: {"manifest_digest": lay.manifest_digest, "layers": [vars(x) for x in lay.layers]}
                                  for lay in layouts.values()},
                       **report}
                Path(a.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
                log(f"raw numbers in {a.json}")
            for e in engines:
                if not e.problem:
                    e.remove_all()
    finally:
        runner.kill()
        for e in engines:
            with contextlib.suppress(Exception):   # a ^C must still reach the sweep below
                e.remove_all()
        sweep(marker, paths)
        kill_pause_processes(top / "xdg-podman")
        rmtree(runroot)
        bench_pull.keep_or_remove(top, a.keep)
    return 0


def main(argv: list[str] | None = None) -> int:
    return bench_pull.run_bench(bench, parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
