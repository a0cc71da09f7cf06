"""Helpers for real fusefs mounts in the integration tests: layers, mount, unmount."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fusefs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusefs", *args]


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


@dataclass
class Union:
    """One mounted union: its layers and mountpoint."""

    root: Path
    lowers: list[Path]
    upper: Path | None
    work: Path | None
    mnt: Path
    extra: list[str] = field(default_factory=list)

    def options(self) -> str:
        opts = "lowerdir=" + ":".join(str(p) for p in self.lowers)
        if self.upper is not None:
            opts += f",upperdir={self.upper},workdir={self.work}"
        return ",".join([opts, *self.extra])

    def mount(self) -> None:
        proc = subprocess.run(fusefs_cmd("-o", self.options(), str(self.mnt)), cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"mount failed: {proc.stderr}"
        assert is_mounted(self.mnt)

    def unmount(self) -> None:
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", str(self.mnt)], check=True, timeout=60)
        deadline = time.monotonic() + 10
        while is_mounted(self.mnt) and time.monotonic() < deadline:
            time.sleep(0.05)

    def remount(self) -> None:
        self.unmount()
        wait_daemon_gone(self.mnt)
        self.mount()

    def path(self, rel: str) -> Path:
        return self.mnt / rel


def wait_daemon_gone(mnt: Path, timeout: float = 10) -> None:
    """The daemon finishes writing its tables after the kernel lets go; wait for it to exit."""
    deadline = time.monotonic() + timeout
    needle = str(mnt)
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-f", f"fusefs .*{needle}$"], capture_output=True, text=True)
        if not out.stdout.strip():
            return
        time.sleep(0.05)


def build_tree(root: Path, tree: dict) -> None:
    for rel, content in sorted(tree.items()):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif isinstance(content, tuple) and content[0] == "symlink":
            os.symlink(content[1], p)
        elif isinstance(content, tuple) and content[0] == "whiteout":
            os.mknod(p, 0o020000, os.makedev(0, 0))
        else:
            p.write_bytes(content.encode() if isinstance(content, str) else content)


def subid_range(path: str) -> tuple[int, int] | None:
    """This user's range in /etc/subuid or /etc/subgid: (start, count), or None."""
    names = {getpass.getuser(), str(os.getuid())}
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in names:
                    return int(parts[1]), int(parts[2])
    except FileNotFoundError:
        pass
    return None


def in_full_userns(script: str) -> subprocess.CompletedProcess:
    """Run SCRIPT (bash) as root of a user namespace with the user's whole subuid/subgid range."""
    uids, gids = subid_range("/etc/subuid"), subid_range("/etc/subgid")
    if uids is None or gids is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test user needs /etc/subuid and /etc/subgid ranges (.ci/run creates them)")
        pytest.skip("no /etc/subuid or /etc/subgid range for this user")
    cmd = ["unshare", "--user", "--map-root-user", f"--map-users={uids[0]},1,{uids[1]}",
           f"--map-groups={gids[0]},1,{gids[1]}", "--mount", "bash", "-c", "set -euo pipefail\n" + script]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
