"""Images to and from tar archives: ``save``, ``load`` and ``import``, as docker and podman do them.

Formats written by ``save``:

``docker-archive``
    ``docker save``'s layout: ``manifest.json`` (Config, RepoTags, Layers per image),
    ``<config hex>.json``, and one uncompressed ``<diff_id hex>/layer.tar`` per layer, with
    the legacy ``repositories`` file.  This is the layout docker wrote before 25; every
    ``docker load`` and ``podman load`` reads it.  RepoTags are full names
    (``docker.io/library/busybox:latest``), not docker's short ones: docker reads both
    alike, but podman puts a short name under ``localhost/``.  Docker 25's layout (blobs under
    ``blobs/sha256/`` beside an OCI ``index.json``) is not written: podman reads an
    archive holding ``index.json`` as an OCI archive and ignores ``manifest.json``'s
    tags, and podman before 4.4 loads only one image from one.
``oci-archive`` / ``oci-dir``
    An OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/``) in a tar or a
    directory; each tag is one ``index.json`` entry whose ``org.opencontainers.image.ref.name``
    (and containerd's ``io.containerd.image.name``) is the full name, as podman writes it.
    Layer blobs are copied as stored (compressed); docker manifests are rewritten with
    OCI media types, so the manifest digest changes but the image id does not.

``load`` reads both, plain or gzip/zstd/bzip2/xz compressed (told by magic bytes), from a
pipe without seeking: the archive is spooled into the store's tmp/ as it is read, then
every digest is checked (configs, OCI blobs, and each layer's diff_id against its
config) before anything enters the store.  An archive that fails leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, BinaryIO, Self, cast

from ..errors import (ArchiveError, DigestError, ImageNotFound, InvalidReference, LayerError, ManifestError, RootlessError,
                      StoreError)
from . import compression
from . import manifest as mf
from . import reference
from .changes import apply_changes
from .compression import Readable
from .local import (Ingest, LocalImage, StoredLayer, check_tag, config_diff_ids, oci_manifest, open_layer,
                    parse_config, read_image, stage_dir, store_local_image)
from .store import ImageRecord, Store

DOCKER_ARCHIVE = "docker-archive"
OCI_ARCHIVE = "oci-archive"
OCI_DIR = "oci-dir"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_DIR)

OCI_LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20
_MAX_JSON = mf.MAX_MANIFEST_SIZE
#: Symlinks followed in a row inside an archive before it counts as a loop.
_MAX_LINKS = 40
_HEX = re.compile(r"^[0-9a-f]{64}$")
# Names that state their content's sha256: a blob in an OCI layout, a config named by the image id.
_BLOB_NAME = re.compile(r"(?:^|/)blobs/sha256/([0-9a-f]{64})$")
_CONFIG_NAME = re.compile(r"^([0-9a-f]{64})\.json$")
_EOF_HEADER: type[Exception] = getattr(tarfile, "EOFHeaderError")


# -- save ---------------------------------------------------------------------------------------


def save(store: Store, names: Sequence[str], out: BinaryIO | str | os.PathLike[str],
         format: str = DOCKER_ARCHIVE) -> list[LocalImage]:
    """Write the images NAMES to OUT (a binary stream; for ``oci-dir`` a directory to create).

    Each name is as ``docker save`` takes it: ``name:tag`` saves that tag, a bare ``name``
    every tag of that repository, an id or ``name@digest`` the image without a tag.
    Returns the images written.
    """
    if format not in FORMATS:
        raise RootlessError(f"unknown archive format {format!r}", f"use one of {', '.join(FORMATS)}")
    if not names:
        raise RootlessError("no image to save", "name at least one image")
    chosen = _select(store, names)
    if format == OCI_DIR:
        if not isinstance(out, (str, os.PathLike)):
            raise RootlessError("the oci-dir format writes a directory", "give one with -o DIR")
        _save_oci_dir(store, chosen, Path(out))
    else:
        if isinstance(out, (str, os.PathLike)):
            raise RootlessError(f"the {format} format writes to a stream, not to a path")
        with _TarSink(out) as sink:
            if format == DOCKER_ARCHIVE:
                _write_docker(store, chosen, sink)
            else:
                _write_oci(store, chosen, sink)
    return [image for image, _ in chosen]


def _select(store: Store, names: Sequence[str]) -> list[tuple[LocalImage, list[str]]]:
    """The images NAMES mean, each once, in the order first named, with the tags to write for it."""
    tags: dict[str, list[str]] = {}
    records: dict[str, ImageRecord] = {}

    def add(record: ImageRecord, tag: str | None) -> None:
        records.setdefault(record.id, record)
        listed = tags.setdefault(record.id, [])
        if tag is not None and tag not in listed:
            listed.append(tag)

    for name in names:
        try:
            ref: reference.Reference | None = reference.parse(name)
        except InvalidReference:
            ref = None
        try:
            record: ImageRecord | None = store.resolve(name)
        except ImageNotFound:
            record = None  # a bare NAME may lack NAME:latest and have other tags
        if ref is not None and ref.digest is None:
            tag = f"{ref.repository}:{ref.tag}"
            named = record is None or tag in record.repo_tags  # not an id prefix that parses as a name
            if named and _names_tag(name) and record is not None:
                add(record, tag)
                continue
            repo_tags = [(image, t) for image in store.images() for t in image.repo_tags
                         if t.rsplit(":", 1)[0] == ref.repository]
            if named and not _names_tag(name) and repo_tags:
                for image, t in repo_tags:
                    add(image, t)
                continue
        if record is None:
            raise ImageNotFound(f"no such image: {name}", "list the images with `rootless images`")
        add(record, None)  # an id, or name@digest: no tag, as docker
    return [(read_image(store, records[i]), tags[i]) for i in records]


def _names_tag(text: str) -> bool:
    """Whether TEXT names a tag (``name:tag``), not just a repository."""
    return ":" in text.split("@", 1)[0].rsplit("/", 1)[-1]


def _write_docker(store: Store, chosen: list[tuple[LocalImage, list[str]]], sink: _Sink) -> None:
    entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for image, tags in chosen:
        config_name = image.record.id.removeprefix("sha256:") + ".json"
        sink.add_bytes(config_name, image.config_raw)
        layer_names = []
        for layer in image.layers:
            folder = layer.diff_id.removeprefix("sha256:")
            if folder not in written:
                written.add(folder)
                sink.add_dir(folder)
                with open_layer(store, layer) as reader:
                    sink.add_stream(f"{folder}/layer.tar", layer.size, reader)
                    reader.finish()
            layer_names.append(f"{folder}/layer.tar")
        entries.append({"Config": config_name, "RepoTags": tags, "Layers": layer_names})
        for tag in tags:
            repo, _, name = tag.rpartition(":")
            if layer_names:
                repositories.setdefault(repo, {})[name] = layer_names[-1].split("/", 1)[0]
    sink.add_bytes("manifest.json", json.dumps(entries, separators=(",", ":")).encode())
    if repositories:
        sink.add_bytes("repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _write_oci(store: Store, chosen: list[tuple[LocalImage, list[str]]], sink: _Sink) -> None:
    written: set[str] = set()

    def blob(digest: str, data: bytes | None = None) -> None:
        if digest in written:
            return
        written.add(digest)
        name = "blobs/sha256/" + digest.removeprefix("sha256:")
        if data is not None:
            sink.add_bytes(name, data)
            return
        path = store.blob_path(digest)
        with open(path, "rb") as f:
            reader = _Verified(f, digest, os.fstat(f.fileno()).st_size)
            sink.add_stream(name, reader.size, reader)
            reader.finish()

    sink.add_dir("blobs")
    sink.add_dir("blobs/sha256")
    index: list[dict[str, Any]] = []
    for image, tags in chosen:
        blob(image.record.config_digest, image.config_raw)
        for layer in image.layers:
            blob(layer.blob.digest)
        raw = oci_manifest(image.manifest)
        digest = mf.sha256_digest(raw)
        blob(digest, raw)
        entry: dict[str, Any] = {"mediaType": mf.OCI_MANIFEST, "digest": digest, "size": len(raw)}
        platform = _platform(image.config)
        if platform:
            entry["platform"] = platform
        if not tags:
            index.append(entry)
        for tag in tags:
            index.append({**entry, "annotations": {CONTAINERD_NAME: tag, REF_NAME: tag}})
    sink.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
    sink.add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX,
                                             "manifests": index}, separators=(",", ":")).encode())


def _platform(config: dict[str, Any]) -> dict[str, str]:
    out = {k: config[k] for k in ("architecture", "os", "variant") if isinstance(config.get(k), str) and config[k]}
    return out if "architecture" in out and "os" in out else {}


def _save_oci_dir(store: Store, chosen: list[tuple[LocalImage, list[str]]], dest: Path) -> None:
    """Build the layout in a new directory beside DEST, then rename it to DEST (which must be absent or empty)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RootlessError(f"cannot save to {dest}: it exists and is not an empty directory",
                            "choose a new directory for -o")
    parent = dest.absolute().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    except OSError as e:
        raise RootlessError(f"cannot create a directory in {parent}: {e.strerror}") from None
    try:
        os.chmod(staging, 0o755)
        _write_oci(store, chosen, _DirSink(staging))
        try:
            os.rename(staging, dest)
        except OSError as e:
            raise RootlessError(f"cannot save to {dest}: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class _Sink:
    """Where a layout's files go: a tar stream or a directory."""

    def add_dir(self, name: str) -> None:
        raise NotImplementedError

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_stream(name, len(data), io.BytesIO(data))

    def add_stream(self, name: str, size: int, src: Readable) -> None:
        raise NotImplementedError


class _TarSink(_Sink):
    """Members written with fixed owners, modes and times, so the same images give the same bytes."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = _Cut(out)
        self._tar = tarfile.open(fileobj=cast(IO[bytes], self._out), mode="w|", format=tarfile.PAX_FORMAT)

    def __enter__(self) -> _TarSink:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is not None:
            self._out.cut()  # no end-of-archive marker under an incomplete archive
        self._tar.close()

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
        return info

    def add_dir(self, name: str) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, 0o755))

    def add_stream(self, name: str, size: int, src: Readable) -> None:
        try:
            self._tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, size), cast(IO[bytes], src))
        except OSError as e:
            if e.errno is not None:
                raise
            # tarfile's "unexpected end of data": the source was shorter than the store said.
            raise RootlessError(f"cannot save {name}: its content in the store is shorter than recorded ({size} bytes)",
                                "remove the image and pull or load it again") from None


class _Cut:
    """OUT until ``cut``, after which writes vanish: what tarfile still flushes at close."""

    def __init__(self, out: BinaryIO) -> None:
        self._out: BinaryIO | None = out

    def write(self, data: bytes) -> int:
        if self._out is not None:
            self._out.write(data)
        return len(data)

    def cut(self) -> None:
        self._out = None


class _DirSink(_Sink):
    def __init__(self, root: Path) -> None:
        self._root = root

    def add_dir(self, name: str) -> None:
        (self._root / name).mkdir(mode=0o755, exist_ok=True)

    def add_stream(self, name: str, size: int, src: Readable) -> None:
        path = self._root / name
        with open(path, "wb") as f:
            left = size
            while left > 0:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise RootlessError(f"cannot save {name}: its content in the store is shorter than recorded",
                                        "remove the image and pull or load it again")
                f.write(chunk)
                left -= len(chunk)
            os.fchmod(f.fileno(), 0o644)


class _Verified(io.RawIOBase):
    """A stored blob, hashed as it is read; ``finish`` checks it is the blob DIGEST."""

    def __init__(self, src: BinaryIO, digest: str, size: int) -> None:
        self._src = src
        self.digest = digest
        self.size = size
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._src.read(len(b))
        memoryview(b).cast("B")[:len(data)] = data
        self._hash.update(data)
        return len(data)

    def finish(self) -> None:
        while self.read(_CHUNK):
            pass
        if "sha256:" + self._hash.hexdigest() != self.digest:
            raise StoreError(f"blob {self.digest} is damaged in the store (its content has another digest)",
                                "remove the image and pull or load it again")


# -- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedImage:
    """An image ``load`` stored: its id and the tags the archive gave it (full names)."""

    id: str
    tags: tuple[str, ...] = ()


Progress = Callable[[str], None]


def load(store: Store, src: Readable, progress: Progress | None = None) -> list[LoadedImage]:
    """Store the images of the archive read from SRC (docker-archive or OCI layout, maybe compressed).

    Everything is checked before anything is stored; ArchiveError says what is wrong with
    an archive that cannot be loaded, and the store is then as it was.  PROGRESS, where
    given, is told of each layer as it is stored.
    """
    stage = stage_dir(store, "load-")
    try:
        return _load(store, _Spool.from_tar(src, stage), progress)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def load_dir(store: Store, path: str | os.PathLike[str], progress: Progress | None = None) -> list[LoadedImage]:
    """Store the images of the OCI layout (or unpacked docker archive) in the directory PATH; see ``load``."""
    stage = stage_dir(store, "load-")
    try:
        return _load(store, _Spool.from_dir(Path(path), stage), progress)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _load(store: Store, spool: _Spool, progress: Progress | None) -> list[LoadedImage]:
    if spool.has("manifest.json"):
        plans = _plan_docker(spool)
    elif spool.has("index.json"):
        plans = _plan_oci(spool)
    else:
        raise ArchiveError("the archive holds neither manifest.json (docker save) nor index.json (an OCI image layout)",
                           "give an archive made by docker save, podman save or skopeo")
    with Ingest(store) as ingest:
        for plan in plans:
            plan.store(ingest, spool, progress)
        records = ingest.commit()
    loaded: dict[str, list[str]] = {}
    for plan, record in zip(plans, records):
        tags = loaded.setdefault(record.id, [])
        for tag in map(_full_tag, plan.tags):
            if tag not in tags:
                tags.append(tag)
    return [LoadedImage(i, tuple(tags)) for i, tags in loaded.items()]


def _full_tag(tag: str) -> str:
    ref = reference.parse(tag)
    return f"{ref.repository}:{ref.tag}"


@dataclass
class _Member:
    path: Path       # the spooled copy
    sha256: str      # "sha256:<hex>" of its content
    size: int


class _Spool:
    """An archive's regular files copied into a staging directory, hashed on the way; its
    links kept as names.  Nothing is ever created under a member's own name."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.files: dict[str, _Member] = {}
        self.links: dict[str, str] = {}
        self._count = 0

    @classmethod
    def from_tar(cls, src: Readable, stage: Path) -> _Spool:
        spool = cls(stage)
        try:
            kind, stream = compression.open_stream(src)
            spool._read_tar(stream, kind)
        except compression.CorruptStream as e:
            raise ArchiveError(f"cannot load the archive: {e}", "the archive is damaged or incomplete") from None
        except OSError as e:
            raise ArchiveError(f"cannot load the archive: {e.strerror or e}") from None
        return spool

    @classmethod
    def from_dir(cls, root: Path, stage: Path) -> _Spool:
        spool = cls(stage)
        if not root.is_dir():
            raise ArchiveError(f"{root} is not a directory")
        try:
            for dirpath, dirnames, filenames in os.walk(root):
                for name in sorted(dirnames + filenames):
                    full = Path(dirpath, name)
                    rel = full.relative_to(root).as_posix()
                    st = full.lstat()
                    if stat.S_ISLNK(st.st_mode):
                        spool._add_symlink(rel, os.readlink(full))
                    elif stat.S_ISREG(st.st_mode):
                        with open(full, "rb") as f:
                            spool._add_file(rel, f, st.st_size)
                    elif not stat.S_ISDIR(st.st_mode):
                        raise ArchiveError(f"{full} is not a file, a directory or a symlink")
        except OSError as e:
            raise ArchiveError(f"cannot read {root}: {e.strerror or e}") from None
        return spool

    def _read_tar(self, stream: BinaryIO, kind: str | None) -> None:
        what = f"{kind}-compressed tar archive" if kind else "tar archive"
        try:
            tar = tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|", tarinfo=_Header)
        except tarfile.ReadError as e:
            if "empty" in str(e):
                raise ArchiveError("the archive is empty", "give a file made by docker save or podman save") from None
            raise ArchiveError(f"the input is not a {what}: {e}",
                               "give a tar archive (plain, gzip, zstd, bzip2 or xz) made by docker or podman save") from None
        with tar:
            try:
                for info in tar:
                    self._add_member(tar, info)
                    cast(Any, tar).members.clear()  # read once; keep memory flat on big archives
            except tarfile.TarError as e:
                raise ArchiveError(f"the {what} is truncated or corrupt: {e}",
                                   "the archive is damaged or incomplete") from None
            end = getattr(tar, "end", None)
            if not isinstance(end, _EOF_HEADER):
                raise ArchiveError(f"the {what} is truncated or corrupt: it ends without the end-of-archive marker",
                                   "the archive is damaged or incomplete")
        while stream.read(_CHUNK):
            pass  # the rest of the compressed stream: its checksum must hold too

    def _add_member(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        name = _member_name(info.name, info.name)
        if info.isreg():
            data = tar.extractfile(info)
            if data is None:
                raise ArchiveError(f"cannot read archive member {info.name!r}")
            if name:
                self._add_file(name, data, info.size)
        elif info.issym():
            self._add_symlink(name, info.linkname)
        elif info.islnk():
            self.links[name] = _member_name(info.linkname, info.name)
        elif not info.isdir():
            raise ArchiveError(f"archive member {info.name!r} is neither a file, a directory nor a link",
                               "an image archive holds only those; this one is damaged or hostile")

    def _add_file(self, name: str, src: Readable, size: int) -> None:
        self._count += 1
        path = self.stage / f"m{self._count}"
        h = hashlib.sha256()
        got = 0
        with open(path, "wb") as out:
            while got < size:
                chunk = src.read(min(_CHUNK, size - got))
                if not chunk:
                    raise ArchiveError(f"the archive is truncated inside {name!r}", "the archive is damaged or incomplete")
                h.update(chunk)
                out.write(chunk)
                got += len(chunk)
        self.links.pop(name, None)
        self.files[name] = _Member(path, "sha256:" + h.hexdigest(), size)

    def _add_symlink(self, name: str, target: str) -> None:
        if target.startswith("/"):
            raise ArchiveError(f"archive member {name!r} is a symlink to the absolute path {target!r}",
                               "an image archive's links stay inside it; this one is damaged or hostile")
        self.files.pop(name, None)
        self.links[name] = _member_name(posixpath.join(posixpath.dirname(name), target), name)

    def has(self, name: str) -> bool:
        return name in self.files or name in self.links

    def get(self, name: str, what: str) -> _Member:
        """The file NAME (WHAT it should be, for the error) with links followed."""
        key = _member_name(name, name)
        for _ in range(_MAX_LINKS):
            if key in self.files:
                return self.files[key]
            if key not in self.links:
                raise ArchiveError(f"the archive has no {name} ({what})", "the archive is incomplete")
            key = self.links[key]
        raise ArchiveError(f"the archive's links for {name} ({what}) form a loop", "the archive is damaged")

    def read_json(self, name: str, what: str) -> tuple[bytes, Any]:
        member = self.get(name, what)
        if member.size > _MAX_JSON:
            raise ArchiveError(f"{name} ({what}) is {member.size} bytes, over the {_MAX_JSON} limit")
        raw = member.path.read_bytes()
        try:
            return raw, json.loads(raw)
        except ValueError as e:
            raise ArchiveError(f"{name} ({what}) is not valid JSON: {e}") from None

    def new_path(self) -> Path:
        self._count += 1
        return self.stage / f"m{self._count}"

    def uncompressed(self, member: _Member, name: str) -> tuple[Path, str]:
        """MEMBER's content as a plain tar and that tar's sha256: itself, or decompressed beside it."""
        with open(member.path, "rb") as f:
            kind = compression.sniff(f.read(8))
        if kind is None:
            return member.path, member.sha256
        path = self.new_path()
        h = hashlib.sha256()
        try:
            with open(member.path, "rb") as f, open(path, "wb") as out:
                reader = compression.decompress(f, kind)
                while chunk := reader.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except compression.CorruptStream as e:
            raise ArchiveError(f"layer {name} is damaged: {e}", "the archive is damaged") from None
        return path, "sha256:" + h.hexdigest()

    def diff_id(self, member: _Member, name: str) -> str:
        """The sha256 of MEMBER's content decompressed (of itself, where it is a plain tar)."""
        with open(member.path, "rb") as f:
            kind = compression.sniff(f.read(8))
            if kind is None:
                return member.sha256
            f.seek(0)
            h = hashlib.sha256()
            try:
                reader = compression.decompress(f, kind)
                while chunk := reader.read(_CHUNK):
                    h.update(chunk)
            except compression.CorruptStream as e:
                raise ArchiveError(f"layer {name} is damaged: {e}", "the archive is damaged") from None
        return "sha256:" + h.hexdigest()

    def compression_of(self, member: _Member) -> str | None:
        with open(member.path, "rb") as f:
            return compression.sniff(f.read(8))

    def touch(self) -> None:
        """Keep the stage fresh: Store.open clears staging left untouched for an hour."""
        try:
            os.utime(self.stage)
        except OSError:
            pass


class _Header(tarfile.TarInfo):
    """Remembers why a tar stream ended: only a zero block is a complete archive; tarfile
    also ends quietly where the stream stops between members or a header is garbage."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except Exception as e:
            setattr(tf, "end", e)
            raise


def _member_name(name: str, member: str) -> str:
    """NAME relative to the archive's root, or ArchiveError where it leaves the archive."""
    if "\0" in name:
        raise ArchiveError(f"archive member {member!r} has a NUL in its name", "the archive is damaged or hostile")
    if name.startswith("/"):
        raise ArchiveError(f"archive member {member!r} has an absolute path", "the archive is damaged or hostile")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ArchiveError(f"archive member {member!r} points outside the archive",
                                   "the archive is damaged or hostile; nothing was loaded")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


@dataclass
class _Plan:
    """One image, checked and ready to store."""

    config_raw: bytes
    diff_ids: list[str]
    tags: list[str]
    layer_names: list[str]                               # archive names, for messages
    layer_files: list[_Member]
    manifest_raw: bytes | None = None                    # OCI: stored as it is, with its blobs
    blobs: list[mf.Descriptor] = field(default_factory=list)

    def store(self, ingest: Ingest, spool: _Spool, progress: Progress | None) -> None:
        layers: list[StoredLayer] = []
        for i, (member, diff_id) in enumerate(zip(self.layer_files, self.diff_ids)):
            spool.touch()
            if progress is not None:
                progress(f"Loading layer {diff_id.removeprefix('sha256:')[:12]}")
            try:
                if self.manifest_raw is None:
                    layers.append(ingest.add_layer_tar(member.path))
                else:  # hashed as it was spooled; a blob two images share is moved in once
                    layers.append(ingest.add_layer_blob(member.path, self.blobs[i], diff_id, verified=True))
            except LayerError as e:
                raise ArchiveError(f"layer {self.layer_names[i]} cannot be unpacked: {e.message}", e.hint) from None
        ingest.add_image(self.config_raw, layers, self.tags, self.manifest_raw)


def _plan_docker(spool: _Spool) -> list[_Plan]:
    _, entries = spool.read_json("manifest.json", "the list of images")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError("manifest.json is not a list of images", "the archive is damaged")
    plans = []
    layers_seen: dict[str, tuple[Path, str]] = {}
    for n, entry in enumerate(entries, 1):
        where = f"manifest.json, image {n}"
        if not isinstance(entry, dict):
            raise ArchiveError(f"{where}: not an object", "the archive is damaged")
        config_name, tags, layer_names = entry.get("Config"), entry.get("RepoTags") or [], entry.get("Layers")
        if not isinstance(config_name, str):
            raise ArchiveError(f"{where}: no Config file named", "the archive is damaged")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ArchiveError(f"{where}: RepoTags is not a list of names", "the archive is damaged")
        if not isinstance(layer_names, list) or not all(isinstance(x, str) for x in layer_names):
            raise ArchiveError(f"{where}: Layers is not a list of file names", "the archive is damaged")
        config_member = spool.get(config_name, f"the config of image {n}")
        _check_named_digest(config_name, config_member, f"the config of image {n}")
        config_raw, config = _config(spool, config_name, f"the config of image {n}")
        diff_ids = _diff_ids(config, config_name)
        if len(diff_ids) != len(layer_names):
            raise ArchiveError(f"{where}: the config lists {len(diff_ids)} layers, manifest.json {len(layer_names)}",
                               "the archive is damaged")
        files = []
        for name, expected in zip(layer_names, diff_ids):
            member = spool.get(name, f"a layer of image {n}")
            _check_named_digest(name, member, f"a layer of image {n}")
            if name not in layers_seen:
                layers_seen[name] = spool.uncompressed(member, name)
            path, diff_id = layers_seen[name]
            if diff_id != expected:
                raise ArchiveError(f"layer {name} of image {n} does not match its digest: the config says {expected}, "
                                   f"its content is {diff_id}", "the archive is damaged or was altered")
            files.append(_Member(path, diff_id, 0))
        plans.append(_Plan(config_raw, diff_ids, [_tag(t, where) for t in tags], list(layer_names), files))
    return plans


def _plan_oci(spool: _Spool) -> list[_Plan]:
    if spool.has("oci-layout"):
        _, layout = spool.read_json("oci-layout", "the OCI layout marker")
        version = layout.get("imageLayoutVersion") if isinstance(layout, dict) else None
        if not isinstance(version, str) or not version.startswith("1."):
            raise ArchiveError(f"oci-layout: unsupported imageLayoutVersion {version!r}", "expected 1.0.0")
    raw, doc = spool.read_json("index.json", "the OCI image index")
    index = _parse(raw, "index.json", None, None)
    if not isinstance(index, mf.Index):
        raise ArchiveError("index.json is an image manifest, not an index", "the archive is damaged")
    annotations = [e.get("annotations") if isinstance(e, dict) else None for e in doc.get("manifests", [])]
    plans: dict[str, _Plan] = {}
    for n, (desc, notes) in enumerate(zip(index.manifests, annotations), 1):
        where = f"index.json, entry {n}"
        target = desc
        if desc.media_type in mf.INDEX_TYPES:
            nested = _parse(_blob(spool, desc, where), where, desc.media_type, desc.digest)
            assert isinstance(nested, mf.Index)
            present = [d for d in nested.manifests if spool.has(_blob_name(d.digest))]
            try:
                target = mf.choose_platform(present)
            except ManifestError as e:
                raise ArchiveError(f"{where}: {e.message}", e.hint) from None
        elif desc.media_type not in mf.MANIFEST_TYPES:
            continue  # not an image (an artifact, say): not ours to load
        name = _oci_name(notes, where)
        if target.digest not in plans:
            plans[target.digest] = _plan_oci_image(spool, target, where)
        if name is not None and name not in plans[target.digest].tags:
            plans[target.digest].tags.append(name)
    if not plans:
        raise ArchiveError("index.json lists no image", "the archive is damaged or holds no image")
    return list(plans.values())


def _plan_oci_image(spool: _Spool, desc: mf.Descriptor, where: str) -> _Plan:
    raw = _blob(spool, desc, f"{where}: the manifest")
    manifest = _parse(raw, f"the manifest {desc.digest}", desc.media_type, desc.digest)
    if not isinstance(manifest, mf.Manifest):
        raise ArchiveError(f"{where}: {desc.digest} is an index, not an image manifest", "the archive is damaged")
    config_raw = _blob(spool, manifest.config, f"{where}: the config")
    try:
        config = parse_config(config_raw, f"the config {manifest.config.digest}")
    except DigestError as e:
        raise ArchiveError(e.message, "the archive is damaged") from None
    diff_ids = _diff_ids(config, manifest.config.digest)
    if len(diff_ids) != len(manifest.layers):
        raise ArchiveError(f"{where}: the config lists {len(diff_ids)} layers, the manifest {len(manifest.layers)}",
                           "the archive is damaged")
    files = []
    for layer, expected in zip(manifest.layers, diff_ids):
        what = f"layer {layer.digest}"
        try:
            declared = mf.layer_compression(layer.media_type)
        except ManifestError as e:
            raise ArchiveError(f"{where}: {e.message}", e.hint) from None
        member = _blob_member(spool, layer, f"{where}: {what}")
        actual = spool.compression_of(member)
        if actual != declared:
            raise ArchiveError(f"{where}: {what} is {actual or 'not compressed'}, but its media type "
                               f"{layer.media_type} says {declared or 'uncompressed'}", "the archive is damaged")
        diff_id = spool.diff_id(member, _blob_name(layer.digest))
        if diff_id != expected:
            raise ArchiveError(f"{where}: {what} does not match its digest: the config says {expected}, "
                               f"its content is {diff_id}", "the archive is damaged or was altered")
        files.append(member)
    return _Plan(config_raw, diff_ids, [], [_blob_name(d.digest) for d in manifest.layers], files, raw,
                 list(manifest.layers))


def _oci_name(notes: object, where: str) -> str | None:
    """The name an index entry gives its image: containerd's full name, else the OCI ref.name
    where it is a name (a bare ``latest`` or ``1.0`` is a tag only, and is not used)."""
    if not isinstance(notes, dict):
        return None
    for key in (CONTAINERD_NAME, REF_NAME):
        value = notes.get(key)
        if isinstance(value, str) and value and (key == CONTAINERD_NAME or "/" in value or ":" in value):
            return _tag(value, where)
    return None


def _blob_name(digest: str) -> str:
    algorithm, _, hexa = digest.partition(":")
    return f"blobs/{algorithm}/{hexa}"


def _blob_member(spool: _Spool, desc: mf.Descriptor, what: str) -> _Member:
    if not desc.digest.startswith("sha256:"):
        raise ArchiveError(f"{what}: {desc.digest} is not a sha256 digest", "only sha256 blobs are supported")
    member = spool.get(_blob_name(desc.digest), what)
    if member.sha256 != desc.digest:
        raise ArchiveError(f"{what}: blob {_blob_name(desc.digest)} does not match its digest (its content is {member.sha256})",
                           "the archive is damaged or was altered")
    if member.size != desc.size:
        raise ArchiveError(f"{what}: blob {desc.digest} is {member.size} bytes, its descriptor says {desc.size}",
                           "the archive is damaged or was altered")
    return member


def _blob(spool: _Spool, desc: mf.Descriptor, what: str) -> bytes:
    if desc.size > _MAX_JSON:
        raise ArchiveError(f"{what}: {desc.digest} is {desc.size} bytes, over the {_MAX_JSON} limit")
    return _blob_member(spool, desc, what).path.read_bytes()


def _parse(raw: bytes, what: str, media_type: str | None, digest: str | None) -> mf.Manifest | mf.Index:
    try:
        return mf.parse(raw, media_type, digest)
    except (ManifestError, DigestError) as e:
        raise ArchiveError(f"{what}: {e.message}", e.hint or "the archive is damaged") from None


def _config(spool: _Spool, name: str, what: str) -> tuple[bytes, dict[str, Any]]:
    raw, doc = spool.read_json(name, what)
    if not isinstance(doc, dict):
        raise ArchiveError(f"{name} ({what}) is not a JSON object", "the archive is damaged")
    return raw, doc


def _diff_ids(config: dict[str, Any], name: str) -> list[str]:
    try:
        return config_diff_ids(config, f"the config {name}")
    except DigestError as e:
        raise ArchiveError(e.message, "the archive is damaged") from None


def _check_named_digest(name: str, member: _Member, what: str) -> None:
    """A file named by a digest (``blobs/sha256/<hex>``, ``<hex>.json``) must have that digest."""
    m = _BLOB_NAME.search(name) or _CONFIG_NAME.match(name)
    if m is not None and member.sha256 != "sha256:" + m.group(1):
        raise ArchiveError(f"{name} ({what}) does not match its digest: its content is {member.sha256}",
                           "the archive is damaged or was altered")


def _tag(text: str, where: str) -> str:
    try:
        check_tag(text)
    except RootlessError as e:
        raise ArchiveError(f"{where}: the image name {text!r} is not valid: {e.message}", "the archive is damaged") from None
    return text


# -- import -------------------------------------------------------------------------------------


def import_rootfs(store: Store, src: Readable, ref: str | None = None, changes: Iterable[str] = (),
                  message: str | None = None, *, source: str = "-") -> ImageRecord:
    """``docker import``: the root file system tarball read from SRC (plain, gzip, zstd, bzip2
    or xz) as a one-layer image, with CHANGES (Dockerfile instructions, see ``changes``)
    applied to its config, MESSAGE (default ``Imported from SOURCE``) in its history, and
    tagged REF where given."""
    tags = [ref] if ref else []
    for tag in tags:
        check_tag(tag)
    container_config = apply_changes({}, list(changes))  # a bad change fails before the input is read
    stage = stage_dir(store, "import-")
    try:
        tar = stage / "layer.tar"
        size = 0
        try:
            _, stream = compression.open_stream(src)
            with open(tar, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    size += len(chunk)
        except compression.CorruptStream as e:
            raise ArchiveError(f"cannot import {source}: {e}", "the tarball is damaged or incomplete") from None
        if size == 0:
            raise ArchiveError(f"cannot import {source}: it is empty", "give a tar archive of a root file system")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        comment = message if message else f"Imported from {source}"
        host = mf.host_platform()
        config: dict[str, Any] = {"architecture": host.architecture, "os": host.os}
        if host.variant:
            config["variant"] = host.variant
        config.update({"created": now, "comment": comment, "config": container_config,
                       "history": [{"created": now, "comment": comment}]})
        try:
            return store_local_image(store, [tar], config, tags)
        except LayerError as e:
            raise ArchiveError(f"cannot import {source}: {e.message}",
                               "give a tar archive of a root file system (plain or compressed)") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
