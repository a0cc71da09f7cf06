"""rootless/warm.py's decisions that need no process: which commands go warm, how long one waits, and
what makes a warm process another's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootless import warm


@pytest.mark.parametrize(("argv", "verb"), [
    (["run", "--rm", "img"], "run"),
    (["--root", "/tmp/x", "ps", "-a"], "ps"),
    (["--root=/tmp/x", "--log-level", "debug", "exec", "c", "sh"], "exec"),
    (["--config", "run", "images"], "images"),     # the value of --config is not the verb
    (["--help"], None),
    (["--version"], None),
    (["--unknown-flag", "run"], None),             # an option this module does not know: the ordinary way
    ([], None),
])
def test_the_verb_is_found_past_the_global_options(argv: list[str], verb: str | None) -> None:
    assert warm._verb(argv) == verb


def test_only_the_verbs_that_are_timed_go_warm() -> None:
    assert {"run", "exec", "ps", "start"} <= warm.VERBS
    assert not {"login", "build", "pull", "push"} & warm.VERBS   # /dev/tty, and long anyway


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    (tmp_path / "rootless").mkdir(exist_ok=True)
    (tmp_path / "rootless" / "config.json").write_text(text)
    return {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}


@pytest.mark.parametrize(("config", "env", "idle"), [
    (None, {}, warm.DEFAULT_IDLE),
    ('{"network": "host"}', {}, warm.DEFAULT_IDLE),
    ('{"warm-start": false}', {}, 0.0),
    ('{"warm-start": true}', {}, warm.DEFAULT_IDLE),
    ('{"warm-start": 45}', {}, 45.0),
    ('{"warm-start": 0}', {}, 0.0),
    ('{"warm-start": "soon"}', {}, 0.0),
    ('{"warm-start": 45}', {"ROOTLESS_WARM": "0"}, 0.0),
    ('{"warm-start": false}', {"ROOTLESS_WARM": "12.5"}, 12.5),
    (None, {"ROOTLESS_WARM": "off"}, 0.0),
    ('{"warm-start": ', {}, 0.0),                  # a broken file: the ordinary path says what is wrong
])
def test_idle_time_from_the_config_file_and_the_environment(tmp_path: Path, config: str | None,
                                                            env: dict[str, str], idle: float) -> None:
    base = write_config(tmp_path, config) if config is not None else {"XDG_CONFIG_HOME": str(tmp_path)}
    assert warm._idle_seconds([], {**base, **env}) == idle


def test_the_config_flag_names_the_file(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"warm-start": 7}')
    assert warm._idle_seconds(["--config", str(other), "run"], {"HOME": str(tmp_path)}) == 7.0
    assert warm._idle_seconds([f"--config={other}", "run"], {"HOME": str(tmp_path)}) == 7.0
    assert warm._idle_seconds(["run"], {"HOME": str(tmp_path), "ROOTLESS_CONFIG": str(other)}) == 7.0


def test_an_edited_module_makes_another_code_stamp(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    module = package / "sub" / "mod.py"
    module.write_text("x = 1\n")
    (package / "notes.txt").write_text("not code")
    before = warm.code_stamp([str(package)])
    assert str(module) in before and "notes.txt" not in before
    (package / "notes.txt").write_text("still not code")
    assert warm.code_stamp([str(package)]) == before
    module.write_text("x = 2\n")
    os.utime(module, ns=(1, 1))
    assert warm.code_stamp([str(package)]) != before


def test_the_socket_name_is_the_users_and_differs_by_idle_time() -> None:
    name = warm.socket_name(600)
    assert name.startswith(f"\0rootless-warm-{os.getuid()}-")
    assert warm.socket_name(600) == name          # stable: every caller of this process finds the same one
    assert warm.socket_name(30) != name
