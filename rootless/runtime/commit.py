"""``diff``, ``commit`` and ``export``: what a container changed, as docker lists it, as an image
layer, and its whole tree as one tar.

All three read the container's layers directly (``rootfs``), in a child process that
stands where fusefs stands (``enter``): for a running container, in its own user
namespace.  A running container is read live, not paused: every file is read once and
in full, a file written meanwhile may be caught half-written (its size in the tar is
the one seen first: padded or cut), and the owners of symlinks and fifos that fusefs
keeps in its side table may lag the container by up to a second.

The layer follows the OCI rules: added and changed objects with their recorded owner,
mode, time and xattrs, the later names of a hard-linked file as links, deletions as
``.wh.NAME`` and a directory that hides what was below it (removed and made again) as
``.wh..wh..opq``; in each directory the markers come before the other entries.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, BinaryIO

from fusefs.changes import ADDED, CHANGED, DELETED, list_changes
from fusefs.whiteout import OPAQUE_MARKER, WH_PREFIX

from ..errors import ImageNotFound, RootlessError
from . import enter
from .containers import Container, is_running
from .rootfs import ContainerFS, LayerPaths
from .spec import DEFAULT_PATH
from .tree import TarWriter, join

if TYPE_CHECKING:
    from ..image.store import ImageRecord, Store

@dataclass(frozen=True)
class Change:
    """One line of ``diff``, and what the layer holds for it.

    SHOWN: listed by ``diff`` (a directory copied up without a change of its own is not,
    as docker leaves it out).  IN_LAYER: written to the layer by ``commit`` (a deletion
    below an opaque directory is not: the opaque marker says it).
    """

    path: bytes
    kind: str
    opaque: bool = False
    shown: bool = True
    in_layer: bool = True


def changes(fs: ContainerFS) -> list[Change]:
    """What the container changed, parents before children, names sorted; mount targets left out."""
    out: dict[bytes, Change] = {}
    for raw in list_changes(fs.paths.upper):
        rel = raw.path
        if fs.is_hidden(rel):
            continue
        if raw.kind == DELETED:
            out[rel] = Change(rel, DELETED)
            continue
        below = fs.image_meta(rel)
        if below is None:
            out[rel] = Change(rel, ADDED, raw.opaque)
            continue
        # A directory is in the upper layer because something below it changed; docker leaves
        # it out unless its own attributes did.  Its time is not compared: fusefs' copy-up of
        # a child moves it, where kernel overlayfs puts it back, and so does making a mount target.
        mine = fs.merged.meta(rel)
        unchanged = (mine is not None and mine.is_dir and below.is_dir and not raw.opaque
                     and (mine.perm, mine.uid, mine.gid) == (below.perm, below.uid, below.gid))
        out[rel] = Change(rel, CHANGED, raw.opaque, shown=not unchanged)
        if raw.opaque and below.is_dir and fs.image is not None:
            kept = set(fs.merged.names(rel))
            for name in fs.image.names(rel):
                if name not in kept:
                    out[join(rel, name)] = Change(join(rel, name), DELETED, in_layer=False)
    # docker lists the parent of an added or deleted name as changed, whatever its attributes.
    for change in list(out.values()):
        if change.kind == CHANGED or not change.shown:
            continue
        parent = change.path.rpartition(b"/")[0]
        if parent and parent in out and not out[parent].shown:
            p = out[parent]
            out[parent] = Change(p.path, p.kind, p.opaque, True, p.in_layer)
    return sorted(out.values(), key=lambda c: c.path.split(b"/"))


def write_layer(out: BinaryIO, fs: ContainerFS, found: Sequence[Change]) -> None:
    """The changes FOUND as an OCI layer tar on OUT."""
    by_dir: dict[bytes, list[Change]] = defaultdict(list)
    for c in found:
        if c.in_layer:
            by_dir[c.path.rpartition(b"/")[0]].append(c)
    writer = TarWriter(out)

    def directory(dirrel: bytes) -> None:
        entries = sorted(by_dir.get(dirrel, []), key=lambda c: c.path)
        for c in entries:
            if c.kind == DELETED:
                name = c.path.rpartition(b"/")[2]
                writer.add_marker(join(dirrel, WH_PREFIX + name))
        for c in entries:
            if c.kind == DELETED:
                continue
            meta = fs.merged.meta(c.path)
            if meta is None:
                continue   # gone meanwhile: the container runs
            writer.add(fs.merged, c.path, c.path, meta)
            if meta.is_dir:
                if c.opaque:
                    writer.add_marker(join(c.path, OPAQUE_MARKER))
                directory(c.path)

    directory(b"")
    writer.close()


def export_tree(out: BinaryIO, fs: ContainerFS) -> None:
    """The whole tree of FS as a tar on OUT: no whiteouts, no mount targets."""
    writer = TarWriter(out)
    writer.add_children(fs, b"", b"")
    writer.close()


# -- running it for a container ---------------------------------------------------------------------


def run_on_layers(container: Container, store: Store, work: Callable[[ContainerFS], None], *,
                  parent: Callable[[], None] | None = None, child_closes: Sequence[int] = (),
                  parent_closes: Sequence[int] = ()) -> None:
    """Call WORK with the container's tree, in a child process standing where fusefs stands."""
    import fusefs.overlay  # noqa: F401  (loaded before the fork, not once per child)

    from .idmap import for_record

    paths = LayerPaths.of(container, store)

    def child() -> None:
        with ContainerFS(paths) as fs:
            work(fs)

    running = is_running(container)
    enter.call(child, ids=None if running else for_record(container.record),
               join_pid=int(container.record["State"]["Pid"]) if running else None,
               parent=parent, child_closes=child_closes, parent_closes=parent_closes)


