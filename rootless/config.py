"""Settings of one rootless invocation: where the store lives, which registries are insecure.

Frozen values, resolved once from XDG variables, the config file and flags; no globals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import RootlessError

CONFIG_FILE = "config.json"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


@dataclass(frozen=True)
class Config:
    """Where things are and how registries are reached.

    ``data_dir`` holds the image store (``$XDG_DATA_HOME/rootless``), ``config_dir`` the
    config file and credentials (``$XDG_CONFIG_HOME/rootless``), ``runtime_dir`` the
    state of running containers (``$XDG_RUNTIME_DIR/rootless``, else under data_dir).
    """

    data_dir: Path
    config_dir: Path
    runtime_dir: Path
    insecure_registries: tuple[str, ...] = ()
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def auth_file(self) -> Path:
        return self.config_dir / "auth.json"

    @classmethod
    def load(cls, root: str | os.PathLike[str] | None = None, config_file: str | os.PathLike[str] | None = None) -> Config:
        """Defaults from XDG, then the config file, then ROOT (the ``--root`` flag) for the data dir."""
        config_dir = _xdg("XDG_CONFIG_HOME", ".config") / "rootless"
        data_dir = _xdg("XDG_DATA_HOME", ".local/share") / "rootless"
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        runtime_dir = Path(runtime) / "rootless" if runtime and os.path.isdir(runtime) else data_dir / "run"
        path = Path(config_file) if config_file else config_dir / CONFIG_FILE
        settings: dict[str, object] = {}
        try:
            settings = json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            raise RootlessError(f"cannot read config file {path}: {e}", "fix or remove it") from None
        if not isinstance(settings, dict):
            raise RootlessError(f"config file {path} must hold a JSON object", "fix or remove it")
        if "root" in settings:
            data_dir = Path(os.path.expanduser(str(settings["root"])))
        insecure = settings.get("insecure-registries", [])
        if not isinstance(insecure, list) or not all(isinstance(x, str) for x in insecure):
            raise RootlessError(f"config file {path}: insecure-registries must be a list of host[:port] strings")
        cfg = cls(data_dir, config_dir, runtime_dir, tuple(insecure), settings)
        if root is not None:
            cfg = replace(cfg, data_dir=Path(root), runtime_dir=Path(root) / "run")
        return cfg
