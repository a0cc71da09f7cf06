"""save, load and import: round trips through every format, compressed and streamed input,
several images in one archive, and hostile or broken archives that must leave the store as it was."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from rootless.cli import main
from rootless.config import Config
from rootless.errors import ArchiveError, RootlessError, StoreError
from rootless.image import archive, local
from rootless.image import manifest as mf
from rootless.image.store import Store

REPO = Path(__file__).resolve().parents[2]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hexof(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Link:
    target: str
    hard: bool = False


@dataclass(frozen=True)
class Device:
    pass


Members = dict[str, "bytes | Link | Device | None"]  # None: a directory


def tar_of(members: Members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in members.items():
            info = tarfile.TarInfo(name)
            if value is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(value, Link):
                info.type = tarfile.LNKTYPE if value.hard else tarfile.SYMTYPE
                info.linkname = value.target
                tar.addfile(info)
            elif isinstance(value, Device):
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = 1, 3
                tar.addfile(info)
            else:
                info.size = len(value)
                info.mode = 0o755
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def layer(files: dict[str, bytes]) -> bytes:
    return tar_of(dict(files))


LAYER_A = layer({"bin/hello": b"#!/bin/sh\necho hello\n", "etc/os-release": b"NAME=test\n"})
LAYER_B = layer({"app/data": b"x" * 5000})
HOSTILE = layer({"../escape": b"owned"})


def image_config(layers: list[bytes], **extra: object) -> bytes:
    doc = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/hello"], "Env": ["A=1"]},
           "rootfs": {"type": "layers", "diff_ids": [digest(x) for x in layers]}, **extra}
    return json.dumps(doc).encode()


def docker_members(images: list[tuple[list[bytes], list[str]]]) -> Members:
    """A docker-archive as docker < 25 writes it: <id>.json, <diff_id>/layer.tar, manifest.json."""
    members: Members = {}
    entries = []
    for n, (layers, tags) in enumerate(images):
        cfg = image_config(layers, n=n)
        members[hexof(cfg) + ".json"] = cfg
        for x in layers:
            members[hexof(x) + "/layer.tar"] = x
        entries.append({"Config": hexof(cfg) + ".json", "RepoTags": tags,
                        "Layers": [hexof(x) + "/layer.tar" for x in layers]})
    members["manifest.json"] = json.dumps(entries).encode()
    return members


def oci_members(layers: list[bytes], name: str | None = "localhost/oci:1") -> Members:
    blobs = [gzip.compress(x, mtime=0) for x in layers]
    cfg = image_config(layers)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                           "config": {"mediaType": mf.OCI_CONFIG, "digest": digest(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": mf.OCI_LAYER_GZIP, "digest": digest(b), "size": len(b)}
                                      for b in blobs]}).encode()
    entry: dict[str, object] = {"mediaType": mf.OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest)}
    if name:
        entry["annotations"] = {archive.REF_NAME: name}
    members: Members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
                        "index.json": json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()}
    for blob in [cfg, manifest, *blobs]:
        members["blobs/sha256/" + hexof(blob)] = blob
    return members


class Pipe:
    """A stream that can only be read, as stdin from a pipe: no seek, no tell, no peek."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._buf.read(min(size, 7000) if size > 0 else size)  # short reads too


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(Config(tmp_path / "data", tmp_path / "config", tmp_path / "run"))


def other_store(tmp_path: Path, name: str) -> Store:
    return Store.open_at(tmp_path / name)


def snapshot(store: Store) -> dict[str, list[str]]:
    """What the store holds, named: to show a failed load changed nothing."""
    out = {}
    for d in ("blobs/sha256", "layers", "diffids/sha256", "tmp"):
        path = store.root / d
        out[d] = sorted(os.listdir(path)) if path.is_dir() else []
    out["images"] = sorted(i.id for i in store.images())
    return out


def load_bytes(store: Store, data: bytes) -> list[archive.LoadedImage]:
    return archive.load(store, Pipe(data))


def save_bytes(store: Store, names: list[str], fmt: str = archive.DOCKER_ARCHIVE) -> bytes:
    out = io.BytesIO()
    archive.save(store, names, out, fmt)
    return out.getvalue()


