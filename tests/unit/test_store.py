"""The image store: content addressing, atomic writes, names and ids, gc, concurrent and killed unpacks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from fusefs.tarindex import TarIndex
from rootless.config import Config
from rootless.errors import AmbiguousImageId, DigestError, ImageNotFound, InvalidReference, StoreError
from rootless.image.store import ImageRecord, Store

fork = multiprocessing.get_context("fork")


def config(tmp_path: Path) -> Config:
    return Config(tmp_path / "data", tmp_path / "config", tmp_path / "run")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def store_layer(store: Store, files: dict[str, bytes]) -> tuple[str, str]:
    """Store FILES as a gzip layer blob and unpack it: (blob digest, diff_id)."""
    blob = gzip.compress(layer_tar(files), mtime=0)
    store.write_blob(digest(blob), blob)
    return digest(blob), store.unpack_layer(digest(blob))


def add_image(store: Store, tag: str | None, layers: list[dict[str, bytes]], salt: str = "") -> ImageRecord:
    blobs, diff_ids = zip(*(store_layer(store, files) for files in layers)) if layers else ((), ())
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": list(diff_ids)}, "salt": salt}).encode()
    store.write_blob(digest(cfg), cfg)
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": digest(cfg)},
                           "layers": [{"digest": b} for b in blobs]}).encode()
    store.write_blob(digest(manifest), manifest)
    repo = tag.rsplit(":", 1)[0] if tag else None
    record = ImageRecord(id=digest(cfg), repo_tags=(tag,) if tag else (),
                         repo_digests=(f"{repo}@{digest(manifest)}",) if repo else (),
                         manifest_digest=digest(manifest), config_digest=digest(cfg), layers=tuple(diff_ids),
                         created="2024-01-01T00:00:00Z")
    return store.put_image(record)


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# -- layout and version ----------------------------------------------------------------------


def test_open_makes_the_layout_and_stamps_the_version(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    root = tmp_path / "data/storage"
    assert store.root == root
    assert (root / "version").read_text() == "1\n"
    for d in ("blobs/sha256", "layers", "tmp", "locks"):
        assert (root / d).is_dir()
    assert Store.open(config(tmp_path)).images() == []


def test_a_store_of_another_version_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data/storage"
    root.mkdir(parents=True)
    (root / "version").write_text("2\n")
    with pytest.raises(StoreError, match="format version '2'") as info:
        Store.open(config(tmp_path))
    assert info.value.hint and "--root" in info.value.hint
    assert listing(root) == ["version"], "a refused store is not touched"


def test_stale_staging_is_cleaned_at_open(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    old, fresh = store.tmp_dir / "old", store.tmp_dir / "fresh"
    old.mkdir()
    (old / "f").write_text("x")
    fresh.write_text("y")
    os.utime(old, (time.time() - 7200,) * 2)
    Store.open(config(tmp_path))
    assert listing(store.tmp_dir) == ["fresh"]


# -- blobs ---------------------------------------------------------------------------------------


def test_write_blob_checks_the_digest(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    with pytest.raises(DigestError, match="does not match"):
        store.write_blob(digest(b"other"), b"data")
    assert listing(store.blobs_dir) == [] and listing(store.tmp_dir) == []
    with pytest.raises(DigestError, match="invalid digest"):
        store.write_blob("md5:abc", b"data")
    path = store.write_blob(digest(b"data"), b"data")
    assert path.read_bytes() == b"data" and store.blob_path(digest(b"data")) == path
    assert store.write_blob(digest(b"data"), b"data") == path
    assert store.has_blob(digest(b"data")) and not store.has_blob(digest(b"nope"))
    with pytest.raises(StoreError, match="not in the image store"):
        store.blob_path(digest(b"nope"))


def test_ingest_blob_moves_a_verified_file_in(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    bad = store.tmp_dir / "download-1"
    bad.write_bytes(b"corrupted")
    with pytest.raises(DigestError):
        store.ingest_blob(digest(b"payload"), bad)
    assert bad.read_bytes() == b"corrupted" and not store.has_blob(digest(b"payload"))
    good = store.tmp_dir / "download-2"
    good.write_bytes(b"payload")
    path = store.ingest_blob(digest(b"payload"), good)
    assert path.read_bytes() == b"payload" and not good.exists()


def test_a_failed_write_leaves_the_old_state_and_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(config(tmp_path))
    first = add_image(store, "docker.io/library/first:latest", [{"a": b"1"}])
    before = store.images_file.read_bytes()
    cfg = b'{"rootfs": {"diff_ids": []}}'
    store.write_blob(digest(cfg), cfg)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # the disk fails mid-write
    with pytest.raises(StoreError, match="cannot write"):
        store.put_image(ImageRecord(id=digest(cfg), repo_tags=("docker.io/library/second:latest",),
                                    config_digest=digest(cfg)))
    with pytest.raises(StoreError, match="cannot write"):
        store.write_blob(digest(b"new blob"), b"new blob")
    monkeypatch.undo()
    assert store.images_file.read_bytes() == before
    assert store.images() == [first]
    assert not store.has_blob(digest(b"new blob"))
    assert listing(store.tmp_dir) == []


# -- names and ids ---------------------------------------------------------------------------------


def test_tag_untag_and_resolve(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    busybox = add_image(store, "docker.io/library/busybox:latest", [{"bin/sh": b"sh"}])
    other = add_image(store, "registry.example:5000/ns/app:1.0", [{"app": b"app"}])
    hexid = busybox.id.removeprefix("sha256:")

    for name in ("busybox", "busybox:latest", "docker.io/library/busybox:latest", "index.docker.io/busybox",
                 busybox.id, hexid, hexid[:12], "sha256:" + hexid[:4], busybox.repo_digests[0]):
        assert store.resolve(name).id == busybox.id, name
    assert store.resolve("registry.example:5000/ns/app:1.0").id == other.id

    store.tag("myapp:v1", hexid[:8])
    assert store.resolve("docker.io/library/myapp:v1").id == busybox.id
    moved = store.tag("busybox:latest", other.id)  # a tag names one image: it moves
    assert "docker.io/library/busybox:latest" in moved.repo_tags
    assert store.resolve("busybox").id == other.id
    assert "docker.io/library/busybox:latest" not in store.resolve(busybox.id).repo_tags

    after = store.untag("myapp:v1")
    assert after.id == busybox.id and after.repo_tags == ()
    assert store.resolve(busybox.id).id == busybox.id, "untagging keeps the image"
    with pytest.raises(ImageNotFound):
        store.resolve("myapp:v1")
    with pytest.raises(ImageNotFound):
        store.untag("myapp:v1")
    with pytest.raises(ImageNotFound):
        store.resolve(hexid[:3])  # too short to be an id, and no such name
    with pytest.raises(ImageNotFound):
        store.resolve("sha256:" + "0" * 64)
    with pytest.raises(InvalidReference):
        store.resolve("Not A Name")
    with pytest.raises(StoreError, match="digest"):
        store.tag("app@" + busybox.id, busybox.id)


def test_an_ambiguous_id_prefix_is_an_error(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    by_prefix: dict[str, bytes] = {}
    for n in range(100_000):  # two configs whose digests share 4 hex digits: birthday odds, a few hundred tries
        cfg = json.dumps({"rootfs": {"diff_ids": []}, "n": n}).encode()
        prefix = digest(cfg)[7:11]
        if prefix in by_prefix:
            break
        by_prefix[prefix] = cfg
    pair = [by_prefix[prefix], cfg]
    ids = []
    for i, c in enumerate(pair):
        store.write_blob(digest(c), c)
        ids.append(store.put_image(ImageRecord(id=digest(c), repo_tags=(f"docker.io/library/x{i}:latest",),
                                               config_digest=digest(c))).id)
    with pytest.raises(AmbiguousImageId, match="matches 2 images") as info:
        store.resolve(prefix)
    assert info.value.hint
    with pytest.raises(AmbiguousImageId):
        store.remove_image("sha256:" + prefix)
    for image_id in ids:
        longer = image_id[7:7 + 20]
        assert store.resolve(longer).id == image_id


def test_put_image_needs_its_layers_and_config(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    cfg = b"{}"
    with pytest.raises(StoreError, match="config blob"):
        store.put_image(ImageRecord(id=digest(cfg), config_digest=digest(cfg)))
    store.write_blob(digest(cfg), cfg)
    with pytest.raises(StoreError, match="layer"):
        store.put_image(ImageRecord(id=digest(cfg), config_digest=digest(cfg), layers=(digest(b"no layer"),)))
    assert store.images() == []


# -- layers and gc -----------------------------------------------------------------------------------


def test_unpack_layer_is_idempotent_and_stores_one_copy(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    raw = layer_tar({"etc/hosts": b"127.0.0.1 localhost\n"})
    gz, zst = gzip.compress(raw), zstandard.ZstdCompressor().compress(raw)
    for blob in (gz, zst, raw):
        store.write_blob(digest(blob), blob)
    diff_ids = {store.unpack_layer(digest(b)) for b in (gz, gz, zst, raw)}
    assert diff_ids == {digest(raw)}
    hexd = digest(raw)[7:]
    assert listing(store.layers_dir) == [hexd + ".json", hexd + ".tar", hexd + ".tar.idx"]
    assert store.layer_path(digest(raw)).read_bytes() == raw     # kept as the tar itself
    assert read_file(store, digest(raw), "etc/hosts") == b"127.0.0.1 localhost\n"
    info = store.layer_info(digest(raw))
    assert info.diff_id == digest(raw) and info.size == len(raw)
    assert listing(store.tmp_dir) == []


def test_gc_removes_only_what_no_image_needs(tmp_path: Path) -> None:
    store = Store.open(config(tmp_path))
    shared = {"bin/sh": b"shell" * 100}
    a = add_image(store, "docker.io/library/a:latest", [shared, {"only-a": b"A" * 5000}])
    b = add_image(store, "docker.io/library/b:latest", [shared, {"only-b": b"B" * 100}])
    blobs_before = set(os.listdir(store.blobs_dir))
    assert store.gc() == 0

    assert store.remove_image(a.id[7:15]).id == a.id
    with pytest.raises(ImageNotFound):
        store.resolve("a")
    freed = store.gc()
    assert freed > 5000
    assert not store.has_layer(a.layers[1])
    assert store.has_layer(a.layers[0]) and store.has_layer(b.layers[1])
    assert not store.has_blob(a.config_digest) and not store.has_blob(a.manifest_digest)
    kept = set(os.listdir(store.blobs_dir))
    assert kept < blobs_before and len(kept) == 4  # b's manifest, config and two layer blobs
    for diff_id in b.layers:
        assert store.layer_path(diff_id).is_file()
    assert store.gc() == 0

    store.remove_image(b.id)
    assert store.gc(keep_layers=[b.layers[0]]) > 0
    assert store.has_layer(b.layers[0]) and not store.has_layer(b.layers[1])
    assert listing(store.blobs_dir) == []


# -- concurrency and crashes -------------------------------------------------------------------------


def _unpack_in_child(cfg: Config, blob_digest: str, barrier: multiprocessing.synchronize.Barrier,
                     results: multiprocessing.Queue) -> None:
    store = Store.open(cfg)
    barrier.wait()
    results.put(store.unpack_layer(blob_digest))


def read_file(store: Store, diff_id: str, rel: str) -> bytes:
    """A file's content, as fusefs would serve it from the stored layer tar."""
    index = TarIndex.load(str(store.layer_path(diff_id)) + ".idx")
    entry = index.entry(rel.encode())
    assert entry is not None
    with open(store.layer_path(diff_id), "rb") as f:
        f.seek(entry.offset)
        return f.read(entry.size)


