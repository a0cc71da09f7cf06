"""The registry client's HTTP behaviour against a scripted fake server: retries, auth, redirects, ranges, errors."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio

from rootless.config import Config
from rootless.errors import (DigestError, ManifestError, ManifestUnknown, RegistryError, RegistryUnreachable,
                             Unauthorized)
from rootless.image import manifest as mf
from rootless.image.reference import parse
from rootless.image.registry import (Challenge, RegistryClient, error_from_response, is_insecure,
                                     parse_challenges, registry_host)

T = TypeVar("T")
HOST = "registry.test"
BLOB = b"hello blob " * 1000
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return trio.run(fn)


Handler = Callable[[httpx.Request], httpx.Response]


def make_client(tmp_path: Path, handler: Handler, creds: tuple[str, str] | None = None,
                sleeps: list[float] | None = None, **kw: object) -> RegistryClient:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    config = Config(tmp_path / "d", tmp_path / "c", tmp_path / "r")
    return RegistryClient(config, (lambda host: creds) if creds else None, transport=httpx.MockTransport(handler),
                          retry_delays=(0.1, 0.2, 0.4), sleep=sleep, **kw)  # type: ignore[arg-type]


def errors_body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def test_parse_challenges() -> None:
    header = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"'
    assert parse_challenges(header) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:a/b:pull,push"})]
    assert parse_challenges('Basic realm="Registry Realm"') == [Challenge("basic", {"realm": "Registry Realm"})]
    two = parse_challenges('Basic realm="a, b", Bearer realm=x,error="insufficient_scope"')
    assert two == [Challenge("basic", {"realm": "a, b"}), Challenge("bearer", {"realm": "x", "error": "insufficient_scope"})]
    assert parse_challenges('Bearer realm="q\\"uote"')[0].params["realm"] == 'q"uote'


def test_hosts_and_insecure_rules() -> None:
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("quay.io") == "quay.io"
    for host in ("127.0.0.1:5000", "127.1.2.3", "localhost:5000", "localhost", "[::1]:5000"):
        assert is_insecure(host, ()), host
    assert not is_insecure("registry.test:5000", ())
    assert is_insecure("registry.test:5000", ("registry.test:5000",))
    assert is_insecure("registry.test", ("registry.test",))
    assert is_insecure("10.1.2.3:5000", ("10.0.0.0/8",))
    assert not is_insecure("11.1.2.3:5000", ("10.0.0.0/8",))


def test_error_texts_read_as_docker_prints_them() -> None:
    def err(status: int, body: bytes = b"") -> RegistryError:
        return error_from_response(httpx.Response(status, content=body), "reg.io")

    e = err(404, errors_body("MANIFEST_UNKNOWN", "manifest unknown"))
    assert isinstance(e, ManifestUnknown) and str(e).startswith("manifest unknown: manifest unknown")
    assert str(err(401)).startswith("unauthorized: authentication required")
    assert isinstance(err(401), Unauthorized)
    assert err(403).message == "denied: requested access to the resource is denied"
    assert err(404, errors_body("NAME_UNKNOWN", "repository name not known to registry")).message == \
        "name unknown: repository name not known to registry"
    assert err(404, errors_body("BLOB_UNKNOWN", "blob unknown to registry")).code == "BLOB_UNKNOWN"
    assert err(502).message == "received unexpected HTTP status: 502 Bad Gateway"


def test_server_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    answers = [503, 500, 429, 200]
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        status = answers.pop(0)
        return httpx.Response(status, content=b"" if status != 200 else b"{}")

    sleeps: list[float] = []

    async def main() -> bool:
        async with make_client(tmp_path, handler, sleeps=sleeps) as rc:
            return await rc.blob_exists(parse(f"{HOST}/a/b"), BLOB_DIGEST)

    assert run(main) is True
    assert seen == ["HEAD"] * 4
    assert sleeps == [0.1, 0.2, 0.4]


def test_retries_give_up(tmp_path: Path) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503, content=errors_body("UNAVAILABLE", "service unavailable"))

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.get_manifest(parse(f"{HOST}/a/b:t"))

    with pytest.raises(RegistryError, match="unavailable: service unavailable"):
        run(main)
    assert calls == 4


def test_connection_resets_are_retried(tmp_path: Path) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise httpx.ReadError("reset", request=request)
        return httpx.Response(200, headers={"Content-Type": mf.OCI_MANIFEST}, content=b'{"schemaVersion":2}')

    async def main() -> tuple[bytes, str, str]:
        async with make_client(tmp_path, handler) as rc:
            return await rc.get_manifest(parse(f"{HOST}/a/b:t"))

    raw, media_type, digest = run(main)
    assert (raw, media_type, calls) == (b'{"schemaVersion":2}', mf.OCI_MANIFEST, 3)
    assert digest == mf.sha256_digest(raw)


def test_connection_refused_is_not_retried(tmp_path: Path) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("refused", request=request) from ConnectionRefusedError(111, "Connection refused")

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.get_manifest(parse(f"{HOST}/a/b:t"))

    with pytest.raises(RegistryUnreachable, match=f"cannot reach registry {HOST}: connection refused"):
        run(main)
    assert calls == 1


def test_bearer_token_flow_and_cache(tmp_path: Path) -> None:
    token_requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            token_requests.append(request)
            return httpx.Response(200, json={"token": "T1", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer T1":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/token",'
                                                'service="reg",scope="repository:a/b:pull"'},
                                  content=errors_body("UNAUTHORIZED", "authentication required"))
        return httpx.Response(200 if request.method == "HEAD" else 404)

    async def main() -> None:
        async with make_client(tmp_path, handler, creds=("u", "p")) as rc:
            assert await rc.blob_exists(parse(f"{HOST}/a/b"), BLOB_DIGEST)
            assert await rc.blob_exists(parse(f"{HOST}/a/b"), BLOB_DIGEST)

    run(main)
    assert len(token_requests) == 1
    query = token_requests[0].url.params
    assert query.get_list("scope") == ["repository:a/b:pull"] and query["service"] == "reg"
    assert token_requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()


def test_basic_auth_without_credentials(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'},
                              content=errors_body("UNAUTHORIZED", "authentication required"))

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.get_manifest(parse(f"{HOST}/a/b:t"))

    with pytest.raises(Unauthorized) as e:
        run(main)
    assert e.value.message == "unauthorized: authentication required"
    assert e.value.hint == f"log in with: rootless login {HOST}"


def test_blob_redirects_are_followed_without_the_credentials(tmp_path: Path) -> None:
    storage_headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.test":
            storage_headers.append(request.headers)
            return httpx.Response(200, content=BLOB)
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(307, headers={"Location": "https://storage.test/blob?sig=1"})

    dest = tmp_path / "blob"

    async def main() -> None:
        async with make_client(tmp_path, handler, creds=("u", "p")) as rc:
            await rc.fetch_blob(parse(f"{HOST}/a/b"), mf.Descriptor(mf.OCI_LAYER, BLOB_DIGEST, len(BLOB)), dest)

    run(main)
    assert dest.read_bytes() == BLOB
    assert len(storage_headers) == 1 and "Authorization" not in storage_headers[0]


def test_ignored_range_restarts_the_download(tmp_path: Path) -> None:
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("Range"))
        return httpx.Response(200, content=BLOB)

    dest = tmp_path / "blob"
    Path(f"{dest}.partial").write_bytes(BLOB[:100])

    async def main() -> int:
        async with make_client(tmp_path, handler) as rc:
            return await rc.fetch_blob(parse(f"{HOST}/a/b"), mf.Descriptor(mf.OCI_LAYER, BLOB_DIGEST, len(BLOB)), dest)

    assert run(main) == len(BLOB)
    assert ranges == ["bytes=100-"]
    assert dest.read_bytes() == BLOB


def test_a_broken_download_resumes(tmp_path: Path) -> None:
    ranges: list[str | None] = []

    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield BLOB[:4000]
            raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            return httpx.Response(200, stream=Broken())
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        return httpx.Response(206, content=BLOB[start:],
                              headers={"Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"})

    dest = tmp_path / "blob"

    async def main() -> int:
        async with make_client(tmp_path, handler) as rc:
            return await rc.fetch_blob(parse(f"{HOST}/a/b"), mf.Descriptor(mf.OCI_LAYER, BLOB_DIGEST, len(BLOB)), dest)

    assert run(main) == len(BLOB)
    assert ranges == [None, "bytes=4000-"]
    assert dest.read_bytes() == BLOB


def test_too_long_blob_is_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BLOB + b"extra")

    dest = tmp_path / "blob"

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.fetch_blob(parse(f"{HOST}/a/b"), mf.Descriptor(mf.OCI_LAYER, BLOB_DIGEST, len(BLOB)), dest)

    with pytest.raises(DigestError, match=BLOB_DIGEST):
        run(main)
    assert not dest.exists() and not Path(f"{dest}.partial").exists()


def test_oversized_manifest_is_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b" " * (mf.MAX_MANIFEST_SIZE + 1), headers={"Content-Type": mf.OCI_MANIFEST})

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.get_manifest(parse(f"{HOST}/a/b:t"))

    with pytest.raises(ManifestError, match="manifest too large"):
        run(main)


def test_pinned_manifest_digest_is_verified(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"schemaVersion":2}', headers={"Content-Type": mf.OCI_MANIFEST})

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            await rc.get_manifest(parse(f"{HOST}/a/b@sha256:{'0' * 64}"))

    with pytest.raises(DigestError, match="manifest digest mismatch"):
        run(main)


def test_insecure_registry_falls_back_to_http(tmp_path: Path) -> None:
    schemes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        schemes.append(request.url.scheme)
        if request.url.scheme == "https":
            raise httpx.ConnectError("wrong version number", request=request)
        return httpx.Response(200)

    async def main() -> None:
        async with make_client(tmp_path, handler) as rc:
            assert await rc.blob_exists(parse("localhost:5000/a/b"), BLOB_DIGEST)
            assert await rc.blob_exists(parse("localhost:5000/a/b"), BLOB_DIGEST)

    run(main)
    assert schemes == ["https", "http", "http"]
