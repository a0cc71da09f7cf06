"""Benchmark pulling an image from a local registry into an empty store: rootless against podman, skopeo and ch-image.

Started by scripts/bench-pull with the repo's .venv python.

As root (the fair setup) it makes a journaled ext4 image under /tmp and loop-mounts it;
the registry's storage, every store and every contender's TMPDIR live there.  It starts
docker-registry on 127.0.0.1 (tests/integration/registry.py), pushes the images with
base_images.py, then runs each contender as --user through setpriv.  Before each try it
syncs and drops the page cache (unless --warm), then runs the contender's --version so
that the program itself is read back from disk outside the timed window: what stays
cold is the registry's blobs and the store's filesystem.  Each try pulls into a fresh
store with a fresh HOME; tries go round the contenders in turn, so that a slow spell of
the host is spread over all of them.

Contenders:

* rootless: ``rootless --root STORE pull REF`` (HTTP: loopback registries are insecure).
* podman: rootless podman 4 with the overlay driver and fuse-overlayfs as mount_program,
  ``--tls-verify=false``.  Its pause process (which holds the user namespace) is started
  before the first timed try, as it would be on a desktop, and killed at the end.
* skopeo: ``skopeo copy docker://REF oci:DIR``; it only downloads, nothing is unpacked.
* ch-image: charliecloud's ``ch-image pull --no-cache`` (download and unpack).  It speaks
  only HTTPS, so it gets a second docker-registry over the same storage with a
  self-signed certificate and ``--tls-no-verify``.

Not root: no loop image and no dropping of caches (--warm is implied), and the
contenders run as the current user.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import pwd
import select
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import base_images
from bench_fs import check_journal, human

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTENDERS = ("rootless", "podman", "skopeo", "ch-image")
IMAGES = {"debian": "debian:bookworm", "smallfiles": "smallfiles:latest"}
# podman refuses a runroot whose path is this long or longer (sockets live under it).
RUNROOT_MAX = 50


def _prog() -> str:
    """The running benchmark's name for its messages: bench-run imports its setup from here."""
    name = Path(sys.argv[0]).stem.replace("_", "-") if sys.argv else ""
    return name if name.startswith("bench-") else "bench-pull"


PROG = _prog()


def log(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def load_registry_helper() -> ModuleType:
    """tests/integration/registry.py, which knows how to run docker-registry; tests/ is no package."""
    path = REPO / "tests" / "integration" / "registry.py"
    spec = importlib.util.spec_from_file_location("rootless_test_registry", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- running things

@dataclass
class User:
    """Whom the contenders run as: --user when we are root, else ourselves."""

    name: str
    uid: int
    gid: int

    def command(self, cmd: list[str], env: dict[str, str]) -> list[str]:
        wrapped = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
        if os.geteuid() == 0 and self.uid != 0:
            wrapped = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *wrapped]
        return wrapped

    def mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)
        return path


@dataclass
class Outcome:
    seconds: float
    rc: int
    output: str


