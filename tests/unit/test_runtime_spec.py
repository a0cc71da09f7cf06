"""docker's rules for what a container runs: command, environment, working directory, user lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootless.errors import RootlessError
from rootless.runtime.spec import DEFAULT_PATH, UserNotFound, build, command, environment, parse_env_file, resolve_user


def test_run_arguments_replace_cmd_and_follow_entrypoint() -> None:
    assert command({"Cmd": ["ls", "-a"]}, [], None) == ("ls", "-a")
    assert command({"Cmd": ["ls", "-a"]}, ["-l"], None) == ("-l",)
    assert command({"Entrypoint": ["ls", "-a"]}, ["-l"], None) == ("ls", "-a", "-l")
    assert command({"Entrypoint": ["ls"], "Cmd": ["-a"]}, [], None) == ("ls", "-a")
    assert command({"Entrypoint": ["ls"], "Cmd": ["-a"]}, ["-l"], None) == ("ls", "-l")
    # --entrypoint drops the image's CMD too; an empty one clears the entrypoint.
    assert command({"Entrypoint": ["ls"], "Cmd": ["-a"]}, [], "echo") == ("echo",)
    assert command({"Entrypoint": ["ls"], "Cmd": ["-a"]}, ["x"], "") == ("x",)
    with pytest.raises(RootlessError, match="No command specified"):
        command({"Entrypoint": ["ls"]}, [], "")
    with pytest.raises(RootlessError, match="No command specified"):
        command({}, [], None)


def test_environment_order_and_overrides() -> None:
    env = environment({"Env": ["A=image", "B=image"]}, ["B=flag", "C", "D"], "host1", False, {"C": "from-host"})
    assert env == (f"PATH={DEFAULT_PATH}", "HOSTNAME=host1", "A=image", "B=flag", "C=from-host")
    env = environment({"Env": ["PATH=/bin", "A=1"]}, ["A"], "h", True, {})
    assert env == ("PATH=/bin", "HOSTNAME=h", "TERM=xterm")
    with pytest.raises(RootlessError, match="invalid environment variable"):
        environment({}, ["=x"], "h", False, {})


def test_env_file(tmp_path: Path) -> None:
    f = tmp_path / "env"
    f.write_text("# comment\n\nA=1\n  B=two words\nC\n")
    assert parse_env_file(str(f)) == ["A=1", "B=two words", "C"]
    f.write_text("BAD KEY=1\n")
    with pytest.raises(RootlessError, match="env:1: variable 'BAD KEY' contains whitespaces"):
        parse_env_file(str(f))


def test_working_dir_and_user_defaults() -> None:
    spec = build({"WorkingDir": "/srv", "User": "app"}, ["true"])
    assert (spec.cwd, spec.user) == ("/srv", "app")
    spec = build({"WorkingDir": "/srv", "User": "app"}, ["true"], workdir="/tmp", user="0")
    assert (spec.cwd, spec.user) == ("/tmp", "0")
    assert build({}, ["true"]).cwd == "/"
    with pytest.raises(RootlessError, match="needs to be an absolute path"):
        build({}, ["true"], workdir="rel")


def test_users_are_looked_up_in_the_containers_files(tmp_path: Path) -> None:
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n")
    group.write_text("root:x:0:\napp:x:1001:\nstaff:x:50:app,other\nwheel:x:10:root\n")

    def user(spec: str) -> tuple[int, int, tuple[int, ...], str]:
        u = resolve_user(spec, str(passwd), str(group))
        return u.uid, u.gid, u.groups, u.home

    assert user("") == (0, 0, (0, 10), "/root")
    assert user("app") == (1000, 1001, (1001, 50), "/home/app")
    assert user("1000") == (1000, 1001, (1001, 50), "/home/app")
    assert user("4242") == (4242, 0, (0,), "/")
    assert user("app:staff") == (1000, 50, (50,), "/home/app")
    assert user("app:77") == (1000, 77, (77,), "/home/app")
    with pytest.raises(UserNotFound, match="unable to find user bogus: no matching entries in passwd file"):
        user("bogus")
    with pytest.raises(UserNotFound, match="unable to find group nogroup: no matching entries in group file"):
        user("app:nogroup")
