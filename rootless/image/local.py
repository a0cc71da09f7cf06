"""Images made or loaded on this host enter the store here, and are read back out of it.

``import``, ``load``, and later ``commit`` and ``build`` end in the same steps: each layer
tar is hashed (its diff_id) and gzip-compressed in one pass, stored as a blob and
unpacked; then the config and a manifest are written, and the image record comes last,
so an image is visible only whole.  An ``Ingest`` removes again whatever it stored before
it failed, so a failed import leaves the store as it found it.

The manifest made for local images is docker's schema 2 with gzip layers: what
``docker push`` of a local image sends, and what every registry and tool accepts.

Layers are compressed fast rather than small: zlib level 1 runs about 2.5 times as
fast as the default level 6 for blobs about 13% larger, and zlib-ng's level 2 makes
blobs of that same size in three quarters of the time (60 MB of a Debian root: 0.91 s
against 1.23 s).  Every ``import``, ``load``, ``commit`` and build step pays the time,
while the size matters only to a ``push``, and a registry keeps what it is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zlib

try:
    from zlib_ng import zlib_ng as _deflate
    GZIP_LEVEL = 2
except ImportError:  # pragma: no cover (a dependency; stdlib zlib still works)
    _deflate = zlib  # type: ignore[assignment]
    GZIP_LEVEL = 1
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ..errors import DigestError, RootlessError, StoreError
from . import compression
from . import manifest as mf
from . import reference
from .store import ImageRecord, Store

_CHUNK = 1 << 20
_MAX_CONFIG = mf.MAX_MANIFEST_SIZE


@dataclass(frozen=True)
class StoredLayer:
    """A layer in the store: its diff_id and the blob a manifest lists for it."""

    diff_id: str
    blob: mf.Descriptor


def config_bytes(config: Mapping[str, Any]) -> bytes:
    """CONFIG as stored: compact JSON in the order given (the image id is its digest)."""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


class Ingest:
    """Adds layers and images to STORE; removes what it added if left without ``commit``.

    Use it as a context manager: add layers, then images made of them; ``commit`` writes
    the image records, all of them after every layer is in place.  An exception, or
    leaving the block without committing, removes the blobs and layers this ingest
    added that no image needs.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._blobs: list[str] = []     # added by this ingest, absent before
        self._layers: list[str] = []
        self._pending: list[ImageRecord] = []
        self._done = False
        self._lease = contextlib.ExitStack()

    def __enter__(self) -> Ingest:
        self._lease.enter_context(self.store.lease())   # gc spares what is added before commit
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._done:
                self.discard()
        finally:
            self._lease.close()

    def discard(self) -> None:
        self._done = True
        if self._blobs or self._layers:
            self.store.discard_unused(self._blobs, self._layers)
        self._blobs, self._layers, self._pending = [], [], []

    # -- layers --------------------------------------------------------------------------

    def add_layer_tar(self, tar_path: str | os.PathLike[str]) -> StoredLayer:
        """Store the uncompressed layer tar at TAR_PATH (it is left in place) as a gzip blob, and unpack it."""
        fd, tmp = tempfile.mkstemp(prefix="layer-", dir=self.store.tmp_dir)
        try:
            diff = hashlib.sha256()
            blob = hashlib.sha256()
            size = 0
            gz = _deflate.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # no name, time 0: reproducible
            with open(tar_path, "rb") as src, os.fdopen(fd, "wb") as out:
                fd = -1
                while chunk := src.read(_CHUNK):
                    diff.update(chunk)
                    data = gz.compress(chunk)
                    blob.update(data)
                    out.write(data)
                    size += len(data)
                data = gz.flush()
                blob.update(data)
                out.write(data)
                size += len(data)
            diff_id = "sha256:" + diff.hexdigest()
            digest = "sha256:" + blob.hexdigest()
            if self.store.has_blob(digest):
                os.unlink(tmp)
            else:
                self.store.ingest_blob(digest, tmp, verified=True)
                self._blobs.append(digest)
        except OSError as e:
            raise StoreError(f"cannot store the layer {tar_path}: {e.strerror or e}") from None
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return self._unpack(mf.Descriptor(mf.DOCKER_LAYER_GZIP, digest, size), diff_id)

    def add_layer_blob(self, path: str | os.PathLike[str], blob: mf.Descriptor, diff_id: str, *,
                       verified: bool = False) -> StoredLayer:
        """Store the file PATH as the layer blob BLOB, as it is (it is moved in), and unpack it
        to the layer DIFF_ID.  VERIFIED: the caller has hashed PATH and it matched, so it is
        not read twice."""
        if not self.store.has_blob(blob.digest):
            self.store.ingest_blob(blob.digest, path, verified=verified)
            self._blobs.append(blob.digest)
        return self._unpack(blob, diff_id)

    def _unpack(self, blob: mf.Descriptor, diff_id: str) -> StoredLayer:
        fresh = not self.store.has_layer(diff_id)
        got = self.store.unpack_layer(blob.digest)
        if got != diff_id:
            self._layers.append(got)
            raise DigestError(f"layer blob {blob.digest} unpacked to the layer {got}, not {diff_id}",
                              "the file changed while it was stored; try again")
        if fresh:
            self._layers.append(diff_id)
        return StoredLayer(diff_id, blob)

    # -- images --------------------------------------------------------------------------

    def add_image(self, config_raw: bytes, layers: Sequence[StoredLayer], tags: Sequence[str] = (),
                  manifest_raw: bytes | None = None) -> ImageRecord:
        """Store the config CONFIG_RAW (byte for byte: its digest is the image id) for LAYERS,
        with MANIFEST_RAW or, where None, a manifest made here.  The record, tagged TAGS, is
        written at ``commit``; it is returned as it will be written."""
        config = parse_config(config_raw, "the image config")
        diff_ids = config_diff_ids(config, "the image config")
        if diff_ids != [layer.diff_id for layer in layers]:
            raise DigestError(f"the image config lists the layers {diff_ids}, "
                              f"but the layers stored are {[layer.diff_id for layer in layers]}")
        for tag in tags:
            check_tag(tag)
        config_digest = self._write_blob(config_raw)
        config_desc = mf.Descriptor(mf.DOCKER_CONFIG, config_digest, len(config_raw))
        if manifest_raw is None:
            manifest_raw = make_manifest(config_desc, [layer.blob for layer in layers])
        else:
            _check_manifest(manifest_raw, config_digest, layers)
        manifest_digest = self._write_blob(manifest_raw)
        created = config.get("created")
        record = ImageRecord(id=config_digest, repo_tags=tuple(tags), manifest_digest=manifest_digest,
                             config_digest=config_digest, layers=tuple(diff_ids),
                             created=created if isinstance(created, str) else "")
        self._pending.append(record)
        return record

    def _write_blob(self, data: bytes) -> str:
        digest = mf.sha256_digest(data)
        if not self.store.has_blob(digest):
            self.store.write_blob(digest, data)
            self._blobs.append(digest)
        return digest

    def commit(self) -> list[ImageRecord]:
        """Write the image records; from here on the images and what they use are the store's."""
        records = [self.store.put_image(r) for r in self._pending]
        self._done = True
        self._pending = []
        return records