class Runner:
    """Runs commands as the user in their own session, so that a ^C or a timeout can kill the whole tree."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.current: subprocess.Popen[bytes] | None = None

    def run(self, cmd: list[str], env: dict[str, str], timeout: float, logfile: Path | None = None) -> Outcome:
        full = self.user.command(cmd, env)
        with tempfile.TemporaryFile() as out:
            t0 = time.perf_counter()
            self.current = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            cwd="/", start_new_session=True)
            try:
                rc = wait_exactly(self.current, timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                rc = 124
            except BaseException:  # ^C: the tree must be gone before its directories are removed
                self.kill()
                raise
            seconds = time.perf_counter() - t0
            self.current = None
            out.seek(0)
            text = out.read().decode(errors="replace")
        if logfile is not None:
            with open(logfile, "a") as f:
                f.write(f"$ {' '.join(cmd)}\n{text}[rc={rc}, {seconds:.3f} s]\n")
        if rc == 124:
            text += f"\n(killed after {timeout:.0f} s)"
        return Outcome(seconds, rc, text)

    def kill(self) -> None:
        proc = self.current
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_exactly(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Popen.wait(timeout) polls with sleeps that grow to 50 ms, which rounds short commands' times
    up to the next poll; a pidfd wakes us the moment the process ends."""
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def rmtree(path: Path) -> None:
    """rm -rf that also copes with the mode-000 directories some stores hold."""
    if os.path.lexists(path):
        subprocess.run(["chmod", "-R", "u+rwx", str(path)], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def disk_usage(path: Path) -> int | None:
    done = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout else None


# --------------------------------------------------------------------------- contenders

@dataclass
class Try:
    """One pull's directories: all fresh, all owned by the user."""

    base: Path      # on the benchmark filesystem; removed after the try
    store: Path
    home: Path
    tmp: Path
    runroot: Path   # short path on /tmp (podman)


@dataclass
class Contender:
    name: str
    label: str
    runtime_dir: Path                 # XDG_RUNTIME_DIR, kept over the tries (podman's pause.pid lives here)
    problem: str | None = None        # why it does not run here
    registry: str = ""                # host:port it pulls from

    def env(self, t: Try, user: User) -> dict[str, str]:
        return {"HOME": str(t.home), "USER": user.name, "LOGNAME": user.name, "PATH": SYSTEM_PATH,
                "XDG_RUNTIME_DIR": str(self.runtime_dir), "TMPDIR": str(t.tmp), "LANG": "C.UTF-8"}

    def prime(self) -> list[str]:
        return {"rootless": [rootless_bin(), "--version"], "podman": ["podman", "--version"],
                "skopeo": ["skopeo", "--version"], "ch-image": ["ch-image", "--version"]}[self.name]

    def pull(self, image: str, t: Try) -> list[str]:
        ref = f"{self.registry}/{image}"
        if self.name == "rootless":
            return [rootless_bin(), "--root", str(t.store), "pull", ref]
        if self.name == "podman":
            return [*podman_command(t.store, t.runroot), "pull", "--quiet", "--tls-verify=false", ref]
        if self.name == "skopeo":
            return ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                    f"oci:{t.store}/layout:{image.split(':', 1)[1]}"]
        if self.name == "ch-image":
            return ["ch-image", "--no-cache", "--tls-no-verify", "--storage", str(t.store), "pull", ref]
        raise ValueError(self.name)


_ROOTLESS = [str(REPO / ".venv" / "bin" / "rootless")]


def rootless_bin() -> str:
    return _ROOTLESS[0]


def use_rootless(spec: str) -> None:
    """Make SPEC (a path, or a name looked up in PATH) the rootless command the contenders run."""
    _ROOTLESS[0] = str(Path(spec).resolve()) if os.sep in spec else (shutil.which(spec) or spec)


