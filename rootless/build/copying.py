"""COPY and ADD: sources found in the build context (or another stage), placed by docker's rules.

The sources are named relative to the context (or the other stage's root), with
wildcards; a directory's contents are copied, not the directory itself.  The destination
is a directory where it ends in ``/``, where there are several sources, or where it is
one in the image; otherwise it is the new name of the one source.  ``COPY <<EOF`` adds
inline sources: each heredoc a 0644 file named by its delimiter (``InlineTree``).  Missing directories
on the way are made 0755, owned like the copied files.  Every file gets root's
ownership unless ``--chown`` names another user (looked up in the image's /etc/passwd
and /etc/group) or it comes from another stage or image, where it keeps its owner; it
keeps its mode unless ``--chmod``, and its time.  ADD extracts a
local tar archive (plain, gzip, bzip2 or xz) into the destination instead; what ADD
downloads from a URL (``remote``) is placed as one more file, never extracted unless
``--unpack=true``.

The writing runs in a child standing where fusefs stands (``enter``): the sources are
written into a fresh upper layer over the image's layers (``rootfs.LayerSink``), and
that upper layer is then written out as the step's layer tar.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..runtime.tree import DiskTree, Meta, Tree, join, resolve, split
from .ignore import Matcher
from .instructions import BuildError
from .remote import RemoteTree

if TYPE_CHECKING:
    from ..runtime.idmap import IdMap
    from ..runtime.tree import Sink

_GLOB = "*?["


class ContextTree:
    """The build context as a tree, as .dockerignore's RULES leave it.

    An excluded directory stays visible where a ``!`` exception re-includes something below
    it -- with only what is re-included in it -- as docker sends such a context.
    """

    def __init__(self, root: Path, rules: Matcher) -> None:
        self.disk = DiskTree(os.fsencode(str(root)))
        self.rules = rules
        self._shown: dict[bytes, bool] = {}

    def _shows(self, rel: bytes) -> bool:
        if not rel or not self.rules.patterns:
            return True
        known = self._shown.get(rel)
        if known is None:
            path = os.fsdecode(rel)
            if not self.rules.excluded(path):
                known = True
            else:
                # Only exceptions that can reach below it make an excluded directory worth a look.
                meta = self.disk.meta(rel)
                known = (meta is not None and meta.is_dir and self.rules.may_reinclude_below(path)
                         and any(self._shows(join(rel, n)) for n in self.disk.names(rel)))
            self._shown[rel] = known
        return known

    def meta(self, rel: bytes) -> Meta | None:
        return self.disk.meta(rel) if self._shows(rel) else None

    def names(self, rel: bytes) -> list[bytes]:
        return [n for n in self.disk.names(rel) if self._shows(join(rel, n))]

    def readlink(self, rel: bytes) -> bytes:
        return self.disk.readlink(rel)

    def open(self, rel: bytes) -> BinaryIO:
        return self.disk.open(rel)

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        return {}


class InlineTree:
    """``COPY <<EOF``'s sources: one regular file per heredoc, 0644 and root's, named by its
    delimiter, at the root of a tree of their own (so no context file can shadow them)."""

    def __init__(self, files: Mapping[str, bytes], mtime_ns: int = 0) -> None:
        self.files = {os.fsencode(name): data for name, data in files.items()}
        self.mtime_ns = mtime_ns

    def meta(self, rel: bytes) -> Meta | None:
        if not rel:
            return Meta(stat.S_IFDIR, 0o755, 0, 0, mtime_ns=self.mtime_ns)
        data = self.files.get(rel)
        return None if data is None else Meta(stat.S_IFREG, 0o644, 0, 0, len(data), self.mtime_ns)

    def names(self, rel: bytes) -> list[bytes]:
        return sorted(self.files) if not rel else []

    def readlink(self, rel: bytes) -> bytes:
        raise OSError(22, "not a symbolic link", os.fsdecode(rel))

    def open(self, rel: bytes) -> BinaryIO:
        return io.BytesIO(self.files[rel])

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        return {}

    def found(self) -> Found:
        tree: Tree = self
        return Found(tree, [(rel, meta) for rel in self.names(b"") if (meta := self.meta(rel)) is not None])


@dataclass
class Found:
    tree: Tree
    items: list[tuple[bytes, Meta]]
    #: item index -> its name in a destination directory, where that is not its own: a
    #: source named through a symlink is what the link points at, under the link's name
    names: dict[int, bytes] = field(default_factory=dict)

    def name(self, index: int) -> bytes:
        rel = self.items[index][0]
        return self.names.get(index) or (os.path.basename(rel) if rel else b".")


def find_sources(tree: Tree, srcs: Sequence[str], kind: str, where: str) -> Found:
    """The objects SRCS name in TREE (wildcards expanded, a final symlink followed)."""
    found = Found(tree, [])
    for src in srcs:
        parts = split(os.fsencode(posixpath.normpath("/" + src)))
        if any(c in os.fsdecode(p) for p in parts for c in _GLOB):
            matches = _glob(tree, b"", parts)
        else:
            rel = resolve(tree, b"/".join(parts), follow_last=True)
            meta = tree.meta(rel)
            matches = [(rel, meta)] if meta is not None else []
            if matches and parts and os.path.basename(rel) != parts[-1]:
                found.names[len(found.items)] = parts[-1]
        if not matches:
            raise BuildError(f"{kind} failed: file not found in {where}: stat {src}: file does not exist",
                             "check the path: it is relative to the build context" if where.startswith("build")
                             else None)
        found.items.extend(matches)
    return found


def _glob(tree: Tree, rel: bytes, parts: list[bytes]) -> list[tuple[bytes, Meta]]:
    if not parts:
        meta = tree.meta(rel)
        return [(rel, meta)] if meta is not None else []
    head, rest = os.fsdecode(parts[0]), parts[1:]
    out = []
    for name in tree.names(rel):
        if fnmatch.fnmatchcase(os.fsdecode(name), head):
            child = join(rel, name)
            meta = tree.meta(child)
            if meta is None or (rest and not meta.is_dir):
                continue
            out.extend(_glob(tree, child, rest))
    return out


def context_sources(context: Path, srcs: Sequence[str], rules: Matcher, kind: str) -> Found:
    return find_sources(ContextTree(context, rules), srcs, kind, "build context or excluded by .dockerignore")


@dataclass
class CopyJob:
    kind: str
    srcs: list[str]
    dest: str
    workdir: str
    chown: str | None
    chmod: int | None
    context: Path | None                       # None: from the stage or image with FROM_LOWERS
    rules: Matcher
    from_lowers: tuple[bytes, ...] | None
    extract_archives: bool
    inline: Mapping[str, bytes] | None = None  # COPY <<EOF: heredoc name -> content, after SRCS
    inline_mtime_ns: int = 0
    remote: RemoteTree | None = None           # ADD URL: the downloads, after SRCS
    extract_remote: bool = False               # ADD --unpack=true URL


def run_copy(job: CopyJob, where: Path, lowers: tuple[bytes, ...], tar: Path, ids: IdMap) -> None:
    """Do JOB over the layers LOWERS (top first); the new layer goes to TAR. WHERE: scratch space."""
    import fusefs.overlay  # noqa: F401  (loaded before the fork)

    from ..runtime import enter
    from ..runtime.commit import changes, write_layer
    from ..runtime.rootfs import ContainerFS, LayerPaths, LayerSink, UnionTree

    for sub in ("upper", "work", "src-upper", "src-work"):
        (where / sub).mkdir()
    paths = LayerPaths(os.fsencode(str(where / "upper")), os.fsencode(str(where / "work")), lowers)

    def child() -> None:
        src_fs = None
        try:
            groups: list[Found] = []
            if not job.srcs:
                pass
            elif job.context is not None:
                groups.append(context_sources(job.context, job.srcs, job.rules, job.kind))
            else:
                assert job.from_lowers is not None
                src_fs = ContainerFS(LayerPaths(os.fsencode(str(where / "src-upper")),
                                                os.fsencode(str(where / "src-work")), job.from_lowers))
                groups.append(find_sources(src_fs, job.srcs, job.kind, "the source stage"))
            if job.remote is not None:
                groups.append(job.remote.found())
            if job.inline:
                groups.append(InlineTree(job.inline, job.inline_mtime_ns).found())
            sink = LayerSink(paths)
            try:
                _place(job, groups, UnionTree(sink.ov), sink)
            finally:
                sink.close()
        finally:
            if src_fs is not None:
                src_fs.close()
        with ContainerFS(paths) as fs, open(tar, "wb") as out:
            write_layer(out, fs, changes(fs))

    enter.call(child, ids=ids)


def run_mkdir(path: str, user: str, where: Path, lowers: tuple[bytes, ...], tar: Path, ids: IdMap) -> None:
    """WORKDIR's directory: PATH, if missing, made with its missing parents (0755, owned by
    USER as ``--chown`` names one; root where empty) over the layers LOWERS (top first).
    The new layer goes to TAR, with no member where PATH was there already."""
    import fusefs.overlay  # noqa: F401  (loaded before the fork)

    from ..runtime import enter
    from ..runtime.commit import changes, write_layer
    from ..runtime.rootfs import ContainerFS, LayerPaths, LayerSink, UnionTree

    for sub in ("upper", "work"):
        (where / sub).mkdir()
    paths = LayerPaths(os.fsencode(str(where / "upper")), os.fsencode(str(where / "work")), lowers)

    def child() -> None:
        sink = LayerSink(paths)
        try:
            tree = UnionTree(sink.ov)
            rel = resolve(tree, os.fsencode(path), follow_last=True)
            if tree.meta(rel) is None:
                _mkdirs(tree, sink, rel, parse_chown(user, tree) if user else (0, 0))
        finally:
            sink.close()
        with ContainerFS(paths) as fs, open(tar, "wb") as out:
            write_layer(out, fs, changes(fs))

    enter.call(child, ids=ids)


def _place(job: CopyJob, groups: Sequence[Found], tree: Tree, sink: Sink) -> None:
    owner = parse_chown(job.chown, tree) if job.chown else (0, 0)
    # What COPY --from takes from another stage or image keeps its owners unless --chown
    # (docker since 19.03: the stage set them on purpose); the directories made on the way
    # are still root's.
    keep_owners = job.from_lowers is not None and not job.chown
    dest = job.dest if job.dest.startswith("/") else posixpath.join(job.workdir, job.dest)
    count = sum(len(found.items) for found in groups)
    into_dir = (job.dest.endswith("/") or job.dest.endswith("/.") or job.dest in (".", "")
                or count > 1)
    dest_rel = resolve(tree, os.fsencode(posixpath.normpath(dest)), follow_last=True)
    dest_meta = tree.meta(dest_rel) if dest_rel else tree.meta(b"")
    if dest_meta is not None and dest_meta.is_dir:
        into_dir = True
    if count > 1 and not (job.dest.endswith("/") or (dest_meta is not None and dest_meta.is_dir)):
        raise BuildError(f"When using {job.kind} with more than one source file, the destination must be a "
                         "directory and end with a /")
    for found, index, (rel, meta) in ((found, i, item) for found in groups for i, item in enumerate(found.items)):
        own = None if keep_owners and not isinstance(found.tree, (InlineTree, RemoteTree)) else owner
        if meta.is_dir:
            _mkdirs(tree, sink, dest_rel, owner)
            for child in found.tree.names(rel):
                _copy(found.tree, join(rel, child), sink, join(dest_rel, child), own, job.chmod)
            continue
        if (job.extract_archives and not isinstance(found.tree, InlineTree)
                and (job.extract_remote or not isinstance(found.tree, RemoteTree)) and meta.kind == stat.S_IFREG
                and _is_archive(found.tree, rel)):
            _mkdirs(tree, sink, dest_rel, owner)
            _extract(found.tree, rel, sink, dest_rel, owner if job.chown else None)
            continue
        target = join(dest_rel, found.name(index)) if into_dir else dest_rel
        parent = target.rpartition(b"/")[0]
        if into_dir:
            _mkdirs(tree, sink, dest_rel, owner)
        elif parent:
            _mkdirs(tree, sink, parent, owner)
        _copy(found.tree, rel, sink, target, own, job.chmod, meta)


def _mkdirs(tree: Tree, sink: Sink, rel: bytes, owner: tuple[int, int]) -> None:
    """REL and its missing parents as directories (0755, OWNER), as docker makes them."""
    if not rel:
        return
    parts = rel.split(b"/")
    for i in range(1, len(parts) + 1):
        here = b"/".join(parts[:i])
        kind = sink.kind(here)
        if kind == stat.S_IFDIR:
            continue
        if kind is not None:
            raise BuildError(f"cannot copy to /{os.fsdecode(rel)}: /{os.fsdecode(here)} is not a directory")
        sink.mkdir(here)
        sink.settle(here, Meta(stat.S_IFDIR, 0o755, 0, 0), owner, {})


def _copy(src: Tree, rel: bytes, sink: Sink, dest: bytes, owner: tuple[int, int] | None, chmod: int | None,
          meta: Meta | None = None) -> None:
    """REL of SRC, recursively, as DEST; everything OWNER's (None: the owner it has in SRC)."""
    meta = meta or src.meta(rel)
    if meta is None:
        return
    existing = sink.kind(dest)
    if existing is not None and not (existing == stat.S_IFDIR and meta.is_dir):
        sink.remove(dest)
        existing = None
    if meta.is_dir:
        if existing is None:
            sink.mkdir(dest)
        for child in src.names(rel):
            _copy(src, join(rel, child), sink, join(dest, child), owner, chmod)
    elif meta.kind == stat.S_IFREG:
        with src.open(rel) as f:
            sink.write(dest, f, meta.size)
    elif meta.kind == stat.S_IFLNK:
        sink.symlink(dest, src.readlink(rel))
    elif meta.kind == stat.S_IFIFO:
        sink.mkfifo(dest)
    else:
        return   # sockets and devices are not copied
    if chmod is not None and meta.kind != stat.S_IFLNK:
        meta = replace(meta, perm=chmod)
    sink.settle(dest, meta, owner if owner is not None else (meta.uid, meta.gid), {})


