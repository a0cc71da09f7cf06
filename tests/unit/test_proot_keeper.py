"""The proot keeper's pure parts: proot's messages taken out of stderr, and docker's checks inside a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootless.runtime.launch import StartError
from rootless.runtime.proot import ProotMessages, find_executable, in_root


def test_proot_lines_are_taken_out_and_the_ends_kept() -> None:
    m = ProotMessages()
    out = m.feed(b"proot info: binding = /dev\nhello\nproot info: pid 12: exited with status 3\n"
                 b"proot info: pid 11: terminated with signal 15\nbye\n")
    assert out == b"hello\nbye\n"
    assert m.ends == {12: 3, 11: 143}


def test_messages_arrive_in_pieces_and_after_a_partial_line() -> None:
    m = ProotMessages()
    # proot writes the prefix, the text and the newline separately; the command wrote "abc" without a newline.
    pieces = [b"abc", b"proot in", b"fo: ", b"pid 7: exited with status 0", b"\n", b"def\n", b"pro"]
    out = b"".join(m.feed(p) for p in pieces)
    assert out == b"abcdef\n"
    assert m.ends == {7: 0}
    assert m.flush() == b"pro"          # not a message after all: the command's, at the end


def test_errors_are_kept_apart_and_other_text_passes() -> None:
    m = ProotMessages()
    out = m.feed(b"proot error: ptrace(TRACEME): Operation not permitted\nfatal error: see `proot --help`.\n"
                 b"proot warning: can't chdir\nproof: not proot\n")
    assert out == b"proof: not proot\n"
    assert m.errors == ["ptrace(TRACEME): Operation not permitted"]
    assert m.ends == {}


def test_a_long_line_that_only_starts_like_a_message_is_passed_on() -> None:
    m = ProotMessages()
    out = m.feed(b"proot info: " + b"x" * 70000)
    assert out == b"proot info: " + b"x" * 70000


def test_the_command_is_the_first_tracee_after_proot_even_across_pid_wrap() -> None:
    m = ProotMessages()
    m.feed(b"proot info: pid 105: exited with status 0\nproot info: pid 101: exited with status 4\n")
    assert m.first_tracee(100, 32768) == 101
    wrapped = ProotMessages()
    wrapped.feed(b"proot info: pid 3: exited with status 0\nproot info: pid 32766: exited with status 9\n")
    assert wrapped.first_tracee(32765, 32768) == 32766
    assert ProotMessages().first_tracee(1, 32768) is None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "bin").mkdir(parents=True)
    (r / "usr" / "bin").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "bin" / "busybox").write_bytes(b"\x7fELF" + b"\0" * 60)
    (r / "bin" / "busybox").chmod(0o755)
    (r / "bin" / "sh").symlink_to("busybox")
    (r / "usr" / "bin" / "abs").symlink_to("/bin/busybox")
    (r / "usr" / "bin" / "script").write_bytes(b"#!/bin/sh\necho\n")
    (r / "usr" / "bin" / "script").chmod(0o755)
    (r / "usr" / "bin" / "noformat").write_bytes(b"echo\n")
    (r / "usr" / "bin" / "noformat").chmod(0o755)
    (r / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    (r / "escape").symlink_to("../../../../../../etc")
    return r


def test_paths_resolve_inside_the_root(root: Path) -> None:
    assert in_root(str(root), "/usr/bin/abs") == str(root / "bin" / "busybox")
    assert in_root(str(root), "/escape/passwd") == str(root / "etc" / "passwd")
    assert in_root(str(root), "/../../bin/./sh") == str(root / "bin" / "busybox")
    assert in_root(str(root), "/not/there") == str(root / "not" / "there")
    (root / "loop").symlink_to("loop")
    with pytest.raises(StartError, match="too many levels"):
        in_root(str(root), "/loop")


def test_the_command_is_looked_up_with_the_containers_path(root: Path) -> None:
    env = ["PATH=/usr/bin:/bin"]
    assert find_executable(str(root), "sh", env, "/") == "/bin/sh"
    assert find_executable(str(root), "abs", env, "/") == "/usr/bin/abs"
    assert find_executable(str(root), "script", env, "/") == "/usr/bin/script"
    assert find_executable(str(root), "/bin/sh", env, "/") == "/bin/sh"
    assert find_executable(str(root), "./sh", env, "/bin") == "./sh"


@pytest.mark.parametrize(("name", "code", "says"), [
    ("nothere", 127, 'exec: "nothere": executable file not found in $PATH'),
    ("/no/such", 127, 'exec: "/no/such": stat /no/such: no such file or directory'),
    ("/etc/passwd", 126, 'exec: "/etc/passwd": permission denied'),
    ("/bin", 126, "permission denied"),
    ("noformat", 126, "permission denied"),
])
def test_what_docker_refuses_is_refused_with_its_code(root: Path, name: str, code: int, says: str) -> None:
    with pytest.raises(StartError) as e:
        find_executable(str(root), name, ["PATH=/usr/bin:/bin"], "/")
    assert e.value.code == code
    assert says in e.value.message
    assert os.path.exists(root)
