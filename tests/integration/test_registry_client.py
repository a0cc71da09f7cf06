"""The registry client against a real docker-registry: push, pull, resume, mount, errors, Basic and token auth."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from registry import Registry, free_port, running_registry, sha256, token_auth_problem
from rootless.config import Config
from rootless.errors import BlobUnknown, DigestError, ManifestUnknown, RegistryUnreachable, Unauthorized
from rootless.image import manifest as mf
from rootless.image.reference import Reference, parse
from rootless.image.registry import RegistryClient

pytestmark = pytest.mark.registry

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("open-registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("basic-registry"), auth="basic") as reg:
        yield reg


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    problem = token_auth_problem()
    if problem:
        pytest.skip(f"token auth needs openssl: {problem}")
    with running_registry(tmp_path_factory.mktemp("token-registry"), auth="token") as reg:
        yield reg


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(tmp_path / "data", tmp_path / "config", tmp_path / "run")


def client(config: Config, reg: Registry | None = None, creds: bool = True, **kw: object) -> RegistryClient:
    credentials = None
    if reg is not None and creds and reg.username is not None:
        user, password = reg.username, reg.password or ""
        credentials = lambda host: (user, password) if host == reg.host else None  # noqa: E731
    kw.setdefault("retry_delays", (0.01, 0.01, 0.01))
    return RegistryClient(config, credentials, **kw)  # type: ignore[arg-type]


def write_blob(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / f"blob-{len(list(tmp_path.iterdir()))}"
    path.write_bytes(data)
    return path, sha256(data)


def image_manifest(config_blob: bytes, layers: list[bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mf.DOCKER_MANIFEST,
        "config": {"mediaType": mf.DOCKER_CONFIG, "digest": sha256(config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": mf.DOCKER_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers],
    }
    return json.dumps(doc, indent=2).encode()


async def push_image(rc: RegistryClient, ref: Reference, tmp_path: Path, layers: list[bytes]) -> tuple[bytes, str]:
    config_blob = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                              "nonce": os.urandom(8).hex()}).encode()
    for data in [config_blob, *layers]:
        path, digest = write_blob(tmp_path, data)
        assert await rc.upload_blob(ref, digest, path) in ("pushed", "exists")
    raw = image_manifest(config_blob, layers)
    digest = await rc.put_manifest(ref, ref.tag or "latest", raw, mf.DOCKER_MANIFEST)
    return raw, digest


def test_push_and_pull_an_image(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{open_registry.host}/ns/app:v1")
    layer = os.urandom(100_000)

    async def main() -> None:
        async with client(config) as rc:
            raw, digest = await push_image(rc, ref, tmp_path, [layer])
            assert digest == sha256(raw)
            assert await rc.blob_exists(ref, sha256(layer))
            assert not await rc.blob_exists(ref, sha256(b"never pushed"))

            got, media_type, got_digest = await rc.get_manifest(ref)
            assert (got, media_type, got_digest) == (raw, mf.DOCKER_MANIFEST, digest)
            pinned = await rc.get_manifest(parse(f"{open_registry.host}/ns/app@{digest}"))
            assert pinned == (raw, mf.DOCKER_MANIFEST, digest)

            parsed = mf.parse(got, media_type, got_digest)
            assert isinstance(parsed, mf.Manifest)
            dest = tmp_path / "layer"
            seen: list[tuple[int, int]] = []
            moved = await rc.fetch_blob(ref, parsed.layers[0], dest, progress=lambda done, total: seen.append((done, total)))
            assert dest.read_bytes() == layer
            assert moved == len(layer)
            assert seen[-1] == (len(layer), len(layer))
            assert not Path(f"{dest}.partial").exists()

            path, blob_digest = write_blob(tmp_path, layer)
            assert await rc.upload_blob(ref, blob_digest, path) == "exists"

    run(main)


def test_chunked_upload(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{open_registry.host}/chunked/app:latest")
    data = os.urandom(300_000)
    path, digest = write_blob(tmp_path, data)

    async def main() -> None:
        async with client(config, chunk_threshold=64 * 1024, chunk_size=100_000) as rc:
            assert await rc.upload_blob(ref, digest, path) == "pushed"
            assert await rc.blob_exists(ref, digest)
            dest = tmp_path / "back"
            await rc.fetch_blob(ref, mf.Descriptor(mf.OCI_LAYER, digest, len(data)), dest)
            assert dest.read_bytes() == data

    run(main)


def test_resume_a_partial_download(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{open_registry.host}/resume/app:latest")
    data = os.urandom(200_000)
    path, digest = write_blob(tmp_path, data)
    dest = tmp_path / "resumed"
    Path(f"{dest}.partial").write_bytes(data[:150_000])

    async def main() -> int:
        async with client(config) as rc:
            await rc.upload_blob(ref, digest, path)
            return await rc.fetch_blob(ref, mf.Descriptor(mf.OCI_LAYER, digest, len(data)), dest)

    assert run(main) == 50_000, "only the missing tail should have been transferred"
    assert dest.read_bytes() == data
    assert not Path(f"{dest}.partial").exists()


def test_a_bad_partial_download_is_restarted(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{open_registry.host}/resume/bad:latest")
    data = os.urandom(100_000)
    path, digest = write_blob(tmp_path, data)
    dest = tmp_path / "restarted"
    Path(f"{dest}.partial").write_bytes(b"\0" * 40_000)

    async def main() -> int:
        async with client(config) as rc:
            await rc.upload_blob(ref, digest, path)
            return await rc.fetch_blob(ref, mf.Descriptor(mf.OCI_LAYER, digest, len(data)), dest)

    assert run(main) == 60_000 + 100_000
    assert dest.read_bytes() == data


def test_cross_repository_mount(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    source = parse(f"{open_registry.host}/mount/source:latest")
    target = parse(f"{open_registry.host}/mount/target:latest")
    data = os.urandom(50_000)
    path, digest = write_blob(tmp_path, data)

    async def main() -> None:
        async with client(config) as rc:
            assert await rc.upload_blob(source, digest, path) == "pushed"
            assert not await rc.blob_exists(target, digest)
            assert await rc.upload_blob(target, digest, path, mount_from="mount/source") == "mounted"
            assert await rc.blob_exists(target, digest)
            # A source that lacks the blob makes the registry fall back to a plain upload.
            other = parse(f"{open_registry.host}/mount/other:latest")
            assert await rc.upload_blob(other, digest, path, mount_from="mount/empty") == "pushed"

    run(main)


def test_unknown_manifest_and_blob(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    async def main() -> None:
        async with client(config) as rc:
            with pytest.raises(ManifestUnknown) as e:
                await rc.get_manifest(parse(f"{open_registry.host}/nothing/here:nope"))
            assert str(e.value).startswith(f"manifest for {open_registry.host}/nothing/here:nope not found: "
                                           "manifest unknown: manifest unknown")
            digest = sha256(b"absent")
            dest = tmp_path / "absent"
            with pytest.raises(BlobUnknown, match="blob unknown"):
                await rc.fetch_blob(parse(f"{open_registry.host}/nothing/here"), mf.Descriptor(mf.OCI_LAYER, digest, 6), dest)
            assert not dest.exists() and not Path(f"{dest}.partial").exists()

    run(main)


def test_corrupt_blob_is_refused_and_removed(open_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{open_registry.host}/corrupt/app:latest")
    data = os.urandom(80_000)
    path, digest = write_blob(tmp_path, data)
    dest = tmp_path / "corrupt"

    async def push() -> None:
        async with client(config) as rc:
            await rc.upload_blob(ref, digest, path)

    run(push)
    stored = open_registry.blob_path(digest)
    os.chmod(stored, 0o644)
    stored.write_bytes(bytes(b ^ 0xFF for b in data[:10]) + data[10:])

    async def fetch() -> None:
        async with client(config) as rc:
            await rc.fetch_blob(ref, mf.Descriptor(mf.OCI_LAYER, digest, len(data)), dest)

    with pytest.raises(DigestError) as e:
        run(fetch)
    assert digest in str(e.value)
    assert not dest.exists()
    assert not Path(f"{dest}.partial").exists()


def test_connection_refused_names_the_registry(config: Config) -> None:
    host = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        async with client(config) as rc:
            await rc.get_manifest(parse(f"{host}/app:latest"))

    with pytest.raises(RegistryUnreachable) as e:
        run(main)
    assert str(e.value).startswith(f"cannot reach registry {host}: connection refused")


def test_basic_auth(basic_registry: Registry, config: Config, tmp_path: Path) -> None:
    ref = parse(f"{basic_registry.host}/private/app:v1")

    async def anonymous() -> None:
        async with client(config, basic_registry, creds=False) as rc:
            await rc.get_manifest(ref)

    with pytest.raises(Unauthorized) as e:
        run(anonymous)
    assert str(e.value).startswith("unauthorized: authentication required")

    async def wrong_password() -> None:
        bad = lambda host: ("tester", "wrong")  # noqa: E731
        async with RegistryClient(config, bad) as rc:
            await rc.blob_exists(ref, sha256(b"x"))

    with pytest.raises(Unauthorized, match="unauthorized: authentication required"):
        run(wrong_password)

    async def authenticated() -> None:
        async with client(config, basic_registry) as rc:
            raw, digest = await push_image(rc, ref, tmp_path, [os.urandom(1000)])
            assert await rc.get_manifest(ref) == (raw, mf.DOCKER_MANIFEST, digest)

    run(authenticated)


def test_token_auth(token_registry: Registry, config: Config, tmp_path: Path) -> None:
    assert token_registry.issuer is not None
    ref = parse(f"{token_registry.host}/private/app:v1")
    layer = os.urandom(5000)

    async def anonymous() -> None:
        async with client(config, token_registry, creds=False) as rc:
            await rc.get_manifest(ref)

    with pytest.raises(Unauthorized, match="^unauthorized: authentication required"):
        run(anonymous)

    async def authenticated() -> None:
        async with client(config, token_registry) as rc:
            raw, digest = await push_image(rc, ref, tmp_path, [layer])
            got = await rc.get_manifest(ref)
            assert got == (raw, mf.DOCKER_MANIFEST, digest)
            parsed = mf.parse(got[0], got[1])
            assert isinstance(parsed, mf.Manifest)
            await rc.fetch_blob(ref, parsed.layers[0], tmp_path / "layer")
            assert (tmp_path / "layer").read_bytes() == layer

    token_registry.issuer.requests.clear()
    run(authenticated)
    scopes = [q.get("scope") for q in token_registry.issuer.requests]
    # One token for the push (two blobs and the manifest) serves the pulls too: cached, not one per request.
    assert scopes == [["repository:private/app:pull,push"]]
    assert all(q.get("service") == ["rootless-test-registry"] for q in token_registry.issuer.requests)

    async def wrong_password() -> None:
        async with RegistryClient(config, lambda host: ("tester", "wrong")) as rc:
            await rc.get_manifest(ref)

    with pytest.raises(Unauthorized, match="incorrect username or password"):
        run(wrong_password)
