"""podman and buildah, the peers rootless is compared with, run rootless with storage of their own.

vfs storage: no mount program to depend on.  Each peer gets its own HOME, XDG directories
and a short runroot (podman keeps sockets there; their paths must stay under 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from capabilities import verdict

#: Flags each peer takes beyond the storage ones.
EXTRA = {"podman": ("--cgroup-manager", "cgroupfs", "--events-backend", "file"), "buildah": ()}


class Peer:
    def __init__(self, tool: str, base: Path) -> None:
        self.tool = tool
        self.home = base / "home"
        self.runtime = runtime = base / "xdg"
        tmp = base / "tmp"
        for d in (self.home, runtime, tmp):
            d.mkdir(mode=0o700)
        self.env = dict(os.environ, HOME=str(self.home), XDG_RUNTIME_DIR=str(runtime), TMPDIR=str(tmp),
                        XDG_CONFIG_HOME=str(self.home / ".config"), XDG_DATA_HOME=str(self.home / ".local/share"))
        self.root = base / "storage"
        self.runroot = tempfile.mkdtemp(prefix=f"rl-{tool}.")
        self.cmd = [tool, "--root", str(self.root), "--runroot", self.runroot, "--storage-driver", "vfs",
                    *EXTRA[tool]]

    def __call__(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run(self.cmd + list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{self.tool} {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def close(self) -> None:
        # vfs layers hold files owned by subordinate ids: only the peer's user namespace can remove them.
        subprocess.run(self.cmd + ["unshare", "rm", "-rf", str(self.root), self.runroot], env=self.env,
                       capture_output=True, timeout=180)
        shutil.rmtree(self.runroot, ignore_errors=True)
        # podman's pause process holds its user namespace for the next command: there is none.
        for pidfile in self.runtime.glob("**/pause.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def problem(tool: str) -> str | None:
    if shutil.which(tool) is None:
        return f"{tool} is not on PATH (as root: apt-get install {tool}; scripts/setup installs it)"
    return None


@contextmanager
def peer(tool: str, base: Path) -> Iterator[Peer]:
    """TOOL ready to run, or the test skipped (failed in CI) where it is missing."""
    outcome = verdict(tool, problem(tool), os.environ)
    if outcome is not None:
        if outcome.action == "fail":
            pytest.fail(outcome.message, pytrace=False)
        pytest.skip(outcome.message)
    p = Peer(tool, base)
    try:
        yield p
    finally:
        p.close()