def store_local_image(store: Store, layer_tars: Sequence[str | os.PathLike[str]], config: Mapping[str, Any],
                      tags: Sequence[str] = ()) -> ImageRecord:
    """Store an image made here from the uncompressed LAYER_TARS (bottom first) and CONFIG.

    CONFIG is the image config without ``rootfs``, which is filled in from the layers;
    its ``history``, where present, must have one entry without ``empty_layer`` per layer.
    TAGS (``name[:tag]``) point at the image once it is stored.
    """
    history = config.get("history")
    if isinstance(history, list):
        with_layer = sum(1 for h in history if not (isinstance(h, dict) and h.get("empty_layer")))
        if with_layer != len(layer_tars):
            raise ValueError(f"the history has {with_layer} entries for layers, but there are {len(layer_tars)} layers")
    with Ingest(store) as ingest:
        layers = [ingest.add_layer_tar(path) for path in layer_tars]
        full = {k: v for k, v in config.items() if k != "rootfs"}
        full["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
        ingest.add_image(config_bytes(full), layers, tags)
        return ingest.commit()[0]


def make_manifest(config: mf.Descriptor, layers: Sequence[mf.Descriptor]) -> bytes:
    """Docker schema 2 where every layer is gzip (what ``docker push`` sends), else OCI."""
    docker = all(mf.layer_compression(d.media_type) == compression.GZIP for d in layers)
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST if docker else mf.OCI_MANIFEST,
        "config": _descriptor(config, mf.DOCKER_CONFIG if docker else mf.OCI_CONFIG),
        "layers": [_descriptor(d, _layer_type(d.media_type, docker)) for d in layers],
    }
    return json.dumps(doc, indent=3).encode()


