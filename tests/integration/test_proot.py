"""`rootless run` without user namespaces: the proot fallback over a fusefs root mounted from the host side.

Two ways in.  ``ROOTLESS_RUNTIME=proot`` on this host: the union is mounted through the
setuid fusermount3 in the caller's own namespaces, as on a host where user namespaces
are off.  And a real restriction: ``restricted()`` runs rootless in a user namespace whose
``user.max_user_namespaces`` is 0, where no user namespace can be made, so ``run`` must
notice and fall back by itself.  There the caller is uid 0 of that namespace and libfuse
mounts with mount(2) itself; a setuid fusermount3 cannot work in such a namespace (its
owner, root, is not mapped), so that path is only shown by the first way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import running_registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry, pytest.mark.proot]

#: Run a command where no user namespace can be made: in one whose limit for more is 0.
RESTRICT = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
            'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "restricted"]

NO_NETNS = "WARNING: proot mode has no network namespace: the container shares the host's network"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, dict[str, str]]]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        tmp = tmp_path_factory.mktemp("images")
        rootfs = busybox_rootfs()
        made = {
            "busybox": make_image([rootfs], {"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
            "envtest": make_image([rootfs, {"srv/data/hello": b"hi\n", "etc/resolv.conf": "../run/resolv.conf"}],
                                  {"Env": ["PATH=/bin", "FROM_IMAGE=1"], "WorkingDir": "/srv/data",
                                   "User": "app", "Cmd": ["sh", "-c", "env; pwd; id -u; id -g"]}),
        }
        names = {}
        for name, image in made.items():
            push(reg.host, f"{name}:latest", image, tmp / name)
            names[name] = f"{reg.host}/{name}"
        cli = Cli(tmp_path_factory.mktemp("proot"))
        for name in names.values():
            cli("pull", "-q", name)
        yield cli, names


def proot_run(cli: Cli, *args: str, code: int = 0, input: str | None = None) -> tuple[str, str]:
    done = subprocess.run(cli.argv("run", "--rm", *args), env={**os.environ, **cli.env, "ROOTLESS_RUNTIME": "proot"},
                          input=input, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    # Without --network, docker's default (a private network) cannot be had: said once, then the host's.
    warned = [line for line in done.stderr.splitlines(True) if line.startswith(NO_NETNS)]
    assert len(warned) <= (0 if "--network" in args else 1), done.stderr
    return done.stdout, "".join(line for line in done.stderr.splitlines(True) if line not in warned)


def restricted(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **cli.env}.items() if k != "ROOTLESS_RUNTIME"}
    return subprocess.run([*RESTRICT, *cli.argv(*args)], env=env, capture_output=True, text=True, timeout=120)


def fuse_mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def test_commands_output_and_exit_codes(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    out, err = proot_run(cli, names["busybox"], "sh", "-c", "echo hello; echo oops >&2; cat /etc/hostname; "
                                                            "echo $$; tr '\\0' ' ' < /proc/$PPID/cmdline")
    lines = out.splitlines()
    assert lines[0] == "hello" and err == "oops\n"
    plain = subprocess.run(cli.argv("run", "--rm", names["busybox"], "true"), capture_output=True, text=True,
                           env={**os.environ, **cli.env, "ROOTLESS_RUNTIME": "proot"}, timeout=120)
    assert plain.returncode == 0 and plain.stderr.startswith(NO_NETNS)
    assert len(lines[1]) == 12                # the container's own hostname file
    assert lines[2] != "1"                    # no pid namespace: the command is not pid 1 ...
    assert lines[3].startswith(shutil.which("proot") or "proot")   # ... but proot's tracee
    proot_run(cli, names["busybox"], "sh", "-c", "exit 3", code=3)
    _, err = proot_run(cli, names["busybox"], "nothere", code=127)
    assert 'exec: "nothere": executable file not found in $PATH' in err
    _, err = proot_run(cli, names["busybox"], "/no/such/file", code=127)
    assert "no such file or directory" in err
    _, err = proot_run(cli, names["busybox"], "/etc/passwd", code=126)
    assert 'exec: "/etc/passwd": permission denied' in err
    _, err = proot_run(cli, "--entrypoint", "", names["busybox"], code=125)
    assert "No command specified" in err
    # Killed by a signal: docker's 128+N, not proot's idea of it (an earlier child's status).
    proot_run(cli, names["busybox"], "sh", "-c", "true; ls / >/dev/null; kill -TERM $$", code=143)
    proot_run(cli, names["busybox"], "sh", "-c", "kill -KILL $$", code=137)
    out, _ = proot_run(cli, "-i", names["busybox"], "sh", "-c", "cat; echo done", input="from stdin\n")
    assert out == "from stdin\ndone\n"
    # No proot chatter in what the command wrote.
    out, err = proot_run(cli, names["busybox"], "sh", "-c", "ls /bin >/dev/null; echo end")
    assert out == "end\n" and err == ""


def test_user_workdir_and_environment_follow_docker(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    out, _ = proot_run(cli, names["envtest"])
    lines = out.splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["FROM_IMAGE"] == "1" and env["PATH"] == "/bin" and env["HOME"] == "/home/app"
    assert lines[-3:] == ["/srv/data", "1000", "1000"]
    out, _ = proot_run(cli, "-u", "0:50", "-w", "/made/here", "-e", "X=y", names["envtest"], "sh", "-c",
                       "pwd; id -u; id -g; echo $X")
    assert out.split() == ["/made/here", "0", "50", "y"]
    _, err = proot_run(cli, "-u", "bogus", names["busybox"], "id", code=125)
    assert "unable to find user bogus" in err
    # /etc/resolv.conf was a dangling symlink in the image: replaced by the host's, as docker does.
    out, _ = proot_run(cli, names["envtest"], "sh", "-c", "test -L /etc/resolv.conf || echo file; "
                                                          "grep -c . /etc/hosts >/dev/null && echo hosts")
    assert out.split() == ["file", "hosts"]


def test_writes_stay_in_the_container_and_the_mount_goes(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    env = {**os.environ, **cli.env, "ROOTLESS_RUNTIME": "proot"}
    done = subprocess.run(cli.argv("run", "--name", "pw", names["busybox"], "sh", "-c",
                                   "echo new > /new; rm /bin/vi; mkdir -p /var/x; chmod 600 /etc/passwd; "
                                   "ls -l /etc/passwd"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("-rw-------")
    container = next(p for p in (cli.root / "containers").iterdir()
                     if p.is_dir() and json.loads((p / "config.json").read_text())["Name"] == "/pw")
    assert (container / "upper" / "new").read_text() == "new\n"
    assert (container / "upper" / "var" / "x").is_dir()
    assert fuse_mounts_under(container) == []     # unmounted when the container ended
    out, _ = proot_run(cli, names["busybox"], "sh", "-c", "cat /new 2>&1; ls /bin/vi")
    assert "No such file" in out and "/bin/vi" in out
    assert cli.proc("rm", "pw").returncode == 0


def test_what_the_command_leaves_running_is_killed_with_it(images: tuple[Cli, dict[str, str]],
                                                           tmp_path: Path) -> None:
    cli, names = images
    started = time.monotonic()
    out, _ = proot_run(cli, names["busybox"], "sh", "-c", "sleep 60 & setsid sleep 61 & echo $!; exit 5", code=5)
    assert time.monotonic() - started < 20
    pid = int(out.split()[0])
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")


def test_detached_container_stops_with_its_exit_code(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    env = {**os.environ, **cli.env, "ROOTLESS_RUNTIME": "proot"}

    def ok(*args: str) -> str:
        done = subprocess.run(cli.argv(*args), env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    ok("run", "-d", "--name", "pd", names["busybox"], "sh", "-c", "trap 'echo bye; exit 7' TERM; echo up; "
                                                                   "while :; do sleep 0.1; done")
    deadline = time.monotonic() + 10
    while "up" not in ok("logs", "pd") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "pd running" in ok("ps", "--format", "{{.Names}} {{.State}}")
    # The union is mounted in this (the caller's) mount namespace, by fusermount3.
    merged = json.loads(ok("inspect", "pd"))[0]["GraphDriver"]["Data"]["MergedDir"]
    assert fuse_mounts_under(Path(merged)) == [merged]
    pid = json.loads(ok("inspect", "pd"))[0]["State"]["Pid"]
    with open(f"/proc/{pid}/status") as f:
        assert any(line.startswith("TracerPid:") and line.split()[1] != "0" for line in f)
    ok("stop", "pd")
    # The helper unmounts and records the end just after the command is gone.
    record = Path(merged).parent / "config.json"
    deadline = time.monotonic() + 10
    while json.loads(record.read_text())["State"]["Running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fuse_mounts_under(Path(merged)) == []
    assert json.loads(ok("inspect", "pd"))[0]["State"]["ExitCode"] == 7
    assert ok("logs", "pd") == "up\nbye\n"
    ok("rm", "pd")


def test_run_falls_back_to_proot_where_user_namespaces_are_refused(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    probe = subprocess.run([*RESTRICT, "unshare", "--user", "true"], capture_output=True, text=True)
    assert probe.returncode != 0, "the restricted namespace still allows user namespaces"
    done = restricted(cli, "run", "--rm", names["busybox"], "sh", "-c",
                      "echo in proot; echo $$ > /dev/null; grep -q proot /proc/$PPID/cmdline && echo traced; exit 4")
    assert done.returncode == 4, done.stderr
    assert done.stdout == "in proot\ntraced\n", done.stderr
    done = restricted(cli, "run", "--rm", names["busybox"], "nothere")
    assert done.returncode == 127 and "executable file not found in $PATH" in done.stderr
    done = restricted(cli, "run", "--rm", "-u", "app", "-w", "/home/app", names["busybox"], "sh", "-c",
                      "id -un; pwd; touch mine && echo wrote")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["app", "/home/app", "wrote"]
    done = restricted(cli, "run", "--rm", "--network", "none", names["busybox"], "true")
    assert done.returncode == 125 and "--network none needs a network namespace" in done.stderr
    done = restricted(cli, "run", "--rm", "--network", "host", names["busybox"], "true")
    assert done.returncode == 0 and NO_NETNS not in done.stderr


def test_binds_volumes_tmpfs_and_a_read_only_root(images: tuple[Cli, dict[str, str]], tmp_path: Path) -> None:
    cli, names = images
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    out, _ = proot_run(cli, "-v", f"{shared}:/data", "-v", "pvol:/vol", "--tmpfs", "/scratch", names["busybox"],
                       "sh", "-c", "cat /data/in; echo back > /data/out; echo kept > /vol/f; touch /scratch/t && "
                                   "echo scratch")
    assert out == "from host\nscratch\n"
    assert (shared / "out").read_text() == "back\n"
    out, _ = proot_run(cli, "-v", "pvol:/vol", names["busybox"], "cat", "/vol/f")
    assert out == "kept\n"
    _, err = proot_run(cli, "-v", f"{shared}:/data:ro", names["busybox"], "true", code=125)
    assert "cannot be made read-only" in err
    out, _ = proot_run(cli, "--read-only", names["busybox"], "sh", "-c", "touch /x 2>&1; cat /etc/hostname")
    assert "Read-only file system" in out and len(out.splitlines()[-1]) == 12


@pytest.mark.skipif(not os.path.exists("/usr/bin/tini-static"), reason="needs tini-static (Debian package tini)")
def test_init_reaps_in_proot_mode_too(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    out, err = proot_run(cli, "--init", names["busybox"], "sh", "-c", "tr '\\0' ' ' < /proc/$PPID/cmdline; exit 6",
                         code=6)
    assert out.startswith("/dev/init -s -- sh -c") and "WARN" not in err


def test_exec_runs_another_proot_over_the_same_root(images: tuple[Cli, dict[str, str]]) -> None:
    cli, names = images
    env = {**os.environ, **cli.env, "ROOTLESS_RUNTIME": "proot"}

    def rootless(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli.argv(*args), env=env, capture_output=True, text=True, timeout=120, input=input)

    assert rootless("run", "-d", "--name", "px", "--network", "host", names["busybox"], "sh", "-c",
                    "echo seen > /made-by-run; sleep 60").returncode == 0
    deadline = time.monotonic() + 10
    while rootless("exec", "px", "cat", "/made-by-run").stdout != "seen\n" and time.monotonic() < deadline:
        time.sleep(0.1)
    done = rootless("exec", "-u", "app", "-w", "/tmp", "-e", "A=b", "px", "sh", "-c",
                    "id -u; pwd; echo $A; cat /etc/hostname; exit 9")
    assert done.returncode == 9, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["1000", "/tmp", "b"] and len(lines[3]) == 12 and done.stderr == ""
    assert rootless("exec", "-i", "px", "cat", input="piped\n").stdout == "piped\n"
    missing = rootless("exec", "px", "nothere")
    assert missing.returncode == 127 and "executable file not found in $PATH" in missing.stderr
    # What was exec'd ends with the container, as docker's does with its pid namespace.
    waiting = subprocess.Popen(cli.argv("exec", "px", "sleep", "50"), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert rootless("kill", "px").returncode == 0
    assert waiting.wait(timeout=20) == 137
    assert rootless("rm", "px").returncode == 0