def members_of(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = f.read() if f is not None else None
    return out


# -- store_local_image and reading back ---------------------------------------------------------


def test_local_image_is_stored_as_docker_push_would_send_it(store: Store, tmp_path: Path) -> None:
    paths = []
    for n, data in enumerate([LAYER_A, LAYER_B]):
        paths.append(tmp_path / f"l{n}.tar")
        paths[-1].write_bytes(data)
    history = [{"created_by": "a"}, {"created_by": "meta", "empty_layer": True}, {"created_by": "b"}]
    record = local.store_local_image(store, paths, {"os": "linux", "history": history}, ["localhost/made:1"])
    assert record.layers == (digest(LAYER_A), digest(LAYER_B))
    assert record.repo_tags == ("localhost/made:1",) and record.repo_digests == ()
    assert store.resolve("localhost/made:1").id == record.id
    manifest = mf.parse(store.blob_path(record.manifest_digest).read_bytes())
    assert isinstance(manifest, mf.Manifest) and manifest.media_type == mf.DOCKER_MANIFEST
    assert manifest.config.media_type == mf.DOCKER_CONFIG
    assert [d.media_type for d in manifest.layers] == [mf.DOCKER_LAYER_GZIP] * 2
    blob = store.blob_path(manifest.layers[0].digest).read_bytes()
    assert gzip.decompress(blob) == LAYER_A
    config = json.loads(store.blob_path(record.config_digest).read_bytes())
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(record.layers)}
    assert config["history"] == history
    assert all(p.exists() for p in paths), "the caller's tars stay"
    assert os.listdir(store.tmp_dir) == []
    # Reproducible: the same tars and config are the same image, blob for blob.
    again = local.store_local_image(store, paths, {"os": "linux", "history": history}, [])
    assert again.id == record.id and again.manifest_digest == record.manifest_digest


def test_local_image_history_must_match_its_layers(store: Store, tmp_path: Path) -> None:
    (tmp_path / "l.tar").write_bytes(LAYER_A)
    with pytest.raises(ValueError, match="history"):
        local.store_local_image(store, [tmp_path / "l.tar"], {"history": []}, [])


def test_read_image_gives_each_layer_uncompressed_and_checked(store: Store, tmp_path: Path) -> None:
    (tmp_path / "l.tar").write_bytes(LAYER_B)
    record = local.store_local_image(store, [tmp_path / "l.tar"], {"os": "linux"}, ["localhost/r:1"])
    image = local.read_image(store, "localhost/r:1")
    assert image.record == record and image.config["os"] == "linux"
    assert image.layers[0].diff_id == digest(LAYER_B) and image.layers[0].size == len(LAYER_B)
    with local.open_layer(store, image.layers[0]) as reader:
        assert reader.read() == LAYER_B
    # A blob damaged in the store does not pass for the layer.
    blob = store.blob_path(image.layers[0].blob.digest)
    blob.chmod(0o644)
    blob.write_bytes(gzip.compress(LAYER_B[:-512] + b"\1" * 512))
    with local.open_layer(store, image.layers[0]) as reader, pytest.raises(StoreError, match="damaged"):
        reader.read()
    with pytest.raises(StoreError, match="damaged"):
        save_bytes(store, ["localhost/r:1"])


# -- round trips --------------------------------------------------------------------------------


def imported(store: Store, tmp_path: Path, tag: str = "localhost/base:1", data: bytes = LAYER_A) -> str:
    return archive.import_rootfs(store, Pipe(data), tag, ["CMD [\"/bin/hello\"]", "ENV A=1"]).id


@pytest.mark.parametrize("fmt", [archive.DOCKER_ARCHIVE, archive.OCI_ARCHIVE])
def test_save_then_load_keeps_id_layers_config_and_tags(store: Store, tmp_path: Path, fmt: str) -> None:
    image_id = imported(store, tmp_path)
    store.tag("localhost/base:other", image_id)
    data = save_bytes(store, ["localhost/base:1"], fmt)
    assert data == save_bytes(store, ["localhost/base:1"], fmt), "the same image saves to the same bytes"
    fresh = other_store(tmp_path, "fresh")
    loaded = load_bytes(fresh, data)
    assert loaded == [archive.LoadedImage(image_id, ("localhost/base:1",))]
    original, copy = store.resolve(image_id), fresh.resolve("localhost/base:1")
    assert copy.id == original.id and copy.layers == original.layers
    assert fresh.blob_path(copy.config_digest).read_bytes() == store.blob_path(original.config_digest).read_bytes()
    with local.open_layer(fresh, local.read_image(fresh, copy).layers[0]) as reader:
        assert reader.read() == LAYER_A
    assert os.listdir(fresh.tmp_dir) == []


