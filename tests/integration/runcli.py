"""``rootless`` as a user runs it in the tests: in-process for the image verbs, as a process for run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from rootless.cli import main


class Cli:
    """``rootless --root STORE ...`` in-process, with the user's config under HOME."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "store"
        self.home = tmp / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                    "XDG_DATA_HOME": str(self.home / ".local/share"), "DOCKER_CONFIG": str(self.home / ".docker")}

    @classmethod
    def with_images(cls, tmp: Path, *names: str) -> Cli:
        """A store in TMP that has pulled NAMES (the module-scoped store most test modules share)."""
        cli = cls(tmp)
        for name in names:
            cli("pull", "-q", name)
        return cli

    def __call__(self, *args: str, input: str | None = None, code: int = 0) -> Result:
        result = CliRunner().invoke(main, ["--root", str(self.root), *args], input=input, env=self.env,
                                    catch_exceptions=False)
        assert result.exit_code == code, (args, result.output)
        return result

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "rootless", "--root", str(self.root), *args]

    def proc(self, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``rootless ARGS`` as a separate process (what run needs: it forks, and writes to fd 1 itself)."""
        return subprocess.run(self.argv(*args), env={**os.environ, **self.env}, input=input, capture_output=True,
                              text=True, timeout=timeout)
