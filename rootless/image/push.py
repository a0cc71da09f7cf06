"""Pushing an image: each layer blob (HEAD first, then mount or upload), the config, then the manifest.

The manifest pushed is the one stored with the image, byte for byte, so the digest a
registry reports is the one ``images --digests`` shows and a pull elsewhere gets the
same image.  Progress goes out as ``pull.Event`` values, docker's push statuses.
"""

from __future__ import annotations

import trio

from ..errors import StoreError
from . import manifest as mf
from .events import Event, Report, short_id
from .reference import Reference
from .registry import RegistryClient
from .store import ImageRecord, Store

MAX_UPLOADS = 5   # dockerd's max-concurrent-uploads


async def push(store: Store, client: RegistryClient, image: ImageRecord, dest: Reference, *,
               report: Report = lambda event: None) -> tuple[str, int]:
    """Push IMAGE to DEST (a tag, or none for ``latest``); returns (manifest digest, manifest size)."""
    if not image.manifest_digest or not store.has_blob(image.manifest_digest):
        raise StoreError(f"image {short_id(image.id)} has no manifest in the store", "pull or build it again")
    raw = store.blob_path(image.manifest_digest).read_bytes()
    manifest = mf.parse(raw, None, image.manifest_digest)
    if not isinstance(manifest, mf.Manifest):
        raise StoreError(f"image {short_id(image.id)}: its stored manifest is a list", "pull it again")
    sources = _mount_sources(image, dest)
    uploads = trio.CapacityLimiter(MAX_UPLOADS)
    blobs = [d for d in manifest.layers if not mf.is_foreign_layer(d.media_type)]
    for desc in blobs:
        report(Event(short_id(desc.digest), "Preparing"))

    async def one(desc: mf.Descriptor, shown: bool) -> None:
        sid = short_id(desc.digest)
        async with uploads:
            if shown:
                report(Event(sid, "Pushing", 0, desc.size))
            outcome = await client.upload_blob(dest, desc.digest, store.blob_path(desc.digest),
                                               mount_from=sources[0] if sources else None)
        if shown:
            if outcome == "exists":
                report(Event(sid, "Layer already exists"))
            elif outcome == "mounted":
                report(Event(sid, f"Mounted from {sources[0].partition('/')[2]}"))
            else:
                report(Event(sid, "Pushed"))

    async with trio.open_nursery() as nursery:
        for desc in blobs:
            nursery.start_soon(one, desc, True)
        nursery.start_soon(one, manifest.config, False)
    tag = dest.tag or "latest"
    digest = await client.put_manifest(dest, tag, raw, manifest.media_type)
    await trio.to_thread.run_sync(store.add_repo_digest, image.id, f"{dest.repository}@{digest}")
    return digest, len(raw)


def _mount_sources(image: ImageRecord, dest: Reference) -> list[str]:
    """Repositories on DEST's registry that hold this image's blobs: a cross-repository mount is cheap."""
    out = []
    for name in image.repo_digests:
        repo = name.rsplit("@", 1)[0]
        domain, _, path = repo.partition("/")
        if domain == dest.domain and path != dest.path and repo not in out:
            out.append(repo)
    return out[:1]

