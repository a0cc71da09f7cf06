"""Relaying a container's pty to the caller's terminal: raw mode, window size, and the log.

Runs in the single-threaded caller with select(2): the pty's output goes to stdout
and to docker's json-file log, stdin (with -i) goes to the pty, and SIGWINCH copies the
terminal's size onto the pty, which tells the container's foreground process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import termios
import tty as _tty
from types import FrameType

from .launch import LogWriter, write_all


def terminal_size(fd: int = 0) -> bytes | None:
    for candidate in (fd, 1, 2):
        try:
            return fcntl.ioctl(candidate, termios.TIOCGWINSZ, b"\0" * 8)
        except OSError:
            continue
    return None


def relay(master: int, *, interactive: bool, log_path: str | None) -> None:
    """Copy between MASTER and the caller until the container side of the pty is closed."""
    raw = interactive and os.isatty(0)
    saved = termios.tcgetattr(0) if raw else None

    def resize(signum: int, frame: FrameType | None) -> None:
        size = terminal_size()
        if size is not None:
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)
            except OSError:
                pass

    previous = signal.signal(signal.SIGWINCH, resize)
    logger = LogWriter(log_path)
    watched = [master, 0] if interactive else [master]
    try:
        if raw:
            _tty.setraw(0)
        while True:
            ready, _, _ = select.select(watched, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:   # every slave fd is closed: the container is done with it
                        break
                    raise
                if not data:
                    break
                write_all(1, data)
                logger.write("stdout", data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    write_all(master, data)
                else:
                    watched.remove(0)
                    write_all(master, b"\x04")   # end of input reaches the program as ^D
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)
        logger.close()
        os.close(master)
