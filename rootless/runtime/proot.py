"""Running a container where no user namespace can be made: proot over a fusefs root mounted from here.

    rootless run ─ fork ─► helper: mounts fusefs on the rootfs dir in the caller's own
                           namespaces (libfuse calls fusermount3, as the ``fusefs``
                           command does) and serves it until the keeper exits
                   └ fork ─► keeper: applies docker's rules (user, working directory,
                           127/126 before anything starts), starts proot, learns the
                           command's pid, takes proot's own messages out of stderr,
                           and when the command exits kills whatever it left behind
                           └ fork, exec ─► proot -r ROOTFS ... ─► the command (traced)

``exec`` (``launch.exec_in`` comes to ``exec_in`` when the container's command is a proot's
child) is another proot over the same mounted root, with the container's binds.

``launch.start`` comes here when ``host.runtime_mode()`` says ``proot``.  The
``Launch``/``Started`` contract is launch's: the parent hears ``{"pid"}`` or
``{"error", "code"}`` on the report pipe, and the helper's exit status is the container's.

What proot cannot give, and how this copes:

- No pid namespace: the command is an ordinary process of the host, not pid 1, and
  /proc is the host's.  The pid reported (and signalled by stop/kill) is the command's.
- proot 5.1 (Debian 12) has no ``--kill-on-exit`` and exits only when every tracee has:
  the keeper finds the command as proot's child, watches it through a pidfd and
  SIGKILLs the remaining tracees (``TracerPid`` is proot) once it is gone.
- proot's exit status is the last tracee that *exited*, so a command killed by a signal
  reads as an earlier child's status or 255.  At ``-v 1`` proot says how each tracee
  ended; the keeper reads that from the shared stderr and answers docker's status
  (128+signal).  With ``-t`` stderr is the terminal, proot stays quiet (``-v -1``) and
  its own exit status is used.
- No real ids: ``-0`` or ``-i uid:gid`` fake them in what the command sees; every file
  access is really the user's.  The union is mounted without ``default_permissions``, so
  the kernel checks nothing and the container behaves as root would, whatever -u says.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import time
import traceback

from . import launch as _launch
from . import linux
from .launch import Launch, Started, StartError
from .spec import ProcessSpec, UserNotFound, resolve_user
from .volumes import Mount, resolve_in_root, seed

#: Seconds the keeper still reads stderr after proot exited (a daemon that escaped the
#: tracing could hold the pipe open forever).
DRAIN_S = 2.0


def start(launch: Launch) -> Started:
    """Fork the helper (and through it the keeper and proot); return once the command runs or failed to."""
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        closed = [False]
        code = 125
        try:
            code = _helper(launch, report_w, closed)
        except StartError as e:
            _launch._helper_error(report_w, closed, e.message, e.code)
            code = e.code
        except BaseException as e:  # noqa: BLE001 (the child must never return into the CLI)
            _launch._helper_error(report_w, closed, f"internal error: {e!r}\n{traceback.format_exc()}", 125)
        finally:
            os._exit(code)
    os.close(report_w)
    init_pid = None
    error: StartError | None = None
    with os.fdopen(report_r, "rb") as reports:
        for line in reports:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "pid" in msg:
                init_pid = int(msg["pid"])
            elif "error" in msg and error is None:
                error = StartError(str(msg["error"]), int(msg.get("code", 125)))
    return Started(pid, init_pid, error)


# -- the helper: the mount, in the caller's namespaces ---------------------------------------------

def _helper(launch: Launch, report_w: int, closed_report: list[bool]) -> int:
    for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(s, signal.SIG_IGN)
    if launch.detach:
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    proot = shutil.which("proot")
    if proot is None:
        raise StartError("user namespaces are unavailable here and proot, the fallback, is not installed: "
                         "install it (Debian package proot); `rootless info` says what this host lacks")
    if launch.network == "none":
        raise StartError("--network none needs a network namespace, and without user namespaces (proot mode) "
                         "there is none: leave it out to share the host's network")
    if launch.network != "host":
        # The default (private) cannot be had either; refusing it would refuse every plain run.
        _launch.write_all(2, b"WARNING: proot mode has no network namespace: the container shares the host's "
                             b"network (published ports are the host's own)\n")
    _unmount_stale(launch.rootfs)

    import pyfuse3

    from fusefs.cli import MountOptions, UsageError, build
    from fusefs.operations import Operations

    try:
        fs = build(MountOptions(launch.rootfs, list(launch.lowers), launch.upper, launch.work))
    except UsageError as e:
        raise StartError(f"cannot build the container's root: {e}") from None
    # Only the user can reach the mount (no allow_other), and every process of the container
    # is the user: without default_permissions the kernel checks nothing, as for root.
    try:
        options = {"fsname=fusefs", "subtype=fusefs"} | ({"ro"} if launch.readonly else set())
        pyfuse3.init(Operations(fs), launch.rootfs, options)
    except RuntimeError as e:
        raise StartError(f"mounting the container's root on {launch.rootfs} failed: {e} (through fusermount3: "
                         "see `rootless info`)") from None
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        reports = _Reports(report_w)

        def keep() -> int:
            os.close(out_r)
            os.close(err_r)
            return _keeper(launch, proot, reports, out_w, err_w)

        _launch._run_child(reports.error, keep)
    return _launch.serve_container(launch, fs, keeper, (out_r, out_w, err_r, err_w), report_w, closed_report)


def _unmount_stale(path: str) -> None:
    """A helper killed with -9 leaves its mount behind, answering ENOTCONN; take it away first."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mounted = any(line.split()[4] == real for line in f if len(line.split()) > 4)
    except OSError:
        return
    if mounted:
        subprocess.run(["fusermount3", "-u", "-z", real], capture_output=True, stdin=subprocess.DEVNULL)


