"""Warm start as a user sees it: the second command is served by a warm process, and is the same
command as without one: exit code, streams, environment, working directory and signals."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from polling import wait_for
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

from rootless import warm

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]


@pytest.fixture(scope="module")
def cli(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    made = {"busybox": make_image([busybox_rootfs()], {"Env": ["PATH=/bin"], "Cmd": ["sh"]})}
    name = push_all(reg.host, made, tmp_path_factory.mktemp("images"))["busybox"]
    c = Cli(tmp_path_factory.mktemp("warm"))
    c("pull", "-q", name)
    c("tag", name, "bb")
    return c


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, ..."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def servers(idle: float) -> list[int]:
    """The warm processes of this test's callers (this process has their identity: same Python,
    code, cgroup and namespaces) that wait IDLE seconds. Their command processes, forked from
    them, carry the same command line: a match whose parent matches too is one of those."""
    name = warm.socket_name(idle).lstrip("\0")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            ppid = int(stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"rootless.warm" in argv and name.encode() in argv:
            found[int(entry.name)] = ppid
    return sorted(pid for pid, ppid in found.items() if ppid not in found)


@pytest.fixture
def idle() -> Iterator[float]:
    """An idle time no other test uses, so that this test's warm process is its own."""
    seconds = round(random.uniform(100, 200), 3)
    yield seconds
    for pid in servers(seconds):
        os.kill(pid, signal.SIGKILL)


def env(cli: Cli, idle: float, **extra: str) -> dict[str, str]:
    return {**os.environ, **cli.env, "ROOTLESS_WARM": str(idle), **extra}


def rootless(cli: Cli, idle: float, *args: str, input: str | None = None, cwd: Path | None = None,
             **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli.argv(*args), env=env(cli, idle, **extra), input=input, capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def warmed(cli: Cli, idle: float) -> int:
    """Start the warm process with a first command, and return its pid once it listens."""
    assert rootless(cli, idle, "ps").returncode == 0
    assert wait_for(lambda: servers(idle)), "no warm process was started"
    [pid] = servers(idle)
    assert wait_for(lambda: listening(idle))
    return pid


def listening(idle: float) -> bool:
    """Whether the warm process has bound its socket (until then commands run the ordinary way):
    an abstract socket shows in /proc/net/unix as @NAME."""
    name = "@" + warm.socket_name(idle).lstrip("\0")
    with open("/proc/net/unix") as f:
        return any(line.split()[-1] == name for line in f if len(line.split()) >= 8)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = stat_fields(int(entry.name))
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_first_command_starts_a_warm_process_and_the_next_is_forked_from_it(cli: Cli, idle: float) -> None:
    assert servers(idle) == []
    server = warmed(cli, idle)
    slow = subprocess.Popen(cli.argv("run", "--rm", "bb", "sleep", "2"), env=env(cli, idle),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The command process is the warm process's child, not the caller's.
        assert wait_for(lambda: bool(children(server)), timeout=10)
        assert children(slow.pid) == []
    finally:
        assert slow.wait(timeout=30) == 0
    assert servers(idle) == [server]   # one warm process serves every command


def test_exit_code_streams_and_stdin_are_the_callers(cli: Cli, idle: float) -> None:
    warmed(cli, idle)
    done = rootless(cli, idle, "run", "--rm", "-i", "bb", "sh", "-c", "cat; echo to-stderr >&2; exit 7",
                    input="piped in\n")
    assert (done.returncode, done.stdout, done.stderr) == (7, "piped in\n", "to-stderr\n")
    missing = rootless(cli, idle, "run", "--rm", "bb", "no-such-command")
    assert missing.returncode == 127 and 'exec: "no-such-command": executable file not found' in missing.stderr
    bad = rootless(cli, idle, "run", "--rm", "--no-such-flag", "bb")
    assert bad.returncode == 125 and "no such option" in bad.stderr.lower()


def test_environment_and_working_directory_are_the_callers(cli: Cli, idle: float, tmp_path: Path) -> None:
    warmed(cli, idle)
    (tmp_path / "vars.env").write_text("FROM_FILE=file-value\n")
    done = rootless(cli, idle, "run", "--rm", "-e", "FROM_CALLER", "--env-file", "vars.env", "bb",
                    "sh", "-c", "echo $FROM_CALLER $FROM_FILE", cwd=tmp_path, FROM_CALLER="caller-value")
    assert (done.returncode, done.stdout) == (0, "caller-value file-value\n"), done.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 42), (signal.SIGINT, 43)])
