"""``cp``: files between a container and the host, by docker's rules for names, ``/.``, ``-`` and owners.

Both directions move a tar stream from one side to the other.  The source side names
the stream's top entry after the source (``/etc/hosts`` -> ``hosts``); the other side
plans from what exists there (``plan``) and extracts with that name changed, or dropped
for ``dir/.``, so one pure function holds docker's table of cases.

The container side runs in a child process (``enter``).  A stopped container is read
and written through its layers (``rootfs``): the merged tree without the runtime's
mount targets, and new files in the upper layer with owners recorded as fusefs records
them, root:root unless ``-a`` keeps the archive's.  A running container is served by
its fusefs daemon, whose caches must not be bypassed: the child joins the container's
user and mount namespaces and works on its ``/`` as the container's root, so what it
sees is what the container sees, volumes, tmpfs and the bound /etc files included.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from . import enter
from .containers import Container, is_running
from .rootfs import ContainerFS, LayerPaths, LayerSink, UnionTree
from .tree import CopyError, DiskTree, Extract, Meta, Sink, TarWriter, Tree, extract, resolve

if TYPE_CHECKING:
    from ..image.store import Store

_ROOT_NAME = "rootfs"   # the stream's top name when the source is / itself


@dataclass(frozen=True)
class Plan:
    """Where a copy lands: the existing directory DEST_DIR, under NAME, or with None the
    source directory's contents go into DEST_DIR itself."""

    dest_dir: str
    name: str | None