def _is_archive(tree: Tree, rel: bytes) -> bool:
    """Whether ADD unpacks REL: a tar, maybe compressed.  Docker reads the first header to
    know, so a compressed file holding something else (a .gz of a text) is copied as it is."""
    from ..image import compression

    with tree.open(rel) as f:
        try:
            _, stream = compression.open_stream(f)
            block = stream.read(tarfile.BLOCKSIZE)
        except compression.CorruptStream:
            return False
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _extract(tree: Tree, rel: bytes, sink: Sink, dest: bytes, owner: tuple[int, int] | None) -> None:
    from ..image import compression
    from ..runtime.tree import CopyError, Extract, extract

    with tree.open(rel) as f:
        _, stream = compression.open_stream(f)
        try:
            extract(stream, sink, Extract(dest, None, keep_owners=owner is None, default_owner=owner))
        except CopyError as e:
            raise BuildError(f"ADD {os.fsdecode(rel)}: {e.message}") from None


def parse_chown(spec: str, tree: Tree) -> tuple[int, int]:
    """``user[:group]`` by name or number, names looked up in the image's /etc/passwd and
    /etc/group; a user alone gives the same number as group, as docker does."""
    user, _, group = spec.partition(":")

    def lookup(path: bytes, name: str, what: str) -> tuple[int, int]:
        try:
            with tree.open(resolve(tree, path, follow_last=True)) as f:
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name and fields[2].isdigit():
                return int(fields[2]), int(fields[3]) if fields[3].isdigit() else 0
        key = "uid" if what == "user" else "gid"
        raise BuildError(f"unable to convert uid/gid chown string to host mapping: can't find {key} for "
                         f"{what} {name}: no such {what}: {name}",
                         f"add it to the image's /{os.fsdecode(path)} first, or give a number")

    uid = int(user) if user.isdigit() else lookup(b"etc/passwd", user, "user")[0]
    if not group:
        return uid, uid
    gid = int(group) if group.isdigit() else lookup(b"etc/group", group, "group")[0]
    return uid, gid