# -- the keeper: docker's rules, proot, and the end of the container --------------------------------

class _Reports:
    """The keeper's end of the report pipe: closed once the command's pid is told, after which
    an error can only go to the container's stderr (and its log)."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def send(self, msg: dict[str, object]) -> None:
        if self.fd is not None:
            _launch._report(self.fd, msg)

    def error(self, message: str, code: int) -> None:
        if self.fd is not None:
            self.send({"error": message, "code": code})
        else:
            _launch.write_all(2, f"rootless: {message}\n".encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _keeper(launch: Launch, proot: str, reports: _Reports, out_w: int, err_w: int) -> int:
    linux.set_parent_death_signal(signal.SIGKILL)
    tty = launch.tty_socket is not None
    _launch._stdio(launch, out_w, err_w)
    argv, env = command_line(launch, proot, verbose=not tty)
    return _run_proot(argv, env, launch.rootfs, reports, launch.tty_socket, launch.winsize)


def _run_proot(argv: list[str], env: dict[str, str], root: str, reports: _Reports, tty_socket: int | None,
               winsize: bytes | None, container: int | None = None) -> int:
    """Fork and exec proot with ARGV, supervise it (``_supervise``) and return the command's exit code."""
    filt_r, filt_w = (None, None) if tty_socket is not None else os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            linux.set_parent_death_signal(signal.SIGKILL)
            if filt_w is not None:
                os.dup2(filt_w, 2)
            if tty_socket is not None:
                _launch.take_pty(None, tty_socket, winsize)
            os.chdir(root)
            _launch._default_signals()
            os.execve(argv[0], argv, env)
        except BaseException as e:  # noqa: BLE001
            reports.error(f"cannot start proot: {e}", 125)
        finally:
            os._exit(125)
    if tty_socket is not None:
        os.close(tty_socket)
    if filt_w is not None:
        os.close(filt_w)
    return _supervise(pid, filt_r, reports, container)


def command_line(launch: Launch, proot: str, verbose: bool) -> tuple[list[str], dict[str, str]]:
    """proot's argv and environment for LAUNCH, after docker's checks (which raise StartError).

    Reads the container's files through the mounted root, so the helper must be serving it.
    """
    root = launch.rootfs
    spec = launch.process
    ids, env = checked(root, spec)
    binds = ["-b", "/proc", "-b", "/dev", "-b", "/sys"]
    for target, source in launch.etc_files.items():
        if not launch.readonly:
            _replace_with_file(in_root(root, posixpath.dirname(target)) + "/" + posixpath.basename(target))
        binds += ["-b", f"{source}:{target}"]
    for index, m in enumerate(launch.mounts):
        binds += ["-b", f"{_mount_source(launch, m, index)}:{m.target}"]
    args = list(spec.args)
    if launch.init_binary:
        # Not pid 1 here: tini must be told to be the reaper of what its child leaves (-s).
        extra = ["-s"] if "tini" in os.path.basename(launch.init_binary) else []
        binds += ["-b", f"{launch.init_binary}:{_launch.INIT_PATH}"]
        args = [_launch.INIT_PATH, *extra, "--", *args]
    argv = [proot, "-r", root, "-w", spec.cwd, "-v", "1" if verbose else "-1", *binds, *ids, *args]
    return argv, env


