"""The ``fusefs`` command: fuse-overlayfs' interface, so it can stand in as podman's mount_program.

    fusefs [-f] [-d] -o lowerdir=L1:L2,upperdir=U,workdir=W MOUNTPOINT

A lower that is a regular file is an uncompressed layer tar, served in place with its
index FILE.idx (``fusefs.tarindex``), or with one made at mount where there is none.

``-o uidmapping=CONTAINER:HOST:SIZE[:CONTAINER:HOST:SIZE...]`` and ``gidmapping=`` (what
podman passes for a container with an id mapping of its own) say that the owners stored
in the layers are container ids: the mount shows each as its HOST id (65534 for one
outside the mapping), and records a chown's ids and a new file's creator the other way
(EINVAL for a host id outside it).  See ``fusefs.mapping``.

It returns once the mount is ready (the daemon carries on in the background), or stays
in the foreground with ``-f``.  ``fusermount3 -u``, ``umount`` or SIGTERM end it cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
from dataclasses import dataclass, field, replace

from .mapping import IdMap, MappingError, OwnerMap

log = logging.getLogger("fusefs")

USAGE = ("usage: fusefs [-f] [-d] -o lowerdir=DIR|TAR[:DIR|TAR...][,upperdir=DIR,workdir=DIR]"
         "[,uidmapping=C:H:N[:C:H:N...],gidmapping=C:H:N[:C:H:N...]][,OPTION...] MOUNTPOINT")
#: Options we hand to the kernel / libfuse ourselves; everything else podman or a user passes
#: (fsync=0, userxattr, xino, context=..., index=off, ...) is accepted and ignored.
FUSE_OPTIONS = {"allow_other", "allow_root", "ro", "noatime", "nodev", "nosuid", "noexec", "dev", "suid", "exec"}


class UsageError(Exception):
    """A command-line mistake: what was wrong and what to do."""


@dataclass
class MountOptions:
    mountpoint: str
    lowerdirs: list[str] = field(default_factory=list)
    upperdir: str | None = None
    workdir: str | None = None
    foreground: bool = False
    debug: bool = False
    fuse: set[str] = field(default_factory=set)
    logfile: str | None = None
    ignored: list[str] = field(default_factory=list)
    owners: OwnerMap = field(default_factory=OwnerMap)


def split_lowerdirs(value: str) -> list[str]:
    """``a:b\\:c`` -> ``["a", "b:c"]`` (fuse-overlayfs' escaping of colons)."""
    out, cur, i = [], "", 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur += value[i + 1]
            i += 2
            continue
        if ch == ":":
            out.append(cur)
            cur = ""
        else:
            cur += ch
        i += 1
    out.append(cur)
    return [d for d in out if d]


def parse_args(argv: list[str]) -> MountOptions:
    opts: list[str] = []
    positional: list[str] = []
    foreground = debug = False
    it = iter(argv)
    for arg in it:
        if arg in ("-h", "--help"):
            raise SystemExit(print(USAGE) or 0)
        if arg in ("-V", "--version"):
            from rootless import __version__
            raise SystemExit(print(f"fusefs {__version__}") or 0)
        if arg == "-f":
            foreground = True
        elif arg in ("-d", "--debug"):
            debug = foreground = True
        elif arg == "-o":
            try:
                opts.extend(next(it).split(","))
            except StopIteration:
                raise UsageError("-o needs a value, e.g. -o lowerdir=/path/to/layer") from None
        elif arg.startswith("-o") and len(arg) > 2:
            opts.extend(arg[2:].split(","))
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown flag {arg}; {USAGE}")
        else:
            positional.append(arg)
    if not positional:
        raise UsageError(f"no mountpoint given; {USAGE}")
    if len(positional) > 2:
        raise UsageError(f"too many arguments: {' '.join(positional)}; {USAGE}")
    mo = MountOptions(mountpoint=positional[-1], foreground=foreground, debug=debug)
    for opt in opts:
        if not opt:
            continue
        key, _, value = opt.partition("=")
        if key == "lowerdir":
            mo.lowerdirs.extend(split_lowerdirs(value))
        elif key == "upperdir":
            mo.upperdir = value
        elif key == "workdir":
            mo.workdir = value
        elif key == "debug":
            mo.debug = mo.foreground = True
        elif key == "logfile":
            mo.logfile = value
        elif key in ("uidmapping", "gidmapping"):
            try:
                ids = IdMap.parse(key, value)
            except MappingError as e:
                raise UsageError(str(e)) from None
            mo.owners = replace(mo.owners, **{"uids" if key == "uidmapping" else "gids": ids})
        elif key in FUSE_OPTIONS:
            mo.fuse.add(key)
        elif key == "rw":
            mo.fuse.discard("ro")
        else:
            mo.ignored.append(opt)
    if not mo.lowerdirs:
        raise UsageError("no lowerdir given: add -o lowerdir=DIR[:DIR...] (leftmost is the top layer)")
    if mo.upperdir and not mo.workdir:
        raise UsageError("upperdir needs a workdir on the same filesystem: add -o workdir=DIR")
    if mo.workdir and not mo.upperdir:
        mo.workdir = None  # a workdir alone means nothing; overlayfs ignores it too
    return mo


def _mounted_paths() -> set[str]:
    out = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    out.add(fields[4].encode().decode("unicode_escape"))
    except OSError:
        pass
    return out


def check_mountpoint(path: str) -> str:
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise UsageError(f"mountpoint {path}: {e.strerror}; create it with mkdir first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path} is not a directory")
    if real in _mounted_paths():
        raise UsageError(f"mountpoint {path} is already in use by another mount; unmount it first "
                         f"(fusermount3 -u {path}) or choose another directory")
    return real


def build(mo: MountOptions):  # -> Overlay
    from .overlay import Overlay
    from .tarindex import TarLayerError

    def enc(p: str) -> bytes:
        return os.fsencode(os.path.abspath(p))

    if mo.upperdir and mo.workdir:
        up, wk = os.path.realpath(mo.upperdir), os.path.realpath(mo.workdir)
        if wk == up or wk.startswith(up + "/") or up.startswith(wk + "/"):
            raise UsageError("workdir and upperdir must be separate directories, neither inside the other")
    try:
        return Overlay([enc(d) for d in mo.lowerdirs],
                       enc(mo.upperdir) if mo.upperdir else None,
                       enc(mo.workdir) if mo.workdir else None)
    except OSError as e:
        raise UsageError(e.strerror or str(e)) from None
    except TarLayerError as e:
        raise UsageError(str(e)) from None


def fuse_options(mo: MountOptions) -> set[str]:
    options = {"fsname=fusefs", "subtype=fusefs", "default_permissions"}
    options |= mo.fuse
    if not mo.upperdir:
        options.add("ro")
    return options


def serve(mo: MountOptions, fs, ready_fd: int | None = None) -> int:
    """Mount and answer requests until unmounted; report readiness on READY_FD."""
    import pyfuse3
    import trio

    from .operations import Operations

    ops = Operations(fs, owners=mo.owners)
    try:
        pyfuse3.init(ops, mo.mountpoint, fuse_options(mo))
    except RuntimeError as e:
        msg = f"fusefs: mounting {mo.mountpoint} failed ({e}); see the fusermount3 message above"
        if ready_fd is not None:
            os.write(ready_fd, msg.encode())
            os.close(ready_fd)
        else:
            print(msg, file=sys.stderr)
        return 1
    if ready_fd is not None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        _detach_stdio(mo.logfile)
    terminated = False

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            async def on_signals() -> None:
                nonlocal terminated
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for _ in signals:
                        terminated = True
                        pyfuse3.terminate()
                        return

            async def flush_metadata() -> None:
                while True:
                    await trio.sleep(0.5)
                    try:
                        fs.flush_metadata()
                    except OSError:
                        log.exception("fusefs: writing the ownership table failed")

            nursery.start_soon(on_signals)
            nursery.start_soon(flush_metadata)
            # Handlers never await (local syscalls are answered inline), so one task serves
            # every request; more would only hand the read lock back and forth.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        try:
            fs.close()
        except OSError:
            log.exception("fusefs: closing the union failed")
        pyfuse3.close(unmount=terminated)
    return 0


def _detach_stdio(logfile: str | None) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if logfile:
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        mo = parse_args(argv)
        mo.mountpoint = check_mountpoint(mo.mountpoint)
        fs = build(mo)
    except UsageError as e:
        print(f"fusefs: {e}", file=sys.stderr)
        return 2 if "usage:" in str(e) else 1
    logging.basicConfig(level=logging.DEBUG if mo.debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if mo.ignored:
        log.debug("ignoring options: %s", ",".join(mo.ignored))
    if mo.foreground:
        return serve(mo, fs)
    # Fork before any thread exists (trio, libfuse); the parent waits for the mount.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        code = 1
        try:
            code = serve(mo, fs, ready_fd=w)
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    status = b"".join(chunks)
    if status == b"ok":
        return 0
    os.waitpid(pid, 0)
    print(status.decode(errors="replace") or f"fusefs: the daemon died before {mo.mountpoint} was mounted",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