def _descriptor(d: mf.Descriptor, media_type: str) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "size": d.size, "digest": d.digest}
    if d.urls:
        out["urls"] = list(d.urls)
    return out


def _layer_type(media_type: str, docker: bool) -> str:
    kind = mf.layer_compression(media_type)
    foreign = mf.is_foreign_layer(media_type)
    if docker:
        return mf.DOCKER_FOREIGN_LAYER_GZIP if foreign else mf.DOCKER_LAYER_GZIP
    if kind == compression.GZIP:
        return mf.OCI_FOREIGN_LAYER_GZIP if foreign else mf.OCI_LAYER_GZIP
    if kind == compression.ZSTD:
        return mf.OCI_FOREIGN_LAYER_ZSTD if foreign else mf.OCI_LAYER_ZSTD
    return mf.OCI_FOREIGN_LAYER if foreign else mf.OCI_LAYER


def oci_manifest(manifest: mf.Manifest) -> bytes:
    """MANIFEST as an OCI image manifest: as it is if it is one, else the same blobs under OCI media types."""
    if manifest.media_type == mf.OCI_MANIFEST:
        return manifest.raw
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST,
        "config": _descriptor(manifest.config, mf.OCI_CONFIG),
        "layers": [_descriptor(d, _layer_type(d.media_type, False)) for d in manifest.layers],
    }
    return json.dumps(doc, indent=3).encode()


def _check_manifest(raw: bytes, config_digest: str, layers: Sequence[StoredLayer]) -> None:
    parsed = mf.parse(raw)
    if not isinstance(parsed, mf.Manifest):
        raise DigestError("an image manifest was expected, not an index")
    if parsed.config.digest != config_digest:
        raise DigestError(f"the manifest names the config {parsed.config.digest}, not {config_digest}")
    if [d.digest for d in parsed.layers] != [layer.blob.digest for layer in layers]:
        raise DigestError("the manifest lists other layer blobs than the ones stored")


# -- configs ----------------------------------------------------------------------------------


def parse_config(raw: bytes, what: str) -> dict[str, Any]:
    """RAW as an image config object; DigestError (naming WHAT) where it is not one."""
    if len(raw) > _MAX_CONFIG:
        raise DigestError(f"{what} is {len(raw)} bytes, over the {_MAX_CONFIG} limit")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise DigestError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DigestError(f"{what} is not a JSON object")
    return doc


