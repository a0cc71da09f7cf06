"""`diff`, `commit`, `export` and `cp` as a user sees them: docker's lines, layers, archives and copy rules."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from mounts import subid_range
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]

#: What the container "changer" does to the image "base"; DIFF is what docker would list for it.
SCRIPT = ("echo new > /new; echo more >> /etc/passwd; rm /bin/vi;"
          "rm -rf /data; mkdir /data; echo fresh > /data/keep;"
          "mkdir -p /var/x; chown 1000:1000 /new; ln /new /newlink; ln -s /new /sym; chmod 600 /opt/app/cfg")
DIFF = ["C /bin", "D /bin/vi", "C /data", "C /data/keep", "D /data/old", "C /etc/passwd", "A /new", "A /newlink",
        "C /opt/app/cfg", "A /sym", "A /var", "A /var/x"]


@pytest.fixture(scope="module")
def base(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox and a second layer: a directory to remove and make again, a file to chmod, and
    /etc/resolv.conf as a symlink (which the runtime replaces to bind the host's over it)."""
    extra: dict[str, bytes | str | None] = {"data/old": b"old\n", "data/keep": b"keep\n", "opt/app/cfg": b"v1\n",
                                            "etc/resolv.conf": "../run/resolv.conf"}
    image = make_image([busybox_rootfs(), extra], {"Env": ["PATH=/bin", "FROM_IMAGE=1"], "Cmd": ["sh"],
                                                   "Labels": {"made": "here"}})
    return push_all(reg.host, {"base": image}, tmp_path_factory.mktemp("push"))["base"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, base: str) -> Cli:
    return Cli.with_images(tmp_path_factory.mktemp("commit"), base)


@pytest.fixture(scope="module")
def changer(cli: Cli, base: str) -> str:
    """A stopped container that added, changed and deleted files (a chown to 1000:1000 needs subuids)."""
    if subid_range("/etc/subuid") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test user needs an /etc/subuid range (.ci/run makes one)")
        pytest.skip("no /etc/subuid range: the container has only uid 0")
    done = cli.proc("run", "--name", "changer", "-e", "FROM_RUN=2", base, "sh", "-c", SCRIPT)
    assert done.returncode == 0, done.stderr
    return "changer"


def ok(cli: Cli, *args: str, input: str | None = None) -> str:
    done = cli.proc(*args, input=input)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def layer_members(cli: Cli, image: str, tmp: Path, index: int = -1) -> dict[str, tarfile.TarInfo]:
    """The members of one layer of IMAGE, as `save` writes it."""
    archive = tmp / "saved.tar"
    ok(cli, "save", "-o", str(archive), image)
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        data = outer.extractfile(manifest[0]["Layers"][index]).read()  # type: ignore[union-attr]
    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
        return {m.name.rstrip("/"): m for m in layer.getmembers()}


def test_diff_lists_what_the_container_changed_as_docker_does(cli: Cli, changer: str) -> None:
    assert cli("diff", changer).output.splitlines() == DIFF


def test_the_runtimes_mount_targets_are_no_change(cli: Cli, base: str, tmp_path: Path) -> None:
    # /etc/hosts and /etc/hostname are made in the writable layer to bind over (the image has
    # none), /etc/resolv.conf replaces the image's symlink, /proc /dev /sys are made too.
    ok(cli, "run", "--name", "idle", base, "true")
    assert cli("diff", "idle").output == ""
    committed = cli("commit", "idle").output.strip()
    assert layer_members(cli, committed, tmp_path) == {}
    ok(cli, "export", "-o", str(tmp_path / "idle.tar"), "idle")
    with tarfile.open(tmp_path / "idle.tar") as tar:
        names = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert names["etc/resolv.conf"].issym() and names["etc/resolv.conf"].linkname == "../run/resolv.conf"
    assert not {"etc/hosts", "etc/hostname", "proc", "dev", "sys"} & set(names)
    ok(cli, "rm", "idle")


