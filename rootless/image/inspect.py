"""What ``image inspect`` and ``history`` show, in docker's JSON field names and row order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from . import reference
from .store import ImageRecord, Store


def read_config(store: Store, image: ImageRecord) -> dict[str, Any]:
    try:
        doc = json.loads(store.blob_path(image.config_digest).read_bytes())
    except ValueError as e:
        raise StoreError(f"the config of image {image.id} is corrupt: {e}", "remove the image and pull it again") from None
    if not isinstance(doc, dict):
        raise StoreError(f"the config of image {image.id} is not a JSON object", "remove the image and pull it again")
    return doc


def image_size(store: Store, image: ImageRecord) -> int:
    """Bytes of the image's unpacked layers, the number docker calls its size."""
    return sum(store.layer_info(d).size for d in image.layers)


def familiar_tag(name: str) -> str:
    """``docker.io/library/busybox:latest`` -> ``busybox:latest``; other registries keep their host."""
    ref = reference.parse(name)
    if ref.digest:
        return f"{ref.familiar}@{ref.digest}"
    return f"{ref.familiar}:{ref.tag}"


def container_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The image config's ``config`` in docker's inspect shape: every field present, null where unset."""
    c = cfg.get("config") or {}
    return {
        "Hostname": "", "Domainname": "",
        "User": c.get("User", ""),
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "ExposedPorts": c.get("ExposedPorts") or None,
        "Tty": False, "OpenStdin": False, "StdinOnce": False,
        "Env": c.get("Env"),
        "Cmd": c.get("Cmd"),
        "Healthcheck": c.get("Healthcheck") or None,
        "ArgsEscaped": c.get("ArgsEscaped") or None,
        "Image": c.get("Image", ""),
        "Volumes": c.get("Volumes") or None,
        "WorkingDir": c.get("WorkingDir", ""),
        "Entrypoint": c.get("Entrypoint"),
        "OnBuild": c.get("OnBuild"),
        "Labels": c.get("Labels"),
        "StopSignal": c.get("StopSignal") or None,
        "Shell": c.get("Shell") or None,
    }


def inspect(store: Store, image: ImageRecord) -> dict[str, Any]:
    cfg = read_config(store, image)
    out: dict[str, Any] = {
        "Id": image.id,
        "RepoTags": [familiar_tag(t) for t in image.repo_tags],
        "RepoDigests": [familiar_tag(d) for d in image.repo_digests],
        "Parent": "",
        "Comment": _last_comment(cfg),
        "Created": cfg.get("created", ""),
        "DockerVersion": cfg.get("docker_version", ""),
        "Author": cfg.get("author", ""),
        "Config": container_config(cfg),
        "Architecture": cfg.get("architecture", ""),
        "Os": cfg.get("os", ""),
        "Size": image_size(store, image),
        "GraphDriver": {"Name": "fusefs", "Data": {"LowerDir": ":".join(
            str(store.layer_path(d)) for d in reversed(image.layers))}},
        "RootFS": {"Type": "layers", "Layers": list(image.layers)},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
    if cfg.get("variant"):
        out["Variant"] = cfg["variant"]
    return out


def _last_comment(cfg: dict[str, Any]) -> str:
    history = cfg.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        return str(history[-1].get("comment", ""))
    return ""


@dataclass(frozen=True)
class HistoryRow:
    image: str          # the image id on the top row, "<missing>" below, as docker shows a pulled image
    created: str
    created_by: str
    size: int
    comment: str
    empty_layer: bool


def history(store: Store, image: ImageRecord) -> list[HistoryRow]:
    """Newest first; empty-layer rows (ENV, CMD...) have size 0, the others take the layers in order."""
    cfg = read_config(store, image)
    raw = cfg.get("history")
    entries = [h for h in raw if isinstance(h, dict)] if isinstance(raw, list) else []
    sizes = [store.layer_info(d).size for d in image.layers]
    rows = []
    layer = 0
    for h in entries:
        empty = bool(h.get("empty_layer"))
        size = 0
        if not empty:
            size = sizes[layer] if layer < len(sizes) else 0
            layer += 1
        rows.append(HistoryRow("<missing>", str(h.get("created", "")), str(h.get("created_by", "")), size,
                               str(h.get("comment", "")), empty))
    # Layers the history does not mention (an image made without history) still get a row each.
    for size in sizes[layer:]:
        rows.append(HistoryRow("<missing>", "", "", size, "", False))
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(image.id, top.created, top.created_by, top.size, top.comment, top.empty_layer)
    return rows
