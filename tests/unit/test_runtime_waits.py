"""Waiting for helper processes without sleep-polling (linux.wait_child, linux.wait_pidfd) and
stopping a network daemon (network._stop): told the moment a process ends, never a reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rootless.runtime import linux, network


def test_wait_child_returns_the_childs_status() -> None:
    # (how soon it notices, against Popen.wait's sleeps, is bench-run's business)
    proc = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"])
    assert linux.wait_child(proc, 10) == 3
    assert proc.returncode == 3


def test_wait_child_gives_up_after_its_timeout_and_leaves_the_child_alone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            linux.wait_child(proc, 0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_wait_pidfd_sees_a_process_that_is_not_a_child_end() -> None:
    # a grandchild, as pasta is once it has gone into the background
    out = subprocess.run([sys.executable, "-c", "import subprocess; "
                          "print(subprocess.Popen(['sleep', '30'], stdout=subprocess.DEVNULL).pid)"],
                         stdout=subprocess.PIPE, text=True, check=True)
    pid = int(out.stdout)
    fd = os.pidfd_open(pid)
    try:
        assert not linux.wait_pidfd(fd, 0.05)
        os.kill(pid, signal.SIGTERM)
        assert linux.wait_pidfd(fd, 5)
    finally:
        os.close(fd)


def daemon_of(proc: subprocess.Popen[bytes]) -> network.Daemon:
    return network.Daemon(proc.pid, network._start_ticks(proc.pid))


def reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_stop_waits_for_the_daemon_when_asked() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    network._stop(daemon_of(proc))
    assert reaped(proc.pid)      # gone, and reaped (slirp4netns is the helper's child) when _stop returns


def test_stop_escalates_to_sigkill_for_a_daemon_that_ignores_sigterm() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
    time.sleep(0.1)   # the trap is set
    started = time.monotonic()
    network._stop(daemon_of(proc))
    assert time.monotonic() - started >= 1.0    # a second's grace, then SIGKILL
    assert reaped(proc.pid)


def test_stop_without_waiting_only_signals() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap 'sleep 2; exit 7' TERM; while :; do sleep 0.05; done"])
    time.sleep(0.1)
    network._stop(daemon_of(proc), wait=False)
    assert proc.poll() is None   # still in its trap: _stop did not wait for it
    assert proc.wait(10) == 7    # it had the signal, and ended on its own time


def test_stop_leaves_a_process_that_reuses_the_pid_alone() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        stale = network.Daemon(proc.pid, (network._start_ticks(proc.pid) or 0) - 1)
        network._stop(stale)
        assert proc.poll() is None
        network._stop(network.Daemon(proc.pid, None))   # a start time never read: not touched either
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