@dataclass
class Result:
    data_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def split_arg(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a path starting with / or . is local, as docker reads it."""
    if arg.startswith(("/", ".")) or arg == "-":
        return None, arg
    name, sep, path = arg.partition(":")
    if not sep or not name:
        return None, arg
    return name, path


def source_name(src: str) -> tuple[str, bool]:
    """The stream's top name for the source path SRC, and whether SRC asks for a directory's contents (``/.``)."""
    contents = src == "." or src.endswith("/.")
    trimmed = src[:-1] if contents else src
    base = posixpath.basename(trimmed.rstrip("/"))
    if base in ("", ".", ".."):
        return _ROOT_NAME if not base else base, True
    return base, contents


def asserts_directory(path: str) -> bool:
    return path.endswith("/") or path.endswith("/.") or path == "."


def plan(src: str, src_is_dir: bool, dest: str, dest_kind: str | None) -> Plan:
    """docker's table: SRC (a directory when SRC_IS_DIR) to DEST, which is a "dir", a "file" or absent (None)."""
    base, contents = source_name(src)
    if not src_is_dir and asserts_directory(src):
        raise CopyError(f"cannot copy {src}: not a directory", "leave out the trailing / to copy a file")
    if dest_kind is None:
        if asserts_directory(dest):
            raise CopyError(f"no such directory: {dest}", "the destination directory must exist")
        parent, name = posixpath.split(dest.rstrip("/") or "/")
        return Plan(parent or ".", name)
    if dest_kind == "dir":
        return Plan(dest, None if contents else base)
    if src_is_dir:
        raise CopyError(f"cannot copy a directory to a file: {dest}", "give a directory, or a new name, as destination")
    if asserts_directory(dest):
        raise CopyError(f"{dest} is not a directory")
    parent, name = posixpath.split(dest)
    return Plan(parent or ".", name)


def _kind(meta: Meta | None) -> str | None:
    if meta is None:
        return None
    return "dir" if meta.is_dir else "file"


# -- the container's side ---------------------------------------------------------------------------


def _on_container(container: Container, store: Store, *, write: bool,
                  work: Callable[[Tree, Sink | None], None], parent: Callable[[], None],
                  child_closes: list[int], parent_closes: list[int]) -> None:
    """Call WORK(tree, sink) in a child on the container's side; PARENT runs here meanwhile."""
    import fusefs.overlay  # noqa: F401  (loaded before the fork: nothing is imported inside the container)

    if is_running(container):
        def inside() -> None:
            disk = DiskTree(b"/", owners=True)
            work(disk, disk if write else None)

        enter.call(inside, join_pid=int(container.record["State"]["Pid"]), mount_ns=True, parent=parent,
                   child_closes=child_closes, parent_closes=parent_closes)
        return

    from .idmap import for_record

    paths = LayerPaths.of(container, store)

    def on_layers() -> None:
        if write:
            sink = LayerSink(paths)
            try:
                work(UnionTree(sink.ov), sink)
            finally:
                sink.close()
        else:
            with ContainerFS(paths) as fs:
                work(fs, None)

    enter.call(on_layers, ids=for_record(container.record), parent=parent, child_closes=child_closes,
               parent_closes=parent_closes)


def _not_found(path: str, container: str) -> CopyError:
    return CopyError(f"Could not find the file {path} in container {container}")


# -- container to host ------------------------------------------------------------------------------


def copy_out(container: Container, store: Store, shown: str, src: str, dest: str, *, follow: bool,
             archive: bool, stdout: BinaryIO | None = None) -> Result:
    """``cp CONTAINER:SRC DEST`` (DEST ``-``: the tar to STDOUT). SHOWN: the container as the user named it."""
    result = Result()
    if dest != "-":
        dest_kind = "dir" if os.path.isdir(dest) else ("file" if os.path.lexists(dest) else None)
        if dest_kind is None and asserts_directory(dest):
            raise CopyError(f"no such directory: {dest}", "the destination directory must exist")
    r, w = os.pipe()
    base, _ = source_name(src)

    def work(tree: Tree, _sink: Sink | None) -> None:
        rel = resolve(tree, os.fsencode(src), follow_last=follow or asserts_directory(src))
        meta = tree.meta(rel)
        if meta is None:
            raise _not_found(src, shown)
        if asserts_directory(src) and not meta.is_dir:
            raise CopyError(f"cannot copy {src}: not a directory", "leave out the trailing / to copy a file")
        with os.fdopen(w, "wb") as out:
            out.write(json.dumps({"dir": meta.is_dir}).encode() + b"\n")
            writer = TarWriter(out)
            writer.add_tree(tree, rel, os.fsencode(base), meta)
            writer.close()

    def receive() -> None:
        with os.fdopen(r, "rb") as stream:
            header = stream.readline()
            if not header:
                return   # the child failed before it began: it says why
            is_dir = bool(json.loads(header).get("dir"))
            if dest == "-":
                assert stdout is not None
                shutil.copyfileobj(stream, stdout, 1 << 20)
                stdout.flush()
                return
            p = plan(src, is_dir, dest, _host_kind(dest))
            if not os.path.isdir(p.dest_dir):
                raise CopyError(f"no such directory: {p.dest_dir}", "the destination directory must exist")
            sink = DiskTree(os.fsencode(os.path.abspath(p.dest_dir)), owners=archive)
            how = Extract(b"", (os.fsencode(base), None if p.name is None else os.fsencode(p.name)),
                          keep_owners=archive)
            extract(stream, sink, how)
            result.data_bytes = how.data_bytes
            result.warnings.extend(how.warnings + sink.warnings)

    _on_container(container, store, write=False, work=work, parent=receive, child_closes=[r], parent_closes=[w])
    return result


def _host_kind(path: str) -> str | None:
    if os.path.isdir(path):
        return "dir"
    return "file" if os.path.lexists(path) else None


# -- host to container ------------------------------------------------------------------------------


def copy_in(container: Container, store: Store, shown: str, src: str, dest: str, *, follow: bool,
            archive: bool, stdin: BinaryIO | None = None) -> Result:
    """``cp SRC CONTAINER:DEST`` (SRC ``-``: a tar read from STDIN, plain or compressed)."""
    if (container.record.get("HostConfig") or {}).get("ReadonlyRootfs"):
        raise CopyError("container rootfs is marked read-only", "it was started with --read-only")
    result = Result()
    base, _ = source_name(os.path.abspath(src) + ("/." if src.endswith("/.") else "") if src != "-" else "-")
    host_rel = b""
    host: DiskTree | None = None
    src_is_dir = False
    if src != "-":
        path = os.path.abspath(src)
        if follow or asserts_directory(src):
            path = os.path.realpath(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise CopyError(f"lstat {src}: no such file or directory") from None
        except OSError as e:
            raise CopyError(f"lstat {src}: {(e.strerror or str(e)).lower()}") from None
        src_is_dir = stat.S_ISDIR(st.st_mode)
        if asserts_directory(src) and not src_is_dir:
            raise CopyError(f"cannot copy {src}: not a directory", "leave out the trailing / to copy a file")
        parent_dir, host_name = os.path.split(path)
        host = DiskTree(os.fsencode(parent_dir or "/"))
        host_rel = os.fsencode(host_name)
    r, w = os.pipe()

    def work(tree: Tree, sink: Sink | None) -> None:
        assert sink is not None
        with os.fdopen(r, "rb") as stream:
            target = resolve(tree, os.fsencode(dest), follow_last=True)
            target_meta = tree.meta(target)
            if src == "-":
                if target_meta is None or not target_meta.is_dir:
                    raise CopyError(f'destination "{shown}:{dest}" must be a directory')
                how = Extract(target, None, keep_owners=archive, default_owner=(0, 0))
            else:
                p = plan(src, src_is_dir, dest, _kind(target_meta))
                dest_dir = resolve(tree, os.fsencode(p.dest_dir), follow_last=True)
                dir_meta = tree.meta(dest_dir)
                if dir_meta is None or not dir_meta.is_dir:
                    raise _not_found(p.dest_dir, shown)
                how = Extract(dest_dir, (os.fsencode(base), None if p.name is None else os.fsencode(p.name)),
                              keep_owners=archive, default_owner=(0, 0))
            extract(stream, sink, how)
            if how.warnings or getattr(sink, "warnings", None):
                # Reported through the error channel's sibling: the parent prints them.
                for line in how.warnings + list(getattr(sink, "warnings", [])):
                    os.write(2, f"Warning: {line}\n".encode())

    def send() -> None:
        with os.fdopen(w, "wb") as out:
            if host is None:
                from ..image import compression

                assert stdin is not None
                _, stream = compression.open_stream(stdin)
                shutil.copyfileobj(stream, out, 1 << 20)   # type: ignore[misc]
                return
            writer = TarWriter(out)
            writer.add_tree(host, host_rel, os.fsencode(base))
            writer.close()
            result.data_bytes = writer.data_bytes
            result.warnings.extend(writer.warnings)

    try:
        _on_container(container, store, write=True, work=work, parent=send, child_closes=[w], parent_closes=[r])
    except BrokenPipeError:
        raise CopyError("the container side stopped reading the archive") from None
    return result
