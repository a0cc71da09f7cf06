"""`rootless run` as a user sees it: namespaces, the root, docker's command/env/user rules, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mounts import subid_range
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]


@pytest.fixture(scope="module")
def images(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """busybox, cmd-test (CMD ["ls","-a"]), entrypoint-test (ENTRYPOINT ["ls","-a"]), envtest."""
    tmp = tmp_path_factory.mktemp("images")
    rootfs = busybox_rootfs()
    base = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}
    made = {
        "busybox": make_image([rootfs], {**base, "Cmd": ["sh"]}),
        "cmd-test": make_image([rootfs], {**base, "Cmd": ["ls", "-a"]}),
        "entrypoint-test": make_image([rootfs], {**base, "Entrypoint": ["ls", "-a"]}),
        "voltest": make_image([rootfs, {"seeded/from-image": b"image content\n", "escape": "/../../../../../tmp/rootless-escape"}],
                              {"Env": ["PATH=/bin"], "Volumes": {"/seeded": {}}, "Cmd": ["sh"]}),
        "envtest": make_image([rootfs, {"srv/data/hello": b"hi\n"}],
                              {"Env": ["PATH=/bin", "FROM_IMAGE=1", "OVERRIDE=image"], "WorkingDir": "/srv/data",
                               "User": "app", "Cmd": ["sh", "-c", "env; pwd; id"]}),
    }
    return push_all(reg.host, made, tmp)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]) -> Cli:
    """One store for the module, with every test image pulled."""
    c = Cli(tmp_path_factory.mktemp("run"))
    for name in images.values():
        c("pull", "-q", name)
    return c


def run(cli: Cli, *args: str, code: int = 0, input: str | None = None) -> tuple[str, str]:
    done = cli.proc("run", "--rm", *args, input=input)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout, done.stderr


def test_the_command_runs_as_pid_1_in_its_own_namespaces(cli: Cli, images: dict[str, str]) -> None:
    out, _ = run(cli, images["busybox"], "sh", "-c",
                 "echo $$; hostname; cat /etc/hostname; grep -c . /proc/self/mountinfo >/dev/null && echo proc;"
                 "ls /dev; readlink /dev/ptmx; touch /sys/x 2>&1; cat /proc/1/cmdline | tr '\\0' ' '; echo;"
                 "grep $(hostname) /etc/hosts | wc -l; ps -o comm | tail -n +2 | sort | tr '\\n' ' '")
    lines = out.splitlines()
    assert lines[0] == "1"
    assert lines[1] == lines[2] and len(lines[1]) == 12
    assert lines[3] == "proc"
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd"):
        assert dev in lines
    assert "pts/ptmx" in lines
    assert any("Read-only file system" in line for line in lines)
    assert "sh -c echo $$; hostname" in out
    # Only the shell and its pipeline are in the pid namespace.
    # (busybox may run an applet as /proc/self/exe, whose name is then "exe")
    assert {"ps", "sh"} <= set(lines[-1].split()) <= {"ps", "sh", "sort", "tail", "tr", "exe"}
    assert lines[-2].strip() == "1"


def test_exit_codes_are_the_containers(cli: Cli, images: dict[str, str]) -> None:
    run(cli, images["busybox"], "sh", "-c", "exit 3", code=3)
    _, err = run(cli, images["busybox"], "nothere", code=127)
    assert 'exec: "nothere": executable file not found in $PATH' in err
    _, err = run(cli, images["busybox"], "/etc/passwd", code=126)
    assert 'exec: "/etc/passwd": permission denied' in err
    _, err = run(cli, images["busybox"], "/no/such/file", code=127)
    assert "no such file or directory" in err
    _, err = run(cli, "--entrypoint", "", images["busybox"], code=125)
    assert "No command specified" in err


def test_cmd_and_entrypoint_take_run_arguments_as_docker(cli: Cli, images: dict[str, str]) -> None:
    out, _ = run(cli, images["cmd-test"])
    assert out.split()[:2] == [".", ".."]
    _, err = run(cli, images["cmd-test"], "-l", code=127)
    assert 'exec: "-l": executable file not found in $PATH' in err
    out, _ = run(cli, images["entrypoint-test"], "-l")
    assert out.splitlines()[0].startswith("total ")
    assert " .." in out     # ls -a -l
    out, _ = run(cli, "--entrypoint", "echo", images["entrypoint-test"], "replaced")
    assert out == "replaced\n"


def test_environment_workdir_and_user_follow_the_image_and_the_flags(cli: Cli, images: dict[str, str],
                                                                     tmp_path: Path) -> None:
    out, _ = run(cli, images["envtest"])
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("uid="))
    assert env["FROM_IMAGE"] == "1" and env["OVERRIDE"] == "image" and env["PATH"] == "/bin"
    assert env["HOME"] == "/home/app" and len(env["HOSTNAME"]) == 12
    assert "/srv/data" in out.splitlines()
    assert "uid=1000(app) gid=1000(app) groups=" in out
    assert set(out.split("groups=")[1].split()[0].split(",")) == {"1000(app)", "50(staff)"}

    env_file = tmp_path / "env"
    env_file.write_text("# a comment\n\nFROM_FILE=yes\nOVERRIDE=file\n")
    os.environ["FROM_HOST"] = "host-value"
    try:
        out, _ = run(cli, "--env-file", str(env_file), "-e", "OVERRIDE=flag", "-e", "FROM_HOST", "-e", "FROM_IMAGE",
                     "-w", "/tmp", "-u", "0:50", images["envtest"])
    finally:
        del os.environ["FROM_HOST"]
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("uid="))
    assert env["OVERRIDE"] == "flag" and env["FROM_FILE"] == "yes" and env["FROM_HOST"] == "host-value"
    assert "FROM_IMAGE" not in env      # -e NAME without a value here unsets it
    assert "/tmp" in out.splitlines() and "uid=0(root) gid=50(staff)" in out

    _, err = run(cli, "-u", "bogus", images["busybox"], "id", code=125)
    assert "unable to find user bogus: no matching entries in passwd file" in err
    _, err = run(cli, "-w", "relative", images["busybox"], "pwd", code=125)
    assert "needs to be an absolute path" in err
    _, err = run(cli, "--env-file", str(tmp_path / "missing"), images["busybox"], "true", code=125)
    assert "missing" in err


def test_writes_go_to_the_containers_own_layer(cli: Cli, images: dict[str, str]) -> None:
    done = cli.proc("run", "--name", "writer", images["busybox"], "sh", "-c",
                    "echo new > /new; echo changed >> /etc/passwd; rm /bin/vi; mkdir -p /var/x")
    assert done.returncode == 0, done.stderr
    container = next(p for p in (cli.root / "containers").iterdir()
                     if p.is_dir() and json.loads((p / "config.json").read_text())["Name"] == "/writer")
    upper = container / "upper"
    assert (upper / "new").read_text() == "new\n"
    assert (upper / "etc" / "passwd").read_text().endswith("changed\n")
    assert (upper / "var" / "x").is_dir()
    # The image is untouched: a new container sees the original.
    out, _ = run(cli, images["busybox"], "sh", "-c", "cat /new 2>&1; ls /bin/vi; tail -1 /etc/passwd")
    assert "No such file" in out and "/bin/vi" in out and "changed" not in out
    ps = cli.proc("ps", "-a", "--format", "{{.Names}} {{.Status}}").stdout
    assert "writer Exited (0)" in ps
    conflict = cli.proc("run", "--name", "writer", images["busybox"], "true")
    assert conflict.returncode == 125 and 'The container name "/writer" is already in use' in conflict.stderr
    assert cli.proc("rm", "writer").stdout == "writer\n"
    assert not container.exists()


def test_ownership_inside_the_container_with_a_subuid_range(cli: Cli, images: dict[str, str]) -> None:
    if subid_range("/etc/subuid") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test user needs an /etc/subuid range (.ci/run makes one)")
        pytest.skip("no /etc/subuid range: the container has only uid 0")
    out, _ = run(cli, images["busybox"], "sh", "-c",
                 "cat /proc/self/uid_map; mkdir /home/app; chown app:app /home/app;"
                 "su app -c 'touch /home/app/mine; id -u' 2>&1 || true; ls -ln /home/app; stat -c '%u:%g' /home/app")
    uid_map = out.splitlines()[:2]
    assert uid_map[0].split()[:3] == ["0", str(os.getuid()), "1"]
    assert uid_map[1].split()[0] == "1" and int(uid_map[1].split()[2]) >= 65535
    assert "1000:1000" in out.splitlines()[-1]


def test_network_none_has_only_loopback(cli: Cli, images: dict[str, str]) -> None:
    out, _ = run(cli, "--network", "none", images["busybox"], "cat", "/proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_missing_image_is_pulled_first(reg: Registry, images: dict[str, str], tmp_path: Path) -> None:
    fresh = Cli(tmp_path)
    done = fresh.proc("run", "--rm", images["busybox"], "echo", "pulled")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pulled\n"
    assert f"Unable to find image '{images['busybox']}' locally" in done.stderr
    assert "Status: Downloaded newer image" in done.stderr
    missing = fresh.proc("run", "--rm", "--pull", "never", f"{reg.host}/nothere", "true")
    assert missing.returncode == 125 and "no such image" in missing.stderr.lower()


def test_binds_volumes_and_tmpfs(cli: Cli, images: dict[str, str], tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "from-host").write_text("host\n")
    single = tmp_path / "single.conf"
    single.write_text("one file\n")
    out, _ = run(cli, "-v", f"{host}:/data", "-v", f"{single}:/etc/single.conf:ro", "-v", "keep:/vol",
                 "--tmpfs", "/scratch", images["busybox"], "sh", "-c",
                 "cat /data/from-host /etc/single.conf; echo ctr > /data/from-ctr; echo kept > /vol/x;"
                 "echo no >> /etc/single.conf 2>&1 || echo ro-refused; grep ' /scratch ' /proc/mounts | cut -d' ' -f3")
    assert out.splitlines() == ["host", "one file", "ro-refused", "tmpfs"]
    assert (host / "from-ctr").read_text() == "ctr\n"
    out, _ = run(cli, "-v", "keep:/vol:ro", images["busybox"], "sh", "-c", "cat /vol/x; touch /vol/y 2>&1 | grep -c Read-only")
    assert out.splitlines() == ["kept", "1"]
    listed = cli.proc("volume", "ls", "-q").stdout.split()
    assert "keep" in listed
    info = json.loads(cli.proc("volume", "inspect", "keep").stdout)[0]
    assert (Path(info["Mountpoint"]) / "x").read_text() == "kept\n"
    assert cli.proc("volume", "rm", "keep").stdout == "keep\n"
    missing = cli.proc("run", "--rm", "-v", f"{tmp_path}/nope:/x", images["busybox"], "true")
    assert missing.returncode == 125 and "bind source path does not exist" in missing.stderr
    relative = cli.proc("run", "--rm", "-v", "/tmp:rel", images["busybox"], "true")
    assert relative.returncode == 125 and "must be absolute" in relative.stderr


def test_image_volumes_are_seeded_and_anonymous(cli: Cli, images: dict[str, str]) -> None:
    before = set(cli.proc("volume", "ls", "-q").stdout.split())
    done = cli.proc("run", "--name", "seeded", images["voltest"], "sh", "-c",
                    "cat /seeded/from-image; echo more > /seeded/added; grep -c ' /seeded ' /proc/mounts")
    assert done.stdout.splitlines() == ["image content", "1"], done.stderr
    made = set(cli.proc("volume", "ls", "-q").stdout.split()) - before
    assert len(made) == 1 and len(next(iter(made))) == 64
    mount = json.loads(cli.proc("inspect", "seeded").stdout)[0]["Mounts"][0]
    assert mount["Type"] == "volume" and mount["Destination"] == "/seeded"
    assert (Path(mount["Source"]) / "added").read_text() == "more\n"
    in_use = cli.proc("volume", "rm", next(iter(made)))
    assert in_use.returncode == 125 and "volume is in use" in in_use.stderr
    cli.proc("rm", "-v", "seeded")
    assert set(cli.proc("volume", "ls", "-q").stdout.split()) == before
    run(cli, images["voltest"], "true")      # --rm takes its anonymous volume with it
    assert set(cli.proc("volume", "ls", "-q").stdout.split()) == before


def test_a_symlinked_target_cannot_lead_out_of_the_root(cli: Cli, images: dict[str, str], tmp_path: Path) -> None:
    host = tmp_path / "payload"
    host.mkdir()
    (host / "file").write_text("payload\n")
    outside = Path("/tmp/rootless-escape")
    assert not outside.exists()
    out, _ = run(cli, "-v", f"{host}:/escape", images["voltest"], "sh", "-c",
                 "cat /tmp/rootless-escape/file; readlink /escape")
    assert out.splitlines() == ["payload", "/../../../../../tmp/rootless-escape"]
    assert not outside.exists()


def test_read_only_root(cli: Cli, images: dict[str, str]) -> None:
    out, _ = run(cli, "--read-only", "-v", "scratchvol:/w", images["busybox"], "sh", "-c",
                 "touch /x 2>&1 | grep -c Read-only; touch /w/ok && echo volume-writable")
    assert out.splitlines() == ["1", "volume-writable"]
    cli.proc("volume", "rm", "scratchvol")


def test_init_reaps_zombies_and_passes_the_exit_code(cli: Cli, images: dict[str, str]) -> None:
    # The command leaves an orphan and then becomes a program that never reaps: only an init does.
    script = ("sh -c 'sleep 0.1 &'; (sleep 0.6; ps -o stat | grep -c '^Z') & exec sleep 1")
    without, _ = run(cli, images["busybox"], "sh", "-c", script)
    with_init, _ = run(cli, "--init", images["busybox"], "sh", "-c", script)
    assert (without.strip(), with_init.strip()) == ("1", "0")
    out, _ = run(cli, "--init", images["busybox"], "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; exit 6", code=6)
    assert out.startswith("/dev/init -- sh -c")
    run(cli, "--init", images["busybox"], "nothere", code=127)


def test_without_subordinate_ids_the_container_has_one_uid(images: dict[str, str], tmp_path: Path) -> None:
    """What a user without an /etc/subuid range gets (here chosen in the config file)."""
    single = Cli(tmp_path)
    conf = single.home / ".config" / "rootless"
    conf.mkdir(parents=True)
    (conf / "config.json").write_text(json.dumps({"subordinate-ids": False}))
    single("pull", "-q", images["busybox"])
    done = single.proc("run", "--name", "one-uid", images["busybox"], "sh", "-c",
                       "cat /proc/self/uid_map; id -u; echo x > /mine; chown 1000 /mine 2>&1 | grep -c Invalid")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[0].split() == ["0", str(os.getuid()), "1"]
    assert lines[1:3] == ["0", "1"]            # root inside; uid 1000 does not exist here
    refused = single.proc("run", "--rm", "-u", "1000", images["busybox"], "true")
    assert refused.returncode == 125 and "is not mapped in the container" in refused.stderr
    # Its ids are the container's for good: start keeps them whatever the config says later.
    (conf / "config.json").write_text("{}")
    again = single.proc("start", "-a", "one-uid")
    assert again.stdout.split("\n")[0].split() == ["0", str(os.getuid()), "1"]
    bad = Cli(tmp_path / "bad")
    (bad.home / ".config" / "rootless").mkdir(parents=True)
    (bad.home / ".config" / "rootless" / "config.json").write_text('{"subordinate-ids": "no"}')
    bad("pull", "-q", images["busybox"])
    wrong = bad.proc("run", "--rm", images["busybox"], "true")
    assert wrong.returncode == 125 and '"subordinate-ids" must be true or false' in wrong.stderr