def test_commit_adds_one_layer_with_the_changes_and_a_history_row(cli: Cli, changer: str, base: str,
                                                                   tmp_path: Path) -> None:
    done = cli("commit", "-a", "Jane Doe <jane@example.com>", "-m", "the message", "-c", 'CMD ["cat", "/new"]',
               "-c", "ENV ADDED=yes", changer, "committed:1")
    image_id = done.output.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    doc = json.loads(cli("image", "inspect", "committed:1").output)[0]
    base_doc = json.loads(cli("image", "inspect", base).output)[0]
    assert doc["Id"] == image_id
    assert doc["RootFS"]["Layers"][:-1] == base_doc["RootFS"]["Layers"]
    assert len(doc["RootFS"]["Layers"]) == len(base_doc["RootFS"]["Layers"]) + 1
    assert doc["Author"] == "Jane Doe <jane@example.com>" and doc["Comment"] == "the message"
    config = doc["Config"]
    assert config["Cmd"] == ["cat", "/new"] and config["Labels"] == {"made": "here"}
    assert config["Env"] == ["PATH=/bin", "FROM_IMAGE=1", "FROM_RUN=2", "ADDED=yes"]   # no HOSTNAME
    history = cli("history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}", "committed:1").output
    assert history.splitlines()[0] == f"sh -c {SCRIPT}|the message"
    assert len(history.splitlines()) == 3

    members = layer_members(cli, "committed:1", tmp_path)
    assert members["bin/.wh.vi"].isfile() and members["data/.wh..wh..opq"].isfile()
    assert members["new"].uid == 1000 and members["new"].gid == 1000
    assert members["newlink"].islnk() and members["newlink"].linkname == "new"
    assert members["sym"].issym() and members["opt/app/cfg"].mode == 0o600
    assert not {"etc/hosts", "etc/hostname", "etc/resolv.conf", "proc", "dev", "sys", "data/old"} & set(members)

    out = ok(cli, "run", "--rm", "committed:1", "sh", "-c",
             "cat /new; stat -c '%u:%g %h' /new; readlink /sym; ls /bin/vi 2>&1; ls /data; cat /data/keep;"
             "tail -1 /etc/passwd; stat -c %a /opt/app/cfg; ls -d /var/x")
    assert out.splitlines() == ["new", "1000:1000 2", "/new", "ls: /bin/vi: No such file or directory", "keep",
                                "fresh", "more", "600", "/var/x"]
    assert ok(cli, "run", "--rm", "committed:1") == "new\n"


def test_commit_of_a_running_container(cli: Cli, base: str) -> None:
    ok(cli, "run", "-d", "--name", "live", base, "sh", "-c", "echo hi > /live; sleep 60")
    try:
        for _ in range(100):
            if cli("diff", "live").output == "A /live\n":
                break
            time.sleep(0.1)
        assert cli("diff", "live").output == "A /live\n"
        cli("commit", "--pause=false", "live", "fromlive:1")
        assert ok(cli, "run", "--rm", "fromlive:1", "cat", "/live") == "hi\n"
    finally:
        cli.proc("rm", "-f", "live")


def test_export_then_import_gives_the_same_files(cli: Cli, changer: str, tmp_path: Path) -> None:
    archive = tmp_path / "changer.tar"
    ok(cli, "export", "-o", str(archive), changer)
    streamed = subprocess.run(cli.argv("export", changer), env={**os.environ, **cli.env}, capture_output=True,
                              timeout=60)
    assert streamed.returncode == 0 and streamed.stdout == archive.read_bytes()
    with tarfile.open(archive) as tar:
        names = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert not any(os.path.basename(n).startswith(".wh.") for n in names)
    assert names["new"].uid == 1000 and "bin/vi" not in names and "data/old" not in names
    ok(cli, "import", str(archive), "imported:1")
    out = ok(cli, "run", "--rm", "imported:1", "sh", "-c",
             "cat /new /data/keep; stat -c '%u:%g %h' /new; ls /bin/vi /data/old 2>&1; tail -1 /etc/passwd;"
             "readlink /sym; stat -c %a /opt/app/cfg")
    assert out.splitlines() == ["new", "fresh", "1000:1000 2", "ls: /bin/vi: No such file or directory",
                                "ls: /data/old: No such file or directory", "more", "/new", "600"]