def diff(container: Container, store: Store) -> list[str]:
    """docker's ``diff`` lines: ``A /path``, ``C /path``, ``D /path``."""
    r, w = os.pipe()
    lines: list[str] = []

    def work(fs: ContainerFS) -> None:
        with os.fdopen(w, "wb") as f:
            for c in changes(fs):
                if c.shown:
                    f.write(c.kind.encode() + b" /" + c.path + b"\n")

    def read() -> None:
        with os.fdopen(r, "rb") as f:
            lines.extend(os.fsdecode(line.rstrip(b"\n")) for line in f)

    run_on_layers(container, store, work, parent=read, child_closes=[r], parent_closes=[w])
    return lines


def export(container: Container, store: Store, out: BinaryIO) -> None:
    """The container's whole tree as a tar written to OUT."""
    if hasattr(out, "fileno"):
        try:
            fd = out.fileno()
        except (OSError, ValueError):
            fd = -1
        if fd >= 0:
            out.flush()
            run_on_layers(container, store, lambda fs: _export_to(fd, fs))
            return
    r, w = os.pipe()

    def copy() -> None:
        with os.fdopen(r, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    run_on_layers(container, store, lambda fs: _export_to(w, fs), parent=copy, child_closes=[r], parent_closes=[w])


def _export_to(fd: int, fs: ContainerFS) -> None:
    with os.fdopen(os.dup(fd), "wb") as f:
        export_tree(f, fs)


# -- commit ---------------------------------------------------------------------------------------


def commit(container: Container, store: Store, *, ref: str | None = None, author: str | None = None,
           message: str | None = None, instructions: Sequence[str] = ()) -> ImageRecord:
    """A new image: the container's image with one more layer holding what the container changed,
    its config as the container ran (INSTRUCTIONS applied), and a history row saying so."""
    from ..image.changes import apply_changes
    from ..image.local import Ingest, StoredLayer, check_tag, config_bytes, read_image, stage_dir

    if ref:
        check_tag(ref)
    try:
        base = read_image(store, str(container.record.get("Image", "")))
    except ImageNotFound:
        raise RootlessError(f"the image of container {container.name} ({container.record.get('Image')}) "
                            "is no longer in the store", "pull or load that image again") from None
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    config = commit_config(base.config, container, author=author, message=message, created=created)
    config["config"] = apply_changes(config["config"], list(instructions))
    stage = stage_dir(store, "commit-")
    try:
        tar = stage / "layer.tar"

        def work(fs: ContainerFS) -> None:
            with open(tar, "wb") as out:
                write_layer(out, fs, changes(fs))

        run_on_layers(container, store, work)
        with Ingest(store) as ingest:
            new = ingest.add_layer_tar(tar)
            layers = [*(StoredLayer(layer.diff_id, layer.blob) for layer in base.layers), new]
            config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
            ingest.add_image(config_bytes(config), layers, [ref] if ref else [])
            return ingest.commit()[0]
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def commit_config(image: dict[str, Any], container: Container, *, author: str | None, message: str | None,
                  created: str) -> dict[str, Any]:
    """The new image's config (without rootfs): the image's, with what the container ran with."""
    record = container.record
    ran: dict[str, Any] = record.get("Config") or {}
    base: dict[str, Any] = dict(image.get("config") or {})
    cfg = dict(base)
    cfg["Env"] = committed_env(base.get("Env") or [], ran.get("Env") or base.get("Env") or [],
                               str(ran.get("Hostname", "")), bool(ran.get("Tty")))
    argv = [str(record.get("Path", "")), *record.get("Args", [])] if record.get("Path") else []
    entrypoint = list(ran.get("Entrypoint") or [])
    if argv[:len(entrypoint)] == entrypoint:
        cfg["Entrypoint"] = entrypoint or None
        cfg["Cmd"] = argv[len(entrypoint):] or None
    else:   # an entrypoint cleared with --entrypoint ""
        cfg["Entrypoint"] = None
        cfg["Cmd"] = argv or None
    workdir = ran.get("WorkingDir")
    if workdir and not (workdir == "/" and not base.get("WorkingDir")):
        cfg["WorkingDir"] = workdir
    if "User" in ran:
        cfg["User"] = ran.get("User") or ""
    if ran.get("Labels") is not None:
        cfg["Labels"] = ran["Labels"]
    cfg = {k: v for k, v in cfg.items() if v is not None}
    history = [h for h in image.get("history") or [] if isinstance(h, dict)]
    with_layers = sum(1 for h in history if not h.get("empty_layer"))
    rootfs = image.get("rootfs") or {}
    missing = len(rootfs.get("diff_ids") or []) - with_layers
    history += [{"created": image.get("created", "")}] * max(0, missing)
    row: dict[str, Any] = {"created": created, "created_by": " ".join(str(a) for a in ran.get("Cmd") or argv)}
    if author:
        row["author"] = author
    if message:
        row["comment"] = message
    out: dict[str, Any] = {"architecture": image.get("architecture", ""), "os": image.get("os", "")}
    if image.get("variant"):
        out["variant"] = image["variant"]
    if author:
        out["author"] = author
    out.update({"created": created, "config": cfg, "container": container.id, "history": [*history, row]})
    return out


def committed_env(image_env: Sequence[str], ran_env: Sequence[str], hostname: str, tty: bool) -> list[str]:
    """The container's environment without what the runtime adds to every process (HOSTNAME,
    TERM for -t, docker's default PATH): docker keeps those out of a container's config too."""
    image_keys = {str(e).partition("=")[0] for e in image_env}
    out = []
    for item in ran_env:
        key, _, value = str(item).partition("=")
        if key not in image_keys and ((key == "HOSTNAME" and value == hostname)
                                      or (key == "TERM" and tty and value == "xterm")
                                      or (key == "PATH" and value == DEFAULT_PATH)):
            continue
        out.append(str(item))
    return out
