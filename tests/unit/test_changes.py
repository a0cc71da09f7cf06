"""--change: docker's Dockerfile-instruction subset for import, in exec and shell form, with quotes and variables."""

from __future__ import annotations

import pytest

from rootless.image.changes import ChangeError, apply_changes


def test_each_instruction_sets_its_config_field() -> None:
    config = apply_changes({}, [
        'CMD ["/bin/sh", "-c", "echo hi"]',
        "entrypoint /entry.sh --flag",
        'ENV A=1 B="two words" C=it\\ works',
        "ENV LEGACY value with spaces",
        "EXPOSE 80 53/udp 8000-8001",
        'LABEL version=1.0 "with space"=yes',
        "USER app:app",
        'VOLUME ["/data"]',
        "VOLUME /a /b",
        "WORKDIR /srv",
        "WORKDIR app",
    ])
    assert config == {
        "Cmd": ["/bin/sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "/entry.sh --flag"],
        "Env": ["A=1", "B=two words", "C=it works", "LEGACY=value with spaces"],
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}},
        "Labels": {"version": "1.0", "with space": "yes"},
        "User": "app:app",
        "Volumes": {"/data": {}, "/a": {}, "/b": {}},
        "WorkingDir": "/srv/app",
    }


def test_variables_come_from_the_env_before_the_instruction() -> None:
    base = {"Env": ["PATH=/usr/bin", "HOME=/root"]}
    config = apply_changes(base, ["ENV PATH=$PATH:/opt/bin X=${HOME}/x Y=${UNSET:-dflt} Z=${HOME:+set} Q='$HOME'",
                                  "ENV HOME=/home/app", "WORKDIR $HOME", 'CMD echo "$HOME"'])
    assert config["Env"] == ["PATH=/usr/bin:/opt/bin", "X=/root/x", "Y=dflt", "Z=set", "Q=$HOME", "HOME=/home/app"]
    assert config["WorkingDir"] == "/home/app"
    assert config["Cmd"] == ["/bin/sh", "-c", 'echo "$HOME"'], "the container's shell expands CMD"
    assert base == {"Env": ["PATH=/usr/bin", "HOME=/root"]}, "the caller's config is not changed"


def test_a_json_array_of_non_strings_is_shell_form() -> None:
    assert apply_changes({}, ["CMD [1, 2]"])["Cmd"] == ["/bin/sh", "-c", "[1, 2]"]


@pytest.mark.parametrize("change, message", [
    ("RUN make", "'RUN' is not a Dockerfile instruction"),
    ("", "is not a Dockerfile instruction"),
    ("CMD", "CMD needs arguments"),
    ("ENV A", "needs a value"),
    ('ENV A="open', "unmatched double quote"),
    ("LABEL =v", "not KEY=VALUE"),
    ("EXPOSE 70000", "invalid port range"),
    ("EXPOSE 80/icmp", "invalid protocol"),
    ("EXPOSE http", "invalid port"),
    ("ENV A=${B/x/y}", "bad substitution"),
])
def test_invalid_changes_say_what_is_wrong(change: str, message: str) -> None:
    with pytest.raises(ChangeError, match=message):
        apply_changes({}, [change])
