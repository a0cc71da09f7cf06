"""The build cache: which image a build step made last time, kept on disk in the store.

A step's key hashes everything its result depends on: the image it starts from, the
instruction as expanded, the build args it can see, and for COPY and ADD the content
and metadata of what it copies (``hash_tree``).  The entry is the image config the step
produced and the layers it lists, so a hit gives the very same image id as last time.
Entries are files written whole (temp + fsync + rename); one whose layers the store has
since collected is a miss, and the step runs again.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from ..image import manifest as mf
from ..image.local import StoredLayer

if TYPE_CHECKING:
    from ..image.store import Store
    from ..runtime.tree import Tree

CACHE_DIR = "build-cache"


@dataclass(frozen=True)
class Entry:
    """What a step made: its image config (history and rootfs included) and the layers it lists."""

    config: dict[str, Any]
    layers: tuple[StoredLayer, ...]


def step_key(parent: str, instruction: str, args: Mapping[str, str], sources: str = "") -> str:
    """The cache key of a step: its parent image id, the expanded instruction, the build args it
    can see, and the hash of what it copies."""
    text = json.dumps([parent, instruction, sorted(args.items()), sources], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """Entries under STORE's root, one JSON file per key."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = Path(store.root) / CACHE_DIR

    def get(self, key: str) -> Entry | None:
        """The entry for KEY, or None: absent, unreadable, or its layers are gone from the store."""
        try:
            raw = json.loads((self.dir / key).read_bytes())
            layers = tuple(StoredLayer(str(item["diff_id"]),
                                       mf.Descriptor(str(item["mediaType"]), str(item["digest"]), int(item["size"])))
                           for item in raw["layers"])
            config = raw["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(config, dict):
            return None
        for layer in layers:
            if not (self.store.has_layer(layer.diff_id) and self.store.has_blob(layer.blob.digest)):
                return None
        return Entry(config, layers)

    def put(self, key: str, config: Mapping[str, Any], layers: Sequence[StoredLayer]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"config": config, "layers": [
            {"diff_id": layer.diff_id, "mediaType": layer.blob.media_type, "digest": layer.blob.digest,
             "size": layer.blob.size} for layer in layers]}, separators=(",", ":")).encode()
        from ..runtime.containers import write_atomic

        write_atomic(self.dir / key, data)


def hash_tree(tree: Tree, rels: Sequence[bytes], names: Sequence[bytes]) -> str:
    """A digest of the objects at RELS of TREE and everything below them, each under the name
    it will have (NAMES): type, mode, link target and content.  Owners and times are left
    out: COPY gives the files its own owner, and a fresh checkout must still hit the cache."""
    h = xxhash.xxh3_128()

    def one(rel: bytes, name: bytes) -> None:
        meta = tree.meta(rel)
        if meta is None:
            return
        h.update(b"%s\0%o\0%o\0" % (name, meta.kind, meta.perm))
        if meta.kind == stat.S_IFLNK:
            h.update(tree.readlink(rel) + b"\0")
        elif meta.kind == stat.S_IFREG:
            with tree.open(rel) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            h.update(b"\0%d\0" % meta.size)
        elif meta.is_dir:
            for child in tree.names(rel):
                one(rel + b"/" + child if rel else child, name + b"/" + child)

    for rel, name in zip(rels, names):
        one(rel, name)
    return h.hexdigest()
