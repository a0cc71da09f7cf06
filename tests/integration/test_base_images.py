"""scripts/base_images.py: its layouts are valid OCI, reproducible, and skopeo reads and pushes them.

The debian image is not built here (mmdebstrap takes half a minute and a mirror); its
packing path, an existing tar turned into a layer unchanged, is tested with a small tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from baseimages import bi, require
from registry import running_registry

BUSYBOX = Path("/bin/busybox")


def busybox_problem() -> str | None:
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing (as root: apt-get install busybox-static)"
    return None


def skopeo_problem() -> str | None:
    return None if shutil.which("skopeo") else "skopeo is not on PATH (as root: apt-get install skopeo)"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require("busybox-static", busybox_problem())
    return bi.build_busybox(tmp_path_factory.mktemp("cache"))


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_image(layout: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], bytes]:
    """index.json, the manifest, the config and the uncompressed layer, each blob checked against its descriptor."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    [descriptor] = index["manifests"]
    raw_manifest = blob(layout, descriptor["digest"])
    assert (sha256(raw_manifest), len(raw_manifest)) == (descriptor["digest"], descriptor["size"])
    manifest = json.loads(raw_manifest)
    raw_config = blob(layout, manifest["config"]["digest"])
    assert (sha256(raw_config), len(raw_config)) == (manifest["config"]["digest"], manifest["config"]["size"])
    config = json.loads(raw_config)
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    compressed = blob(layout, layer["digest"])
    assert (sha256(compressed), len(compressed)) == (layer["digest"], layer["size"])
    tar = gzip.decompress(compressed)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [sha256(tar)]}
    return index, manifest, config, tar


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_busybox_layout_is_valid_oci(busybox: Any) -> None:
    index, manifest, config, _ = read_image(busybox.path)
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    assert index["manifests"][0]["digest"] == busybox.manifest_digest
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert config["os"] == "linux" and config["architecture"] == bi.oci_arch()
    assert bi.verify_layout(busybox.path) == []


def test_busybox_tree_and_config(busybox: Any) -> None:
    _, _, config, tar = read_image(busybox.path)
    assert config["config"]["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") and "/bin" in e.split(":") for e in config["config"]["Env"])
    found = members(tar)
    assert all((m.uid, m.gid, m.mtime) == (0, 0, bi.EPOCH) for m in found.values())
    binary = found["bin/busybox"]
    assert binary.isreg() and binary.mode == 0o755 and binary.size == BUSYBOX.stat().st_size
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert "sh" in applets
    for applet in set(applets) - {"busybox"}:  # the list names busybox itself
        assert found[f"bin/{applet}"].issym() and found[f"bin/{applet}"].linkname == "busybox"
    tmp = found["tmp"]
    assert tmp.isdir() and tmp.mode == 0o1777
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        passwd = tf.extractfile("etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tf.extractfile("etc/group").read().decode()  # type: ignore[union-attr]
    assert [line.split(":")[:3] for line in passwd.splitlines()] == [["root", "x", "0"], ["nobody", "x", "65534"]]
    assert [line.split(":")[:3] for line in group.splitlines()] == [["root", "x", "0"], ["nobody", "x", "65534"]]


def test_rebuilds_give_the_same_digests_and_the_cache_is_reused(busybox: Any, tmp_path: Path) -> None:
    again = bi.build_busybox(tmp_path / "other-cache")
    assert not again.cached
    assert again.manifest_digest == busybox.manifest_digest
    assert again.layers == busybox.layers
    reused = bi.build_busybox(tmp_path / "other-cache")
    assert reused.cached and reused.path == again.path and reused.manifest_digest == busybox.manifest_digest


def test_a_damaged_cache_entry_is_reported_and_rebuilt(busybox: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = bi.build_busybox(cache)
    layer = first.path / "blobs" / "sha256" / first.layers[0].digest.removeprefix("sha256:")
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer.write_bytes(bytes(data))
    problems = bi.verify_layout(first.path)
    assert problems and first.layers[0].digest in problems[0]
    rebuilt = bi.build_busybox(cache)
    assert not rebuilt.cached
    assert rebuilt.manifest_digest == busybox.manifest_digest
    assert bi.verify_layout(rebuilt.path) == []


def test_an_existing_tar_becomes_the_layer_unchanged(tmp_path: Path) -> None:
    # What happens to mmdebstrap's output for debian:bookworm.
    source = tmp_path / "rootfs.tar"
    with tarfile.open(source, "w") as tf:
        for name, data in (("./etc/hostname", b"debian\n"), ("./usr/bin/true", b"\x7fELF...")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    spec = bi.ImageSpec(cmd=("bash",))
    digest, layer = bi.write_layout(tmp_path / "layout", "bookworm", lambda f: bi.write_tar_layer(source, f), spec)
    assert layer.diff_id == sha256(source.read_bytes())
    assert (layer.tar_size, layer.members) == (source.stat().st_size, 2)
    index, _, config, tar = read_image(tmp_path / "layout")
    assert tar == source.read_bytes()
    assert config["config"]["Cmd"] == ["bash"]
    assert index["manifests"][0]["digest"] == digest


def test_smallfiles_is_deterministic_and_nested(tmp_path: Path) -> None:
    entries = list(bi.smallfiles_entries(600))
    assert entries == list(bi.smallfiles_entries(600))
    files = [e for e in entries if e.kind == "file"]
    assert len(files) == 600
    assert all(e.path.count("/") == 3 and 32 <= len(e.data) <= 2048 for e in files)
    seen: set[str] = set()
    for e in entries:  # parents come before their children
        assert e.path.rsplit("/", 1)[0] in seen or "/" not in e.path
        seen.add(e.path)
    layout = bi.build_smallfiles(tmp_path / "cache", count=600)
    assert bi.verify_layout(layout.path) == []
    assert layout.layers[0].members == len(entries)


@pytest.mark.registry
def test_skopeo_reads_the_layout_and_pushes_it(busybox: Any, tmp_path: Path) -> None:
    require("skopeo", skopeo_problem())
    raw = subprocess.run(["skopeo", "inspect", "--raw", busybox.oci], capture_output=True, check=True).stdout
    assert sha256(raw) == busybox.manifest_digest

    with running_registry(tmp_path / "registry") as reg:
        ref = bi.push(busybox, reg.host)
        assert ref == f"{reg.host}/busybox:latest"
        request = urllib.request.Request(f"{reg.url}/v2/busybox/manifests/latest",
                                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request) as response:
            assert response.headers["Docker-Content-Digest"] == busybox.manifest_digest
            assert response.read() == raw
        for layer in busybox.layers:
            assert reg.blob_path(layer.digest).is_file()
        inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
                                   capture_output=True, text=True, check=True).stdout
        assert json.loads(inspected)["Digest"] == busybox.manifest_digest