def podman_command(store: Path, runroot: Path) -> list[str]:
    """Rootless podman on STORE: the overlay driver with fuse-overlayfs as mount_program, no systemd."""
    return ["podman", "--root", str(store), "--runroot", str(runroot), "--storage-driver", "overlay",
            "--storage-opt", "overlay.mount_program=/usr/bin/fuse-overlayfs", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file"]


def find_problems(contenders: list[Contender], runner: Runner, scratch: Path) -> None:
    """Set each contender's problem: missing programs, or a rootless without its pull command."""
    env = {"HOME": str(scratch), "USER": runner.user.name, "LOGNAME": runner.user.name, "PATH": SYSTEM_PATH,
           "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    for c in contenders:
        if c.name == "rootless":
            if not os.access(rootless_bin(), os.X_OK):
                c.problem = f"not installed at {rootless_bin()} (run scripts/setup)"
            elif runner.run([rootless_bin(), "pull", "--help"], env, 60).rc != 0:
                c.problem = "pull not available"
        elif c.name == "podman":
            for prog in ("podman", "fuse-overlayfs"):
                if shutil.which(prog, path=SYSTEM_PATH) is None:
                    c.problem = f"{prog} is not installed (apt-get install podman fuse-overlayfs)"
        elif c.name == "skopeo":
            if shutil.which("skopeo", path=SYSTEM_PATH) is None:
                c.problem = "skopeo is not installed (apt-get install skopeo)"
        elif c.name == "ch-image":
            if shutil.which("ch-image", path=SYSTEM_PATH) is None:
                c.problem = ("not installed (Debian packages charliecloud-builders and charliecloud-runtime; "
                             "the builders depend on docker.io, so scripts/setup leaves them out)")
            elif shutil.which("openssl") is None:
                c.problem = "its HTTPS registry needs the openssl CLI (apt-get install openssl)"
            else:
                out = runner.run(["ch-image", "--dependencies"], env, 60)
                if out.rc:
                    last = out.output.strip().splitlines()[-1:] or [f"exit {out.rc}"]
                    c.problem = f"ch-image --dependencies: {last[0]} (apt-get install charliecloud-runtime?)"


def podman_warmup(c: Contender, runner: Runner, t: Try) -> None:
    """Start podman's pause process, which a user's first podman command pays for once, not per pull."""
    out = runner.run([*podman_command(t.store, t.runroot), "images"], c.env(t, runner.user), 120)
    if out.rc:
        c.problem = f"podman does not start: {out.output.strip()[-300:]}"


def kill_pause_processes(runtime_dir: Path) -> None:
    for pidfile in glob.glob(str(runtime_dir / "**" / "pause.pid"), recursive=True):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(Path(pidfile).read_text().strip()), signal.SIGKILL)


# --------------------------------------------------------------------------- the images

def build_layouts(names: list[str], cache_dir: Path | None) -> list[base_images.Layout]:
    """The base images NAMES as OCI layouts, built or found in base-images' cache (default: its own)."""
    layouts = []
    for name in names:
        t0 = time.monotonic()
        layout = base_images.build(name, cache_dir or base_images.default_cache_dir(), log=log)
        how = "cached" if layout.cached else f"built in {time.monotonic() - t0:.0f} s"
        log(f"{layout.ref}: {layout.manifest_digest[:19]} ({how})")
        layouts.append(layout)
    return layouts


@contextlib.contextmanager
def serving(helper: ModuleType, registry_dir: Path, layouts: list[base_images.Layout]) -> Iterator[str]:
    """docker-registry on 127.0.0.1 with its storage in REGISTRY_DIR, holding LAYOUTS; yields its host:port."""
    with helper.running_registry(registry_dir) as reg:
        for layout in layouts:
            base_images.push(layout, reg.host)
        log(f"docker-registry at {reg.host} (storage on {registry_dir}); pushed {', '.join(lay.ref for lay in layouts)}")
        yield reg.host


# --------------------------------------------------------------------------- the HTTPS twin

@contextlib.contextmanager
def tls_twin(helper: ModuleType, registry_dir: Path, certs: Path) -> Iterator[str]:
    """A second docker-registry over the same storage, serving HTTPS with a self-signed certificate.

    It reads the config running_registry wrote and overrides address and TLS through
    distribution's REGISTRY_* environment variables, so the two cannot drift apart.
    """
    config = registry_dir / "config.yml"
    if not config.is_file():
        raise RuntimeError(f"no registry config at {config}; tests/integration/registry.py has changed")
    key, cert = certs / "twin.key", certs / "twin.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   capture_output=True, check=True)
    port = helper.free_port()
    env = dict(os.environ, REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}", REGISTRY_HTTP_TLS_CERTIFICATE=str(cert),
               REGISTRY_HTTP_TLS_KEY=str(key))
    logpath = registry_dir / "twin.log"
    with open(logpath, "wb") as out:
        proc = subprocess.Popen([helper.REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"HTTPS docker-registry exited: {logpath.read_text()[-500:]}")
            try:
                with opener.open(f"https://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"HTTPS docker-registry did not answer: {logpath.read_text()[-500:]}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- the benchmark

@dataclass
class Result:
    times: list[float] = field(default_factory=list)
    store_bytes: int | None = None
    error: str | None = None
    unavailable: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.error else None


class Bench:
    def __init__(self, a: argparse.Namespace, work: Path, runroot_base: Path, runner: Runner) -> None:
        self.a = a
        self.work = work
        self.runroot_base = runroot_base
        self.runner = runner
        self.user = runner.user
        self.logdir = work / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.seq = 0

    def fresh_try(self, label: str, make_store: bool = True) -> Try:
        self.seq += 1
        base = self.work / "tries" / f"{self.seq:03d}-{label}"
        mk = self.user.mkdir
        t = Try(mk(base), base / "store", mk(base / "home", 0o700), mk(base / "tmp", 0o700),
                self.runroot_base / f"rr{self.seq}")
        if make_store:
            mk(t.store)
        mk(t.runroot, 0o700)
        if len(str(t.runroot)) >= RUNROOT_MAX:
            raise RuntimeError(f"podman's runroot {t.runroot} is {len(str(t.runroot))} characters; it must be "
                               f"under {RUNROOT_MAX}")
        return t

    def end_try(self, t: Try) -> None:
        rmtree(t.base)
        rmtree(t.runroot)
        os.sync()  # the deletion's writeback must not land in the next try's window

    def run(self, contenders: list[Contender], images: list[str]) -> dict[str, dict[str, Result]]:
        results: dict[str, dict[str, Result]] = {image: {} for image in images}
        for c in contenders:
            if c.name == "podman" and not c.problem:
                t = self.fresh_try("podman-warmup")
                try:
                    podman_warmup(c, self.runner, t)
                finally:
                    self.end_try(t)
        for image in images:
            for c in contenders:
                results[image][c.name] = Result(unavailable=c.problem)
            for n in range(self.a.tries):
                for c in contenders:
                    r = results[image][c.name]
                    if r.unavailable or r.error:
                        continue
                    self.one_try(image, c, n, r)
        return results

    def one_try(self, image: str, c: Contender, n: int, r: Result) -> None:
        # ch-image refuses a storage directory it did not create itself.
        t = self.fresh_try(f"{c.name}-{image.split(':')[0]}", make_store=c.name != "ch-image")
        try:
            self.attempt(image, c, n, r, t)
        except BaseException:
            with contextlib.suppress(Exception):  # the interruption matters more than the leftovers
                self.end_try(t)
            raise
        self.end_try(t)

    def attempt(self, image: str, c: Contender, n: int, r: Result, t: Try) -> None:
        env = c.env(t, self.user)
        if not self.a.warm:
            drop_caches()
        self.runner.run(c.prime(), env, 60)
        out = self.runner.run(c.pull(image, t), env, self.a.timeout, self.logdir / f"{c.name}.log")
        if out.rc:
            tail = " | ".join(out.output.strip().splitlines()[-3:])
            r.error = f"exit {out.rc}: {tail}"
            log(f"  {image} {c.name} try {n + 1}: FAILED ({r.error})")
            return
        r.times.append(out.seconds)
        r.store_bytes = disk_usage(t.store)
        log(f"  {image} {c.name} try {n + 1}: {out.seconds:.2f} s")


def table(results: dict[str, dict[str, Result]], contenders: list[Contender], a: argparse.Namespace,
          image_info: dict[str, str]) -> str:
    cold = "warm page cache" if a.warm else "sync + drop_caches before each try"
    lines = [f"\n== pull into an empty store: seconds, median of {a.tries}; {cold} =="]
    hdr = f"{'image':<19}{'contender':<20}{'median':>8}{'min':>8}{'max':>8}{'vs podman':>11}{'store':>12}"
    lines += [hdr, "-" * len(hdr)]
    notes: list[str] = []
    for image, by in results.items():
        podman = by.get("podman")
        base = podman.median if podman else None
        first = True
        for c in contenders:
            r = by[c.name]
            row = f"{image if first else '':<19}{c.label:<20}"
            first = False
            if r.unavailable or r.error:
                row += f"{'n/a' if r.unavailable else 'FAIL':>8}"
                note = f"{c.name}: {r.unavailable}" if r.unavailable else f"{c.name} ({image}): {r.error}"
                if note not in notes:
                    notes.append(note)
            else:
                m = r.median
                assert m is not None
                ratio = f"{m / base:.2f}x" if base else "-"
                size = human(r.store_bytes) if r.store_bytes is not None else "-"
                row += f"{m:>8.2f}{min(r.times):>8.2f}{max(r.times):>8.2f}{ratio:>11}{size:>12}"
            lines.append(row)
    lines.append("")
    lines += [f"  {ref}: {info}" for ref, info in image_info.items()]
    lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- setup and main

def add_setup_options(p: argparse.ArgumentParser, *, image_gb: float, keep: str) -> None:
    """The options every bench script takes for where and as whom it runs (bench-pull, -build, -run)."""
    p.add_argument("--json", metavar="FILE", help="write the raw numbers here")
    p.add_argument("--user", default="tester", help="as root: run the contenders as this user (default tester)")
    p.add_argument("--rootless", metavar="PATH", default=rootless_bin(), help="the rootless command (default: the venv's)")
    p.add_argument("--cache-dir", metavar="DIR", help="base-images' cache (default: its own default for this user)")
    p.add_argument("--image-gb", type=float, default=image_gb,
                   help=f"as root: size of the sparse ext4 image (default {image_gb:g})")
    p.add_argument("--dir", help="work here instead of on a loop-mounted ext4 image (its filesystem counts!)")
    p.add_argument("--keep", action="store_true", help=keep)


def keep_or_remove(top: Path, keep: bool) -> None:
    """The end of every bench script: its work directory kept (--keep) or removed."""
    if keep:
        log(f"kept {top}")
    else:
        rmtree(top)


def parse(argv: list[str]) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(prog="bench-pull", description=doc[0], epilog="\n\n".join(doc[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one try, debian only (smoke run)")
    p.add_argument("--tries", type=int, help="tries per image and contender; the median counts (default 3)")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before each try")
    p.add_argument("--images", help=f"subset of {','.join(IMAGES)} (default all; --quick: debian)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    add_setup_options(p, image_gb=8, keep="keep the work directory (logs, registry storage)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one pull may take (default 900)")
    a = p.parse_args(argv)
    a.tries = a.tries or (1 if a.quick else 3)
    if a.tries < 1:
        p.error("--tries must be at least 1")
    names = [i.strip() for i in (a.images or ("debian" if a.quick else ",".join(IMAGES))).split(",") if i.strip()]
    bad = set(names) - set(IMAGES)
    if bad:
        p.error(f"unknown images: {', '.join(sorted(bad))}")
    a.images = names
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = set(a.contenders) - set(CONTENDERS)
    if bad:
        p.error(f"unknown contenders: {', '.join(sorted(bad))}")
    if os.geteuid() != 0:
        a.warm = True
    return a


@contextlib.contextmanager
def bench_filesystem(a: argparse.Namespace, top: Path, user: User) -> Iterator[Path]:
    """The directory everything lives in: on a fresh journaled ext4 loop image when root and no --dir."""
    if a.dir:
        work = Path(a.dir).resolve() / f"{PROG}-work"
        if work.exists():
            rmtree(work)
        user.mkdir(work)
        try:
            yield work
        finally:
            if not a.keep:
                rmtree(work)
        return
    if os.geteuid() != 0:
        yield user.mkdir(top / "work")
        return
    img, mnt = top / "ext4.img", top / "fs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(int(a.image_gb * (1 << 30)))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    r = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", str(img)], capture_output=True, text=True)
    if r.returncode:
        log(f"losetup --direct-io=on failed ({r.stderr.strip()}); using a buffered loop device")
        r = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True, check=True)
    loopdev = r.stdout.strip()
    try:
        subprocess.run(["mount", "-t", "ext4", loopdev, str(mnt)], check=True)
        try:
            os.chmod(mnt, 0o755)
            log(f"journaled ext4 image of {a.image_gb:g} GiB on {loopdev} at {mnt}")
            yield mnt
        finally:
            # A FUSE mount left by a killed contender would keep the image busy.
            with open("/proc/self/mounts") as f:
                for line in f:
                    mp = line.split()[1].encode().decode("unicode_escape")
                    if mp.startswith(str(top) + "/") and mp != str(mnt):
                        subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
            if subprocess.run(["umount", str(mnt)]).returncode:
                subprocess.run(["umount", "-l", str(mnt)])
    finally:
        subprocess.run(["losetup", "-d", loopdev], stderr=subprocess.DEVNULL)


def resolve_user(a: argparse.Namespace) -> User:
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        return User(pw.pw_name, pw.pw_uid, pw.pw_gid)
    try:
        pw = pwd.getpwnam(a.user)
    except KeyError:
        raise SystemExit(f"{PROG}: user {a.user!r} does not exist; pass --user NAME (an unprivileged account)")
    if pw.pw_uid == 0:
        raise SystemExit(f"{PROG}: --user must be an unprivileged account")
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid)


def bench(a: argparse.Namespace) -> int:
    user = resolve_user(a)
    use_rootless(a.rootless)
    helper = load_registry_helper()
    if not os.access(helper.REGISTRY_BIN, os.X_OK):
        log(f"{helper.REGISTRY_BIN} is missing (as root: apt-get install docker-registry)")
        return 2
    if os.geteuid() != 0:
        log("not root: no loop image, no drop_caches (--warm), contenders run as yourself")
    runner = Runner(user)
    top = Path(tempfile.mkdtemp(prefix="bench-pull.", dir="/tmp" if os.geteuid() == 0 else None))
    # podman's runroot must stay short, whatever TMPDIR or --dir say.
    runroot_base = Path(tempfile.mkdtemp(prefix="bp.", dir="/tmp"))
    contenders = [Contender(name, "skopeo (no unpack)" if name == "skopeo" else name, top / f"xdg-{name}")
                  for name in a.contenders]
    try:
        os.chmod(top, 0o755)
        user.mkdir(runroot_base)
        for c in contenders:
            user.mkdir(c.runtime_dir, 0o700)
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(bench_filesystem(a, top, user))
            warning = check_journal(str(work))
            if warning:
                log(f"WARNING: {warning}")
            find_problems(contenders, runner, user.mkdir(top / "probe", 0o700))
            for c in contenders:
                if c.problem:
                    log(f"{c.name}: {c.problem}; its rows say n/a")

            layouts = build_layouts(a.images, Path(a.cache_dir) if a.cache_dir else None)
            registry_dir = work / "registry"
            host = stack.enter_context(serving(helper, registry_dir, layouts))
            twin = None
            if any(c.name == "ch-image" and not c.problem for c in contenders):
                twin = stack.enter_context(tls_twin(helper, registry_dir, top))
                log(f"HTTPS twin for ch-image at {twin}")
            for c in contenders:
                c.registry = twin if c.name == "ch-image" and twin else host

            b = Bench(a, work, runroot_base, runner)
            t0 = time.monotonic()
            results = b.run(contenders, [layout.ref for layout in layouts])
            log(f"benchmark took {time.monotonic() - t0:.0f} s")
            info = {lay.ref: (f"{lay.layers[0].members} entries, {human(lay.layers[0].tar_size)} tar, "
                            f"{human(lay.layers[0].size)} gzip, {lay.manifest_digest[:19]}") for lay in layouts}
            print(table(results, contenders, a, info), flush=True)
            if a.keep:  # the loop image is unmounted on the way out; its logs stay readable
                shutil.copytree(work / "logs", top / "logs", dirs_exist_ok=True)
            if a.json:
                out = {"config": {k: v for k, v in vars(a).items()},
                       "host": {"uname": os.uname().release, "cpus": os.cpu_count(), "user": user.name,
                                "workdir": str(work), "fs_warning": warning},
                       "images": {lay.ref: {"manifest_digest": lay.manifest_digest, "layers": [vars(x) for x in lay.layers]}
                                  for lay in layouts},
                       "results": {image: {name: {"times": r.times, "median": r.median, "store_bytes": r.store_bytes,
                                                  "error": r.error, "unavailable": r.unavailable}
                                           for name, r in by.items()} for image, by in results.items()}}
                Path(a.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
                log(f"raw numbers in {a.json}")
    finally:
        runner.kill()
        for c in contenders:
            kill_pause_processes(c.runtime_dir)
        rmtree(runroot_base)
        keep_or_remove(top, a.keep)
    return 0


def run_bench(body: Callable[[argparse.Namespace], int], a: argparse.Namespace) -> int:
    """Run BODY(A) so that SIGTERM and ^C still clean up, and turn its known failures into exit codes."""
    def terminate(signum: int, frame: object) -> None:
        log("terminated; cleaning up")
        sys.exit(143)

    signal.signal(signal.SIGTERM, terminate)
    # A shell without job control starts background commands with SIGINT ignored; ^C (or
    # kill -INT) must still reach the cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        rc = body(a)
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except base_images.BuildError as e:
        log(f"error: {e}")
        return 1
    log(f"total {time.monotonic() - t0:.0f} s")
    return rc


def main(argv: list[str] | None = None) -> int:
    return run_bench(bench, parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
