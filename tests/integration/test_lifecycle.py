"""A container's life as docker shows it: -d, ps, logs, wait, stop, kill, start, restart, inspect, rm."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from registry import Registry, running_registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, str]]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        name = f"{reg.host}/busybox"
        push(reg.host, "busybox:latest", make_image([busybox_rootfs()], {"Cmd": ["sh"], "Env": ["PATH=/bin"]}),
             tmp_path_factory.mktemp("push"))
        cli = Cli(tmp_path_factory.mktemp("life"))
        cli("pull", "-q", name)
        yield cli, name


def ok(cli: Cli, *args: str, input: str | None = None) -> str:
    done = cli.proc(*args, input=input)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def state(cli: Cli, name: str) -> dict:
    return json.loads(ok(cli, "inspect", name))[0]["State"]


def test_detached_run_logs_and_wait(image: tuple[Cli, str]) -> None:
    cli, name = image
    cid = ok(cli, "run", "-d", "--name", "bg", name, "sh", "-c",
             "echo out; echo err >&2; sleep 1; echo late; exit 4").strip()
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    listed = ok(cli, "ps", "--format", "{{.ID}} {{.Names}} {{.State}}")
    assert f"{cid[:12]} bg running" in listed
    assert ok(cli, "ps", "-q").split() == [cid[:12]]
    followed = cli.proc("logs", "-f", "bg")       # returns once the container has exited
    assert followed.stdout == "out\nlate\n" and followed.stderr == "err\n"
    assert ok(cli, "wait", "bg") == "4\n"
    st = state(cli, "bg")
    assert (st["Status"], st["Running"], st["ExitCode"]) == ("exited", False, 4)
    assert ok(cli, "ps", "-q") == ""
    assert "Exited (4)" in ok(cli, "ps", "-a", "--format", "{{.Names}} {{.Status}}")
    stamped = ok(cli, "logs", "-t", "--tail", "1", "bg").split(" ", 1)
    assert stamped[1] == "late\n" and stamped[0].endswith("Z")
    ok(cli, "rm", "bg")


def test_stop_sends_stopsignal_then_kill(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "-d", "--name", "graceful", name, "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.1; done")
    ok(cli, "run", "-d", "--name", "stubborn", name, "sh", "-c", "while :; do sleep 0.1; done")
    time.sleep(0.3)
    started = time.monotonic()
    assert ok(cli, "stop", "graceful") == "graceful\n"
    assert time.monotonic() - started < 5
    assert state(cli, "graceful")["ExitCode"] == 7
    started = time.monotonic()
    ok(cli, "stop", "-t", "1", "stubborn")   # pid 1 ignores SIGTERM without a handler
    assert 1 <= time.monotonic() - started < 8
    assert state(cli, "stubborn")["ExitCode"] == 137
    not_running = cli.proc("kill", "stubborn")
    assert not_running.returncode == 125 and "is not running" in not_running.stderr
    ok(cli, "rm", "graceful", "stubborn")


def test_kill_with_a_signal(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "-d", "--name", "usr1", name, "sh", "-c", "trap 'exit 10' USR1; while :; do sleep 0.1; done")
    time.sleep(0.3)
    assert ok(cli, "kill", "-s", "USR1", "usr1") == "usr1\n"
    assert ok(cli, "wait", "usr1") == "10\n"
    bad = cli.proc("kill", "-s", "NOPE", "usr1")
    assert bad.returncode == 125 and "Invalid signal: NOPE" in bad.stderr
    ok(cli, "rm", "usr1")


def test_start_keeps_the_writable_layer_and_restart(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "--name", "keeper", name, "sh", "-c", "echo run >> /count; cat /count")
    assert ok(cli, "start", "keeper") == "keeper\n"
    ok(cli, "wait", "keeper")
    assert ok(cli, "start", "-a", "keeper") == "run\nrun\nrun\n"
    ok(cli, "run", "-d", "--name", "again", name, "sh", "-c", "date +%s%N > /started; sleep 30")
    time.sleep(0.3)
    first = state(cli, "again")["StartedAt"]
    ok(cli, "restart", "-t", "1", "again")
    st = state(cli, "again")
    assert st["Running"] and st["StartedAt"] != first
    ok(cli, "rm", "-f", "again", "keeper")
    assert ok(cli, "ps", "-aq") == ""


def test_rm_refuses_a_running_container_unless_forced(image: tuple[Cli, str]) -> None:
    cli, name = image
    cid = ok(cli, "run", "-d", "--name", "busy", name, "sleep", "30").strip()
    refused = cli.proc("rm", "busy")
    assert refused.returncode == 125 and f"You cannot remove a running container {cid}" in refused.stderr
    assert ok(cli, "rm", "-f", "busy") == "busy\n"
    assert ok(cli, "ps", "-aq") == ""


def test_detached_rm_container_removes_itself(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "-d", "--rm", "--name", "gone", name, "true")
    deadline = time.monotonic() + 10
    while "gone" in ok(cli, "ps", "-a", "--format", "{{.Names}}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "gone" not in ok(cli, "ps", "-a", "--format", "{{.Names}}")


def test_a_container_whose_processes_vanished_shows_as_exited(image: tuple[Cli, str]) -> None:
    """As after a reboot: the record says running, but no such process lives any more."""
    cli, name = image
    ok(cli, "run", "-d", "--name", "ghost", name, "sleep", "30")
    helper = json.loads((next(p for p in (cli.root / "containers").iterdir()
                              if p.is_dir() and "ghost" in (p / "config.json").read_text()) / "config.json")
                        .read_text())["State"]["HelperPid"]
    os.kill(helper, signal.SIGKILL)   # the helper takes its middle process and init with it
    deadline = time.monotonic() + 10
    while state(cli, "ghost")["Running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    st = state(cli, "ghost")
    assert st["Status"] == "exited" and not st["Running"]
    assert "Exited" in ok(cli, "ps", "-a", "--format", "{{.Names}} {{.Status}}")
    assert "ghost" not in ok(cli, "ps", "--format", "{{.Names}}")
    ok(cli, "rm", "ghost")


def test_exec_joins_the_running_container(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "-d", "--name", "target", "-e", "FROM_RUN=1", "-w", "/tmp", name, "sh", "-c",
       "echo made-by-init > /tmp/mark; while :; do sleep 0.1; done")
    time.sleep(0.3)
    out = ok(cli, "exec", "target", "sh", "-c", "cat /tmp/mark; pwd; echo $FROM_RUN; hostname; cat /proc/1/cmdline")
    lines = out.splitlines()
    assert lines[:3] == ["made-by-init", "/tmp", "1"]
    assert lines[3] == state_id(cli, "target")[:12]
    assert lines[4].startswith("sh")                       # the container's pid 1 is its init, in its pid ns
    assert ok(cli, "exec", "-i", "target", "cat", input="through stdin\n") == "through stdin\n"
    assert ok(cli, "exec", "-u", "1000:1000", "-w", "/", "-e", "X=2", "target", "sh", "-c",
              "id -u; id -g; pwd; echo $X") == "1000\n1000\n/\n2\n"
    failed = cli.proc("exec", "target", "sh", "-c", "exit 9")
    assert failed.returncode == 9
    missing = cli.proc("exec", "target", "nothere")
    assert missing.returncode == 127 and 'exec: "nothere": executable file not found in $PATH' in missing.stderr
    ok(cli, "stop", "-t", "1", "target")
    stopped = cli.proc("exec", "target", "true")
    assert stopped.returncode == 125 and "is not running" in stopped.stderr
    ok(cli, "rm", "target")


def state_id(cli: Cli, name: str) -> str:
    return json.loads(ok(cli, "inspect", name))[0]["Id"]


class Terminal:
    """A user at a terminal: ``rootless ARGS`` on a pty of its own, typed into and read back."""

    def __init__(self, cli: Cli, *args: str, rows: int = 33, cols: int = 101) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ.update(cli.env)
            argv = cli.argv(*args)
            os.execv(argv[0], argv)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.seen = b""

    def expect(self, text: str, timeout: float = 15) -> str:
        import select

        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the terminal shows {self.seen.decode(errors='replace')!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"{text!r} never came; the terminal closed on {self.seen.decode(errors='replace')!r}"
                self.seen += chunk
        return self.seen.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def exit_code(self) -> int:
        import select

        while True:   # drain, so that the program never blocks writing to us
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.seen += chunk
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def test_run_it_gives_a_terminal_with_its_size_and_ctrl_c(image: tuple[Cli, str]) -> None:
    cli, name = image
    term = Terminal(cli, "run", "--rm", "-it", name, "sh")
    term.expect("# ")
    term.type("tty; stty size; echo TERM=$TERM; [ -t 0 ] && echo stdin-is-a-$((1+1))tty\r")
    out = term.expect("stdin-is-a-2tty\r\n")
    assert "/dev/pts/0" in out and "33 101" in out and "TERM=xterm" in out
    term.type("sleep 30\r")
    time.sleep(0.5)
    term.type("\x03")                          # ^C reaches the container's foreground job
    term.type("echo interrupted-$?\r")
    term.expect("interrupted-130")
    term.type("exit 3\r")
    assert term.exit_code() == 3


def test_exec_it_and_a_detached_terminal(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "run", "-dit", "--name", "tty-bg", name, "sh", "-c", "tty; echo ready; sleep 30")
    deadline = time.monotonic() + 10
    while "ready" not in ok(cli, "logs", "tty-bg") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ok(cli, "logs", "tty-bg").replace("\r", "") == "/dev/pts/0\nready\n"   # a tty turns \n into \r\n
    term = Terminal(cli, "exec", "-it", "tty-bg", "sh", rows=20, cols=70)
    term.expect("# ")
    term.type("stty size; tty; exit 4\r")
    assert term.exit_code() == 4
    out = term.seen.decode(errors="replace").split("exit 4", 1)[1]
    assert "20 70" in out and "/dev/pts/1" in out
    ok(cli, "rm", "-f", "tty-bg")


def test_rmi_refuses_an_image_a_container_uses_unless_forced(image: tuple[Cli, str]) -> None:
    cli, name = image
    ok(cli, "tag", name, "local/kept:1")
    ok(cli, "run", "--name", "user-of-image", "local/kept:1", "sh", "-c", "echo from-layer > /mine")
    assert ok(cli, "rmi", "local/kept:1") == "Untagged: local/kept:1\n"   # another name remains: untag only
    refused = cli.proc("rmi", name)
    assert refused.returncode == 125
    assert "container is using its referenced image" in refused.stderr
    assert "Deleted: sha256:" in ok(cli, "rmi", "-f", name)
    # The container still starts: its layers stayed although the image went.
    assert ok(cli, "start", "-a", "user-of-image") == ""
    ok(cli, "rm", "user-of-image")
    ok(cli, "pull", "-q", name)
