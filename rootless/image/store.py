"""The content-addressed image store: blobs as downloaded, layers as indexed tars, image records.

Layout under ``Config.store_dir``::

    version                  format version (1); a store of another version is refused
    lock                     flock'd while image records change
    images.json              the image records, replaced whole
    blobs/sha256/<hex>       manifests, configs and layer blobs, as downloaded
    layers/<hex>.tar         a layer as its uncompressed tar, named by its diff_id: fusefs serves it
                             in place, so a pull extracts nothing
    layers/<hex>.tar.idx     its index (fusefs.tarindex): every entry's metadata and data offset
    layers/<hex>/            a layer extracted to a directory (older stores; still served)
    layers/<hex>.json        {diff_id, size, created, warnings}: written last, so it marks a complete layer
    diffids/sha256/<hex>     the diff_id a layer blob unpacked to (a blob is named by its compressed digest)
    locks/<hex>              flock'd while one blob or layer is written, so concurrent pulls store one copy
    tmp/                     staging; what a crash leaves here is cleaned up at the next open

Every file appears by rename after its content is synced, so a crash at any point
leaves the store usable and holding no half-written file.  The API is synchronous and
may block on locks and disk: async callers run it in ``trio.to_thread``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, cast

from ..config import Config
from ..errors import AmbiguousImageId, DigestError, ImageNotFound, InvalidReference, LayerError, StoreError
from . import reference

log = logging.getLogger(__name__)

STORE_VERSION = 1
#: Staging entries older than this are left over from a crash.
STALE_SECONDS = 3600
#: Shortest id prefix taken as an id, as ``docker image inspect abcd``.
MIN_ID_PREFIX = 4
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_ID = re.compile(r"^(sha256:)?([0-9a-f]{%d,64})$" % MIN_ID_PREFIX)
_MAX_MANIFEST = 4 << 20
STAGE_PREFIX = "stage-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id is its config's digest; tags and digests are full references."""

    id: str
    repo_tags: tuple[str, ...] = ()        # "docker.io/library/busybox:latest"
    repo_digests: tuple[str, ...] = ()     # "docker.io/library/busybox@sha256:..."
    manifest_digest: str = ""
    config_digest: str = ""
    layers: tuple[str, ...] = ()           # diff_ids, bottom layer first
    created: str = ""                      # the config's "created", as docker shows it

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: object) -> ImageRecord:
        if not isinstance(raw, dict):
            raise ValueError("an image record is not an object")

        def strings(key: str) -> tuple[str, ...]:
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} is not a list of strings")
            return tuple(value)

        def string(key: str) -> str:
            value = raw.get(key, "")
            if not isinstance(value, str):
                raise ValueError(f"{key} is not a string")
            return value

        return cls(string("id"), strings("repo_tags"), strings("repo_digests"), string("manifest_digest"),
                   string("config_digest"), strings("layers"), string("created"))


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    size: int          # bytes of the uncompressed tar
    created: str       # when it was unpacked here
    warnings: tuple[str, ...] = field(default=())