def test_signals_to_the_caller_reach_the_container(cli: Cli, idle: float, sig: signal.Signals, code: int) -> None:
    warmed(cli, idle)
    script = 'trap "echo got-term; exit 42" TERM; trap "echo got-int; exit 43" INT; echo ready; ' \
             'while :; do sleep 0.1; done'
    proc = subprocess.Popen(cli.argv("run", "--rm", "bb", "sh", "-c", script), env=env(cli, idle),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == code
        assert proc.stdout.read() == ("got-term\n" if code == 42 else "got-int\n")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_warm_process_is_replaced_and_no_command_is_lost(cli: Cli, idle: float) -> None:
    first = warmed(cli, idle)
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: first not in servers(idle))
    done = rootless(cli, idle, "run", "--rm", "bb", "echo", "still-runs")
    assert (done.returncode, done.stdout) == (0, "still-runs\n"), done.stderr
    assert wait_for(lambda: servers(idle) not in ([], [first]))


def test_a_warm_process_leaves_after_its_idle_time(cli: Cli) -> None:
    short = round(random.uniform(1, 2), 3)
    try:
        warmed(cli, short)
        assert wait_for(lambda: servers(short) == [], timeout=short + 10)
    finally:
        for pid in servers(short):
            os.kill(pid, signal.SIGKILL)


def test_warm_start_off_starts_no_warm_process(cli: Cli, idle: float, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"warm-start": false}')
    before = set(_all_warm())
    for environment in ({"ROOTLESS_WARM": "0"}, {"ROOTLESS_WARM": "", "ROOTLESS_CONFIG": str(config)}):
        done = subprocess.run(cli.argv("run", "--rm", "bb", "true"), env={**os.environ, **cli.env, **environment},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    assert set(_all_warm()) <= before


def _all_warm() -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if b"rootless.warm" in f.read().split(b"\0"):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def state(pid: int) -> str:
    return stat_fields(pid)[0]


def test_ctrl_z_stops_the_command_process_with_its_caller(cli: Cli, idle: float) -> None:
    server = warmed(cli, idle)
    proc = subprocess.Popen(cli.argv("run", "--rm", "bb", "sh", "-c", "echo ready; sleep 2; echo done"),
                            env=env(cli, idle), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        # warmed()'s own commands' processes may still be on their way out
        assert wait_for(lambda: len(children(server)) == 1, timeout=10)
        [command] = children(server)
        proc.send_signal(signal.SIGTSTP)
        assert wait_for(lambda: state(proc.pid) == "T" and state(command) == "T", timeout=10)
        proc.send_signal(signal.SIGCONT)
        assert wait_for(lambda: state(command) != "T", timeout=10)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == "done\n"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_background_job_on_a_terminal_runs_the_ordinary_way(cli: Cli, idle: float) -> None:
    """In the background of its terminal, the command must stay where job control can stop it."""
    import pty

    server = warmed(cli, idle)
    pid, fd = pty.fork()
    if pid == 0:   # the session leader of a new terminal, in its foreground group
        try:
            job = os.fork()
            if job == 0:
                os.setpgid(0, 0)   # a job of its own, not the terminal's foreground one
                os.environ.update(env(cli, idle))
                argv = cli.argv("run", "--rm", "bb", "sleep", "5")
                os.execv(argv[0], argv)
            os.write(1, f"job {job}\n".encode())
            _, status = os.waitpid(job, 0)
        finally:
            os._exit(os.waitstatus_to_exitcode(status) if "status" in locals() else 99)
    try:
        seen = b""
        while b"\n" not in seen:
            seen += os.read(fd, 100)
        job = int(seen.split()[1])
        # The ordinary way: the caller itself forks the container's helper.
        assert wait_for(lambda: bool(children(job)), timeout=10)
        assert wait_for(lambda: children(server) == [], timeout=2)   # warmed()'s commands gone, no other came
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_info_says_whether_warm_start_is_on_and_which_process_serves(cli: Cli, idle: float) -> None:
    server = warmed(cli, idle)
    shown = rootless(cli, idle, "info", "--format", "{{.WarmStart.IdleSeconds}} {{.WarmStart.Pid}}")
    seconds, pid = shown.stdout.split()
    assert (float(seconds), int(pid)) == (idle, server)
    human = rootless(cli, idle, "info").stdout
    assert f"Warm start: on, running as pid {server}; it leaves after {idle:g} s without a command" in human
    off = subprocess.run(cli.argv("info"), env={**os.environ, **cli.env, "ROOTLESS_WARM": "0"}, capture_output=True,
                         text=True, timeout=60)
    assert "Warm start: off" in off.stdout


def test_commands_at_once_each_get_their_own_streams_and_exit_code(cli: Cli, idle: float) -> None:
    server = warmed(cli, idle)
    procs = [subprocess.Popen(cli.argv("run", "--rm", "bb", "sh", "-c", f"sleep 0.{n}; echo out-{n}; "
                                       f"echo err-{n} >&2; exit {n}"),
                              env=env(cli, idle), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in range(1, 7)]
    for n, proc in enumerate(procs, start=1):
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out, err) == (n, f"out-{n}\n", f"err-{n}\n")
    assert servers(idle) == [server]
