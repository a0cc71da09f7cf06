"""A client of the OCI distribution API: manifests and blobs, pulled and pushed, with docker's auth and errors.

Scheme: HTTPS with verification by default.  A registry docker treats as insecure (one in
``Config.insecure_registries``, or on a loopback address: 127.0.0.0/8, ``localhost``,
``[::1]``) is tried over HTTPS *without* verification first and over plain HTTP if that
cannot connect, as dockerd does; the choice is remembered per host for the client's life.

Auth: requests go out anonymously until a 401 names a scheme in ``WWW-Authenticate``;
then Basic sends the credentials, Bearer fetches a token from the realm for
``repository:NAME:pull[,push]`` (with the credentials, if any) and retries.  Tokens are
cached per (host, scopes) until they expire, and the host's challenge is remembered so
that later requests authenticate up front.

Failures become ``RegistryError`` subclasses worded as docker words them
(``manifest unknown: manifest unknown``, ``unauthorized: authentication required``).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import ipaddress
import json
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import httpx
import trio

from ..config import Config
from ..errors import (BlobUnknown, Denied, DigestError, ManifestUnknown, NameUnknown, RegistryError,
                      RegistryUnreachable, Unauthorized)
from . import manifest as mf
from .reference import DEFAULT_DOMAIN, Reference

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

Credentials = Callable[[str], tuple[str, str] | None]
Progress = Callable[[int, int], None]

DOCKER_HUB_REGISTRY = "registry-1.docker.io"
DEFAULT_CHUNK_THRESHOLD = 16 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024
DEFAULT_RETRY_DELAYS = (0.5, 1.0, 2.0)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

_CODE_CLASSES: Mapping[str, type[RegistryError]] = {
    "UNAUTHORIZED": Unauthorized,
    "DENIED": Denied,
    "MANIFEST_UNKNOWN": ManifestUnknown,
    "BLOB_UNKNOWN": BlobUnknown,
    "NAME_UNKNOWN": NameUnknown,
}
#: What docker shows when the registry sent a bare status without an ``errors`` body.
_STATUS_DEFAULTS: Mapping[int, tuple[str, str]] = {
    401: ("UNAUTHORIZED", "authentication required"),
    403: ("DENIED", "requested access to the resource is denied"),
    429: ("TOOMANYREQUESTS", "too many requests"),
}


# -- WWW-Authenticate ----------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: ``scheme`` lowercased, parameters by lowercase name."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^,\s]*)\s*,?")


def parse_challenges(header: str) -> list[Challenge]:
    """``Bearer realm="https://auth",service="reg",scope="repository:x:pull"`` -> [Challenge(...)]."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in " ,\t":
            pos += 1
        m = _TOKEN.match(header, pos)
        if m is None:
            break
        scheme, pos = m.group(0).lower(), m.end()
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(header, pos)
            if p is None:
                break
            value = p.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[p.group(1).lower()] = value
            pos = p.end()
        out.append(Challenge(scheme, params))
    return out


# -- hosts ---------------------------------------------------------------------------------