def test_docker_archive_layout(store: Store, tmp_path: Path) -> None:
    image_id = imported(store, tmp_path, "busybox:mine")
    members = members_of(save_bytes(store, ["busybox:mine"]))
    hexid, diff = image_id.removeprefix("sha256:"), hexof(LAYER_A)
    assert json.loads(members["manifest.json"] or b"") == [
        {"Config": f"{hexid}.json", "RepoTags": ["docker.io/library/busybox:mine"], "Layers": [f"{diff}/layer.tar"]}]
    assert members[f"{diff}/layer.tar"] == LAYER_A
    assert digest(members[f"{hexid}.json"] or b"") == image_id
    assert json.loads(members["repositories"] or b"") == {"docker.io/library/busybox": {"mine": diff}}


def test_oci_archive_layout(store: Store, tmp_path: Path) -> None:
    image_id = imported(store, tmp_path, "localhost/base:1")
    members = members_of(save_bytes(store, ["localhost/base:1"], archive.OCI_ARCHIVE))
    assert json.loads(members["oci-layout"] or b"") == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"] or b"")
    [entry] = index["manifests"]
    assert entry["annotations"][archive.REF_NAME] == "localhost/base:1"
    manifest = json.loads(members["blobs/sha256/" + entry["digest"].removeprefix("sha256:")] or b"")
    assert manifest["mediaType"] == mf.OCI_MANIFEST and manifest["config"]["digest"] == image_id
    assert [x["mediaType"] for x in manifest["layers"]] == [mf.OCI_LAYER_GZIP]
    for name, data in members.items():
        if name.startswith("blobs/sha256/") and data is not None:
            assert digest(data) == "sha256:" + name.rsplit("/", 1)[1]


def test_oci_dir_round_trip(store: Store, tmp_path: Path) -> None:
    image_id = imported(store, tmp_path)
    out = tmp_path / "layout"
    archive.save(store, ["localhost/base:1"], out, archive.OCI_DIR)
    assert sorted(os.listdir(out)) == ["blobs", "index.json", "oci-layout"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".layout")] == []
    with pytest.raises(RootlessError, match="not an empty directory"):
        archive.save(store, ["localhost/base:1"], out, archive.OCI_DIR)
    fresh = other_store(tmp_path, "fresh")
    assert archive.load_dir(fresh, out) == [archive.LoadedImage(image_id, ("localhost/base:1",))]


@pytest.mark.parametrize("compress", [
    lambda d: gzip.compress(d, mtime=0),
    lambda d: gzip.compress(d[:5000]) + gzip.compress(d[5000:]),  # two gzip members, as cat makes
    lambda d: zstandard.ZstdCompressor().compress(d),
    bz2.compress,
    lzma.compress,
], ids=["gzip", "gzip-members", "zstd", "bzip2", "xz"])
def test_compressed_archives_load_from_a_pipe(store: Store, compress: Callable[[bytes], bytes]) -> None:
    data = tar_of(docker_members([([LAYER_A, LAYER_B], ["localhost/c:1"])]))
    [loaded] = load_bytes(store, compress(data))
    assert loaded.tags == ("localhost/c:1",)
    assert store.resolve("localhost/c:1").layers == (digest(LAYER_A), digest(LAYER_B))


def test_oci_layout_with_uncompressed_and_zstd_layers(store: Store) -> None:
    members = oci_members([LAYER_A])
    # Rewrite the one layer as zstd, and the manifest to say so.
    blob = zstandard.ZstdCompressor().compress(LAYER_A)
    cfg = image_config([LAYER_A])
    manifest = json.dumps({"schemaVersion": 2, "config": {"mediaType": mf.OCI_CONFIG, "digest": digest(cfg),
                                                          "size": len(cfg)},
                           "layers": [{"mediaType": mf.OCI_LAYER_ZSTD, "digest": digest(blob),
                                       "size": len(blob)}]}).encode()
    members = {k: v for k, v in members.items() if not k.startswith("blobs/")}
    members.update({"blobs/sha256/" + hexof(b): b for b in (blob, cfg, manifest)})
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": mf.OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest),
        "annotations": {archive.REF_NAME: "latest"}}]}).encode()  # a bare tag names no image
    [loaded] = load_bytes(store, tar_of(members))
    assert loaded.tags == ()
    record = store.resolve(loaded.id)
    assert record.manifest_digest == digest(manifest), "an OCI manifest is kept as it came"
    # It saves again, as a docker archive too (the layer decompressed from zstd).
    assert members_of(save_bytes(store, [loaded.id]))[hexof(LAYER_A) + "/layer.tar"] == LAYER_A


