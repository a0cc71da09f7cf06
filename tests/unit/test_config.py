"""Where the store and credentials live: XDG defaults, the config file, then the --root flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rootless.config import Config
from rootless.errors import RootlessError


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return tmp_path


def test_xdg_directories_are_the_defaults(xdg: Path) -> None:
    cfg = Config.load()
    assert cfg.data_dir == xdg / "data" / "rootless"
    assert cfg.store_dir == xdg / "data" / "rootless" / "storage"
    assert cfg.auth_file == xdg / "config" / "rootless" / "auth.json"
    assert cfg.runtime_dir == xdg / "data" / "rootless" / "run"


def test_without_xdg_variables_home_is_used(xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")   # the spec says: absolute paths only
    cfg = Config.load()
    assert cfg.data_dir == xdg / "home" / ".local" / "share" / "rootless"
    assert cfg.config_dir == xdg / "home" / ".config" / "rootless"


def test_the_config_file_then_the_flag_override(xdg: Path) -> None:
    conf = xdg / "config" / "rootless"
    conf.mkdir(parents=True)
    (conf / "config.json").write_text(json.dumps({"root": str(xdg / "from-file"),
                                                  "insecure-registries": ["registry.lan:5000"]}))
    cfg = Config.load()
    assert cfg.data_dir == xdg / "from-file"
    assert cfg.insecure_registries == ("registry.lan:5000",)
    assert Config.load(root=xdg / "from-flag").data_dir == xdg / "from-flag"
    other = xdg / "other.json"
    other.write_text("{}")
    assert Config.load(config_file=other).data_dir == xdg / "data" / "rootless"


@pytest.mark.parametrize("text, message", [
    ("{not json", "cannot read config file"),
    ("[1, 2]", "must hold a JSON object"),
    ('{"insecure-registries": "host:5000"}', "must be a list"),
])
def test_a_bad_config_file_is_a_clear_error(xdg: Path, text: str, message: str) -> None:
    path = xdg / "bad.json"
    path.write_text(text)
    with pytest.raises(RootlessError, match=message):
        Config.load(config_file=path)