def registry_host(domain: str) -> str:
    """The host that serves DOMAIN's API: Docker Hub's is registry-1.docker.io."""
    return DOCKER_HUB_REGISTRY if domain in (DEFAULT_DOMAIN, "index.docker.io") else domain


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    name = _hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str, insecure_registries: Sequence[str]) -> bool:
    """Docker's rule: loopback registries, and those listed as host[:port] or as a CIDR, are insecure."""
    if is_loopback(host):
        return True
    name = _hostname(host)
    for entry in insecure_registries:
        entry = entry.strip().removeprefix("http://").removeprefix("https://").rstrip("/")
        if entry in (host, name):
            return True
        if "/" in entry:
            try:
                if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """EXC and everything behind it: causes, contexts and the members of exception groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        for nxt in (e.__cause__, e.__context__):
            if nxt is not None:
                todo.append(nxt)


def _describe_transport_error(exc: httpx.TransportError) -> tuple[str, bool]:
    """(what went wrong, in a few words; whether trying again may help)."""
    causes = list(_causes(exc))
    if any(isinstance(c, ConnectionRefusedError) or getattr(c, "errno", None) == errno.ECONNREFUSED for c in causes):
        return "connection refused", False
    for c in causes:
        if isinstance(c, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {c.verify_message or c}", False
        if isinstance(c, ssl.SSLError):
            return f"TLS handshake failed: {c.reason or c}", False
    for c in causes:
        if isinstance(c, OSError) and c.errno is not None and c.errno < 0:
            return f"cannot resolve host name: {c.strerror}", False
    if any(isinstance(c, (ConnectionResetError, BrokenPipeError)) for c in causes):
        return "connection reset by peer", True
    if isinstance(exc, httpx.TimeoutException):
        return "timed out", True
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)):
        return f"connection broken: {exc or type(exc).__name__}", True
    if isinstance(exc, httpx.ConnectError):
        return str(exc) or "cannot connect", False
    return str(exc) or type(exc).__name__, False


# -- errors --------------------------------------------------------------------------------

def _registry_errors(body: bytes) -> list[tuple[str, str]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = doc.get("errors") if isinstance(doc, dict) else None
    out = []
    for e in errors if isinstance(errors, list) else []:
        if isinstance(e, dict) and isinstance(e.get("code"), str):
            message = e.get("message")
            out.append((e["code"].upper(), message if isinstance(message, str) else ""))
    return out


def error_from_response(response: httpx.Response, host: str, *, prefix: str = "", hint: str | None = None,
                        not_found: tuple[str, str] | None = None) -> RegistryError:
    """The RegistryError docker would show for RESPONSE (whose body has been read)."""
    status = response.status_code
    errors = _registry_errors(response.content)
    if not errors:
        default = _STATUS_DEFAULTS.get(status) or (not_found if status == 404 else None)
        if default is None:
            reason = response.reason_phrase or ""
            return RegistryError(f"{prefix}received unexpected HTTP status: {status} {reason}".rstrip(),
                                 hint, status=status)
        errors = [default]
    code = errors[0][0]
    text = "; ".join(f"{c.lower().replace('_', ' ')}: {m}" if m else c.lower().replace("_", " ") for c, m in errors)
    cls = _CODE_CLASSES.get(code, RegistryError)
    if hint is None:
        if cls is Unauthorized:
            hint = f"log in with: rootless login {host}"
        elif cls is Denied:
            hint = "check the repository name, and that your account may use it"
        elif code == "TOOMANYREQUESTS":
            hint = "the registry limits how often it may be asked; wait, or log in for a higher limit"
    return cls(prefix + text, hint, code=code, status=status)


# -- the client ----------------------------------------------------------------------------

@dataclass
class _Token:
    value: str
    expires: float


class RegistryClient:
    """Talks to any number of registries; use as ``async with RegistryClient(config, creds) as client``.

    ``credentials(domain)`` gives (user, password) for a registry domain as the user names it
    (``docker.io``, ``host:5000``), or None.  ``cert_dir`` holds ``*.crt`` CA files and
    ``*.cert``/``*.key`` client pairs for every host (without it, ``<config_dir>/certs.d/<host>/``
    is used where it exists).  ``retry_delays`` are the pauses between tries after a 5xx, a
    429 or a broken connection: len+1 tries in all.  ``transport`` replaces the network (tests).
    """

    def __init__(self, config: Config, credentials: Credentials | None = None, tls_verify: bool = True,
                 cert_dir: str | os.PathLike[str] | None = None, *,
                 chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
                 sleep: Callable[[float], Awaitable[None]] = trio.sleep,
                 timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.config = config
        self.credentials = credentials
        self.tls_verify = tls_verify
        self.cert_dir = Path(cert_dir) if cert_dir is not None else None
        self.chunk_threshold = chunk_threshold
        self.chunk_size = chunk_size
        self.retry_delays = tuple(retry_delays)
        self._sleep = sleep
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 15.0))
        self._transport = transport
        self._clients: dict[tuple[str, bool], httpx.AsyncClient] = {}
        self._base: dict[str, str] = {}
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, tuple[str, ...]], _Token] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    # -- public API --------------------------------------------------------------------------

    async def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of REF's manifest or index; a pinned digest is verified."""
        if ref.digest is not None:
            mf.validate_digest(ref.digest)
        target = ref.digest or ref.tag or "latest"
        shown = f"{ref.familiar}{'@' + ref.digest if ref.digest else ':' + target}"
        response = await self._request(
            "GET", ref.domain, f"/v2/{ref.path}/manifests/{target}", [_scope(ref.path, "pull")],
            headers={"Accept": ", ".join(mf.ACCEPTED_TYPES)}, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error(response, ref.domain, f"manifest for {shown} not found: "
                                  if response.status_code == 404 else "",
                                  not_found=("MANIFEST_UNKNOWN", "manifest unknown"))
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit():
                mf.check_size(int(declared))
            chunks: list[bytes] = []
            total = 0
            async with contextlib.aclosing(response.aiter_bytes()) as body:
                async for chunk in body:
                    total += len(chunk)
                    mf.check_size(total)
                    chunks.append(chunk)
        except httpx.TransportError as e:
            raise self._unreachable(ref.domain, e) from None
        finally:
            await response.aclose()
        raw = b"".join(chunks)
        if ref.digest is not None:
            actual = mf.digest_of(raw, ref.digest.partition(":")[0])
            if actual != ref.digest:
                raise DigestError(f"manifest digest mismatch for {shown}: the registry sent {actual}",
                                  "the registry or something between is corrupting data")
            digest = ref.digest
        else:
            digest = mf.sha256_digest(raw)
        return raw, mf.detect_media_type(raw, response.headers.get("Content-Type")), digest

    async def check_login(self, domain: str) -> None:
        """Prove the credentials for DOMAIN work (``GET /v2/``, answering its challenge); raise if refused."""
        response = await self._request("GET", domain, "/v2/", [])
        if response.status_code == 401 and self._creds(domain) is not None:
            raise Unauthorized("unauthorized: incorrect username or password", "check the username and password",
                               code="UNAUTHORIZED", status=401)
        if response.status_code != 200:
            raise self._error(response, domain, f"login to {domain} failed: ")

    async def blob_exists(self, repo: Reference, digest: str) -> bool:
        mf.validate_digest(digest)
        return await self._head_blob(repo, digest, [_scope(repo.path, "pull")])

    async def fetch_blob(self, repo: Reference, descriptor: mf.Descriptor, dest_path: str | os.PathLike[str],
                         progress: Progress | None = None) -> int:
        """Download DESCRIPTOR's blob to DEST_PATH, verified; returns the bytes this call transferred.

        The bytes go to ``DEST_PATH.partial`` first; an existing partial file is resumed with a
        ``Range`` request (and restarted if the registry ignores it).  Size and digest are checked
        before the fsync and rename, so DEST_PATH only ever holds the right content.
        """
        digest = mf.validate_digest(descriptor.digest)
        size = descriptor.size
        dest = Path(dest_path)
        partial = Path(f"{dest}.partial")
        transferred = 0
        failures = 0
        restarted = False
        while True:
            offset = _file_size(partial)
            if offset > size:
                partial.unlink()
                offset = 0
            resumed = offset > 0
            hasher = mf.hasher_for(digest)
            if offset:
                await trio.to_thread.run_sync(_hash_file, partial, hasher)
            if progress is not None:
                progress(offset, size)
            try:
                if offset < size:
                    got, offset, hasher = await self._download(repo, digest, size, partial, offset, hasher, progress)
                    transferred += got
            except _Retry as e:
                transferred += e.received
                failures += 1
                if failures > len(self.retry_delays):
                    raise e.error from None
                await self._sleep(self.retry_delays[failures - 1])
                continue
            if offset < size:
                # The body ended early without an error: resume from what arrived.
                failures += 1
                if failures > len(self.retry_delays):
                    raise RegistryError(f"download of blob {digest} from {repo.domain} stopped at {offset} "
                                        f"of {size} bytes", "try again")
                await self._sleep(self.retry_delays[failures - 1])
                continue
            actual = f"{digest.partition(':')[0]}:{hasher.hexdigest()}"
            if actual != digest:
                partial.unlink(missing_ok=True)
                if resumed and not restarted:
                    # The old partial file may be what was wrong: one fresh download decides.
                    restarted = True
                    continue
                raise DigestError(f"digest mismatch for blob {digest} from {repo.repository}: got {actual}",
                                  "the registry sent corrupt data; the partial download was removed")
            await trio.to_thread.run_sync(_commit, partial, dest)
            return transferred

    async def upload_blob(self, repo: Reference, digest: str, path: str | os.PathLike[str],
                          mount_from: str | None = None) -> str:
        """Make the blob at PATH present in REPO: ``"exists"``, ``"mounted"`` (from MOUNT_FROM) or ``"pushed"``."""
        mf.validate_digest(digest)
        scopes = [_scope(repo.path, "pull,push")]
        source = None
        if mount_from is not None:
            source = _strip_domain(mount_from, repo.domain)
            if source != repo.path:
                scopes.append(_scope(source, "pull"))
        if await self._head_blob(repo, digest, scopes):
            return "exists"
        uploads = f"/v2/{repo.path}/blobs/uploads/"
        if source is not None and source != repo.path:
            response = await self._request("POST", repo.domain, uploads, scopes,
                                           params={"mount": digest, "from": source})
            if response.status_code == 201:
                return "mounted"
        else:
            response = await self._request("POST", repo.domain, uploads, scopes)
        if response.status_code != 202:
            raise self._error(response, repo.domain, f"cannot start upload of {digest} to {repo.repository}: ")
        location = self._location(response, repo.domain)
        size = os.path.getsize(path)
        if size <= self.chunk_threshold:
            data = await trio.to_thread.run_sync(Path(path).read_bytes)
            final = await self._request("PUT", repo.domain, _with_digest(location, digest), scopes, content=data,
                                        headers={"Content-Type": "application/octet-stream"})
        else:
            offset = 0
            while offset < size:
                data = await trio.to_thread.run_sync(_read_range, Path(path), offset, self.chunk_size)
                if not data:
                    raise RegistryError(f"{path} shrank while it was uploaded")
                response = await self._request(
                    "PATCH", repo.domain, location, scopes, content=data, retry_transport=False,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                if response.status_code != 202:
                    raise self._error(response, repo.domain, f"upload of {digest} to {repo.repository} failed: ")
                location = self._location(response, repo.domain)
                offset += len(data)
            final = await self._request("PUT", repo.domain, _with_digest(location, digest), scopes, content=b"")
        if final.status_code != 201:
            raise self._error(final, repo.domain, f"upload of {digest} to {repo.repository} failed: ")
        return "pushed"

    async def put_manifest(self, repo: Reference, reference: str, raw: bytes, media_type: str) -> str:
        """Store RAW as REPO's manifest under REFERENCE (a tag or RAW's digest); returns its digest."""
        mf.check_size(len(raw))
        digest = mf.sha256_digest(raw)
        if ":" in reference:
            mf.validate_digest(reference)
            digest = mf.digest_of(raw, reference.partition(":")[0])
            if digest != reference:
                raise DigestError(f"cannot push manifest under {reference}: its content has digest {digest}")
        response = await self._request("PUT", repo.domain, f"/v2/{repo.path}/manifests/{reference}",
                                       [_scope(repo.path, "pull,push")], content=raw,
                                       headers={"Content-Type": media_type})
        if response.status_code != 201:
            raise self._error(response, repo.domain, f"cannot push manifest {repo.repository}:{reference}: ")
        returned = response.headers.get("Docker-Content-Digest")
        if returned and returned.startswith("sha256:") and digest.startswith("sha256:") and returned != digest:
            raise DigestError(f"the registry stored manifest {repo.repository}:{reference} as {returned}, "
                              f"but its content has digest {digest}")
        return digest

    # -- blobs -------------------------------------------------------------------------------

    async def _head_blob(self, repo: Reference, digest: str, scopes: list[str]) -> bool:
        response = await self._request("HEAD", repo.domain, f"/v2/{repo.path}/blobs/{digest}", scopes)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._error(response, repo.domain, f"cannot check blob {digest} in {repo.repository}: ")

    async def _download(self, repo: Reference, digest: str, size: int, partial: Path, offset: int,
                        hasher: Hash, progress: Progress | None) -> tuple[int, int, Hash]:
        """One GET of the blob from OFFSET; returns (bytes received, new offset, hasher)."""
        # identity: offsets and digests are of the bytes stored, never of a re-encoding of them.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = await self._request("GET", repo.domain, f"/v2/{repo.path}/blobs/{digest}",
                                       [_scope(repo.path, "pull")], headers=headers, stream=True)
        received = 0
        try:
            if response.status_code == 416 and offset:
                # The registry will not serve that range: start again from nothing.
                await response.aclose()
                partial.unlink(missing_ok=True)
                return await self._download(repo, digest, size, partial, 0, mf.hasher_for(digest), progress)
            if response.status_code == 206 and offset and _range_start(response) == offset:
                mode = "ab"
            elif response.status_code == 200:
                mode, offset, hasher = "wb", 0, mf.hasher_for(digest)
            else:
                await response.aread()
                raise self._error(response, repo.domain, "", not_found=("BLOB_UNKNOWN", "blob unknown to registry"))
            # Writes go to the page cache in 1 MiB pieces, inline: a thread hop per 64 KiB
            # network chunk would cost more than the write itself.
            with open(partial, mode) as out, contextlib.closing(_Buffer(out)) as buffered:
                async with contextlib.aclosing(response.aiter_bytes()) as body:
                    async for chunk in body:
                        if offset + len(chunk) > size:
                            buffered.discard()
                            partial.unlink(missing_ok=True)
                            raise DigestError(f"size mismatch for blob {digest} from {repo.repository}: the "
                                              f"registry sent more than the {size} bytes the manifest gives",
                                              "the registry sent corrupt data; the partial download was removed")
                        buffered.write(chunk)
                        hasher.update(chunk)
                        offset += len(chunk)
                        received += len(chunk)
                        if progress is not None:
                            # What is in the file: a reader may follow the download.
                            progress(offset - len(buffered.pending), size)
            if progress is not None:
                progress(offset, size)
        except httpx.TransportError as e:
            what, retryable = _describe_transport_error(e)
            error = RegistryUnreachable(f"download of blob {digest} from {repo.domain} failed: {what}")
            if retryable:
                raise _Retry(error, received) from None
            raise error from None
        finally:
            await response.aclose()
        return received, offset, hasher

    # -- requests, auth and retries ----------------------------------------------------------

    async def _request(self, method: str, domain: str, target: str, scopes: list[str], *,
                       headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
                       content: bytes | None = None, stream: bool = False,
                       retry_transport: bool = True) -> httpx.Response:
        """Send, authenticating on a 401 and retrying 5xx/429/broken connections.

        TARGET is a path on DOMAIN's registry, or an absolute URL (an upload's Location).
        Unless STREAM, the body has been read when this returns.
        """
        host = registry_host(domain)
        failures = 0
        reauthed = False
        while True:
            url = await self._url(host, target)
            request_headers = dict(headers or {})
            if httpx.URL(url).netloc.decode() == host:
                auth = await self._authorization(host, domain, scopes)
                if auth is not None:
                    request_headers["Authorization"] = auth
            try:
                response = await self._send(host, method, url, request_headers, params, content, stream)
            except httpx.TransportError as e:
                what, retryable = _describe_transport_error(e)
                failures += 1
                if not (retryable and retry_transport) or failures > len(self.retry_delays):
                    raise self._unreachable(domain, e) from None
                await self._sleep(self.retry_delays[failures - 1])
                continue
            if response.status_code == 401 and not reauthed:
                reauthed = True
                await response.aread()
                await response.aclose()
                if await self._answer_challenge(host, domain, scopes, response,
                                                sent_auth="Authorization" in request_headers):
                    continue
                raise self._error(response, domain)
            if response.status_code in _RETRY_STATUSES and failures < len(self.retry_delays):
                await response.aclose()
                failures += 1
                await self._sleep(_retry_after(response, self.retry_delays[failures - 1]))
                continue
            return response

    async def _send(self, host: str, method: str, url: str, headers: dict[str, str],
                    params: Mapping[str, str] | None, content: bytes | None, stream: bool) -> httpx.Response:
        client = self._client(host, verify=url.startswith("https://") and not self._insecure(host))
        request = client.build_request(method, url, headers=headers, params=params, content=content)
        response = await client.send(request, stream=True)
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def _url(self, host: str, target: str) -> str:
        if target.startswith(("http://", "https://")):
            return target
        base = self._base.get(host)
        if base is None:
            base = await self._probe_scheme(host)
        return base + target

    async def _probe_scheme(self, host: str) -> str:
        """HTTPS, unless HOST is insecure and HTTPS cannot connect: then plain HTTP (docker's fallback)."""
        https = f"https://{host}"
        if not self._insecure(host):
            self._base[host] = https
            return https
        try:
            response = await self._client(host, verify=False).get(f"{https}/v2/")
            await response.aclose()
            self._base[host] = https
        except httpx.TransportError:
            self._base[host] = f"http://{host}"
        return self._base[host]

    def _insecure(self, host: str) -> bool:
        return is_insecure(host, self.config.insecure_registries)

    def _client(self, host: str, verify: bool) -> httpx.AsyncClient:
        key = (host, verify)
        client = self._clients.get(key)
        if client is None:
            ssl_verify: ssl.SSLContext | bool = self._ssl_context(host) if verify and self.tls_verify else False
            # Proxies from the environment apply, except to loopback hosts (Go's rule, so docker's too).
            client = httpx.AsyncClient(verify=ssl_verify, timeout=self._timeout, follow_redirects=True,
                                       transport=self._transport, trust_env=not is_loopback(host))
            self._clients[key] = client
        return client

    def _ssl_context(self, host: str) -> ssl.SSLContext:
        context: ssl.SSLContext = httpx.create_ssl_context()
        directory = self.cert_dir or self.config.config_dir / "certs.d" / host
        if directory.is_dir():
            for ca in sorted(directory.glob("*.crt")):
                context.load_verify_locations(cafile=str(ca))
            for cert in sorted(directory.glob("*.cert")):
                key = cert.with_suffix(".key")
                if not key.exists():
                    raise RegistryError(f"client certificate {cert} has no key {key.name} beside it")
                context.load_cert_chain(str(cert), str(key))
        return context

    async def _authorization(self, host: str, domain: str, scopes: list[str]) -> str | None:
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self._creds(domain)
            return _basic(creds) if creds else None
        if challenge.scheme == "bearer":
            token = self._cached_token(host, scopes)
            if token is None:
                token = await self._fetch_token(host, domain, challenge, scopes)
            return f"Bearer {token.value}"
        return None

    def _cached_token(self, host: str, scopes: list[str]) -> _Token | None:
        """A live token for HOST whose scopes cover SCOPES (a push token serves pulls too)."""
        now = time.monotonic()
        for (token_host, granted), token in list(self._tokens.items()):
            if token.expires <= now:
                del self._tokens[(token_host, granted)]
            elif token_host == host and _covers(granted, scopes):
                return token
        return None

    async def _answer_challenge(self, host: str, domain: str, scopes: list[str], response: httpx.Response,
                                sent_auth: bool = False) -> bool:
        """Learn HOST's auth scheme from a 401; True if a retry with new credentials makes sense."""
        challenges = [c for h in response.headers.get_list("WWW-Authenticate") for c in parse_challenges(h)]
        usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not usable:
            return False
        challenge = next((c for c in usable if c.scheme == "bearer"), usable[0])
        previous = self._challenges.get(host)
        self._challenges[host] = challenge
        for key in [k for k in self._tokens if k[0] == host and _covers(k[1], scopes)]:
            del self._tokens[key]  # refused: never offer it again
        if challenge.scheme == "basic":
            # A Basic retry only helps if there are credentials not already refused.  A request
            # sent bare while a parallel one learnt the challenge has not tried them yet.
            return self._creds(domain) is not None and (
                not sent_auth or previous is None or previous.scheme != "basic")
        extra = challenge.params.get("scope")
        if extra and not _covers(tuple(scopes), extra.split(" ")):
            scopes.extend(extra.split(" "))
        return True

    async def _fetch_token(self, host: str, domain: str, challenge: Challenge, scopes: list[str]) -> _Token:
        realm = challenge.params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            raise RegistryError(f"registry {domain} asked for a token without a usable realm ({realm!r})")
        creds = self._creds(domain)
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scopes]
        realm_host = httpx.URL(realm).netloc.decode()
        headers = {"Authorization": _basic(creds)} if creds else {}
        client = self._client(realm_host, verify=realm.startswith("https://") and not self._insecure(realm_host))
        failures = 0
        while True:
            try:
                response = await client.get(realm, params=params, headers=headers)
            except httpx.TransportError as e:
                what, retryable = _describe_transport_error(e)
                failures += 1
                if not retryable or failures > len(self.retry_delays):
                    raise RegistryUnreachable(f"cannot get a token for {domain} from {realm}: {what}") from None
                await self._sleep(self.retry_delays[failures - 1])
                continue
            if response.status_code in _RETRY_STATUSES and failures < len(self.retry_delays):
                failures += 1
                await self._sleep(_retry_after(response, self.retry_delays[failures - 1]))
                continue
            break
        if response.status_code in (401, 403):
            if creds:
                raise Unauthorized("unauthorized: incorrect username or password",
                                   f"log in again with: rootless login {domain}", code="UNAUTHORIZED",
                                   status=response.status_code)
            raise Unauthorized("unauthorized: authentication required", f"log in with: rootless login {domain}",
                               code="UNAUTHORIZED", status=response.status_code)
        if response.status_code != 200:
            raise error_from_response(response, domain, prefix=f"cannot get a token for {domain} from {realm}: ")
        try:
            doc = response.json()
            value = doc.get("token") or doc.get("access_token")
            expires_in = doc.get("expires_in", 60)
        except (ValueError, AttributeError):
            value, expires_in = None, 60
        if not isinstance(value, str) or not value:
            raise RegistryError(f"the token server {realm} for {domain} sent no token")
        if not isinstance(expires_in, (int, float)) or expires_in < 60:
            expires_in = 60  # the spec's minimum, assumed when absent or smaller
        token = _Token(value, time.monotonic() + expires_in - 10)
        self._tokens[(host, tuple(sorted(scopes)))] = token
        return token

    def _creds(self, domain: str) -> tuple[str, str] | None:
        return self.credentials(domain) if self.credentials is not None else None

    def _location(self, response: httpx.Response, domain: str) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"registry {domain} answered an upload without a Location header")
        return str(response.url.join(location))

    def _error(self, response: httpx.Response, domain: str, prefix: str = "",
               not_found: tuple[str, str] | None = None) -> RegistryError:
        return error_from_response(response, domain, prefix=prefix, not_found=not_found)

    def _unreachable(self, domain: str, exc: httpx.TransportError) -> RegistryUnreachable:
        what, _ = _describe_transport_error(exc)
        hint = "check that the registry runs at that address, and the host and port in the image name"
        if what.startswith("TLS"):
            hint = (f"if {domain} uses a self-signed certificate, put its CA in "
                    f"{self.cert_dir or self.config.config_dir / 'certs.d' / domain}/ca.crt, "
                    "or list it in insecure-registries in the config file")
        return RegistryUnreachable(f"cannot reach registry {domain}: {what}", hint)