def test_several_images_in_one_docker_archive(store: Store, tmp_path: Path) -> None:
    data = tar_of(docker_members([([LAYER_A], ["localhost/one:1", "localhost/one:2"]),
                                  ([LAYER_A, LAYER_B], ["example.com/ns/two:latest"]),
                                  ([LAYER_B], [])]))
    loaded = load_bytes(store, data)
    assert [x.tags for x in loaded] == [("localhost/one:1", "localhost/one:2"), ("example.com/ns/two:latest",), ()]
    assert len(store.images()) == 3
    # ...and out again: every tag of a repository for a bare name, none for an id.
    again = json.loads(members_of(save_bytes(store, ["localhost/one", "example.com/ns/two:latest",
                                                     loaded[2].id]))["manifest.json"] or b"")
    assert [e["RepoTags"] for e in again] == [["localhost/one:1", "localhost/one:2"],
                                               ["example.com/ns/two:latest"], []]
    fresh = other_store(tmp_path, "fresh")
    assert load_bytes(fresh, save_bytes(store, ["localhost/one:2", "example.com/ns/two"])) == [
        archive.LoadedImage(loaded[0].id, ("localhost/one:2",)),
        archive.LoadedImage(loaded[1].id, ("example.com/ns/two:latest",))]


def test_podman_style_archive_with_symlinked_legacy_layers(store: Store) -> None:
    """podman writes <diff_id>.tar at the top and links <legacy id>/layer.tar to it."""
    cfg = image_config([LAYER_A])
    members: Members = {
        hexof(LAYER_A) + ".tar": LAYER_A,
        hexof(cfg) + ".json": cfg,
        "legacy/layer.tar": Link("../" + hexof(LAYER_A) + ".tar"),
        "manifest.json": json.dumps([{"Config": hexof(cfg) + ".json", "RepoTags": ["localhost/p:1"],
                                      "Layers": ["legacy/layer.tar"]}]).encode(),
    }
    assert load_bytes(store, tar_of(members))[0].tags == ("localhost/p:1",)


def test_loading_twice_and_moving_a_tag(store: Store) -> None:
    first = load_bytes(store, tar_of(docker_members([([LAYER_A], ["localhost/t:1"])])))
    assert load_bytes(store, tar_of(docker_members([([LAYER_A], ["localhost/t:1"])]))) == first
    other = load_bytes(store, tar_of(docker_members([([LAYER_B], ["localhost/t:1"])])))
    assert store.resolve("localhost/t:1").id == other[0].id != first[0].id
    assert store.resolve(first[0].id).repo_tags == ()


# -- import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [lambda d: d, gzip.compress, lambda d: zstandard.ZstdCompressor().compress(d)],
                         ids=["plain", "gzip", "zstd"])
def test_import_makes_a_one_layer_image(store: Store, compress: Callable[[bytes], bytes]) -> None:
    record = archive.import_rootfs(store, Pipe(compress(LAYER_A)), "localhost/imp:1",
                                   ["CMD [\"/bin/hello\"]", "ENV A=1 B=\"two words\"", "EXPOSE 80",
                                    "WORKDIR /srv", "USER 1000", "LABEL k=v", "VOLUME /data",
                                    "ENTRYPOINT /bin/sh"], "made in a test")
    assert record.layers == (digest(LAYER_A),)
    config = json.loads(store.blob_path(record.config_digest).read_bytes())
    assert config["config"] == {"Cmd": ["/bin/hello"], "Env": ["A=1", "B=two words"], "ExposedPorts": {"80/tcp": {}},
                                "WorkingDir": "/srv", "User": "1000", "Labels": {"k": "v"},
                                "Volumes": {"/data": {}}, "Entrypoint": ["/bin/sh", "-c", "/bin/sh"]}
    assert config["history"] == [{"created": config["created"], "comment": "made in a test"}]
    assert config["os"] == "linux" and config["architecture"]
    assert store.resolve("localhost/imp:1").id == record.id