def _hex(digest: str) -> str:
    m = _DIGEST.match(digest)
    if m is None:
        raise DigestError(f"invalid digest {digest!r}", "expected sha256: followed by 64 lowercase hex digits")
    return m.group(1)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class StagedLayer:
    """A layer tar and index made in tmp/, waiting to be committed (or discarded).

    Its directory's ``.lock`` is flock'd while this process may still use it: a store
    opened later removes a staging directory only once that lock is free (its maker died).
    """

    dir: Path
    diff_id: str
    size: int
    lock_fd: int = -1

    @classmethod
    def make(cls, tmp_dir: Path) -> StagedLayer:
        stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=tmp_dir))
        fd = os.open(stage / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return cls(stage, "", 0, fd)

    def discard(self) -> None:
        _remove(self.dir)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


class Store:
    """An open image store.  Open it with ``Store.open(config)``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs" / "sha256"
        self.layers_dir = root / "layers"
        self.diffids_dir = root / "diffids" / "sha256"
        self.locks_dir = root / "locks"
        self.tmp_dir = root / "tmp"
        self.images_file = root / "images.json"
        self.version_file = root / "version"
        self._locks = _FileLocks()

    @classmethod
    def open(cls, config: Config) -> Store:
        return cls.open_at(config.store_dir)

    @classmethod
    def open_at(cls, root: str | os.PathLike[str]) -> Store:
        """Open (creating it where absent) the store at ROOT; refuse one of another format version."""
        store = cls(Path(root))
        try:
            store.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not store._check_version():
                with store.locked():
                    if not store._check_version():
                        if store.images_file.exists():
                            raise StoreError(f"the image store {store.root} has images but no version file",
                                             f"move {store.root} aside to start an empty store")
                        store._make_dirs()
                        store._write_atomic(store.version_file, b"%d\n" % STORE_VERSION)
            store._make_dirs()
        except OSError as e:
            raise StoreError(f"cannot open the image store {store.root}: {e.strerror or e}",
                             "check the permissions of the directory, or choose another with --root") from None
        store._clean_tmp()
        return store

    def _check_version(self) -> bool:
        """True for a store of our version, False for none yet; raise for another."""
        try:
            text = self.version_file.read_text().strip()
        except FileNotFoundError:
            return False
        if text != str(STORE_VERSION):
            raise StoreError(
                f"the image store {self.root} has format version {text[:20]!r}; this rootless reads version {STORE_VERSION}",
                f"use the rootless release that made it, or choose another store with --root "
                f"(moving {self.root} aside starts an empty one)")
        return True

    def _make_dirs(self) -> None:
        for d in (self.tmp_dir, self.blobs_dir, self.layers_dir, self.diffids_dir, self.locks_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _clean_tmp(self) -> None:
        """Remove what crashed writers left in tmp/: an unpack whose lock is free, anything over an hour old."""
        now = time.time()
        try:
            entries = list(os.scandir(self.tmp_dir))
        except OSError:
            return
        for entry in entries:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            key = entry.name.split("-")[1] if entry.name.startswith("unpack-") else ""
            if entry.name.startswith(STAGE_PREFIX):
                _remove_unlocked_stage(Path(entry.path))
            elif _HEX.match(key):
                with self._locks.hold(self.locks_dir / key, blocking=False) as free:
                    if free:
                        _remove(Path(entry.path))
            elif age > STALE_SECONDS:
                _remove(Path(entry.path))

    # -- locks -----------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock: image records change only under it."""
        with self._locks.hold(self.root / "lock"):
            yield

    @contextmanager
    def locked_item(self, digest: str) -> Iterator[None]:
        """Hold the lock of one blob or layer: who comes second waits, then finds it present.

        Re-entrant in one thread, so a puller may hold it around ``ingest_blob`` and
        ``unpack_layer`` of the same digest.
        """
        with self._locks.hold(self.locks_dir / _hex(digest)):
            yield

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return (self.blobs_dir / _hex(digest)).is_file()

    def blob_path(self, digest: str) -> Path:
        """Where the blob DIGEST is; StoreError where the store lacks it."""
        path = self.blobs_dir / _hex(digest)
        if not path.is_file():
            raise StoreError(f"blob {digest} is not in the image store", "pull the image again")
        return path

    def write_blob(self, digest: str, data: bytes) -> Path:
        """Store DATA as the blob DIGEST, after checking that it is."""
        hexd = _hex(digest)
        actual = hashlib.sha256(data).hexdigest()
        if actual != hexd:
            raise DigestError(f"content does not match its digest: expected {digest}, got sha256:{actual}",
                              "the download is corrupt; pull again")
        with self.locked_item(digest):
            path = self.blobs_dir / hexd
            if not path.is_file():
                self._write_atomic(path, data, mode=0o444)
        return path

    def ingest_blob(self, digest: str, src_path: str | os.PathLike[str], *, verified: bool = False) -> Path:
        """Move the file SRC_PATH (best on the store's file system: tmp_dir) in as the blob DIGEST.

        Its content is checked first, unless the caller has just VERIFIED it (a download
        hashed as it arrived); a file that does not match stays where it is and
        DigestError is raised.  A matching file is consumed, even if the blob was present.
        """
        hexd = _hex(digest)
        src = Path(src_path)
        with self.locked_item(digest):
            path = self.blobs_dir / hexd
            try:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise StoreError(f"cannot read {src}: {e.strerror}") from None
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise StoreError(f"cannot store {src} as a blob: it is not a regular file")
                h = hashlib.sha256()
                while not verified and (chunk := os.read(fd, _CHUNK)):
                    h.update(chunk)
                if not verified and h.hexdigest() != hexd:
                    raise DigestError(f"{src} does not match its digest: expected {digest}, got sha256:{h.hexdigest()}",
                                      "the download is corrupt; pull again")
                if path.is_file():
                    os.unlink(src)
                    return path
                os.fchmod(fd, 0o444)
                os.fsync(fd)
            except OSError as e:
                raise StoreError(f"cannot store {src} as blob {digest}: {e.strerror}") from None
            finally:
                os.close(fd)
            try:
                os.rename(src, path)
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise StoreError(f"cannot store {src} as blob {digest}: {e.strerror}") from None
                self._copy_in(src, path)
                os.unlink(src)
            _fsync_dir(self.blobs_dir)
        return path

    # -- layers ------------------------------------------------------------------------------

    def has_layer(self, diff_id: str) -> bool:
        hexd = _hex(diff_id)
        return (self.layers_dir / f"{hexd}.json").is_file() and (
            (self.layers_dir / f"{hexd}.tar").is_file() or (self.layers_dir / hexd).is_dir())

    def layer_of_blob(self, blob_digest: str) -> str | None:
        """The diff_id of the layer that the blob BLOB_DIGEST unpacked to, where that layer is here."""
        known = self._diff_id_of(_hex(blob_digest))
        return known if known is not None and self.has_layer(known) else None

    def layer_path(self, diff_id: str) -> Path:
        """The layer DIFF_ID as fusefs mounts it as a lower layer (its tar, or an extracted directory)."""
        if not self.has_layer(diff_id):
            raise StoreError(f"layer {diff_id} is not in the image store", "pull the image again")
        tar = self.layers_dir / f"{_hex(diff_id)}.tar"
        return tar if tar.is_file() else self.layers_dir / _hex(diff_id)

    def layer_info(self, diff_id: str) -> LayerInfo:
        path = self.layers_dir / f"{_hex(diff_id)}.json"
        try:
            raw = json.loads(path.read_bytes())
            return LayerInfo(str(raw["diff_id"]), int(raw["size"]), str(raw["created"]),
                             tuple(str(w) for w in raw.get("warnings", [])))
        except FileNotFoundError:
            raise StoreError(f"layer {diff_id} is not in the image store", "pull the image again") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreError(f"the layer record {path} is unreadable: {e}", "remove the image and pull it again") from None

    def unpack_layer(self, blob_digest: str) -> str:
        """Store the layer blob BLOB_DIGEST (once) as its plain tar and index; return its diff_id.

        Idempotent and safe to run from several processes at once: the blob's lock makes
        the second wait, then find the layer present.
        """
        bhex = _hex(blob_digest)
        with self.locked_item(blob_digest):
            known = self._diff_id_of(bhex)
            if known is not None and self.has_layer(known):
                return known
            with open(self.blob_path(blob_digest), "rb") as f:
                return self.add_layer(f, blob_digest)

    def add_layer(self, src: BinaryIO, blob_digest: str | None = None) -> str:
        """Store the layer read from SRC (gzip, zstd or plain; any compression is undone) and
        return its diff_id; BLOB_DIGEST, where given, is remembered as its compressed form."""
        staged = self.stage_layer(src)
        try:
            return self.commit_layer(staged, blob_digest)
        finally:
            staged.discard()

    def stage_layer(self, src: BinaryIO) -> StagedLayer:
        """Decompress SRC into a layer tar and index in tmp/, not yet part of the store.

        A pull stages a layer while its blob is still downloading, and commits it only
        once the blob's digest is verified.  Decompression runs in a thread of its own,
        ahead of the indexing, hashing and writing here: two cores, two halves.
        """
        from fusefs.tarindex import TarLayerError, build_index

        from . import compression

        staged = StagedLayer.make(self.tmp_dir)
        stage = staged.dir
        try:
            tar = stage / "layer.tar"
            try:
                _, plain = compression.open_stream(src)
                with _Prefetch(plain) as ahead, open(tar, "wb", buffering=0) as out:
                    index = build_index(ahead, cast(BinaryIO, _WriteBehind(out)))
                    os.fsync(out.fileno())
            except TarLayerError as e:
                raise LayerError(f"layer: {e.message}", e.hint) from None
            except compression.CorruptStream as e:
                raise LayerError(f"layer is corrupt: {e}", "pull it again") from None
            assert index.diff_id is not None
            index.save(str(stage / "layer.tar.idx"))
        except BaseException:
            staged.discard()
            raise
        staged.diff_id, staged.size = index.diff_id, index.size
        return staged

    def commit_layer(self, staged: StagedLayer, blob_digest: str | None = None) -> str:
        """Make the STAGED layer part of the store (unless the same diff_id is there already)."""
        # Another blob (the same tar compressed otherwise) may have made this layer meanwhile.
        with self.locked_item(staged.diff_id):
            if not self.has_layer(staged.diff_id):
                self._commit_layer(staged.dir, staged.diff_id, staged.size)
        if blob_digest is not None:
            self._write_atomic(self.diffids_dir / _hex(blob_digest), staged.diff_id.encode() + b"\n")
        return staged.diff_id

    def _commit_layer(self, stage: Path, diff_id: str, size: int) -> None:
        dhex = _hex(diff_id)
        for suffix in (".tar.idx", ".tar"):   # the tar last: has_layer looks for it
            os.replace(stage / f"layer{suffix}", self.layers_dir / f"{dhex}{suffix}")
        _fsync_dir(self.layers_dir)
        record = {"diff_id": diff_id, "size": size, "created": _now(), "warnings": []}
        self._write_atomic(self.layers_dir / f"{dhex}.json", json.dumps(record, indent=1).encode())

    def _diff_id_of(self, blob_hex: str) -> str | None:
        try:
            text = (self.diffids_dir / blob_hex).read_text().strip()
        except FileNotFoundError:
            return None
        return text if _DIGEST.match(text) else None

    # -- images -------------------------------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        try:
            raw = json.loads(self.images_file.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise StoreError(f"cannot read the image records {self.images_file}: {e}",
                             "restore the file, or remove it and pull the images again") from None
        try:
            if not isinstance(raw, dict) or not isinstance(raw.get("images"), list):
                raise ValueError("expected an object with a list of images")
            return [ImageRecord.from_json(r) for r in raw["images"]]
        except ValueError as e:
            raise StoreError(f"the image records {self.images_file} are corrupt: {e}",
                             "restore the file, or remove it and pull the images again") from None

    def put_image(self, record: ImageRecord) -> ImageRecord:
        """Add or update the image RECORD.id; its tags move to it from any other image.

        The config blob and every layer must be in the store already.
        """
        _hex(record.id)
        if record.config_digest != record.id:
            raise StoreError(f"image {record.id}: its id must be its config's digest, not {record.config_digest!r}")
        if record.manifest_digest:
            _hex(record.manifest_digest)
        record = replace(record, repo_tags=tuple(_tag_name(t) for t in record.repo_tags),
                         repo_digests=tuple(_digest_name(d) for d in record.repo_digests))
        with self.locked():  # gc holds it too: what is checked here stays until the record names it
            if not self.has_blob(record.config_digest):
                raise StoreError(f"image {record.id}: its config blob is not in the store", "store the config first")
            for diff_id in record.layers:
                if not self.has_layer(diff_id):
                    raise StoreError(f"image {record.id}: layer {diff_id} is not in the store",
                                     "unpack the layer first")
            images = self.images()
            old = next((i for i in images if i.id == record.id), None)
            if old is not None:
                record = replace(record, repo_tags=_union(old.repo_tags, record.repo_tags),
                                 repo_digests=_union(old.repo_digests, record.repo_digests))
            images = [_without(i, record.repo_tags, record.repo_digests) for i in images if i.id != record.id]
            images.append(record)
            self._save(images)
        return record

    def tag(self, ref_str: str, image_id: str) -> ImageRecord:
        """Point the tag REF_STR (moved from any other image) at the image IMAGE_ID (or a unique id prefix)."""
        tag = _tag_name(ref_str)
        with self.locked():
            images = self.images()
            target = _by_id(images, image_id)
            images = [_without(i, (tag,), ()) for i in images]
            images = [replace(i, repo_tags=(*i.repo_tags, tag)) if i.id == target.id else i for i in images]
            self._save(images)
        return next(i for i in images if i.id == target.id)

    def add_repo_digest(self, image_id: str, name: str) -> ImageRecord:
        """Record that the registry holds the image IMAGE_ID as NAME (``repo@sha256:...``), after a push."""
        name = _digest_name(name)
        with self.locked():
            images = self.images()
            target = _by_id(images, image_id)
            updated = replace(target, repo_digests=_union(target.repo_digests, (name,)))
            self._save([updated if i.id == target.id else i for i in images])
        return updated

    def untag(self, ref_str: str) -> ImageRecord:
        """Remove the tag (or name@digest) REF_STR; the image itself stays.  Returns the image as it is now."""
        ref = reference.parse(ref_str)
        with self.locked():
            images = self.images()
            found = _by_reference(images, ref)
            if found is None:
                raise ImageNotFound(f"no such image: {ref_str}", "list the images with `rootless images`")
            name = f"{ref.repository}@{ref.digest}" if ref.digest else f"{ref.repository}:{ref.tag}"
            updated = _without(found, (name,), (name,))
            self._save([updated if i.id == found.id else i for i in images])
        return updated

    def resolve(self, name_or_id: str) -> ImageRecord:
        """The image a user means: a reference (``busybox``, ``host/ns/app:tag``, ``name@sha256:...``),
        else an id or a unique prefix of at least 4 hex digits, with or without ``sha256:``."""
        images = self.images()
        as_id = _ID.match(name_or_id)
        if as_id is None or as_id.group(1) is None:
            try:
                ref = reference.parse(name_or_id)
            except InvalidReference:
                if as_id is None:
                    raise
            else:
                found = _by_reference(images, ref)
                if found is not None:
                    return found
                if as_id is None:
                    raise ImageNotFound(f"no such image: {name_or_id}",
                                        "pull it first, or list the images with `rootless images`")
        return _by_id(images, name_or_id)

    def remove_image(self, image_id: str) -> ImageRecord:
        """Forget the image IMAGE_ID (or a unique id prefix); ``gc`` frees what only it used."""
        with self.locked():
            images = self.images()
            target = _by_id(images, image_id)
            self._save([i for i in images if i.id != target.id])
        return target

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Hold while storing things that no image names yet (a pull, a load, a build).

        Until the image record is written, its blobs and layers look unused; gc must not
        take them.  Leases are shared flocks; gc tries for the exclusive one and, while
        any lease is held, spares what was stored in the last hour.
        """
        fd = os.open(self.root / "leases", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def gc(self, keep_layers: Iterable[str] = ()) -> int:
        """Remove the blobs and layers no image needs, and return the bytes freed.

        A blob is needed when an image names it (config, manifest, repo digest) or a
        needed manifest or index lists it; a layer when an image lists it or KEEP_LAYERS
        (e.g. the layers of running containers) does.  Items being written are skipped,
        and while a pull or load holds a lease, so is anything stored in the last hour.
        """
        freed = 0
        lease_fd = os.open(self.root / "leases", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lease_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                spare_after = float("inf")
            except BlockingIOError:
                spare_after = time.time() - STALE_SECONDS
            with self.locked():
                freed = self._collect(keep_layers, spare_after)
        finally:
            os.close(lease_fd)
        return freed

    def _collect(self, keep_layers: Iterable[str], spare_after: float) -> int:
        freed = 0
        images = self.images()
        blobs = self._needed_blobs(images)
        layers = {_hex(d) for i in images for d in i.layers} | {_hex(d) for d in keep_layers}
        for entry in _scan(self.blobs_dir):
            if _HEX.match(entry.name) and entry.name not in blobs and not _recent(Path(entry.path), spare_after):
                with self._locks.hold(self.locks_dir / entry.name, blocking=False) as free:
                    if free:
                        freed += _size(Path(entry.path))
                        _remove(Path(entry.path))
        names = {_layer_name(e.name) for e in _scan(self.layers_dir)}
        names = {n for n in names if _HEX.match(n)}
        for name in sorted(names - layers):
            if _recent(self.layers_dir / f"{name}.json", spare_after):
                continue
            with self._locks.hold(self.locks_dir / name, blocking=False) as free:
                if free:
                    freed += self._drop_layer(name)
        for entry in _scan(self.diffids_dir):
            diff_id = self._diff_id_of(entry.name)
            if diff_id is None or not self.has_layer(diff_id) or not (self.blobs_dir / entry.name).is_file():
                _remove(Path(entry.path))
        return freed

    def discard_unused(self, blobs: Iterable[str] = (), layers: Iterable[str] = ()) -> None:
        """Remove the blobs and layers (diff_ids) named, where no image needs them: what an
        import stored before it failed.  ``gc`` narrowed to these, so nobody else's are touched."""
        with self.locked():
            images = self.images()
            needed_blobs = self._needed_blobs(images)
            needed_layers = {_hex(d) for i in images for d in i.layers}
            for name in sorted({_hex(d) for d in blobs} - needed_blobs):
                with self._locks.hold(self.locks_dir / name, blocking=False) as free:
                    if free:
                        _remove(self.blobs_dir / name)
                        _remove(self.diffids_dir / name)
            for name in sorted({_hex(d) for d in layers} - needed_layers):
                with self._locks.hold(self.locks_dir / name, blocking=False) as free:
                    if free:
                        self._drop_layer(name)

    def _drop_layer(self, name: str) -> int:
        """Remove the layer NAME in every form; returns the bytes freed."""
        parts = [self.layers_dir / f"{name}{suffix}" for suffix in (".tar", ".tar.idx", "")]
        freed = sum(_size(p) for p in parts if os.path.lexists(p))
        _remove(self.layers_dir / f"{name}.json")  # first: the layer stops existing
        for p in parts:
            if p.is_dir() and not p.is_symlink():
                self._discard(p)
            else:
                _remove(p)
        return freed

    def _needed_blobs(self, images: list[ImageRecord]) -> set[str]:
        needed: set[str] = set()
        manifests: list[str] = []
        for image in images:
            needed.add(_hex(image.config_digest))
            if image.manifest_digest:
                manifests.append(image.manifest_digest)
            manifests.extend(d.rsplit("@", 1)[1] for d in image.repo_digests if "@" in d)
        while manifests:
            digest = manifests.pop()
            m = _DIGEST.match(digest)
            if m is None or m.group(1) in needed:
                continue
            needed.add(m.group(1))
            doc = self._read_manifest(m.group(1))
            for blob in _descriptors([doc.get("config")]) + _descriptors(doc.get("layers")):
                if _DIGEST.match(blob):
                    needed.add(_hex(blob))
            manifests.extend(_descriptors(doc.get("manifests")))
        return needed

    def _read_manifest(self, hexd: str) -> dict[str, object]:
        path = self.blobs_dir / hexd
        try:
            if path.stat().st_size > _MAX_MANIFEST:
                return {}
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    # -- writing -------------------------------------------------------------------------------

    def _save(self, images: list[ImageRecord]) -> None:
        doc = {"version": STORE_VERSION, "images": [i.to_json() for i in images]}
        self._write_atomic(self.images_file, json.dumps(doc, indent=1).encode())

    def _write_atomic(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        """PATH holds DATA or what it held before, never part of it: temp file, fsync, rename."""
        tmp_dir = self.tmp_dir if self.tmp_dir.is_dir() else path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write-", dir=tmp_dir)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
        except OSError as e:
            _remove(Path(tmp))
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        except BaseException:
            _remove(Path(tmp))
            raise

    def _copy_in(self, src: Path, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".write-", dir=self.tmp_dir)
        try:
            with open(src, "rb") as s, os.fdopen(fd, "wb") as d:
                shutil.copyfileobj(s, d, _CHUNK)
                d.flush()
                os.fchmod(d.fileno(), 0o444)
                os.fsync(d.fileno())
            os.rename(tmp, path)
        except BaseException:
            _remove(Path(tmp))
            raise

    def _discard(self, path: Path) -> None:
        """Make PATH vanish at once (rename into tmp/), then delete it."""
        trash = Path(tempfile.mkdtemp(prefix="gc-", dir=self.tmp_dir))
        try:
            os.rename(path, trash / "x")
        except FileNotFoundError:
            pass
        _remove(trash)


# -- image record helpers ---------------------------------------------------------------------


def _recent(path: Path, after: float) -> bool:
    try:
        return path.stat().st_ctime > after
    except OSError:
        return False


def _remove_unlocked_stage(stage: Path) -> None:
    """Remove a layer staging directory whose maker is gone (its .lock is free)."""
    try:
        fd = os.open(stage / ".lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        _remove(stage)   # killed before it locked: nobody can be using it
        return
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    finally:
        os.close(fd)
    _remove(stage)


def _layer_name(filename: str) -> str:
    for suffix in (".tar.idx", ".tar", ".json"):
        if filename.endswith(suffix):
            return filename[:-len(suffix)]
    return filename


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


def _without(image: ImageRecord, tags: Iterable[str], digests: Iterable[str]) -> ImageRecord:
    tags, digests = set(tags), set(digests)
    return replace(image, repo_tags=tuple(t for t in image.repo_tags if t not in tags),
                   repo_digests=tuple(d for d in image.repo_digests if d not in digests))


def _tag_name(text: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest``."""
    ref = reference.parse(text)
    if ref.digest is not None:
        raise StoreError(f"cannot tag an image as {text}: a tag cannot hold a digest",
                         "give a name with a tag, e.g. myimage:1.0")
    return f"{ref.repository}:{ref.tag}"


def _digest_name(text: str) -> str:
    """``busybox@sha256:...`` -> ``docker.io/library/busybox@sha256:...``."""
    ref = reference.parse(text)
    if ref.digest is None:
        raise StoreError(f"{text} is not a repository digest", "expected NAME@sha256:...")
    _hex(ref.digest)
    return f"{ref.repository}@{ref.digest}"


def _by_reference(images: list[ImageRecord], ref: reference.Reference) -> ImageRecord | None:
    if ref.digest:
        name = f"{ref.repository}@{ref.digest}"
        return next((i for i in images if name in i.repo_digests), None)
    name = f"{ref.repository}:{ref.tag}"
    return next((i for i in images if name in i.repo_tags), None)


def _by_id(images: list[ImageRecord], image_id: str) -> ImageRecord:
    m = _ID.match(image_id)
    if m is None:
        raise ImageNotFound(f"no such image: {image_id}",
                            f"give an image id, or at least {MIN_ID_PREFIX} of its first hex digits")
    prefix = m.group(2)
    found = [i for i in images if i.id.removeprefix("sha256:").startswith(prefix)]
    if not found:
        raise ImageNotFound(f"no such image: {image_id}", "list the images with `rootless images`")
    if len(found) > 1:
        raise AmbiguousImageId(f"image id prefix {prefix} matches {len(found)} images",
                               "give more digits of the id")
    return found[0]


def _descriptors(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [d["digest"] for d in value if isinstance(d, dict) and isinstance(d.get("digest"), str)]


# -- files --------------------------------------------------------------------------------------


def _scan(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _size(path: Path) -> int:
    """Bytes of the regular files at PATH, each inode counted once."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                fst = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(fst.st_mode) and fst.st_ino not in seen:
                seen.add(fst.st_ino)
                total += fst.st_size
    return total


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Held:
    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd = -1
        self.users = 0


class _FileLocks:
    """flock(2) locks by path: exclusive across processes and threads, re-entrant within a thread.

    flock conflicts between two open files even in one process, so a thread taking a
    lock it already holds would wait for itself; the depth count avoids that.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[str, _Held] = {}

    @contextmanager
    def hold(self, path: Path, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the lock on PATH; without BLOCKING, yield False at once where another holds it."""
        key = str(path)
        with self._mutex:
            held = self._held.setdefault(key, _Held())
            held.users += 1
        try:
            if not held.rlock.acquire(blocking=blocking):
                yield False
                return
            try:
                if held.depth == 0:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    except BlockingIOError:
                        os.close(fd)
                        yield False
                        return
                    except BaseException:
                        os.close(fd)
                        raise
                    held.fd = fd
                held.depth += 1
                try:
                    yield True
                finally:
                    held.depth -= 1
                    if held.depth == 0:
                        os.close(held.fd)
                        held.fd = -1
            finally:
                held.rlock.release()
        finally:
            with self._mutex:
                held.users -= 1
                if held.users == 0:
                    del self._held[key]


class _Prefetch(io.RawIOBase):
    """Reads SRC in a thread of its own, a few chunks ahead of the reader.

    zlib, zstd and file reads release the GIL, so decompression runs on one core while
    the reader parses, hashes and writes on the other.
    """

    CHUNK = 4 << 20
    DEPTH = 4

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._pending = b""
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(src,), name="layer-decompress", daemon=True)
        self._thread.start()

    def _run(self, src: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                chunk = src.read(self.CHUNK)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as e:  # noqa: BLE001 (handed to the reader)
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._pending and not self._done:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
            self._pending = item
        if size < 0 or size >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


class _WriteBehind:
    """A file whose written data the kernel starts putting on disk as it arrives, so that the
    fsync at the end waits for the last few megabytes, not for the whole layer."""

    STEP = 32 << 20

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()
        self._written = 0
        self._flushed = 0

    def write(self, data: bytes | memoryview) -> int:
        n = self._f.write(data) or 0
        self._written += n
        if self._written - self._flushed >= self.STEP:
            _start_writeback(self._fd, self._flushed, self._written - self._flushed)
            self._flushed = self._written
        return n


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return libc.sync_file_range  # type: ignore[no-any-return]


def _start_writeback(fd: int, offset: int, length: int) -> None:
    _sync_file_range()(fd, offset, length, _SYNC_FILE_RANGE_WRITE)   # a hint: failure changes nothing
