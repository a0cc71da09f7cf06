"""Pulling an image: manifest and platform, layers downloaded in parallel and unpacked as they arrive.

The caller gets progress as ``Event`` values (what docker's pull prints, one layer at a
time) and renders them; nothing here prints.  Every blob is verified while it downloads
(``RegistryClient.fetch_blob``) and moved into the store only then; each layer's diff_id
is checked against the image config before the image record is written, last, so an
interrupted pull leaves no visible image and the next pull resumes its downloads.

Two pulls of one image, in two processes, meet at a per-blob download lock: the second
waits, then finds the blob (and its layer) present.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from ..errors import ManifestError, StoreError
from . import manifest as mf
from .events import Event, Report, short_id
from .reference import Reference
from .registry import RegistryClient
from .store import ImageRecord, StagedLayer, Store

#: Layers downloaded at once, as dockerd's max-concurrent-downloads.
MAX_DOWNLOADS = 3


@dataclass(frozen=True)
class PullResult:
    image: ImageRecord
    digest: str          # what the reference resolved to (an index's digest for a multi-platform image)
    downloaded: bool     # False: every layer was present already ("Image is up to date")
    warnings: tuple[str, ...] = ()


async def pull(store: Store, client: RegistryClient, ref: Reference, *, platform: mf.Platform | None = None,
               report: Report = lambda event: None, max_downloads: int = MAX_DOWNLOADS) -> PullResult:
    """Pull REF into STORE and return the image record; REF has a tag or a digest."""
    with store.lease():   # gc must not take the blobs and layers before the record names them
        return await _pull(store, client, ref, platform=platform, report=report, max_downloads=max_downloads)


async def _pull(store: Store, client: RegistryClient, ref: Reference, *, platform: mf.Platform | None,
                report: Report, max_downloads: int) -> PullResult:
    raw, media_type, digest = await client.get_manifest(ref)
    parsed = mf.parse(raw, media_type, digest)
    blobs = [(digest, raw)]
    if isinstance(parsed, mf.Index):
        chosen = parsed.select(platform)
        raw2, media_type2, digest2 = await client.get_manifest(Reference(ref.domain, ref.path, None, chosen.digest))
        parsed = mf.parse(raw2, media_type2, digest2)
        if isinstance(parsed, mf.Index):
            raise ManifestError(f"the manifest list {digest} of {ref.familiar} points at another manifest list",
                                "nested indexes are not supported")
        blobs.append((digest2, raw2))
    manifest = parsed
    for layer in manifest.layers:
        if mf.is_foreign_layer(layer.media_type) and not layer.urls:
            raise ManifestError(f"layer {layer.digest} of {ref.familiar} is foreign and names no URL")

    config_raw = await _config_blob(store, client, ref, manifest.config)
    config = _parse_config(config_raw, manifest, ref)
    warnings = _platform_warnings(config, platform)

    diff_ids: list[str] = [""] * len(manifest.layers)
    fresh = [False] * len(manifest.layers)
    downloads = trio.CapacityLimiter(max_downloads)
    unpacks = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
    for layer in manifest.layers:  # in the manifest's order, as docker lists them
        present = store.layer_of_blob(layer.digest) is not None
        report(Event(short_id(layer.digest), "Already exists" if present else "Pulling fs layer"))

    async def one(i: int, layer: mf.Descriptor) -> None:
        diff_ids[i], fresh[i] = await _layer(store, client, ref, layer, downloads, unpacks, report)

    async with trio.open_nursery() as nursery:
        for i, layer in enumerate(manifest.layers):
            nursery.start_soon(one, i, layer)

    expected = config["rootfs"]["diff_ids"]
    for i, (got, want) in enumerate(zip(diff_ids, expected)):
        if got != want:
            raise StoreError(f"layer {i + 1} of {ref.familiar} ({manifest.layers[i].digest}) unpacked to {got}, "
                             f"but the image config says {want}", "the image is corrupt in the registry")
    for blob_digest, data in blobs:
        await trio.to_thread.run_sync(store.write_blob, blob_digest, data)
    record = ImageRecord(
        id=manifest.config.digest,
        repo_tags=(str(ref.with_tag(ref.tag)),) if ref.tag else (),
        repo_digests=(f"{ref.repository}@{digest}",),
        manifest_digest=manifest.digest,
        config_digest=manifest.config.digest,
        layers=tuple(diff_ids),
        created=str(config.get("created") or ""),
    )
    record = await trio.to_thread.run_sync(store.put_image, record)
    return PullResult(record, digest, any(fresh), tuple(warnings))


async def _config_blob(store: Store, client: RegistryClient, ref: Reference, desc: mf.Descriptor) -> bytes:
    if desc.size > mf.MAX_MANIFEST_SIZE:
        raise ManifestError(f"the config of {ref.familiar} is {desc.size} bytes, over the {mf.MAX_MANIFEST_SIZE} limit")
    if not store.has_blob(desc.digest):
        async with _download_lock(store, desc.digest):
            if not store.has_blob(desc.digest):
                staged = _staging(store, desc.digest)
                await client.fetch_blob(ref, desc, staged)
                await trio.to_thread.run_sync(lambda: store.ingest_blob(desc.digest, staged, verified=True))
    return store.blob_path(desc.digest).read_bytes()


async def _layer(store: Store, client: RegistryClient, ref: Reference, desc: mf.Descriptor,
                 downloads: trio.CapacityLimiter, unpacks: trio.CapacityLimiter, report: Report) -> tuple[str, bool]:
    """(diff_id, whether anything had to be downloaded or unpacked) of one layer."""
    sid = short_id(desc.digest)
    known = store.layer_of_blob(desc.digest)
    if known is not None:
        return known, False   # reported before the downloads began
    async with downloads:
        async with _download_lock(store, desc.digest):
            known = store.layer_of_blob(desc.digest)
            if known is not None:
                report(Event(sid, "Already exists"))
                return known, False
            if not store.has_blob(desc.digest):
                diff_id = await _download(store, client, ref, desc, unpacks, report)
                if diff_id is not None:
                    report(Event(sid, "Pull complete"))
                    return diff_id, True
    async with unpacks:
        report(Event(sid, "Extracting"))
        diff_id = await trio.to_thread.run_sync(store.unpack_layer, desc.digest)
    report(Event(sid, "Pull complete"))
    return diff_id, True


async def _download(store: Store, client: RegistryClient, ref: Reference, desc: mf.Descriptor,
                    unpacks: trio.CapacityLimiter, report: Report) -> str | None:
    """Download the layer blob into the store, unpacking it as it arrives where that can be done.

    The unpacker reads the ``.partial`` file behind the download and stages the layer;
    it is committed only after the whole blob's digest has been verified.  Returns the
    diff_id, or None where the layer is still to be unpacked from the stored blob (a
    resumed or restarted download, whose file is not one stream from its first byte).
    """
    sid = short_id(desc.digest)
    target = _staging(store, desc.digest)
    growing = None if Path(f"{target}.partial").exists() else _Growing(Path(f"{target}.partial"))
    outcome: dict[str, object] = {}

    def progress(done: int, total: int) -> None:
        report(Event(sid, "Downloading", done, total))
        if growing is not None:
            growing.advance(done)

    async def unpack_behind() -> None:
        assert growing is not None
        async with unpacks:
            try:
                outcome["staged"] = await trio.to_thread.run_sync(store.stage_layer, growing)
            except _Restarted:
                pass   # unpacked from the stored blob instead
            except Exception as e:  # noqa: BLE001 (raised once the download is known good)
                outcome["error"] = e

    async with trio.open_nursery() as nursery:
        if growing is not None:
            nursery.start_soon(unpack_behind)
        try:
            await client.fetch_blob(ref, desc, target, progress=progress)
        except BaseException:
            if growing is not None:
                growing.abort()
            raise
        if growing is not None:
            growing.finish()
    report(Event(sid, "Verifying Checksum"))
    await trio.to_thread.run_sync(lambda: store.ingest_blob(desc.digest, target, verified=True))
    report(Event(sid, "Download complete"))
    staged = outcome.get("staged")
    if isinstance(staged, StagedLayer):
        report(Event(sid, "Extracting"))
        try:
            return await trio.to_thread.run_sync(store.commit_layer, staged, desc.digest)
        finally:
            staged.discard()
    error = outcome.get("error")
    if isinstance(error, Exception):
        raise error
    return None


class _Restarted(Exception):
    """The download started over: the bytes behind the unpacker are not one stream any more."""


class _Growing(io.RawIOBase):
    """A download's ``.partial`` file, read by another thread as the download writes it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._cond = threading.Condition()
        self._available = 0
        self._done = False
        self._failed = False
        self._fd = -1
        self._pos = 0

    def advance(self, offset: int) -> None:
        """OFFSET bytes are in the file (called by the download, as it writes)."""
        with self._cond:
            if offset < self._available:
                self._failed = True    # truncated and begun again
            elif offset > 0 and self._fd < 0:
                # Opened now, while it exists under this name: a small blob is renamed into
                # the store before the reader's thread gets to it.
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            self._available = offset
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        with self._cond:
            while self._pos >= self._available and not self._done and not self._failed:
                self._cond.wait()
            if self._failed:
                raise _Restarted()
            available = self._available - self._pos
        if available <= 0:
            return b""
        data = os.pread(self._fd, available if size < 0 else min(size, available), self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


def _staging(store: Store, digest: str) -> Path:
    """A stable name, so that the download a killed pull left behind is resumed (``.partial``)."""
    return store.tmp_dir / f"pull-{digest.partition(':')[2]}"


@asynccontextmanager
async def _download_lock(store: Store, digest: str) -> AsyncIterator[None]:
    """An flock on the blob's download, waited for in a thread so the other downloads go on."""
    path = store.locks_dir / f"pull-{digest.partition(':')[2]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await trio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX, abandon_on_cancel=True)
        yield
    finally:
        os.close(fd)  # releases the lock


def _parse_config(raw: bytes, manifest: mf.Manifest, ref: Reference) -> dict:  # type: ignore[type-arg]
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"the image config of {ref.familiar} is not valid JSON: {e}") from None
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ManifestError(f"the image config of {ref.familiar} has no rootfs.diff_ids list")
    if len(diff_ids) != len(manifest.layers):
        raise ManifestError(f"the image config of {ref.familiar} lists {len(diff_ids)} layers, "
                            f"its manifest {len(manifest.layers)}", "the image is corrupt in the registry")
    for d in diff_ids:
        mf.validate_digest(d)
    return config


def _platform_warnings(config: dict, wanted: mf.Platform | None) -> list[str]:  # type: ignore[type-arg]
    os_name, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        return []
    got = mf.Platform.of(os_name, arch, str(config.get("variant") or ""))
    want = wanted or mf.host_platform()
    if got in want.compatible():
        return []
    return [f"The requested image's platform ({got}) does not match the detected host platform ({want}) "
            "and no specific platform was requested"]