def test_import_without_a_name_or_message(store: Store) -> None:
    record = archive.import_rootfs(store, Pipe(LAYER_B), None, [], None)
    assert record.repo_tags == ()
    config = json.loads(store.blob_path(record.config_digest).read_bytes())
    assert config["history"][0]["comment"] == "Imported from -"


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not a tar archive at all" * 40, "corrupt header"),
    (HOSTILE, "has a '..' component"),
    (gzip.compress(LAYER_A)[:-20], "truncated"),
])
def test_import_refuses_what_is_no_root_file_system(store: Store, data: bytes, message: str) -> None:
    before = snapshot(store)
    with pytest.raises(ArchiveError, match=message):
        archive.import_rootfs(store, Pipe(data), "localhost/bad:1")
    assert snapshot(store) == before


def test_import_refuses_a_bad_change_before_reading(store: Store) -> None:
    class Unread:
        def read(self, size: int = -1, /) -> bytes:
            raise AssertionError("read")

    with pytest.raises(RootlessError, match="RUN"):
        archive.import_rootfs(store, Unread(), None, ["RUN true"])
    with pytest.raises(RootlessError, match="invalid reference"):
        archive.import_rootfs(store, Unread(), "Not/Valid", [])


# -- hostile and broken archives ---------------------------------------------------------------


def good_docker() -> Members:
    return docker_members([([LAYER_A, LAYER_B], ["localhost/x:1"])])


def with_layer(members: Members, index: int, data: bytes) -> Members:
    names = json.loads(members["manifest.json"])[0]["Layers"]  # type: ignore[arg-type]
    return {**members, names[index]: data}


