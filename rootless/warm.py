"""Warm start: the ``rootless`` command hands its work to a per-user process that has the engine loaded.

Loading the engine (click, the CLI, pyfuse3, trio, fusefs) takes a Python process about
300 ms, more than starting a container takes once it is loaded.  So the console script is
this small module, which imports nothing but C modules of the standard library, and for the
verbs where start-up time matters (``run``, ``exec``, ``ps`` ...) it asks a warm process
over a unix socket to run the command:

    rootless run ...  ── connect ──► warm process (engine imported, single-threaded, idle)
      (this module)                    │ fork
         │  argv, environment, cwd,    ▼
         │  umask, limits, fds 0 1 2   command process: becomes the caller (its stdio, its
         │ ◄──── its pid ───────────── environment, its cwd) and runs the click command;
         │  "go" ─────────────────────►  a user namespace can be made since nothing in it
         │  signals ─ kill(pid) ──────►  has started a thread
         │ ◄──── exit code ──────────  then exits
         exits with that code

The first command of a session finds no warm process: it starts one in the background and
runs itself the ordinary way.  The warm process ends after ``warm-start`` seconds without a
request (config file: ``"warm-start": SECONDS``, default 600, or ``false`` to turn it off;
the environment variable ``ROOTLESS_WARM`` overrides it: ``0`` or a number of seconds).

A warm process serves only callers that it could stand in for exactly: the socket's name
is a digest of what a command inherits from the process that starts it and cannot be handed
over afterwards — the same user (checked on both ends with SO_PEERCRED), Python, engine
code (paths and mtimes of its modules, so an upgrade or an edit starts a new one), cgroup
(a batch job's processes stay in the job), namespaces, groups, CPU affinity, no_new_privs,
seccomp and capability bounds.  What can be handed over is: argv, the environment, the
working directory, the umask, resource limits and the standard streams.

Signals the caller gets (^C, SIGTERM, SIGWINCH ...) are forwarded to the command process,
which passes them on to the container the way docker's CLI proxies signals.  The caller's
terminal stays the caller's: with ``-t`` the command process sets it raw and relays it.
"""

from __future__ import annotations

import _signal
import _socket
import marshal
import os
import sys
import zlib

#: The verbs handed to the warm process: the ones people time or call in loops. Others (login
#: reads /dev/tty, build and pull run long anyway) start the ordinary way.
VERBS = frozenset({"run", "exec", "start", "restart", "stop", "kill", "rm", "ps", "images", "inspect", "wait",
                   "logs", "port"})
#: Global options that take a value (rootless/cli/_app.py), skipped while looking for the verb.
VALUED_OPTIONS = ("--root", "--config", "--log-level")
DEFAULT_IDLE = 600.0
#: Forwarded from the caller to the command process.
SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGWINCH", "SIGUSR1", "SIGUSR2")
HANDSHAKE_TIMEOUT = 10.0
#: Imported by the warm process before it listens: every command module, and what run loads.
PRELOAD = ("pyfuse3", "trio", "fusefs.cli", "fusefs.operations", "rootless.cli", "rootless.image.inspect",
           "rootless.image.store", "rootless.runtime.containers", "rootless.runtime.host", "rootless.runtime.idmap",
           "rootless.runtime.launch", "rootless.runtime.network", "rootless.runtime.spec", "rootless.runtime.tty",
           "rootless.runtime.volumes", "rootless.runtime.enter")


# -- the caller -----------------------------------------------------------------------------------------

def main() -> None:
    """The ``rootless`` console script."""
    argv = sys.argv[1:]
    idle = _idle_seconds(argv, os.environ)
    if idle and _verb(argv) in VERBS and _in_the_foreground():
        code = _ask_warm(argv, idle)
        if code is not None:
            sys.exit(code)
    from .cli import main as cli_main

    sys.exit(cli_main(prog_name="rootless"))


def _in_the_foreground() -> bool:
    """Whether job control would let this process use its terminal (or it has none).

    A command process is in the warm process's session, where the caller's terminal sends no
    SIGTTIN or SIGTTOU: run in the background (``rootless run -it IMG &``) it would read the
    shell's input and set the terminal raw. There the command runs here, and the terminal
    stops it as it stops any program.
    """
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return True   # stdin is no terminal