class _Retry(Exception):
    """A download broke in a way that trying again (resuming) may fix."""

    def __init__(self, error: RegistryError, received: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.received = received


def _scope(path: str, actions: str) -> str:
    return f"repository:{path}:{actions}"


def _covers(granted: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether scopes GRANTED include every action of every scope in WANTED."""
    have: dict[str, set[str]] = {}
    for scope in granted:
        resource, _, actions = scope.rpartition(":")
        have.setdefault(resource, set()).update(actions.split(","))
    for scope in wanted:
        resource, _, actions = scope.rpartition(":")
        if not set(actions.split(",")) <= have.get(resource, set()):
            return False
    return True


def _basic(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()


def _strip_domain(name: str, domain: str) -> str:
    return name[len(domain) + 1:] if name.startswith(domain + "/") else name


def _with_digest(location: str, digest: str) -> str:
    return str(httpx.URL(location).copy_merge_params({"digest": digest}))


def _retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After", "")
    return max(default, min(float(value), 10.0)) if value.isdigit() else default


def _range_start(response: httpx.Response) -> int | None:
    m = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None


class _Buffer:
    """Collects small writes into large ones; ``close`` writes the rest."""

    LIMIT = 1 << 20

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) >= self.LIMIT:
            self.out.write(self.pending)
            self.pending.clear()

    def discard(self) -> None:
        self.pending.clear()

    def close(self) -> None:
        if self.pending:
            self.out.write(self.pending)
            self.pending.clear()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _hash_file(path: Path, hasher: Hash) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            hasher.update(chunk)


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _commit(partial: Path, dest: Path) -> None:
    """fsync the verified file, rename it into place, fsync the directory."""
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, dest)
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