def _broken_cases() -> dict[str, tuple[Callable[[], bytes], str]]:
    good = good_docker

    def other_content() -> bytes:
        return tar_of(with_layer(good(), 1, layer({"app/data": b"y" * 5000})))

    def missing_layer() -> bytes:
        m = good()
        del m[hexof(LAYER_B) + "/layer.tar"]
        return tar_of(m)

    def renamed_config() -> bytes:
        m = good()
        cfg_name = next(k for k in m if k.endswith(".json") and k != "manifest.json")
        cfg = json.loads(m[cfg_name])  # type: ignore[arg-type]
        cfg["config"]["Cmd"] = ["/bin/evil"]
        m[cfg_name] = json.dumps(cfg).encode()
        return tar_of(m)

    def traversal() -> bytes:
        return tar_of({"../evil": b"x", **good()})

    def absolute() -> bytes:
        return tar_of({"/etc/evil": b"x", **good()})

    def manifest_escapes() -> bytes:
        m = good()
        entries = json.loads(m["manifest.json"])  # type: ignore[arg-type]
        entries[0]["Layers"][0] = "../../etc/passwd"
        return tar_of({**m, "manifest.json": json.dumps(entries).encode()})

    def symlink_out() -> bytes:
        return tar_of(with_layer(good(), 0, Link("../../../etc/passwd")))  # type: ignore[arg-type]

    def symlink_absolute() -> bytes:
        return tar_of(with_layer(good(), 0, Link("/etc/passwd")))  # type: ignore[arg-type]

    def symlink_loop() -> bytes:
        m = good()
        name = hexof(LAYER_A) + "/layer.tar"
        return tar_of({**m, name: Link("../loop/layer.tar"), "loop/layer.tar": Link("../" + name)})

    def device() -> bytes:
        return tar_of({"dev": Device(), **good()})

    def truncated_gzip() -> bytes:
        return gzip.compress(tar_of(good()))[:-100]

    def truncated_tar() -> bytes:
        data = tar_of(good())
        return data[:len(data) // 2 // 512 * 512]  # cut between two members: tarfile alone would not notice

    def truncated_in_member() -> bytes:
        return tar_of(good())[:2000]

    def not_tar() -> bytes:
        return b"\x00garbage" * 1000

    def empty() -> bytes:
        return b""

    def no_manifest() -> bytes:
        return tar_of({"hello.txt": b"hi"})

    def bad_json() -> bytes:
        return tar_of({**good(), "manifest.json": b"[{"})

    def count_mismatch() -> bytes:
        m = good()
        entries = json.loads(m["manifest.json"])  # type: ignore[arg-type]
        entries[0]["Layers"].pop()
        return tar_of({**m, "manifest.json": json.dumps(entries).encode()})

    def bad_tag() -> bytes:
        m = good()
        entries = json.loads(m["manifest.json"])  # type: ignore[arg-type]
        entries[0]["RepoTags"] = ["no spaces allowed:1"]
        return tar_of({**m, "manifest.json": json.dumps(entries).encode()})

    def oci_bad_blob() -> bytes:
        m = oci_members([LAYER_A])
        name = "blobs/sha256/" + hexof(gzip.compress(LAYER_A, mtime=0))
        return tar_of({**m, name: gzip.compress(LAYER_B, mtime=0)})

    def oci_missing_blob() -> bytes:
        m = oci_members([LAYER_A])
        del m["blobs/sha256/" + hexof(gzip.compress(LAYER_A, mtime=0))]
        return tar_of(m)

    def oci_wrong_diff_id() -> bytes:
        m = oci_members([LAYER_A])
        blob = gzip.compress(LAYER_B, mtime=0)  # a blob that matches its own digest, but not the config
        index = json.loads(m["index.json"])  # type: ignore[arg-type]
        doc = json.loads(m["blobs/sha256/" + index["manifests"][0]["digest"].removeprefix("sha256:")])  # type: ignore[arg-type]
        doc["layers"][0].update(digest=digest(blob), size=len(blob))
        raw = json.dumps(doc).encode()
        index = {"schemaVersion": 2, "manifests": [{"mediaType": mf.OCI_MANIFEST, "digest": digest(raw),
                                                    "size": len(raw)}]}
        return tar_of({**m, "blobs/sha256/" + hexof(raw): raw, "blobs/sha256/" + hexof(blob): blob,
                       "index.json": json.dumps(index).encode()})

    return {
        "layer-content-altered": (other_content, "does not match its digest"),
        "missing-layer": (missing_layer, "has no"),
        "config-altered": (renamed_config, "does not match its digest"),
        "member-path-traversal": (traversal, "points outside the archive"),
        "member-absolute-path": (absolute, "absolute path"),
        "manifest-path-traversal": (manifest_escapes, "points outside the archive"),
        "symlink-leaves-archive": (symlink_out, "points outside the archive"),
        "symlink-absolute": (symlink_absolute, "absolute path"),
        "symlink-loop": (symlink_loop, "loop"),
        "device-member": (device, "neither a file"),
        "truncated-gzip": (truncated_gzip, "gzip data is truncated"),
        "truncated-tar-between-members": (truncated_tar, "truncated"),
        "truncated-tar-inside-member": (truncated_in_member, "truncated"),
        "not-a-tar": (not_tar, "not a tar archive"),
        "empty": (empty, "empty"),
        "no-manifest": (no_manifest, "neither manifest.json"),
        "manifest-not-json": (bad_json, "not valid JSON"),
        "layer-count-mismatch": (count_mismatch, "lists 2 layers"),
        "bad-tag": (bad_tag, "not valid"),
        "oci-blob-altered": (oci_bad_blob, "does not match its digest"),
        "oci-blob-missing": (oci_missing_blob, "has no"),
        "oci-diff-id-mismatch": (oci_wrong_diff_id, "does not match its digest"),
    }


BROKEN = _broken_cases()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_archive_is_refused_and_leaves_the_store_as_it_was(store: Store, case: str) -> None:
    load_bytes(store, tar_of(docker_members([([LAYER_B], ["localhost/kept:1"])])))  # something to keep
    before = snapshot(store)
    make, message = BROKEN[case]
    with pytest.raises(ArchiveError, match=message):
        load_bytes(store, make())
    assert snapshot(store) == before
    assert store.resolve("localhost/kept:1")


def test_a_hostile_layer_fails_after_others_were_stored_and_they_are_removed(store: Store) -> None:
    """Every digest matches, so storing starts; the last layer cannot be unpacked safely."""
    before = snapshot(store)
    data = tar_of(docker_members([([LAYER_A], ["localhost/ok:1"]), ([LAYER_B, HOSTILE], ["localhost/bad:1"])]))
    with pytest.raises(ArchiveError, match="cannot be unpacked.*has a '..' component"):
        load_bytes(store, data)
    assert snapshot(store) == before, "the first image is not loaded either: all or nothing"


def test_a_hostile_oci_layer_leaves_nothing(store: Store) -> None:
    before = snapshot(store)
    with pytest.raises(ArchiveError, match="has a '..' component"):
        load_bytes(store, tar_of(oci_members([LAYER_A, HOSTILE])))
    assert snapshot(store) == before


def test_names_that_are_not_images(store: Store) -> None:
    with pytest.raises(RootlessError, match="no such image"):
        save_bytes(store, ["localhost/none:1"])
    with pytest.raises(RootlessError, match="unknown archive format"):
        save_bytes(store, ["x"], "zip")


# -- the command line -----------------------------------------------------------------------------


def run(tmp_path: Path, *args: str, input: bytes | None = None) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(main, ["--root", str(tmp_path / "cli"), *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout_bytes, result.stderr


def test_cli_import_save_load(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar.gz"
    rootfs.write_bytes(gzip.compress(LAYER_A))
    code, out, err = run(tmp_path, "import", "-c", "CMD [\"/bin/hello\"]", "-m", "msg", str(rootfs), "mine:1")
    assert code == 0, err
    image_id = out.decode().strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    code, out, err = run(tmp_path, "import", "-", input=LAYER_B)
    untagged = out.decode().strip()
    assert code == 0 and untagged.startswith("sha256:")

    code, archive_bytes, err = run(tmp_path, "save", "mine:1", untagged)
    assert code == 0, err
    saved = tmp_path / "saved.tar"
    assert run(tmp_path, "save", "-o", str(saved), "--format", "oci-archive", "mine:1")[0] == 0
    assert members_of(saved.read_bytes())["oci-layout"]

    code, out, err = run(tmp_path, "rmi", "mine:1", untagged)
    assert code == 0, err
    code, out, err = run(tmp_path, "load", "-q", input=gzip.compress(archive_bytes))
    assert code == 0, err
    assert out.decode().splitlines() == ["Loaded image: mine:1", f"Loaded image ID: {untagged}"]
    code, out, err = run(tmp_path, "load", "-i", str(saved))
    assert (code, out.decode()) == (0, "Loaded image: mine:1\n")


@pytest.mark.parametrize("args, data, message", [
    (["load"], b"junk" * 300, "Error: the input is not a tar archive"),
    (["load", "-i", "/nonexistent"], None, "Error: cannot open /nonexistent"),
    (["import", "-c", "FROM x", "-"], LAYER_A, "Error: 'FROM' is not a Dockerfile instruction"),
    (["import", "http://example.com/rootfs.tar"], None, "Error: cannot import http://example.com/rootfs.tar"),
    (["save", "nothing:here"], None, "Error: no such image"),
    (["save", "--format", "oci-dir", "x"], None, "Error: the oci-dir format writes a directory"),
])
def test_cli_bad_input_exits_125_with_one_error_line(tmp_path: Path, args: list[str], data: bytes | None,
                                                      message: str) -> None:
    code, out, err = run(tmp_path, *args, input=data)
    assert code == 125
    assert err.splitlines()[0].startswith(message), err
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [err.splitlines()[0]]


def test_cli_save_refuses_a_terminal_and_keeps_no_partial_file(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(LAYER_A)
    assert run(tmp_path, "import", str(rootfs), "mine:1")[0] == 0
    primary, secondary = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", "from rootless.cli import main; main()", "--root", str(root),
                               "save", "mine:1"], stdout=secondary, stderr=subprocess.PIPE, cwd=REPO, timeout=60)
    finally:
        os.close(secondary)
        os.close(primary)
    assert proc.returncode == 125
    assert proc.stderr.decode().startswith("Error: Cowardly refusing to save to a terminal. Use the -o flag or redirect")
    # A save that fails half-way leaves no file behind.
    cli_store = Store.open_at(root / "storage")
    blob = local.read_image(cli_store, "mine:1").layers[0].blob.digest
    cli_store.blob_path(blob).unlink()
    code, out, err = run(tmp_path, "save", "-o", str(tmp_path / "out.tar"), "mine:1")
    assert code == 125 and "not in the image store" in err
    assert not [p for p in tmp_path.iterdir() if "out.tar" in p.name]
