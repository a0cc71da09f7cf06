"""Small images made in the tests: layer tars from dicts, pushed with the registry client or written as an OCI layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import trio

from rootless.config import Config
from rootless.image import manifest as mf
from rootless.image.reference import parse
from rootless.image.registry import RegistryClient

CREATED = "2026-11-01T00:00:00Z"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes | str | None]) -> bytes:
    """A layer: bytes → a file (0644), a str → a symlink to it, None → a directory; parents implied."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@dataclass
class Image:
    config: bytes
    manifest: bytes
    diff_ids: list[str]
    blobs: dict[str, bytes] = field(default_factory=dict)   # every blob but the manifest, by digest

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)


def make_image(layers: list[dict[str, bytes | str | None]], config: dict[str, object] | None = None,
               history: list[dict[str, object]] | None = None, oci: bool = False) -> Image:
    tars = [layer_tar(files) for files in layers]
    gzipped = [gzip.compress(t, mtime=0) for t in tars]
    diff_ids = [sha256(t) for t in tars]
    if history is None:
        history = [{"created": CREATED, "created_by": f"/bin/sh -c #(nop) ADD file:{d[7:19]} in / "}
                   for d in diff_ids]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "created": CREATED,
                      "config": config if config is not None else {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}).encode()
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.OCI_MANIFEST if oci else mf.DOCKER_MANIFEST,
        "config": {"mediaType": mf.OCI_CONFIG if oci else mf.DOCKER_CONFIG, "digest": sha256(cfg), "size": len(cfg)},
        "layers": [{"mediaType": mf.OCI_LAYER_GZIP if oci else mf.DOCKER_LAYER_GZIP, "digest": sha256(b),
                    "size": len(b)} for b in gzipped],
    }
    blobs = {sha256(b): b for b in [cfg, *gzipped]}
    return Image(cfg, json.dumps(doc, indent=3).encode(), diff_ids, blobs)


def push(host: str, name: str, image: Image, tmp: Path, creds: tuple[str, str] | None = None) -> str:
    """Push IMAGE as HOST/NAME with the registry client; returns the manifest digest."""
    ref = parse(f"{host}/{name}")
    tmp.mkdir(parents=True, exist_ok=True)
    config = Config(tmp / "data", tmp / "config", tmp / "run")

    async def go() -> str:
        async with RegistryClient(config, (lambda domain: creds) if creds else None) as rc:
            for digest, data in image.blobs.items():
                path = tmp / digest[7:]
                path.write_bytes(data)
                await rc.upload_blob(ref, digest, path)
            media = json.loads(image.manifest)["mediaType"]
            return await rc.put_manifest(ref, ref.tag or "latest", image.manifest, media)

    return trio.run(go)


def push_all(host: str, made: dict[str, Image], tmp: Path) -> dict[str, str]:
    """Push each image as HOST/NAME:latest; returns NAME -> the name to pull it by."""
    names = {}
    for name, image in made.items():
        push(host, f"{name}:latest", image, tmp / name)
        names[name] = f"{host}/{name}"
    return names


def write_oci_layout(directory: Path, image: Image, tag: str = "latest") -> None:
    """IMAGE as an OCI image layout, for skopeo to copy."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for digest, data in {**image.blobs, image.digest: image.manifest}.items():
        (blobs / digest[7:]).write_bytes(data)
    media = json.loads(image.manifest)["mediaType"]
    index = {"schemaVersion": 2, "manifests": [{"mediaType": media, "digest": image.digest, "size": len(image.manifest),
                                                "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (directory / "index.json").write_text(json.dumps(index))
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


def random_layer(size: int) -> dict[str, bytes | str | None]:
    return {"data/blob.bin": os.urandom(size)}


def busybox_rootfs() -> dict[str, bytes | str | None]:
    """A small root filesystem: static busybox with every applet linked in /bin, passwd and group."""
    import subprocess

    busybox = "/bin/busybox"
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    files: dict[str, bytes | str | None] = {"bin": None, "etc": None, "tmp": None, "root": None, "home": None}
    with open(busybox, "rb") as f:
        files["bin/busybox"] = f.read()
    for applet in applets:
        if applet != "busybox":
            files[f"bin/{applet}"] = "busybox"
    files["etc/passwd"] = (b"root:x:0:0:root:/root:/bin/sh\n"
                           b"app:x:1000:1000:app:/home/app:/bin/sh\n"
                           b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    files["etc/group"] = b"root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n"
    return files