def _verb(argv: list[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUED_OPTIONS:
            skip = True
        elif arg.startswith(tuple(o + "=" for o in VALUED_OPTIONS)):
            continue
        elif arg.startswith("-"):
            return None   # --help, --version, or an option this module does not know: the ordinary way
        else:
            return arg
    return None


def _idle_seconds(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> float:
    """How long a warm process waits for the next command; 0 when warm start is off.

    ``ROOTLESS_WARM`` overrides the config file: ``0``/``off`` or a number of seconds.
    """
    forced = _forced(environ)
    if forced is not None:
        return forced
    path = _config_path(argv, environ)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        return DEFAULT_IDLE
    if b'"warm-start"' not in text:   # json is not imported unless the file mentions it
        return DEFAULT_IDLE
    import json

    try:
        value = json.loads(text).get("warm-start", True)
    except (ValueError, AttributeError):
        return 0.0   # the ordinary path reports the broken file
    return idle_setting(value)


def _forced(environ: dict[str, str] | os._Environ[str]) -> float | None:
    forced = environ.get("ROOTLESS_WARM", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return 0.0
    try:
        if float(forced) > 0:
            return float(forced)
    except ValueError:
        pass
    return None


def idle_setting(value: object, environ: dict[str, str] | os._Environ[str] | None = None) -> float:
    """The idle time a config file's ``warm-start`` VALUE gives (ROOTLESS_WARM in ENVIRON first)."""
    forced = _forced(environ) if environ is not None else None
    if forced is not None:
        return forced
    if value is True:
        return DEFAULT_IDLE
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0


def listening(idle: float) -> int | None:
    """The pid of the warm process that would serve this process's commands, if one listens."""
    name = socket_name(idle).lstrip("\0")
    try:
        with open("/proc/net/unix") as f:
            if not any(line.split()[-1:] == ["@" + name] for line in f):
                return None
        found = {}   # its command processes carry its command line too: the one whose parent is not one
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if name.encode() not in f.read().split(b"\0"):
                            continue
                    with open(f"/proc/{entry.name}/stat") as f:
                        found[int(entry.name)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        return next((pid for pid, parent in sorted(found.items()) if parent not in found), None)
    except OSError:
        pass
    return None


def _config_path(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> str:
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    if environ.get("ROOTLESS_CONFIG"):
        return environ["ROOTLESS_CONFIG"]
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".config")
    return os.path.join(base, "rootless", "config.json")


def _ask_warm(argv: list[str], idle: float) -> int | None:
    """Run ARGV in the warm process and return its exit code; None: run it here instead."""
    name = socket_name(idle)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(name)
        except OSError:
            _start_server(name, idle)
            return None
        if _peer_uid(sock) != os.getuid():
            return None   # someone else's socket under our name: not ours to talk to
        return _converse(sock, argv)
    finally:
        sock.close()


def _converse(sock: _socket.socket, argv: list[str]) -> int | None:
    request = {"argv": argv, "env": dict(os.environ), "cwd": _cwd(), "umask": _umask(), "limits": _limits()}
    payload = marshal.dumps(request)
    fds = [_open_or_null(fd) for fd in (0, 1, 2)]
    sock.settimeout(HANDSHAKE_TIMEOUT)
    try:
        sock.sendmsg([len(payload).to_bytes(4, "little"), payload],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))])
        reply = _receive(sock)
    except OSError:
        return None   # a warm process that does not answer: never told to go, it runs nothing
    if not reply or "pid" not in reply:
        return None
    pid = int(reply["pid"])

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except OSError:
            pass

    def suspend(signum: int, frame: object) -> None:
        # ^Z: the command process stops with its caller (the container runs on, as docker's
        # does), so that it no longer reads the terminal the shell takes back.
        forward(_signal.SIGSTOP, frame)
        _signal.signal(_signal.SIGTSTP, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGTSTP)

    def resume(signum: int, frame: object) -> None:
        _signal.signal(_signal.SIGTSTP, suspend)
        forward(_signal.SIGCONT, frame)

    for signame in SIGNALS:
        _signal.signal(getattr(_signal, signame), forward)
    _signal.signal(_signal.SIGTSTP, suspend)
    _signal.signal(_signal.SIGCONT, resume)
    try:
        sock.sendall(b"g")
        sock.settimeout(None)
        reply = _receive(sock)
    except OSError:
        reply = None
    if reply is None or "exit" not in reply:
        os.write(2, b"Error: the warm rootless process that ran this command ended without saying how it went\n"
                    b"Hint: run it again with ROOTLESS_WARM=0 to run it in this process\n")
        return 125
    return int(reply["exit"])


def _receive(sock: _socket.socket) -> dict | None:
    """One length-prefixed marshal message, or None at the end of the stream."""
    header = _read_exactly(sock, 4)
    if header is None:
        return None
    body = _read_exactly(sock, int.from_bytes(header, "little"))
    if body is None:
        return None
    message = marshal.loads(body)
    return message if isinstance(message, dict) else None


def _read_exactly(sock: _socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send(sock: _socket.socket, message: dict) -> None:
    payload = marshal.dumps(message)
    sock.sendall(len(payload).to_bytes(4, "little") + payload)


def _peer_uid(sock: _socket.socket) -> int:
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)   # struct ucred: pid, uid, gid
    return int.from_bytes(creds[4:8], sys.byteorder)


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:
        return "/"   # the caller's directory is gone; the ordinary path would fail on it too


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _limits() -> list[tuple[int, int, int]]:
    import resource   # a C module

    found = []
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            number = getattr(resource, name)
            try:
                soft, hard = resource.getrlimit(number)
            except (OSError, ValueError):
                continue
            found.append((number, soft, hard))
    return found


def _open_or_null(fd: int) -> int:
    try:
        os.fstat(fd)
        return fd
    except OSError:
        return os.open(os.devnull, os.O_RDWR)


def _start_server(name: str, idle: float) -> None:
    """Start a warm process for NAME in the background (it gives up at once if another won the race)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 65536)
            # -P: the interpreter must not put the caller's directory on sys.path.
            os.execv(sys.executable, [sys.executable, "-P", "-m", "rootless.warm", "serve", name.lstrip("\0"),
                                      str(idle)])
        finally:
            os._exit(127)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except InterruptedError:
            continue


def socket_name(idle: float) -> str:
    """The abstract socket name of the warm process that can stand in for this process (and
    waits IDLE seconds: a caller that wants another idle time gets a warm process of its own)."""
    return f"\0rootless-warm-{os.getuid()}-{identity():016x}-{idle:g}"


def identity() -> int:
    """A 64-bit digest of what a process inherits and the warm process cannot hand over."""
    parts = [sys.executable, sys.version, " ".join(sorted(map(str, os.getgroups()))), str(os.getgid()),
             code_stamp([os.path.dirname(os.path.abspath(__file__)),
                         os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fusefs")])]
    try:
        with open("/proc/self/cgroup", "rb") as f:
            parts.append(f.read().decode())
        with open("/proc/self/status", "rb") as f:
            parts += [line.decode() for line in f
                      if line.startswith((b"NoNewPrivs", b"Seccomp", b"CapBnd", b"CapEff", b"CapInh", b"CapAmb",
                                          b"Cpus_allowed_list", b"Mems_allowed_list"))]
    except OSError:
        pass
    for ns in ("mnt", "user", "net", "pid", "uts", "ipc", "cgroup"):
        try:
            parts.append(f"{ns}:{os.stat('/proc/self/ns/' + ns).st_ino}")
        except OSError:
            parts.append(f"{ns}:-")
    data = "\n".join(parts).encode()
    return (zlib.crc32(data) << 32) | zlib.adler32(data[::-1])


def code_stamp(directories: list[str]) -> str:
    """The engine's code as the interpreter would load it: each module's path, size and mtime."""
    entries = []
    pending = list(directories)
    while pending:
        directory = pending.pop()
        try:
            scan = os.scandir(directory)
        except OSError:
            continue
        with scan:
            for entry in scan:
                if entry.name.endswith(".py") or entry.name.endswith(".so"):
                    st = entry.stat()
                    entries.append(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}")
                elif entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                    pending.append(entry.path)
    return "\n".join(sorted(entries))


# -- the warm process ---------------------------------------------------------------------------------

def serve(name: str, idle: float) -> int:
    """Listen on NAME until IDLE seconds pass without a request; fork a command process per request."""
    import logging
    import socket
    import threading

    preload()
    _refresh()
    if threading.active_count() != 1:
        return 1   # a thread started while loading: no command of ours could make a user namespace
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind("\0" + name)
    except OSError:
        return 0   # another warm process took the name first
    listener.listen(64)
    listener.settimeout(idle)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)   # command processes are reaped by the kernel
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            return 0
        except InterruptedError:
            continue
        with conn:
            try:
                if _peer_uid(conn) != os.getuid():
                    continue
                conn.settimeout(HANDSHAKE_TIMEOUT)
                request, fds = _receive_request(conn)
            except (OSError, ValueError, EOFError) as e:
                logging.getLogger(__name__).debug("a request went wrong: %s", e)
                continue
            if request is None:
                _close_all(fds)
                continue
            _refresh()
            pid = os.fork()
            if pid == 0:
                listener.close()
                _command_process(conn, request, fds)   # never returns
            _close_all(fds)


def preload() -> None:
    """Import what the commands need, so that the command processes forked from here start loaded."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)


def _refresh() -> None:
    """What command processes would otherwise find out each time, found out here now and then."""
    from .runtime import host

    host.userns_available(host.USERNS_PROBE_TTL)


def _receive_request(conn: object) -> tuple[dict | None, list[int]]:
    import array
    import socket

    assert isinstance(conn, socket.socket)
    fds = array.array("i")
    header, ancillary, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(header) != 4 or len(fds) != 3:
        return None, list(fds)
    body = _read_exactly(conn, int.from_bytes(header, "little"))
    message = marshal.loads(body) if body is not None else None
    return (message if isinstance(message, dict) else None), list(fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _command_process(conn: object, request: dict, fds: list[int]) -> None:
    """Become the caller, wait for its go, run its command, tell it the exit code, and exit."""
    import socket

    assert isinstance(conn, socket.socket)
    code = 125
    try:
        try:
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            _signal.signal(_signal.SIGHUP, _signal.SIG_DFL)
            os.setpgid(0, 0)
            _become_caller(request, fds)
        except BaseException:  # noqa: BLE001
            os._exit(0)   # e.g. the caller's directory is gone: it hears nothing and runs the command itself
        try:
            _send(conn, {"pid": os.getpid()})
            go = conn.recv(1)
        except OSError:
            go = b""
        if go != b"g":
            os._exit(0)   # the caller gave up waiting and runs the command itself
        conn.settimeout(None)
        # Children (the container's helper, above all) must not keep the caller waiting.
        os.register_at_fork(after_in_child=lambda: _close_quietly(conn))
        code = _run_cli(request["argv"])
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        try:
            _send(conn, {"exit": code})
        except OSError:
            pass
        os._exit(code)


def _close_quietly(conn: object) -> None:
    try:
        conn.close()  # type: ignore[attr-defined]
    except OSError:
        pass


def _become_caller(request: dict, fds: list[int]) -> None:
    import io
    import locale
    import random
    import resource
    import tempfile
    import time

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    for number, soft, hard in request["limits"]:
        try:
            resource.setrlimit(number, (soft, hard))
        except (OSError, ValueError):
            pass   # a limit the caller could raise and the warm process cannot: left as it is
    time.tzset()
    try:
        locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        pass
    tempfile.tempdir = None
    random.seed()
    encoding = locale.getpreferredencoding(False)
    sys.stdin = io.TextIOWrapper(io.open(0, "rb", closefd=False), encoding=encoding)
    sys.stdout = io.TextIOWrapper(io.open(1, "wb", closefd=False), encoding=encoding,
                                  line_buffering=os.isatty(1), write_through=False)
    sys.stderr = io.TextIOWrapper(io.open(2, "wb", closefd=False), encoding=encoding, errors="backslashreplace",
                                  line_buffering=True)
    sys.argv = ["rootless", *request["argv"]]


def _run_cli(argv: list[str]) -> int:
    from .cli import main as cli_main
    from .runtime import launch

    launch.TERMINAL_SIGNALS = False   # ^C reaches this process from the caller, not the container from the tty
    try:
        cli_main(args=argv, prog_name="rootless")
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], float(sys.argv[3])))
    sys.exit("usage: python -m rootless.warm serve NAME IDLE_SECONDS (started by the rootless command)")
