"""Benchmark building one Dockerfile cold, fully cached and after one source file changed: rootless build against buildah, podman and ch-image.

Started by scripts/bench-build with the repo's .venv python.

The setup is scripts/bench-pull's, and so is its code: as root, a journaled ext4 image
under /tmp, loop-mounted, holds the registry's storage, the build context, every store
and every contender's TMPDIR; docker-registry on 127.0.0.1 serves debian:bookworm from
base_images.py; the contenders run as --user through setpriv with a clean environment.

The context is a tree of 5,000 files, 50 MB in all, made from a fixed seed (the same
bytes on every run), and a Dockerfile that takes debian from the local registry, sets
ENV and WORKDIR, COPYs the tree, RUNs a find over it and sets CMD.  Every contender
builds that same Dockerfile: ch-image, which does not pull over plain HTTP, gets the
base image under the very name the FROM line gives it (see below).  One try of one
contender, in a fresh store with a fresh HOME:

1. pull the base image (not timed; ch-image imports it);
2. cold: build with an empty build cache (as root the page cache is dropped first, so
   the context is read back from disk);
3. cached: the same build again, every step from the cache;
4. changed: one file of the tree gets new bytes of the same size; the build reruns
   COPY and the RUN after it.  The file gets its old bytes back after the try.

Tries go round the contenders in turn; each case's median counts.  Every build's
output is kept in the work directory's logs (--keep), and the number of steps it took
from the cache (FROM not counted) is shown beside its time, so that a cache that does
not hit is seen.

Contenders:

* rootless: ``rootless --root STORE build -t NAME CONTEXT``.
* buildah: rootless ``buildah bud --layers --isolation chroot`` with the overlay driver
  and fuse-overlayfs as mount_program (as bench-pull runs podman); ``--layers`` makes it
  keep a cache of intermediate images, which it does not by default.  chroot isolation
  runs RUN without an OCI runtime: crun refuses this host's hybrid cgroups.
* podman: ``podman build --layers --isolation chroot`` with the same storage options
  (podman build is buildah inside); its pause process is started by the pull.
* ch-image: charliecloud's ``ch-image --cache --storage STORE build -t NAME CONTEXT``,
  its build cache (a git repository in the storage directory) asked for explicitly, so
  that a host without a recent git fails instead of building uncached.  Its base image
  is the layer's gzipped tar from base_images.py's layout, imported with ``ch-image
  import TARBALL HOST:PORT/debian:bookworm``, which puts it in the build cache as a pull
  would; FROM finds it there and never asks the registry.  Its output marks an
  instruction taken from the cache with ``*``.  Version 0.31 ignores CMD (its issue
  #780), so it has four steps to cache where the others have five; the table says which
  instructions a contender ignored.

Not root: no loop image and no dropping of caches (--warm is implied), and the
contenders run as the current user.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bench_pull
from bench_fs import check_journal, human
from base_images import Layout
from bench_pull import SYSTEM_PATH, Result, Runner, Try, User, drop_caches, kill_pause_processes, log, rmtree

CONTENDERS = ("rootless", "buildah", "podman", "ch-image")
CASES = ("cold", "cached", "changed")
BASE = "debian"
TAG = "benchbuild:latest"
SEED = 20240611
TREE_DIRS = 50
TREE_FILES = 5000
TREE_BYTES = 50 * 1000 * 1000
#: The file that case "changed" rewrites: one in the middle of the tree.
CHANGED = Path("tree") / "d025" / "f0050.dat"
DOCKERFILE = """\
FROM {base}
ENV APP_HOME=/src LANG=C.UTF-8
WORKDIR /src
COPY tree/ /src/
RUN find /src -type f | wc -l > /count && echo done
CMD ["cat", "/count"]
"""


# --------------------------------------------------------------------------- the context

def make_context(context: Path, base: str, user: User) -> None:
    """The Dockerfile and the tree: 5,000 files of random sizes and bytes, the same for a given SEED."""
    rng = random.Random(SEED)
    weights = [rng.uniform(0.2, 1.8) for _ in range(TREE_FILES)]
    scale = TREE_BYTES / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[-1] += TREE_BYTES - sum(sizes)
    per_dir = TREE_FILES // TREE_DIRS
    for i, size in enumerate(sizes):
        path = context / "tree" / f"d{i // per_dir:03d}" / f"f{i % per_dir:04d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (context / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(context)], check=True)


@contextlib.contextmanager
def changed_file(context: Path, n: int) -> Iterator[None]:
    """CHANGED holds other bytes of the same size (different for each try N) until the block ends."""
    path = context / CHANGED
    old = path.read_bytes()
    path.write_bytes(random.Random(SEED + 1 + n).randbytes(len(old)))
    try:
        yield
    finally:
        path.write_bytes(old)


# --------------------------------------------------------------------------- contenders

@dataclass
class Builder(bench_pull.Contender):
    """A contender that builds: how it gets the base image and how it builds the context."""

    base_tarball: Path | None = None   # ch-image: the base image's layer, which it imports

    def env(self, t: Try, user: User) -> dict[str, str]:
        env = super().env(t, user)
        if self.name == "ch-image":
            # Its build cache commits to git, which finds no identity in a fresh HOME.
            env.update(GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@localhost",
                       GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
        return env

    def prime(self) -> list[str]:
        if self.name == "buildah":
            return ["buildah", "--version"]
        return super().prime()

    def pull(self, image: str, t: Try) -> list[str]:
        if self.name == "buildah":
            return [*buildah_command(t.store, t.runroot), "pull", "--quiet", "--tls-verify=false",
                    f"{self.registry}/{image}"]
        if self.name == "ch-image":
            if self.base_tarball is None:
                raise ValueError("ch-image needs the base image's tarball")
            # Under the name the Dockerfile's FROM gives: found in the cache, it is never pulled.
            return [*ch_image_command(t.store), "import", str(self.base_tarball), f"{self.registry}/{image}"]
        return super().pull(image, t)

    def build(self, context: Path, t: Try) -> list[str]:
        if self.name == "rootless":
            return [bench_pull.rootless_bin(), "--root", str(t.store), "build", "-t", TAG, str(context)]
        if self.name == "ch-image":
            return [*ch_image_command(t.store), "build", "-t", TAG, str(context)]
        # The base image is in the store: neither may ask the registry again.
        common = ["--layers", "--isolation", "chroot", "--pull-never", "-t", TAG, str(context)]
        if self.name == "buildah":
            return [*buildah_command(t.store, t.runroot), "bud", *common]
        if self.name == "podman":
            return [*bench_pull.podman_command(t.store, t.runroot), "build", *common]
        raise ValueError(self.name)


def buildah_command(store: Path, runroot: Path) -> list[str]:
    """Rootless buildah on STORE with the storage options bench-pull gives podman."""
    podman = bench_pull.podman_command(store, runroot)
    # buildah knows neither --cgroup-manager nor --events-backend; it takes the storage flags alike.
    return ["buildah", *podman[1:podman.index("--cgroup-manager")]]


def ch_image_command(store: Path) -> list[str]:
    """ch-image on STORE with its build cache on: without a recent git it fails rather than builds uncached."""
    return ["ch-image", "--cache", "--storage", str(store)]


#: ch-image's line for an instruction: its number, "*" (from the cache) or "." (run), the instruction.
CH_IMAGE_STEP = re.compile(r"^ *(\d+)([*.]) (\S+)", re.MULTILINE)
#: ch-image's warning for an instruction it skips, e.g. "issue #780: CMD instruction".
CH_IMAGE_IGNORED = re.compile(r"not yet supported, ignored: (.+)$", re.MULTILINE)


def cache_hits(output: str) -> int:
    """Steps a build took from its cache, FROM not counted.

    docker's classic output (rootless) and buildah's say "Using cache" once for each;
    ch-image marks the instruction's line with "*", one line for each variable of an ENV.
    """
    starred = {n for n, mark, word in CH_IMAGE_STEP.findall(output) if mark == "*" and word != "FROM"}
    return output.count("Using cache") + len(starred)


def ignored_instructions(output: str) -> set[str]:
    """Instructions the build skipped (ch-image's warning), so that the table can say its steps differ."""
    return {m.strip() for m in CH_IMAGE_IGNORED.findall(output)}


def base_tarball(layout: Layout, dest: Path, user: User) -> Path:
    """The base image's one layer, a gzipped tar, copied to DEST for the user: what ch-image imports."""
    if len(layout.layers) != 1:
        raise RuntimeError(f"{layout.ref} has {len(layout.layers)} layers; ch-image import takes one tarball")
    blob = layout.path / "blobs" / "sha256" / layout.layers[0].digest.split(":", 1)[1]
    shutil.copyfile(blob, dest)     # base-images' cache may be root's alone
    if os.geteuid() == 0:
        os.chown(dest, user.uid, user.gid)
    return dest


def find_problems(contenders: list[Builder], runner: Runner, scratch: Path) -> None:
    env = {"HOME": str(scratch), "USER": runner.user.name, "LOGNAME": runner.user.name, "PATH": SYSTEM_PATH,
           "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    for c in contenders:
        if c.name == "rootless":
            if not os.access(bench_pull.rootless_bin(), os.X_OK):
                c.problem = f"not installed at {bench_pull.rootless_bin()} (run scripts/setup)"
            elif runner.run([bench_pull.rootless_bin(), "build", "--help"], env, 60).rc != 0:
                c.problem = "build not available"
            continue
        if c.name == "ch-image":
            if shutil.which("ch-image", path=SYSTEM_PATH) is None:
                c.problem = ("not installed (Debian packages charliecloud-builders and charliecloud-runtime; "
                             "the builders depend on docker.io, so scripts/setup leaves them out)")
            elif shutil.which("git", path=SYSTEM_PATH) is None:
                c.problem = "its build cache needs git (apt-get install git)"
            else:
                out = runner.run(["ch-image", "--dependencies"], env, 60)
                if out.rc:
                    c.problem = f"ch-image --dependencies: {tail(out.output, 1) or f'exit {out.rc}'}"
            continue
        for prog in (c.name, "fuse-overlayfs"):
            if shutil.which(prog, path=SYSTEM_PATH) is None:
                c.problem = f"{prog} is not installed (apt-get install {c.name} fuse-overlayfs)"


# --------------------------------------------------------------------------- the benchmark

@dataclass
class Case(Result):
    hits: list[int] = field(default_factory=list)
    ignored: set[str] = field(default_factory=set)   # instructions the contender skipped


class BuildBench:
    def __init__(self, a: argparse.Namespace, work: Path, runroot_base: Path, runner: Runner, context: Path) -> None:
        self.a = a
        self.runner = runner
        self.context = context
        # Its fresh_try/end_try make and remove one try's directories, owned by the user.
        self.tries = bench_pull.Bench(a, work, runroot_base, runner)
        self.logdir = self.tries.logdir

    def run(self, contenders: list[Builder], base: str) -> dict[str, dict[str, Case]]:
        results = {case: {c.name: Case(unavailable=c.problem) for c in contenders} for case in CASES}
        for n in range(self.a.tries):
            for c in contenders:
                if c.problem or any(results[case][c.name].error for case in CASES):
                    continue
                # ch-image refuses a storage directory it did not make itself.
                t = self.tries.fresh_try(f"{c.name}-{n + 1}", make_store=c.name != "ch-image")
                try:
                    self.one_try(c, base, n, t, {case: results[case][c.name] for case in CASES})
                finally:
                    self.tries.end_try(t)
        return results

    def one_try(self, c: Builder, base: str, n: int, t: Try, results: dict[str, Case]) -> None:
        env = c.env(t, self.runner.user)
        log_file = self.logdir / f"{c.name}.log"
        pulled = self.runner.run(c.pull(base, t), env, self.a.timeout, log_file)
        if pulled.rc:
            what = "importing" if c.name == "ch-image" else "pulling"
            results["cold"].error = f"{what} the base image: exit {pulled.rc}: {tail(pulled.output)}"
            log(f"  {c.name} try {n + 1}: {results['cold'].error}")
            return
        for case in CASES:
            with changed_file(self.context, n) if case == "changed" else contextlib.nullcontext():
                os.sync()  # the last build's writeback must not land in this one's window
                if case == "cold" and not self.a.warm:
                    drop_caches()
                self.runner.run(c.prime(), env, 60)
                out = self.runner.run(c.build(self.context, t), env, self.a.timeout, log_file)
            r = results[case]
            if out.rc:
                r.error = f"exit {out.rc}: {tail(out.output)}"
                log(f"  {case} {c.name} try {n + 1}: FAILED ({r.error})")
                return
            r.times.append(out.seconds)
            r.hits.append(cache_hits(out.output))
            r.ignored |= ignored_instructions(out.output)
            log(f"  {case} {c.name} try {n + 1}: {out.seconds:.2f} s ({r.hits[-1]} steps from the cache)")


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def table(results: dict[str, dict[str, Case]], contenders: list[Builder], a: argparse.Namespace) -> str:
    cache = "warm page cache" if a.warm else "page cache dropped before the cold build"
    lines = [f"\n== build: seconds, median of {a.tries}; {cache} =="]
    head = f"{'case':<10}{'contender':<11}{'median':>8}{'min':>8}{'max':>8}{'vs buildah':>12}{'cached steps':>14}"
    lines += [head, "-" * len(head)]
    notes: list[str] = []
    for case in CASES:
        buildah = results[case].get("buildah")
        ref = buildah.median if buildah else None
        for i, c in enumerate(contenders):
            r = results[case][c.name]
            row = f"{case if i == 0 else '':<10}{c.label:<11}"
            if r.unavailable or r.error:
                row += f"{'n/a' if r.unavailable else 'FAIL':>8}"
                note = f"{c.name}: {r.unavailable or r.error}"
                if note not in notes:
                    notes.append(note)
            else:
                m = r.median
                assert m is not None
                ratio = f"{m / ref:.2f}x" if ref else "-"
                hits = "/".join(sorted({str(h) for h in r.hits}))
                row += f"{m:>8.2f}{min(r.times):>8.2f}{max(r.times):>8.2f}{ratio:>12}{hits:>14}"
                for what in sorted(r.ignored):
                    note = f"{c.name} ignored {what}"
                    if note not in notes:
                        notes.append(note)
            lines.append(row)
    lines.append("")
    lines.append(f"  context: {TREE_FILES} files, {human(TREE_BYTES)} in {TREE_DIRS} directories; "
                 f"case changed rewrites {CHANGED}")
    lines += [f"  {note}" for note in notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- setup and main

def parse(argv: list[str]) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(prog="bench-build", description=doc[0], epilog="\n\n".join(doc[2:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one try (smoke run)")
    p.add_argument("--tries", type=int, help="tries per contender; each case's median counts (default 3)")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before the cold build")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    bench_pull.add_setup_options(p, image_gb=8, keep="keep the work directory (logs, registry storage)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one build may take (default 900)")
    a = p.parse_args(argv)
    a.tries = a.tries or (1 if a.quick else 3)
    if a.tries < 1:
        p.error("--tries must be at least 1")
    a.contenders = [c.strip() for c in a.contenders.split(",") if c.strip()]
    bad = set(a.contenders) - set(CONTENDERS)
    if bad:
        p.error(f"unknown contenders: {', '.join(sorted(bad))}")
    if os.geteuid() != 0:
        a.warm = True
    return a


def bench(a: argparse.Namespace) -> int:
    user = bench_pull.resolve_user(a)
    bench_pull.use_rootless(a.rootless)
    helper = bench_pull.load_registry_helper()
    if not os.access(helper.REGISTRY_BIN, os.X_OK):
        log(f"{helper.REGISTRY_BIN} is missing (as root: apt-get install docker-registry)")
        return 2
    if os.geteuid() != 0:
        log("not root: no loop image, no drop_caches (--warm), contenders run as yourself")
    runner = Runner(user)
    top = Path(tempfile.mkdtemp(prefix="bench-build.", dir="/tmp" if os.geteuid() == 0 else None))
    runroot_base = Path(tempfile.mkdtemp(prefix="bb.", dir="/tmp"))   # podman's sockets: the path must be short
    contenders = [Builder(name, name, top / f"xdg-{name}") for name in a.contenders]
    try:
        os.chmod(top, 0o755)
        user.mkdir(runroot_base, 0o700)
        for c in contenders:
            user.mkdir(c.runtime_dir, 0o700)
        with contextlib.ExitStack() as stack:
            work = stack.enter_context(bench_pull.bench_filesystem(a, top, user))
            warning = check_journal(str(work))
            if warning:
                log(f"WARNING: {warning}")
            find_problems(contenders, runner, user.mkdir(top / "probe", 0o700))
            for c in contenders:
                if c.problem:
                    log(f"{c.name}: {c.problem}; its rows say n/a")
            layouts = bench_pull.build_layouts([BASE], Path(a.cache_dir) if a.cache_dir else None)
            host = stack.enter_context(bench_pull.serving(helper, work / "registry", layouts))
            for c in contenders:
                c.registry = host
                if c.name == "ch-image" and not c.problem:
                    c.base_tarball = base_tarball(layouts[0], work / f"{BASE}.tar.gz", user)
            context = user.mkdir(work / "context")
            t0 = time.monotonic()
            make_context(context, f"{host}/{layouts[0].ref}", user)
            log(f"context: {TREE_FILES} files, {human(TREE_BYTES)} at {context} ({time.monotonic() - t0:.1f} s)")

            t0 = time.monotonic()
            results = BuildBench(a, work, runroot_base, runner, context).run(contenders, layouts[0].ref)
            log(f"benchmark took {time.monotonic() - t0:.0f} s")
            print(table(results, contenders, a), flush=True)
            if a.keep:  # the loop image is unmounted on the way out; its logs stay readable
                shutil.copytree(work / "logs", top / "logs", dirs_exist_ok=True)
            if a.json:
                out = {"config": vars(a),
                       "host": {"uname": os.uname().release, "cpus": os.cpu_count(), "user": user.name,
                                "workdir": str(work), "fs_warning": warning},
                       "base": {"ref": layouts[0].ref, "manifest_digest": layouts[0].manifest_digest},
                       "context": {"files": TREE_FILES, "bytes": TREE_BYTES, "seed": SEED, "changed": str(CHANGED),
                                   "dockerfile": DOCKERFILE},
                       "results": {case: {name: {"times": r.times, "median": r.median, "cache_hits": r.hits,
                                                 "ignored": sorted(r.ignored), "error": r.error,
                                                 "unavailable": r.unavailable}
                                          for name, r in by.items()} for case, by in results.items()}}
                Path(a.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
                log(f"raw numbers in {a.json}")
    finally:
        runner.kill()
        for c in contenders:
            kill_pause_processes(c.runtime_dir)
        rmtree(runroot_base)
        bench_pull.keep_or_remove(top, a.keep)
    return 0


def main(argv: list[str] | None = None) -> int:
    return bench_pull.run_bench(bench, parse(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