def test_export_refuses_a_terminal(cli: Cli, changer: str) -> None:
    master, slave = pty.openpty()
    try:
        done = subprocess.run(cli.argv("export", changer), env={**os.environ, **cli.env}, stdout=slave,
                              stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert done.returncode == 125
    assert b"Cowardly refusing to save to a terminal. Use the -o flag or redirect" in done.stderr


def test_cp_out_of_a_stopped_container_follows_dockers_rules(cli: Cli, changer: str, tmp_path: Path) -> None:
    ok(cli, "cp", f"{changer}:/etc/passwd", f"{tmp_path}/")
    assert (tmp_path / "passwd").read_text().endswith("more\n")
    ok(cli, "cp", f"{changer}:/data", str(tmp_path / "copy"))            # absent: made as the directory
    assert os.listdir(tmp_path / "copy") == ["keep"]
    ok(cli, "cp", f"{changer}:/data", str(tmp_path / "copy"))            # present: copied into it
    assert sorted(os.listdir(tmp_path / "copy")) == ["data", "keep"]
    (tmp_path / "flat").mkdir()
    ok(cli, "cp", f"{changer}:/data/.", str(tmp_path / "flat"))          # /. copies what it holds
    assert (tmp_path / "flat" / "keep").read_text() == "fresh\n"
    ok(cli, "cp", f"{changer}:/sym", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "/new"
    ok(cli, "cp", "-L", f"{changer}:/sym", str(tmp_path / "followed"))
    assert (tmp_path / "followed").read_text() == "new\n"

    stream = cli.proc("cp", f"{changer}:/new", "-")
    with tarfile.open(fileobj=io.BytesIO(stream.stdout.encode("utf-8", "surrogateescape"))) as tar:
        member = tar.getmembers()[0]
    assert (member.name, member.uid, member.gid) == ("new", 1000, 1000)

    missing = cli.proc("cp", f"{changer}:/nothere", str(tmp_path))
    assert missing.returncode == 125
    assert missing.stderr.strip() == f"Error: Could not find the file /nothere in container {changer}"
    onto_file = cli.proc("cp", f"{changer}:/data", str(tmp_path / "passwd"))
    assert onto_file.returncode == 125 and "cannot copy a directory to a file" in onto_file.stderr


def test_cp_into_a_stopped_container(cli: Cli, base: str, tmp_path: Path) -> None:
    ok(cli, "run", "--name", "target", base, "true")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hello\n")
    (src / "sub" / "l").symlink_to("f")
    os.chmod(src / "sub" / "f", 0o640)
    ok(cli, "cp", str(src), "target:/srv")                   # /srv absent: it becomes a copy of src
    ok(cli, "cp", str(src / "sub" / "f"), "target:/etc/")
    ok(cli, "cp", "-a", str(src / "sub" / "f"), "target:/owned")
    ok(cli, "cp", str(src / "sub" / "f"), "target:/data/keep")  # overwrites a file of the image
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("from-stdin")
        info.size, info.uid, info.gid, info.mode = 3, 7, 8, 0o600
        tar.addfile(info, io.BytesIO(b"in\n"))
    piped = subprocess.run(cli.argv("cp", "-a", "-", "target:/tmp"), env={**os.environ, **cli.env},
                           input=buf.getvalue(), capture_output=True, timeout=60)
    assert piped.returncode == 0, piped.stderr

    assert cli("diff", "target").output.splitlines() == [
        "C /data/keep", "C /etc", "A /etc/f", "A /owned", "A /srv", "A /srv/sub", "A /srv/sub/f",
        "A /srv/sub/l", "C /tmp", "A /tmp/from-stdin"]
    out = tmp_path / "back.tar"
    with open(out, "wb") as f:
        subprocess.run(cli.argv("cp", "target:/", "-"), env={**os.environ, **cli.env}, stdout=f, check=True,
                       timeout=60)
    with tarfile.open(out) as tar:
        got = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
    assert (got["srv/sub/f"].uid, got["srv/sub/f"].gid, got["srv/sub/f"].mode) == (0, 0, 0o640)
    assert got["srv/sub/l"].issym() and got["etc/f"].uid == 0
    assert (got["owned"].uid, got["owned"].gid) == (os.getuid(), os.getgid())     # -a keeps them
    assert (got["tmp/from-stdin"].uid, got["tmp/from-stdin"].gid) == (7, 8)
    assert ok(cli, "cp", "target:/data/keep", "-").count("hello") == 1

    missing = cli.proc("cp", str(src / "sub" / "f"), "target:/nope/x")
    assert missing.returncode == 125 and "Could not find the file /nope in container target" in missing.stderr
    nosrc = cli.proc("cp", str(tmp_path / "absent"), "target:/")
    assert nosrc.returncode == 125 and "no such file or directory" in nosrc.stderr
    both = cli.proc("cp", "target:/a", "target:/b")
    assert both.returncode == 125 and "copying between containers is not supported" in both.stderr
    ok(cli, "rm", "target")


def test_cp_in_and_out_of_a_running_container(cli: Cli, base: str, tmp_path: Path) -> None:
    ok(cli, "run", "-d", "--name", "runner", base, "sleep", "60")
    try:
        (tmp_path / "f").write_text("into a running one\n")
        ok(cli, "cp", str(tmp_path / "f"), "runner:/tmp/")
        assert ok(cli, "exec", "runner", "sh", "-c", "cat /tmp/f; stat -c %u:%g /tmp/f") == \
            "into a running one\n0:0\n"
        # The running container's own view: /etc/hostname is the file bound over it.
        ok(cli, "cp", "runner:/etc/hostname", str(tmp_path / "hostname"))
        assert (tmp_path / "hostname").read_text().strip() == ok(cli, "exec", "runner", "hostname").strip()
        assert "A /tmp/f" in cli("diff", "runner").output.splitlines()
        missing = cli.proc("cp", "runner:/nothere", str(tmp_path))
        assert missing.returncode == 125 and "Could not find the file /nothere in container runner" in missing.stderr
    finally:
        cli.proc("rm", "-f", "runner")
