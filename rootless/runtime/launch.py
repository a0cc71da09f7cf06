"""Starting a container: the process tree, the namespaces and the mounts, in the order the kernel needs.

    rootless run ─ fork ─► helper: new user namespace (ids mapped by the parent through
                           newuidmap), new mount namespace, mounts fusefs on the rootfs
                           dir, new pid namespace for its children, then serves FUSE
                           requests until the container's init exits
                   └ fork ─► init (pid 1): new mount, uts, ipc [and net] namespaces — only
                           now, after the FUSE mount exists, or pivot_root would wait on
                           the daemon forever — then /proc, /dev, /sys, /etc files,
                           pivot_root, the user, and exec

The parent is single-threaded (a user namespace cannot be made by a threaded process)
and stays so: it only waits, forwards signals and prints what went wrong.  Failures of
the helper or init before the exec travel to it as one JSON line on a pipe that the
exec closes (close-on-exec), with docker's exit code: 125 engine, 126 cannot execute,
127 not found.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn
from datetime import datetime, timezone

from . import linux, network
from .idmap import IdMap, write_maps
from .network import Attachment as NetworkLink
from .network import Plan as NetworkPlan
from .spec import ProcessSpec, UserNotFound, resolve_user
from .volumes import Mount, resolve_in_root, seed

log = logging.getLogger(__name__)

#: Device nodes bound from the host into the container's /dev (mknod needs real root).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
INIT_PATH = "/dev/init"
#: The kernel overlayfs' workdir, under the container's work dir (fusefs stages in its own).
OVERLAY_WORK = "overlay"
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
#: The signals a terminal sends its foreground process group (^C and ^\).
TERMINAL = (signal.SIGINT, signal.SIGQUIT)
#: True when the engine runs in the caller's process group, so that ^C and ^\ on the caller's
#: terminal reach the container's processes directly; False in a warm process (rootless/warm.py),
#: which gets them from the caller and passes them on like the others.
TERMINAL_SIGNALS = True


class StartError(Exception):
    """Something that stops the container before its command runs; CODE is docker's exit code."""

    def __init__(self, message: str, code: int = 125) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Launch:
    """Everything the helper and init need; they are forked, so this travels in memory."""

    rootfs: str                   # the empty directory the union is mounted on
    lowers: list[str]             # top layer first
    upper: str
    work: str
    process: ProcessSpec
    ids: IdMap
    hostname: str
    etc_files: dict[str, str] = field(default_factory=dict)   # /etc/hosts -> the generated file
    network: str = "host"         # host | none | private
    #: --network private: the daemon (pasta, slirp4netns) the parent attaches to init's net
    #: namespace before init goes on, and the helper stops at the end (network.py)
    net: NetworkPlan | None = None
    net_link: NetworkLink | None = field(default=None, repr=False)   # its pipes, made by start()
    fuse_log: str | None = None
    log_path: str | None = None   # docker's json-file log of the container's stdout and stderr
    interactive: bool = False     # -i: the container reads the caller's stdin (else /dev/null)
    detach: bool = False          # -d: the helper leaves the caller's session and terminal
    #: -t: init opens a pty in the container's own devpts and sends its master through
    #: this socket (the child's end of a socketpair) to whoever relays it: the caller when
    #: attached, the helper (into the log) when detached.
    tty_socket: int | None = None
    tty_receiver: int | None = None   # the other end: the helper reads the master from it when detached
    winsize: bytes | None = None  # the caller's terminal size, for the pty
    mounts: list[Mount] = field(default_factory=list)   # -v, --tmpfs and the image's VOLUMEs
    readonly: bool = False        # --read-only: the root file system is mounted read-only
    init_binary: str | None = None    # --init: this static init (tini) runs as pid 1 and reaps zombies
    #: Overlay storage: the shared read-only fusefs mount of the image (shared.py) that a
    #: kernel overlayfs in the container's user namespace takes as its lower layer; None:
    #: the helper serves a fusefs mount of LOWERS itself.
    shared_lower: str | None = None
    #: Called in the helper once the container has exited and its root is unmounted, with
    #: the exit code: records the state, removes an --rm container.  The helper outlives
    #: a detached run's caller, so this is the only place that sees the end.
    on_exit: Callable[[int], None] | None = field(default=None, repr=False)


