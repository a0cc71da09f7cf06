"""Running one piece of the engine as the container's root, in a child process.

Outside a user namespace the container's files show the wrong owners: what the container
made as its root is owned on disk by the user, and its other ids are the user's
subordinate ids.  fusefs records owners as it sees them from inside, so whatever reads or
writes a container's layers must stand where fusefs stands.  ``call`` forks a child that
either makes a new user namespace with the ids a container gets (``idmap.detect``), or
joins the user (and, for a running container, the mount) namespace of a container's init,
runs a function there, and reports a failure back as a ``RootlessError``.

The child of a fork is single-threaded, which ``unshare(CLONE_NEWUSER)`` and ``setns``
of a user namespace need, whatever the engine did before.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import RootlessError
from . import linux
from .idmap import IdMap, write_maps

_PR_SET_DUMPABLE = 4
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class ChildFailed(RootlessError):
    """The child process failed; its message is the one to show."""


def call(child: Callable[[], None], *, ids: IdMap | None = None, join_pid: int | None = None,
         mount_ns: bool = False, parent: Callable[[], None] | None = None,
         child_closes: Sequence[int] = (), parent_closes: Sequence[int] = ()) -> None:
    """Run CHILD in a forked process as the container's root, while PARENT runs here.

    With JOIN_PID the child joins that process's user namespace (and with MOUNT_NS its
    mount namespace too: its ``/`` is then the container's root); without, it makes a
    new user namespace mapped as IDS.  CHILD_CLOSES are closed in the child first and
    PARENT_CLOSES here after the fork (the other ends of pipes between the two); PARENT
    must close its own ends, also when it fails, so that the child is never left
    blocked on a pipe.  A RootlessError raised by CHILD is raised here; when both fail,
    the one that failed first wins (the other saw a broken pipe or a cut stream).
    """
    if join_pid is None and ids is None:
        raise ValueError("either ids or join_pid")
    sys.stdout.flush()
    sys.stderr.flush()
    report_r, report_w = os.pipe()
    sync_r, sync_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in (report_r, sync_r, go_w, *child_closes):
                os.close(fd)
            linux.set_parent_death_signal(signal.SIGKILL)
            if join_pid is not None:
                os.close(sync_w)
                os.close(go_r)
                _join(join_pid, mount_ns)
            else:
                try:
                    linux.unshare(linux.CLONE_NEWUSER)
                except OSError as e:
                    raise RootlessError(f"cannot create a user namespace: {e.strerror}",
                                        "rootless needs unprivileged user namespaces "
                                        "(sysctl kernel.unprivileged_userns_clone=1)") from None
                os.write(sync_w, b"u")
                os.close(sync_w)
                if os.read(go_r, 1) != b"g":
                    os._exit(1)   # the parent could not map the ids, and says why
                os.close(go_r)
            child()
            code = 0
        except RootlessError as e:
            _report(report_w, {"message": e.message, "hint": e.hint})
        except OSError as e:
            _report(report_w, {"message": f"{e.filename + ': ' if isinstance(e.filename, str) else ''}"
                                          f"{e.strerror or e}", "errno": e.errno})
        except BaseException as e:  # noqa: BLE001 (the child must never return into the CLI)
            _report(report_w, {"message": f"internal error: {e!r}", "trace": traceback.format_exc()})
        finally:
            os._exit(code)
    for fd in (report_w, sync_w, go_r, *parent_closes):
        os.close(fd)
    failure: BaseException | None = None
    try:
        if join_pid is None:
            assert ids is not None
            try:
                if os.read(sync_r, 1) == b"u":
                    write_maps(pid, ids)
                    os.write(go_w, b"g")
            except RootlessError as e:
                failure = e
        os.close(go_w)
        go_w = -1
        if parent is not None and failure is None:
            parent()
    except BaseException as e:  # noqa: BLE001 (re-raised below, after the child is reaped)
        failure = e
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(sync_r)
        status = _reap(pid)
    with os.fdopen(report_r, "rb") as f:
        raw = f.read()
    msg: dict[str, object] | None = None
    if raw:
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = {"message": raw.decode(errors="replace").strip()}
    # Whichever side failed first caused the other's failure, which is then only a broken
    # pipe or a cut stream: the child's broken pipe says the parent failed first.
    if failure is not None and (msg is None or msg.get("errno") == errno.EPIPE):
        raise failure
    if msg is not None:
        text = str(msg.get("message", "failed"))
        if msg.get("trace"):
            text += "\n" + str(msg["trace"])
        hint = msg.get("hint")
        raise ChildFailed(text, str(hint) if hint else None)
    if status != 0:
        raise ChildFailed(f"the helper process failed (status {status})")


def _reap(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return status
        except InterruptedError:
            continue


def _report(fd: int, msg: dict[str, object]) -> None:
    try:
        os.write(fd, json.dumps(msg).encode())
    except OSError:
        pass


def _join(pid: int, mount_ns: bool) -> None:
    """Enter the user (and mount) namespace of PID, the container's init."""
    # Processes of the container run as the same ids: they must not be able to ptrace
    # this one, which holds the engine's memory and descriptors.
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    kinds = ("user", "mnt") if mount_ns else ("user",)
    fds = []
    try:
        for kind in kinds:
            try:
                fds.append(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise RootlessError(f"container process {pid} is gone: the container is not running",
                                    "try again: a stopped container is read from its layers") from None
        for fd, kind in zip(fds, kinds):
            try:
                linux.setns(fd)
            except OSError as e:
                raise RootlessError(f"cannot join the container's {kind} namespace: {e.strerror}") from None
    finally:
        for fd in fds:
            os.close(fd)
    if mount_ns:
        os.chdir("/")
        # From here on every path is the container's: an import the engine has not done
        # yet must fail rather than load a module the image planted.
        sys.path[:] = []
        sys.path_importer_cache.clear()