def names(store: Store, diff_id: str, rel: str) -> list[bytes]:
    directory = TarIndex.load(str(store.layer_path(diff_id)) + ".idx").directory(rel.encode())
    assert directory is not None
    return list(directory.children)


def big_layer(dirs: int, per_dir: int) -> bytes:
    return layer_tar({f"d{d}/f{f}": b"x" * 64 for d in range(dirs) for f in range(per_dir)})


def test_two_processes_unpacking_one_layer_both_succeed_with_one_copy(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store.open(cfg)
    blob = gzip.compress(big_layer(20, 100))
    store.write_blob(digest(blob), blob)
    barrier, results = fork.Barrier(2), fork.Queue()
    procs = [fork.Process(target=_unpack_in_child, args=(cfg, digest(blob), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    diff_ids = {results.get(timeout=5), results.get(timeout=5)}
    assert len(diff_ids) == 1
    hexd = diff_ids.pop()[7:]
    assert listing(store.layers_dir) == [hexd + ".json", hexd + ".tar", hexd + ".tar.idx"]
    assert len(names(store, "sha256:" + hexd, "d7")) == 100
    assert listing(store.tmp_dir) == []


def _unpack_forever(cfg: Config, blob_digest: str) -> None:
    Store.open(cfg).unpack_layer(blob_digest)


def test_a_killed_unpack_leaves_no_layer_and_a_later_one_succeeds(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = Store.open(cfg)
    blob = big_layer(100, 100)  # 10,000 files: a second or more to unpack
    store.write_blob(digest(blob), blob)
    proc = fork.Process(target=_unpack_forever, args=(cfg, digest(blob)))
    proc.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staged = list(store.tmp_dir.glob("stage-*/layer.tar"))
        if staged and staged[0].stat().st_size > 100_000:
            break
        time.sleep(0.002)
    else:
        pytest.fail("the unpack never started")
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL, "the unpack finished before it could be killed"

    assert not store.has_layer(digest(blob))
    assert listing(store.layers_dir) == []
    assert Store.open(cfg).unpack_layer(digest(blob)) == digest(blob)
    assert store.has_layer(digest(blob))
    assert len(names(store, digest(blob), "d99")) == 100
    Store.open(cfg)  # the dead unpack's staging holds no lock any more: it is cleaned
    assert listing(store.tmp_dir) == []


def test_gc_spares_what_a_pull_in_progress_stored(tmp_path: Path) -> None:
    """Between storing its blobs and writing its record, a pull's content belongs to no image."""
    store = Store.open(config(tmp_path))
    blob = b"a blob a pull just stored"
    with store.lease():
        store.write_blob(digest(blob), blob)
        other = Store.open(config(tmp_path))   # another process, running rmi or prune
        assert other.gc() == 0
        assert store.has_blob(digest(blob))
    assert Store.open(config(tmp_path)).gc() == len(blob)
    assert not store.has_blob(digest(blob))
