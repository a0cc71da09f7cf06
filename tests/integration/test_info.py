"""`rootless info` on this host, and in a user namespace where no further one can be made."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runcli import Cli

#: Where user namespaces are refused: one whose limit for more is 0 (see test_proot.py).
RESTRICT = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "restricted"]


def info(cli: Cli, *args: str, env: dict[str, str] | None = None,
         prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in {**os.environ, **cli.env}.items() if k != "ROOTLESS_RUNTIME"}
    merged.update(env or {})
    done = subprocess.run([*(prefix or []), *cli.argv("info", *args)], env=merged, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_sections_and_json_agree(tmp_path: Path) -> None:
    cli = Cli(tmp_path)
    human = info(cli).stdout
    for section in ("Client:", "Runtime:", "FUSE:", "Network:", "Storage:", "Host:"):
        assert f"\n{section}\n" in f"\n{human}"
    doc = json.loads(info(cli, "--format", "json").stdout)
    assert doc["RootDir"] == str(cli.root)
    assert f" Root Dir: {cli.root}" in human
    assert f" Mode: {doc['Runtime']['Mode']}" in human
    assert doc["User"]["Uid"] == os.getuid()
    for key in ("userns", "subuid", "newuidmap", "dev_fuse", "fusermount3", "proot", "store_fs", "store_xattrs",
                "pasta", "slirp4netns", "tun"):
        assert set(doc["Checks"][key]) == {"Ok", "Detail", "Hint"}
    # Every failed check is a warning on stderr, with its hint; none for what is fine.
    failed = [c for c in doc["Checks"].values() if not c["Ok"]]
    assert len(doc["Warnings"]) >= len(failed)
    assert info(cli, "-f", "{{.Runtime.Mode}}").stdout.strip() == doc["Runtime"]["Mode"]
    # Probing the store's filesystem makes neither the store nor a stray file.
    assert not cli.root.exists() and list(tmp_path.iterdir()) == [cli.home]


@pytest.mark.userns
@pytest.mark.fuse
def test_this_host_runs_containers_in_user_namespaces(tmp_path: Path) -> None:
    doc = json.loads(info(Cli(tmp_path), "-f", "json").stdout)
    assert doc["Checks"]["userns"] == {"Ok": True, "Detail": "yes", "Hint": ""}
    assert doc["Runtime"]["Mode"] in ("userns", "userns (single uid)")
    if doc["Runtime"]["Mode"] == "userns (single uid)":
        assert "only the user's own uid" in doc["Runtime"]["Reason"]


@pytest.mark.userns
@pytest.mark.fuse
@pytest.mark.proot
def test_where_user_namespaces_are_refused_info_names_why_and_picks_proot(tmp_path: Path) -> None:
    done = info(Cli(tmp_path), prefix=RESTRICT)
    assert " Mode: proot\n" in done.stdout
    assert "user.max_user_namespaces is 0" in done.stdout
    assert "WARNING: User namespaces: no: unshare(CLONE_NEWUSER): No space left on device" in done.stderr
    assert "Hint: as root: sysctl -w user.max_user_namespaces=" in done.stderr
    doc = json.loads(info(Cli(tmp_path), "-f", "json", prefix=RESTRICT).stdout)
    assert doc["Runtime"]["Mode"] == "proot" and not doc["Checks"]["userns"]["Ok"]
    assert doc["Driver"] == "fusefs"    # overlayfs is mounted in a user namespace; proot has none


@pytest.mark.proot
@pytest.mark.fuse
def test_the_mode_can_be_forced(tmp_path: Path) -> None:
    doc = json.loads(info(Cli(tmp_path), "-f", "json", env={"ROOTLESS_RUNTIME": "proot"}).stdout)
    assert doc["Runtime"] == {"Mode": "proot", "Reason": "forced by ROOTLESS_RUNTIME", "Forced": "proot"}