def config_diff_ids(config: Mapping[str, Any], what: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if diff_ids is None and isinstance(rootfs, dict) and "diff_ids" not in rootfs:
        diff_ids = []
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise DigestError(f"{what} has no rootfs.diff_ids list")
    for d in diff_ids:
        mf.validate_digest(d)
    return diff_ids


def check_tag(tag: str) -> reference.Reference:
    """TAG parsed as a name to tag an image with; a digest is not a tag."""
    ref = reference.parse(tag)
    if ref.digest is not None:
        raise RootlessError(f"cannot tag an image as {tag}: a tag cannot hold a digest",
                            "give a name with a tag, e.g. myimage:1.0")
    return ref


# -- reading images back ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageLayer:
    """One layer of a stored image: its diff_id, its uncompressed size and its blob."""

    diff_id: str
    size: int
    blob: mf.Descriptor


@dataclass(frozen=True)
class LocalImage:
    """A stored image as ``save`` needs it: config (raw and parsed), manifest, layers bottom first."""

    record: ImageRecord
    config_raw: bytes
    config: dict[str, Any]
    manifest: mf.Manifest
    layers: tuple[ImageLayer, ...]


def read_image(store: Store, image: str | ImageRecord) -> LocalImage:
    """The image IMAGE (a name, an id, or its record), checked to be complete in the store."""
    record = store.resolve(image) if isinstance(image, str) else image
    hint = "remove the image and pull or load it again"
    if not record.manifest_digest:
        raise StoreError(f"image {record.id} has no manifest in the store", hint)
    try:
        raw = store.blob_path(record.manifest_digest).read_bytes()
        config_raw = store.blob_path(record.config_digest).read_bytes()
    except OSError as e:
        raise StoreError(f"cannot read image {record.id}: {e.strerror or e}", hint) from None
    try:
        parsed = mf.parse(raw, None, record.manifest_digest)
        if not isinstance(parsed, mf.Manifest):
            raise StoreError(f"the manifest of image {record.id} is an index, not an image manifest", hint)
        if mf.sha256_digest(config_raw) != record.config_digest or parsed.config.digest != record.config_digest:
            raise StoreError(f"the config of image {record.id} does not match its digest", hint)
        config = parse_config(config_raw, f"the config of image {record.id}")
        diff_ids = config_diff_ids(config, f"the config of image {record.id}")
    except (DigestError, mf.ManifestError) as e:
        raise StoreError(f"image {record.id} is damaged in the store: {e.message}", hint) from None
    if diff_ids != list(record.layers) or len(parsed.layers) != len(diff_ids):
        raise StoreError(f"image {record.id}: its config, manifest and record list different layers", hint)
    layers = tuple(ImageLayer(d, store.layer_info(d).size, blob) for d, blob in zip(diff_ids, parsed.layers))
    return LocalImage(record, config_raw, config, parsed, layers)


@contextmanager
def open_layer(store: Store, layer: ImageLayer) -> Iterator[LayerReader]:
    """LAYER's tar, uncompressed and checked: see ``LayerReader``."""
    kind = mf.layer_compression(layer.blob.media_type)
    try:
        f = open(store.blob_path(layer.blob.digest), "rb")
    except OSError as e:
        raise StoreError(f"cannot read layer blob {layer.blob.digest}: {e.strerror or e}") from None
    with f:
        yield LayerReader(compression.decompress(f, kind), layer)


class LayerReader(io.RawIOBase):
    """A stored layer's tar, uncompressed.  Reaching its end (or ``finish``) raises StoreError
    unless it was exactly the layer (its diff_id and size): a damaged blob never passes
    for a good one."""

    def __init__(self, src: BinaryIO, layer: ImageLayer) -> None:
        self._src = src
        self._layer = layer
        self._hash = hashlib.sha256()
        self._size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        try:
            data = self._src.read(len(view))
        except compression.CorruptStream as e:
            raise self._damaged(str(e)) from None
        if not data:
            if self._size != self._layer.size or "sha256:" + self._hash.hexdigest() != self._layer.diff_id:
                raise self._damaged(f"it holds {self._size} bytes with digest sha256:{self._hash.hexdigest()}")
            return 0
        view[:len(data)] = data
        self._hash.update(data)
        self._size += len(data)
        return len(data)

    def finish(self) -> None:
        """Read to the end, so the check runs even where the reader stopped at the size it expected."""
        buf = bytearray(_CHUNK)
        while self.readinto(buf):
            pass

    def _damaged(self, why: str) -> StoreError:
        return StoreError(f"layer {self._layer.diff_id} (blob {self._layer.blob.digest}) is damaged: {why}",
                          "remove the image and pull or load it again")


def stage_dir(store: Store, prefix: str) -> Path:
    """A new directory in the store's tmp/, on the store's file system: what is moved from it into the store is a rename."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=store.tmp_dir))