@dataclass
class Started:
    helper_pid: int
    init_pid: int | None
    error: StartError | None
    #: The handlers forward_signals replaced when start() installed it; wait() puts them back.
    restore: dict[int, Any] | None = field(default=None, repr=False)


def start(launch: Launch) -> Started:
    """Fork the helper and init; return once init has exec'd the command or failed to."""
    from . import host

    if host.runtime_mode() == host.PROOT:   # no user namespace can be made here: proot.py instead
        from . import proot

        return proot.start(launch)
    report_r, report_w = os.pipe()      # helper/init -> parent: {"pid"} then {"error"} or EOF at exec
    sync_r, sync_w = os.pipe()          # helper -> parent: "user namespace made"
    go_r, go_w = os.pipe()              # parent -> helper: "ids mapped"
    attachment = launch.net_link = network.Attachment(launch.net) if launch.net else None
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(sync_r)
        os.close(go_w)
        if attachment:
            attachment.forked()
        closed_report = [False]
        _run_child(lambda message, code: _helper_error(report_w, closed_report, message, code),
                   lambda: _helper(launch, sync_w, go_r, report_w, closed_report))
    os.close(report_w)
    os.close(sync_w)
    os.close(go_r)
    if attachment:
        attachment.parent_side()
    error: StartError | None = None
    try:
        if os.read(sync_r, 1) == b"u":
            # The daemon sets up the helper's network namespace, init's to be, while the id
            # maps are written, the helper mounts the root and init makes its mounts: pasta
            # alone takes 25-45 ms.
            if attachment:
                attachment.begin(pid)
            try:
                write_maps(pid, launch.ids)
                os.write(go_w, b"g")
            except Exception as e:  # noqa: BLE001
                error = StartError(str(e))
            if attachment and (problem := attachment.finish(wanted=error is None)):
                error = StartError(problem)
    finally:
        os.close(sync_r)
        os.close(go_w)
    init_pid = None
    for msg in _reports(report_r):
        if "pid" in msg:
            init_pid = int(msg["pid"])
        elif "error" in msg and error is None:
            error = _error_of(msg)
    if attachment:
        attachment.close()
    restore = forward_signals(init_pid) if init_pid is not None and error is None and not launch.detach else None
    return Started(pid, init_pid, error, restore)