def checked(root: str, spec: ProcessSpec) -> tuple[list[str], dict[str, str]]:
    """docker's rules for SPEC in the container at ROOT, as launch's init applies them: the user
    (as proot's -0 or -i), HOME, the working directory (made if missing), 127 and 126.
    Returns proot's id options and the environment."""
    try:
        user = resolve_user(spec.user, in_root(root, "/etc/passwd"), in_root(root, "/etc/group"))
    except UserNotFound as e:
        raise StartError(e.message) from None
    env = list(spec.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    cwd = in_root(root, spec.cwd)
    try:
        os.makedirs(cwd, exist_ok=True)   # docker creates a missing working directory
    except OSError:
        pass
    if not os.path.isdir(cwd):
        why = "not a directory" if os.path.exists(cwd) else "no such file or directory"
        raise StartError(f"chdir to cwd (\"{spec.cwd}\") set in config.json failed: {why}", 125)
    find_executable(root, spec.args[0], env, spec.cwd)
    ids = ["-0"] if (user.uid, user.gid) == (0, 0) else ["-i", f"{user.uid}:{user.gid}"]
    return ids, dict(e.split("=", 1) for e in env if "=" in e)


# -- exec: another proot over the same root ---------------------------------------------------------

def container_command(init_pid: int) -> list[str] | None:
    """The proot command line that runs the container whose command is INIT_PID, or None where
    INIT_PID is not a proot's child (a container in namespaces, or one that is gone)."""
    try:
        with open(f"/proc/{init_pid}/status") as f:
            parent = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            argv = [a.decode(errors="surrogateescape") for a in f.read().split(b"\0")[:-1]]
    except (OSError, StopIteration, ValueError):
        return None
    return argv if argv and os.path.basename(argv[0]) == "proot" else None


def exec_in(init_pid: int, argv: list[str], process: ProcessSpec, *, interactive: bool, tty: bool = False,
            log_path: str | None = None) -> int:
    """``exec`` into a proot container: another proot with the same root and binds (ARGV is the
    container's, from ``container_command``), whose tracees are killed when the container's
    command exits, as docker's are with the pid namespace."""
    root, binds = "", []
    i = 1
    while i < len(argv):          # command_line's options, up to the command
        if argv[i] == "-0":
            i += 1
        elif argv[i] in ("-r", "-w", "-v", "-b", "-i") and i + 1 < len(argv):
            if argv[i] == "-r":
                root = argv[i + 1]
            elif argv[i] == "-b":
                binds += ["-b", argv[i + 1]]
            i += 2
        else:
            break
    if not root:
        raise StartError(f"cannot tell the root of the container run by {' '.join(argv[:3])}")
    container = os.pidfd_open(init_pid)
    report_r, report_w = os.pipe()
    pair = socket.socketpair() if tty else None
    winsize = None
    if tty:
        from .tty import terminal_size

        winsize = terminal_size()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        reports = _Reports(report_w)

        def command() -> int:
            if pair is not None:
                pair[0].close()
            if not interactive:
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
            ids, env = checked(root, process)
            command = [argv[0], "-r", root, "-w", process.cwd, "-v", "-1" if tty else "1", *binds, *ids,
                       *process.args]
            return _run_proot(command, env, root, reports, pair[1].detach() if pair else None, winsize, container)

        _launch._run_child(reports.error, command)
    os.close(report_w)
    os.close(container)
    error = next((_launch._error_of(msg) for msg in _launch._reports(report_r) if "error" in msg), None)
    if pair is not None:
        pair[1].close()
        with pair[0] as sock:
            master = _launch.receive_fd(sock) if error is None else None
        if master is not None:
            from .tty import relay

            relay(master, interactive=interactive, log_path=log_path)
    code = _launch.wait(Started(pid, None, None))
    if error is not None:
        raise error
    return code


def _mount_source(launch: Launch, m: Mount, index: int) -> str:
    """What proot binds for M: the bind's or volume's directory, or for --tmpfs a fresh one of the
    container's (there is no tmpfs without a mount namespace)."""
    if m.readonly:
        raise StartError(f"{m.target} is to be read-only, and without user namespaces (proot mode) a bind "
                         "cannot be made read-only: drop :ro, or run where user namespaces are allowed")
    target = in_root(launch.rootfs, m.target)
    source_is_dir = m.kind != "bind" or os.path.isdir(m.source)
    if not launch.readonly:      # a read-only root gets proot's own stand-ins for missing mount points
        try:
            if source_is_dir:
                os.makedirs(target, exist_ok=True)
            elif not os.path.lexists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
        except OSError as e:
            raise StartError(f"cannot create the mount point {m.target} in the container: {e.strerror}") from None
    if m.kind == "tmpfs":
        source = os.path.join(os.path.dirname(launch.rootfs), "tmpfs", str(index))
        shutil.rmtree(source, ignore_errors=True)
        os.makedirs(source, mode=0o1777)
        os.chmod(source, 0o1777)
        return source
    if m.seed:
        seed(target, m.source)
    return m.source


def in_root(root: str, path: str) -> str:
    """The host path of the container's PATH, symlinks followed inside ROOT (volumes.resolve_in_root)."""
    try:
        return resolve_in_root(root, path)
    except OSError as e:
        raise StartError(f"cannot resolve {path} in the container: {e.strerror}", 125) from None


def find_executable(root: str, name: str, env: list[str], cwd: str) -> str:
    """What launch's exec would find and refuse, decided before proot starts: proot itself
    answers a missing or unexecutable command with its own message and exit status 1."""
    if "/" in name:
        path = in_root(root, posixpath.join(cwd, name))
        try:
            st = os.stat(path)
        except OSError:
            raise StartError(f'exec: "{name}": stat {name}: no such file or directory', 127) from None
        if not _executable(path, st):
            raise StartError(f'exec: "{name}": permission denied', 126)
        return name
    search = next((e[5:] for e in env if e.startswith("PATH=")), "")
    for directory in search.split(":"):
        candidate = posixpath.join(directory or ".", name)
        path = in_root(root, posixpath.join(cwd, candidate))
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            if not _executable(path, st):
                raise StartError(f'exec: "{name}": permission denied', 126)
            return candidate
    raise StartError(f'exec: "{name}": executable file not found in $PATH', 127)


def _executable(path: str, st: os.stat_result) -> bool:
    """What execve would accept: a regular file with an x bit that is an ELF or a #! script."""
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return False
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return False
    return magic == b"\x7fELF" or magic.startswith(b"#!")


def _replace_with_file(path: str) -> None:
    """docker replaces /etc/hosts & co. in the writable layer, a symlink included (resolv.conf -> ../run/...)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return
        if stat.S_ISDIR(st.st_mode):
            raise StartError(f"cannot bind a file on {path}: it is a directory", 125)
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))


# -- watching proot ---------------------------------------------------------------------------------

class ProotMessages:
    """Takes proot's own lines out of the stderr it shares with the command, and keeps how each
    tracee ended (``pid N: exited with status S`` / ``terminated with signal S`` at ``-v 1``).

    proot writes a message in three writes, so a line may arrive in pieces, and after a
    partial line of the command's; what cannot be part of a message is passed on at once.
    """

    MARKS = (b"proot info: ", b"proot warning: ", b"proot error: ", b"fatal error: see `proot --help`.")
    _END = re.compile(rb"pid (\d+): (exited with status|terminated with signal) (\d+)")

    def __init__(self) -> None:
        self.pending = b""
        self.ends: dict[int, int] = {}      # tracee pid -> docker's exit code
        self.errors: list[str] = []         # proot's error lines

    def feed(self, data: bytes) -> bytes:
        """Everything of DATA (after what is pending) that is the command's output."""
        buf = self.pending + data
        out = []
        while buf:
            found = [(i, m) for m in self.MARKS if (i := buf.find(m)) >= 0]
            if not found:
                keep = self._partial_mark(buf)
                out.append(buf[:len(buf) - keep])
                buf = buf[len(buf) - keep:]
                break
            i, mark = min(found)
            out.append(buf[:i])
            end = buf.find(b"\n", i)
            if end < 0:
                if len(buf) - i > 65536:       # no message is that long: it was not one
                    out.append(buf[i:])
                    buf = b""
                else:
                    buf = buf[i:]
                break
            self._take(mark, buf[i + len(mark):end])
            buf = buf[end + 1:]
        self.pending = buf
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return rest

    def _partial_mark(self, buf: bytes) -> int:
        """How many trailing bytes of BUF could begin a mark."""
        for n in range(min(len(buf), max(len(m) for m in self.MARKS) - 1), 0, -1):
            if any(m.startswith(buf[-n:]) for m in self.MARKS):
                return n
        return 0

    def _take(self, mark: bytes, text: bytes) -> None:
        if mark == b"proot error: ":
            self.errors.append(text.decode(errors="replace"))
            return
        m = self._END.search(text)
        if m and mark == b"proot info: ":
            code = int(m.group(3))
            self.ends[int(m.group(1))] = code if m.group(2).startswith(b"exited") else 128 + code

    def first_tracee(self, proot_pid: int, pid_max: int) -> int | None:
        """The command's pid when it was never seen alive: proot forks it first, and every other
        tracee descends from it, so its pid comes first after proot's (pids wrap at pid_max)."""
        if not self.ends:
            return None
        return min(self.ends, key=lambda p: (p - proot_pid) % pid_max)


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def tracees(tracer: int) -> list[int]:
    """Every process TRACER traces: all of a proot's container, even what called setsid."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        if int(line.split()[1]) == tracer:
                            out.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return out


def _supervise(proot_pid: int, filt_r: int | None, reports: _Reports, container: int | None = None) -> int:
    """Wait for the command, end the rest, and return the command's exit code as docker gives it.

    CONTAINER (exec): a pidfd of the container's command; when it ends, this command's tracees go too.
    """
    messages = ProotMessages()
    verbose = filt_r is not None
    poller = select.poll()
    proot_fd = os.pidfd_open(proot_pid)
    poller.register(proot_fd, select.POLLIN)
    if filt_r is not None:
        poller.register(filt_r, select.POLLIN)
    if container is not None:
        poller.register(container, select.POLLIN)
    main: int | None = None
    main_fd: int | None = None
    main_gone = False
    proot_status: int | None = None
    drain_until = 0.0
    while True:
        if main is None and not main_gone:
            kids = _children(proot_pid)
            if kids:
                main = kids[0]
                try:
                    main_fd = os.pidfd_open(main)
                    poller.register(main_fd, select.POLLIN)
                except ProcessLookupError:
                    main_gone = True
                reports.send({"pid": main})
                reports.close()
            elif messages.ends:
                main_gone = True    # a tracee ended and proot has no child: the command came and went
        if main_gone and proot_status is None:
            for pid in tracees(proot_pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if proot_status is not None and (filt_r is None or time.monotonic() > drain_until):
            break
        if proot_status is not None:
            timeout = max(0.0, drain_until - time.monotonic()) * 1000
        elif main is None and not main_gone:
            timeout = 1       # the command is about to appear: look again soon
        elif main_gone:
            timeout = 20      # killing what is left: look again until proot is done
        else:
            timeout = -1
        for fd, _ in poller.poll(timeout):
            if fd == filt_r:
                data = os.read(fd, 65536)
                if data:
                    _launch.write_all(2, messages.feed(data))
                else:
                    poller.unregister(fd)
                    os.close(fd)
                    filt_r = None
            elif fd == main_fd:
                poller.unregister(fd)
                os.close(fd)
                main_fd = None
                main_gone = True
            elif fd == container:
                poller.unregister(fd)
                container = None
                main_gone = True          # the container ended: so does what was exec'd in it
            elif fd == proot_fd:
                poller.unregister(fd)
                os.close(fd)
                proot_status = _reap(proot_pid)
                drain_until = time.monotonic() + DRAIN_S
                if main_fd is not None:   # proot died under a live command, which now runs untraced
                    try:
                        signal.pidfd_send_signal(main_fd, signal.SIGKILL)
                    except ProcessLookupError:
                        pass              # it had ended too (both news came in one poll)
    if filt_r is not None:
        os.close(filt_r)
    _launch.write_all(2, messages.flush())
    assert proot_status is not None
    if not verbose:
        return _launch.exit_code(proot_status)    # -t: proot was quiet, its status is all there is
    command = main if main is not None else messages.first_tracee(proot_pid, _pid_max())
    if command is None:
        # Nothing was traced to its end: proot itself failed (ptrace refused, a bad option).
        said = "; ".join(messages.errors) or f"exit status {_launch.exit_code(proot_status)}"
        reports.error(f"proot could not start the command: {said}", 125)
        return 125
    if messages.errors:
        _launch.write_all(2, "".join(f"proot error: {e}\n" for e in messages.errors).encode())
    return messages.ends.get(command, _launch.exit_code(proot_status))


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0