def wait(started: Started) -> int:
    """Wait for the helper (which outlives init) and return the container's exit code.

    Signals go to init; without one (exec), to the helper, which passes them on.
    """
    target = started.init_pid if started.init_pid is not None else started.helper_pid
    previous = started.restore if started.restore is not None else forward_signals(target)
    try:
        while True:
            try:
                _, status = os.waitpid(started.helper_pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return exit_code(status)


def forward_signals(target: int) -> dict[int, Any]:
    """From now on the signals this process gets are TARGET's (see TERMINAL_SIGNALS); returns
    the handlers they replace.  start() calls it as soon as init runs: a warm process's caller
    may pass on a ^C while the engine is still recording the start."""
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(target, signum)
        except ProcessLookupError:
            pass

    previous: dict[int, Any] = {s: signal.signal(s, forward) for s in FORWARDED}
    for s in TERMINAL:
        # ^C on the terminal reaches the container directly (same process group); the engine keeps waiting.
        previous[s] = signal.signal(s, signal.SIG_IGN if TERMINAL_SIGNALS else forward)
    return previous


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _run_child(report: Callable[[str, int], None], body: Callable[[], int]) -> NoReturn:
    """How every forked child ends: with BODY's exit code, or with its failure reported and
    docker's code for it.  It never returns: a child must not run on into the CLI's code."""
    code = 125
    try:
        code = body()
    except StartError as e:
        report(e.message, e.code)
        code = e.code
    except BaseException as e:  # noqa: BLE001
        report(f"internal error: {e!r}\n{traceback.format_exc()}", 125)
    finally:
        os._exit(code)


def _wait_code(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return exit_code(status)
        except InterruptedError:
            continue


def _reports(fd: int) -> Iterator[dict[str, Any]]:
    """The JSON lines a child writes on the report pipe FD, until every writer has closed it."""
    with os.fdopen(fd, "rb") as reports:
        for line in reports:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict):
                yield msg


def _error_of(msg: dict[str, Any]) -> StartError:
    return StartError(str(msg["error"]), int(msg.get("code", 125)))


def _helper_error(report_w: int, closed: list[bool], message: str, code: int) -> None:
    """Before init runs the parent hears of it; after, the helper's log (its stderr) does."""
    if not closed[0]:
        _report(report_w, {"error": message, "code": code})
    else:
        try:
            os.write(2, f"rootless helper: {message}\n".encode())
        except OSError:
            pass


def _report(fd: int, msg: dict[str, object]) -> None:
    try:
        os.write(fd, json.dumps(msg).encode() + b"\n")
    except OSError:
        pass


# -- the helper: user namespace, FUSE daemon, waiting for init ------------------------------------

def _helper(launch: Launch, sync_w: int, go_r: int, report_w: int, closed_report: list[bool]) -> int:
    for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(s, signal.SIG_IGN)  # these are for the container, which gets them from the tty
    if launch.detach:
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        # with a private network its namespace too, which the parent attaches the daemon to
        linux.unshare(linux.CLONE_NEWUSER | (linux.CLONE_NEWNET if launch.net_link else 0))
    except OSError as e:
        raise StartError(f"cannot create a user namespace: {e.strerror}") from None
    os.write(sync_w, b"u")
    os.close(sync_w)
    if os.read(go_r, 1) != b"g":
        return 125  # the parent could not map the ids and says why
    os.close(go_r)
    linux.unshare(linux.CLONE_NEWNS)
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    fs = _mount_root(launch)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    # A process that unshared a pid namespace can no longer start threads (clone(2): EINVAL),
    # and this one serves FUSE with trio's threads: a middle process makes the namespace,
    # forks init into it and passes init's exit status on as its own.
    def init() -> int:
        _stdio(launch, out_w, err_w)
        _init(launch, report_w)
        return 125   # not reached: _init execs or raises

    def middle_process() -> int:
        os.close(out_r)
        os.close(err_r)
        linux.set_parent_death_signal(signal.SIGKILL)
        linux.unshare(linux.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _run_child(report, init)
        _report(report_w, {"pid": pid})
        for fd in (report_w, out_w, err_w, 0, 1, 2, *([launch.tty_socket] if launch.tty_socket else [])):
            os.close(fd)
        return _wait_code(pid)

    def report(message: str, code: int) -> None:
        _report(report_w, {"error": message, "code": code})

    middle = os.fork()
    if middle == 0:
        _run_child(report, middle_process)
    return serve_container(launch, fs, middle, (out_r, out_w, err_r, err_w), report_w, closed_report)


def _mount_root(launch: Launch) -> object | None:
    """The container's root on launch.rootfs: a fusefs mount this helper serves (returned), or,
    with launch.shared_lower, a kernel overlayfs over that shared read-only fusefs mount of the
    image (shared.py), which needs no serving: None."""
    if launch.shared_lower is not None:
        workdir = os.path.join(launch.work, OVERLAY_WORK)
        os.makedirs(workdir, exist_ok=True)
        options = f"lowerdir={launch.shared_lower},upperdir={launch.upper},workdir={workdir},userxattr"
        try:
            linux.mount("overlay", launch.rootfs, "overlay", 0, options)
        except OSError as e:
            raise StartError(f"mounting the container's root (overlayfs over {launch.shared_lower}) failed: "
                             f"{e.strerror}") from None
        return None

    import pyfuse3

    from fusefs.cli import MountOptions, build, fuse_options
    from fusefs.operations import Operations

    mo = MountOptions(launch.rootfs, list(launch.lowers), launch.upper, launch.work, fuse={"allow_other"})
    fs = build(mo)
    try:
        pyfuse3.init(Operations(fs), launch.rootfs, fuse_options(mo))
    except RuntimeError as e:
        raise StartError(f"mounting the container's root on {launch.rootfs} failed: {e}") from None
    return fs


def serve_container(launch: Launch, fs: object, child: int, pipes: tuple[int, int, int, int], report_w: int,
                    closed_report: list[bool]) -> int:
    """The helper's part once the container's first process is forked: serve its root over FUSE
    and pump its output until CHILD exits, then record the end; returns the exit code.

    PIPES are (out_r, out_w, err_r, err_w); the write ends and REPORT_W belong to the child now.
    The proot fallback's helper ends the same way.
    """
    out_r, out_w, err_r, err_w = pipes
    if launch.tty_socket is not None:
        os.close(launch.tty_socket)
    os.close(report_w)
    closed_report[0] = True
    os.close(out_w)
    os.close(err_w)
    # The caller's stdout and stderr, where an attached run copies the output to.
    outputs = None if launch.detach else (os.dup(1), os.dup(2))
    if launch.fuse_log:
        fd = os.open(launch.fuse_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    if launch.detach:
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
    receiver = launch.tty_receiver if launch.detach else None
    streams = [(out_r, "stdout"), (err_r, "stderr")]
    if fs is None:    # a kernel overlayfs root: nothing to serve, only the output to pump
        code = _wait_until_exit(launch.rootfs, child, streams, launch.log_path, outputs, receiver)
    else:
        code = _serve_until_exit(fs, child, streams, launch.log_path, outputs, receiver)
    network.teardown(launch.net_link)   # neither daemon stops by itself when the namespace goes
    if launch.on_exit is not None:
        try:
            launch.on_exit(code)
        except Exception:  # noqa: BLE001 (recorded in the helper's log; the exit code still counts)
            log.exception("recording the container's exit failed")
    return code


def _stdio(launch: Launch, out_w: int, err_w: int) -> None:
    """init's 0, 1, 2: the caller's stdin with -i (else /dev/null), and the pipes the helper logs."""
    if not launch.interactive:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)


class LogWriter:
    """docker's json-file format: one ``{"log", "stream", "time"}`` object per line of output."""

    def __init__(self, path: str | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) if path else -1
        self.partial: dict[str, bytes] = {}
        self._lock = threading.Lock()   # stdout and stderr are pumped by threads of their own

    def write(self, stream: str, data: bytes) -> None:
        with self._lock:
            self._write(stream, data)

    def _write(self, stream: str, data: bytes) -> None:
        if self.fd < 0:
            return
        text = self.partial.pop(stream, b"") + data
        lines = text.split(b"\n")
        rest = lines.pop()
        if len(rest) > 16384:      # docker cuts very long lines too
            lines.append(rest)
            rest = b""
        if rest:
            self.partial[stream] = rest
        self._emit(stream, [line + b"\n" for line in lines])

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        for stream, rest in list(self.partial.items()):
            self._emit(stream, [rest])
        self.partial.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _emit(self, stream: str, chunks: list[bytes]) -> None:
        if not chunks:
            return
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        out = b"".join(json.dumps({"log": c.decode("utf-8", "replace"), "stream": stream, "time": now}).encode()
                       + b"\n" for c in chunks)
        os.write(self.fd, out)


def _serve_until_exit(fs: object, child: int, streams: list[tuple[int, str]], log_path: str | None,
                      outputs: tuple[int, int] | None, tty_receiver: int | None = None) -> int:
    import pyfuse3
    import trio

    status = 0
    logger = LogWriter(log_path)
    # The output is pumped by threads of their own, never by the thread serving FUSE: a
    # container's `cat FILE` splices FILE's page-cache pages into the pipe, and reading
    # such a page waits until it is filled, which is this daemon's job. Read in the
    # serving thread, that wait would never end.
    pumps = [threading.Thread(target=_pump, args=(fd, name, outputs[index] if outputs else None, logger),
                              name=f"pump-{name}", daemon=True) for index, (fd, name) in enumerate(streams)]
    for thread in pumps:
        thread.start()

    def pumped(timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in pumps:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def pump_tty(sock_fd: int) -> None:
                with socket.socket(fileno=sock_fd) as sock:
                    await trio.lowlevel.wait_readable(sock)
                    master = receive_fd(sock)
                if master is not None:
                    thread = threading.Thread(target=_pump, args=(master, "stdout", None, logger),
                                              name="pump-tty", daemon=True)
                    pumps.append(thread)
                    thread.start()

            async def reap() -> None:
                nonlocal status
                with trio.open_signal_receiver(signal.SIGCHLD) as signals:
                    while True:
                        done, st = os.waitpid(child, os.WNOHANG)
                        if done:
                            status = st
                            break
                        async for _ in signals:
                            break
                # What init wrote before it exited is still in the pipes: let the pumps finish.
                await trio.to_thread.run_sync(pumped, 5.0)
                pyfuse3.terminate()

            async def flush() -> None:
                while True:
                    await trio.sleep(0.5)
                    fs.flush_metadata()  # type: ignore[attr-defined]

            if tty_receiver is not None:
                nursery.start_soon(pump_tty, tty_receiver)
            nursery.start_soon(reap)
            nursery.start_soon(flush)
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        logger.close()
        try:
            fs.close()  # type: ignore[attr-defined]
        except OSError:
            log.exception("closing the container's union failed")
        pyfuse3.close(unmount=True)
    return exit_code(status)


def _wait_until_exit(rootfs: str, child: int, streams: list[tuple[int, str]], log_path: str | None,
                     outputs: tuple[int, int] | None, tty_receiver: int | None = None) -> int:
    """_serve_until_exit for a root the kernel serves: pump the output until CHILD exits."""
    logger = LogWriter(log_path)
    pumps = [threading.Thread(target=_pump, args=(fd, name, outputs[index] if outputs else None, logger),
                              name=f"pump-{name}", daemon=True) for index, (fd, name) in enumerate(streams)]
    if tty_receiver is not None:
        def pump_tty() -> None:
            with socket.socket(fileno=tty_receiver) as sock:
                master = receive_fd(sock)
            if master is not None:
                _pump(master, "stdout", None, logger)

        pumps.append(threading.Thread(target=pump_tty, name="pump-tty", daemon=True))
    for thread in pumps:
        thread.start()
    status = 0
    try:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        deadline = time.monotonic() + 5.0   # what init wrote before it exited is still in the pipes
        for thread in pumps:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        logger.close()
        try:
            linux.umount(rootfs, linux.MNT_DETACH)
        except OSError:
            log.exception("unmounting the container's root failed")
    return exit_code(status)


def _pump(fd: int, name: str, out: int | None, logger: LogWriter) -> None:
    """Copy the container's stream FD into the log (and to OUT, the caller's, when attached)."""
    try:
        while data := os.read(fd, 65536):
            logger.write(name, data)
            if out is not None:
                write_all(out, data)
    except OSError:
        pass   # a pty master reads EIO once the container side is closed
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return   # the caller went away (a detached reader, `| head`): the log still has it


# -- init: the container's own namespaces, its root, and the exec ---------------------------------

def _init(launch: Launch, report_w: int) -> None:
    os.set_inheritable(report_w, False)   # closes at the exec: the parent then knows it happened
    linux.set_parent_death_signal(signal.SIGKILL)
    flags = linux.CLONE_NEWNS | linux.CLONE_NEWUTS | linux.CLONE_NEWIPC
    if launch.network != "host" and launch.net_link is None:
        flags |= linux.CLONE_NEWNET   # none; a private network's is the helper's (network.py)
    linux.unshare(flags)
    if launch.network != "host":
        network.loopback_up()
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    root = launch.rootfs
    _mount_proc(root)
    _mount_dev(root)
    if launch.tty_socket is not None:
        take_pty(root + "/dev/pts", launch.tty_socket, launch.winsize)
    process = launch.process
    if launch.init_binary:
        # In the container's /dev tmpfs: no trace in its writable layer, nothing the image can shadow.
        os.close(os.open(root + INIT_PATH, os.O_CREAT | os.O_WRONLY, 0o755))
        linux.mount(launch.init_binary, root + INIT_PATH, None, linux.MS_BIND)
        linux.mount(None, root + INIT_PATH, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY
                    | _locked_flags(root + INIT_PATH))
        process = dataclasses.replace(process, args=(INIT_PATH, "--", *process.args))
    _mount_sys(root)
    for target, source in launch.etc_files.items():
        _bind_file(source, root + target)
    for m in launch.mounts:
        _mount_volume(root, m)
    if launch.readonly:
        linux.mount(None, root, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | _locked_flags(root))
    linux.sethostname(launch.hostname)
    os.chdir(root)
    linux.pivot_root(".", ".")
    linux.umount(".", linux.MNT_DETACH)
    os.chdir("/")
    if launch.net_link is not None and not launch.net_link.wait_attached():
        raise StartError("the container's network could not be set up")
    _become(process, launch.ids)


def open_pty(pts: str) -> tuple[int, int]:
    """A new pty of the devpts instance mounted at PTS: (master, slave)."""
    master = os.open(pts + "/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"{pts}/{number}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def take_pty(pts: str | None, sock_fd: int, winsize: bytes | None) -> None:
    """Make a pty the controlling terminal and stdio of this process; hand its master over SOCK_FD.

    The pty comes from the devpts instance mounted at PTS, or the host's where PTS is None
    (the proot fallback has no devpts of its own).
    """
    master, slave = open_pty(pts) if pts is not None else os.openpty()
    if winsize:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
    with socket.socket(fileno=sock_fd) as sock:
        sock.sendmsg([b"m"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
    os.close(master)
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def receive_fd(sock: socket.socket) -> int | None:
    """The fd sent with SCM_RIGHTS on SOCK, or None when the sender went away without one."""
    msg, ancdata, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(struct.calcsize("i")))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            return int(struct.unpack("i", data[:4])[0])
    return None


def _ensure_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o755, exist_ok=True)
    except FileExistsError:
        raise StartError(f"cannot mount on {path}: it exists and is not a directory") from None


def _mount_proc(root: str) -> None:
    _ensure_dir(root + "/proc")
    linux.mount("proc", root + "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)


def _mount_dev(root: str) -> None:
    dev = root + "/dev"
    _ensure_dir(dev)
    linux.mount("tmpfs", dev, "tmpfs", linux.MS_NOSUID | linux.MS_STRICTATIME, "mode=755,size=65536k")
    for name in DEVICES:
        if not os.path.exists("/dev/" + name):
            continue
        target = f"{dev}/{name}"
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o666))
        linux.mount("/dev/" + name, target, None, linux.MS_BIND)
    os.mkdir(dev + "/pts", 0o755)
    try:
        linux.mount("devpts", dev + "/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
                    "newinstance,ptmxmode=0666,mode=0620")
    except OSError as e:
        raise StartError(f"cannot mount devpts in the container: {e.strerror}") from None
    os.symlink("pts/ptmx", dev + "/ptmx")
    os.mkdir(dev + "/shm", 0o1777)
    linux.mount("shm", dev + "/shm", "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                "mode=1777,size=65536k")
    os.mkdir(dev + "/mqueue", 0o755)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):
        os.symlink(target, f"{dev}/{name}")


def _mount_sys(root: str) -> None:
    target = root + "/sys"
    _ensure_dir(target)
    linux.mount("/sys", target, None, linux.MS_BIND | linux.MS_REC)
    # A bind mount in a user namespace keeps the original's locked flags; they must be repeated.
    try:
        linux.mount(None, target, None, linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _locked_flags(target))
    except OSError as e:
        log.debug("cannot make /sys read-only: %s", e)


def _locked_flags(path: str) -> int:
    """nosuid/nodev/noexec of the mount at PATH: a remount in a user namespace must keep them."""
    st = os.statvfs(path)
    flags = 0
    for bit, flag in ((os.ST_NOSUID, linux.MS_NOSUID), (os.ST_NODEV, linux.MS_NODEV),
                      (os.ST_NOEXEC, linux.MS_NOEXEC), (os.ST_NOATIME, linux.MS_NOATIME),
                      (os.ST_NODIRATIME, linux.MS_NODIRATIME), (os.ST_RELATIME, linux.MS_RELATIME)):
        if st.f_flag & bit:
            flags |= flag
    return flags


def _mount_volume(root: str, m: Mount) -> None:
    """Bind a host path or volume, or mount a tmpfs, at M.target resolved inside ROOT (never outside)."""
    try:
        target = resolve_in_root(root, m.target)
    except OSError as e:
        raise StartError(f"invalid mount target {m.target}: {e.strerror}") from None
    source_is_dir = m.kind != "bind" or os.path.isdir(m.source)
    try:
        if source_is_dir:
            os.makedirs(target, exist_ok=True)
        elif not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
    except OSError as e:
        raise StartError(f"cannot create the mount point {m.target} in the container: {e.strerror}") from None
    if os.path.isdir(target) != source_is_dir:
        kind = "directory" if source_is_dir else "file"
        raise StartError(f"cannot mount {m.source or m.kind} on {m.target}: the target is not a {kind}")
    if m.kind == "tmpfs":
        linux.mount("tmpfs", target, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, m.options)
        return
    if m.seed:
        seed(target, m.source)
    linux.mount(m.source, target, None, linux.MS_BIND | linux.MS_REC)
    if m.readonly:
        linux.mount(None, target, None,
                    linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | _locked_flags(target))


def _bind_file(source: str, target: str) -> None:
    parent = os.path.dirname(target)
    _ensure_dir(parent)
    try:
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            os.unlink(target)   # e.g. /etc/resolv.conf -> ../run/...: replaced in the writable layer, as docker
            raise FileNotFoundError
    except FileNotFoundError:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
    linux.mount(source, target, None, linux.MS_BIND)


def _default_signals() -> None:
    """Python ignores SIGPIPE and the engine ignored ^C and friends: an exec keeps ignored signals,
    so the command would inherit all that.  It starts as from a shell instead."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _become(spec: ProcessSpec, ids: IdMap) -> None:
    """Take on the user SPEC names (looked up in the container's files), go to its directory, exec."""
    _default_signals()
    try:
        user = resolve_user(spec.user)
    except UserNotFound as e:
        raise StartError(e.message) from None
    if user.uid >= ids.size or user.gid >= ids.size:
        raise StartError(f"user {spec.user} (uid {user.uid}, gid {user.gid}) is not mapped in the container: "
                         f"this user has container ids 0..{ids.size - 1}",
                         125)
    env = list(spec.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    try:
        os.makedirs(spec.cwd, exist_ok=True)   # docker creates a missing working directory
    except OSError:
        pass  # chdir below says what is wrong
    if ids.full:
        os.setgroups([g for g in user.groups if g < ids.size])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    try:
        os.chdir(spec.cwd)
    except OSError as e:
        raise StartError(f"chdir to cwd (\"{spec.cwd}\") set in config.json failed: {e.strerror.lower()}", 125) \
            if e.strerror else StartError(str(e))
    path = _find_executable(spec.args[0], env)
    try:
        os.execve(path, list(spec.args), dict(e.split("=", 1) for e in env if "=" in e))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise StartError(f'exec: "{spec.args[0]}": stat {path}: no such file or directory', 127) from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR):
            raise StartError(f'exec: "{spec.args[0]}": permission denied', 126) from None
        raise StartError(f'exec: "{spec.args[0]}": {e.strerror}', 126) from None


def _find_executable(name: str, env: list[str]) -> str:
    """Look NAME up as Go's exec.LookPath does in the container, with the container's PATH."""
    if "/" in name:
        return name
    path = next((e[5:] for e in env if e.startswith("PATH=")), "")
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return candidate
    raise StartError(f'exec: "{name}": executable file not found in $PATH', 127)


# -- exec: a new process in a running container's namespaces ------------------------------------

#: setns order: the user namespace first (it grants the rights for the others), pid last
#: (it only applies to children).
EXEC_NAMESPACES = ("user", "mnt", "uts", "ipc", "net", "pid")


def exec_in(init_pid: int, process: ProcessSpec, ids: IdMap, *, interactive: bool, tty: bool = False,
            log_path: str | None = None) -> int:
    """Run PROCESS inside the container whose init is INIT_PID; return its exit code.

    The caller must be single-threaded: a threaded process cannot join a user namespace.
    """
    from . import proot

    if (command := proot.container_command(init_pid)) is not None:   # run by proot.py: no namespaces to join
        return proot.exec_in(init_pid, command, process, interactive=interactive, tty=tty, log_path=log_path)
    report_r, report_w = os.pipe()
    pair = socket.socketpair() if tty else None
    winsize = None
    if tty:
        from .tty import terminal_size

        winsize = terminal_size()
    def child() -> int:
        if pair is not None:
            pair[0].close()
        return _exec_child(init_pid, process, ids, interactive, report_w, pair[1].detach() if pair else None,
                           winsize)

    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _run_child(lambda message, code: _report(report_w, {"error": message, "code": code}), child)
    os.close(report_w)
    error = next((_error_of(msg) for msg in _reports(report_r) if "error" in msg), None)
    if pair is not None:
        pair[1].close()
        with pair[0] as sock:
            master = receive_fd(sock)
        if master is not None:
            from .tty import relay

            relay(master, interactive=interactive, log_path=log_path)
    code = wait(Started(pid, None, None))
    if error is not None:
        raise error
    return code


def _exec_child(init_pid: int, process: ProcessSpec, ids: IdMap, interactive: bool, report_w: int,
                tty_socket: int | None, winsize: bytes | None) -> int:
    fds = []
    try:
        for ns in EXEC_NAMESPACES:
            try:
                fds.append((ns, os.open(f"/proc/{init_pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)))
            except FileNotFoundError:
                raise StartError(f"container process {init_pid} is gone: the container is not running") from None
        # Read before the first setns: after the mount namespace, /proc is the container's.
        same_net = os.readlink("/proc/self/ns/net") == os.readlink(f"/proc/{init_pid}/ns/net")
        for ns, fd in fds:
            if ns == "net" and same_net:
                continue   # --network host: already there, and joining it again is refused
            try:
                linux.setns(fd)
            except OSError as e:
                raise StartError(f"cannot join the container's {ns} namespace: {e.strerror}") from None
    finally:
        for _, fd in fds:
            os.close(fd)
    os.chdir("/")
    def command() -> int:
        linux.set_parent_death_signal(signal.SIGKILL)
        if not interactive:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        if tty_socket is not None:
            take_pty("/dev/pts", tty_socket, winsize)
        os.set_inheritable(report_w, False)
        _become(process, ids)
        return 125   # not reached: _become execs or raises

    pid = os.fork()      # only a child enters the pid namespace
    if pid == 0:
        _run_child(lambda message, code: _report(report_w, {"error": message, "code": code}), command)
    os.close(report_w)
    if tty_socket is not None:
        os.close(tty_socket)
    forward_signals(pid)
    return _wait_code(pid)


def print_error(error: StartError) -> None:
    print(f"Error: {error.message}", file=sys.stderr)
