"""A real docker-registry (distribution v2.8) on 127.0.0.1 for the tests, with optional Basic or token auth.

``running_registry(tmp, auth=None|"basic"|"token")`` starts one on a free port, waits until
``/v2/`` answers and kills it on exit.  Basic auth needs a bcrypt htpasswd line: made with
the ``bcrypt`` module if importable, else ``htpasswd -nbB`` if installed, else libxcrypt's
``crypt()`` through ctypes (glibc's libcrypt.so.1 on Debian 12 knows ``$2b$``).  Token auth
needs the ``openssl`` CLI: it makes the issuer's RSA key and self-signed certificate (the
registry's ``rootcertbundle``) and signs each JWT; the issuer is a threaded HTTP server.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

REGISTRY_BIN = "/usr/bin/docker-registry"
USERNAME = "tester"
PASSWORD = "s3cret-pass"
SERVICE = "rootless-test-registry"
ISSUER = "rootless-test-issuer"

Auth = Literal["basic", "token"] | None


@dataclass
class TokenIssuer:
    """The token server the registry's challenges point at; ``requests`` records each one's query."""

    url: str
    requests: list[dict[str, list[str]]] = field(default_factory=list)


@dataclass(frozen=True)
class Registry:
    host: str
    url: str
    username: str | None
    password: str | None
    storage: Path
    issuer: TokenIssuer | None = None

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps the blob's bytes (to corrupt them on purpose)."""
        algo, hexa = digest.split(":", 1)
        return self.storage / "docker/registry/v2/blobs" / algo / hexa[:2] / hexa / "data"


def token_auth_problem() -> str | None:
    """Why token auth cannot be set up here, or None."""
    if shutil.which("openssl") is None:
        return "the openssl CLI is not on PATH (as root: apt-get install openssl)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- htpasswd ------------------------------------------------------------------------------

def bcrypt_hash(password: str) -> str:
    """A bcrypt hash of PASSWORD, by whichever means this host has (see the module docstring)."""
    try:
        import bcrypt  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        return str(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode())
    htpasswd = shutil.which("htpasswd")
    if htpasswd is not None:
        out = subprocess.run([htpasswd, "-nbB", "-C", "5", "u", password],
                             capture_output=True, text=True, check=True).stdout.strip()
        return out.split(":", 1)[1]
    return _libcrypt_bcrypt(password)


def _libcrypt_bcrypt(password: str) -> str:
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, os.urandom(16), 16)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        raise RuntimeError("no way to make a bcrypt hash here: install python bcrypt or apache2-utils")
    return hashed.decode()


# -- token issuer --------------------------------------------------------------------------

def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _make_key(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "issuer.key", directory / "issuer.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=rootless-test-issuer"],
                   capture_output=True, check=True)
    return key, cert


def _sign_jwt(key: Path, cert: Path, claims: dict[str, object]) -> str:
    pem = cert.read_text()
    der_b64 = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
    # x5c lets the registry find the key by verifying this chain against its rootcertbundle.
    header = {"typ": "JWT", "alg": "RS256", "x5c": [der_b64]}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key)], input=signing_input.encode(),
                         capture_output=True, check=True).stdout
    return f"{signing_input}.{_b64url(sig)}"


@contextlib.contextmanager
def running_token_issuer(directory: Path, username: str, password: str) -> Iterator[tuple[TokenIssuer, Path]]:
    """Serve /token: the right Basic credentials get every action asked for; anyone else gets none."""
    key, cert = _make_key(directory)
    issuer = TokenIssuer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            issuer.requests.append(query)
            if url.path != "/token":
                self.send_error(404)
                return
            given = self.headers.get("Authorization")
            expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if given is not None and given != expected:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]})
                return
            access = []
            if given is not None:
                for scope in query.get("scope", []):
                    for one in scope.split(" "):
                        kind, _, rest = one.partition(":")
                        name, _, actions = rest.rpartition(":")
                        access.append({"type": kind, "name": name, "actions": actions.split(",")})
            now = int(time.time())
            claims = {"iss": ISSUER, "sub": username if given else "", "aud": query.get("service", [""])[0],
                      "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
            token = _sign_jwt(key, cert, claims)
            self._reply(200, {"token": token, "expires_in": 300})

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving_http(Handler) as url:
        issuer.url = url + "/token"
        yield issuer, cert


@contextlib.contextmanager
def serving_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """HANDLER on a free port of 127.0.0.1, in a thread; yields its http://HOST:PORT."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- the registry --------------------------------------------------------------------------

def _config_yaml(port: int, storage: Path, auth_block: str) -> str:
    return f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: rootless-test-secret
{auth_block}"""


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 15.0) -> bool:
    """True once /v2/ answers at all (401 counts); False if the process died (port taken?)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with _NO_PROXY.open(url + "/v2/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"docker-registry did not answer {url}/v2/ within {timeout} s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_registry(tmp_path: Path, auth: Auth = None) -> Iterator[Registry]:
    """A docker-registry under TMP_PATH, with no auth, htpasswd Basic auth or token auth."""
    base = Path(tmp_path)
    base.mkdir(parents=True, exist_ok=True)
    storage = base / "storage"
    storage.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        auth_block = ""
        issuer: TokenIssuer | None = None
        username = password = None
        if auth == "basic":
            username, password = USERNAME, PASSWORD
            htpasswd = base / "htpasswd"
            htpasswd.write_text(f"{username}:{bcrypt_hash(password)}\n")
            auth_block = f"auth:\n  htpasswd:\n    realm: rootless-test\n    path: {htpasswd}\n"
        elif auth == "token":
            problem = token_auth_problem()
            if problem:
                raise RuntimeError(problem)
            username, password = USERNAME, PASSWORD
            issuer, cert = stack.enter_context(running_token_issuer(base, username, password))
            auth_block = (f"auth:\n  token:\n    realm: {issuer.url}\n    service: {SERVICE}\n"
                          f"    issuer: {ISSUER}\n    rootcertbundle: {cert}\n")
        elif auth is not None:
            raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
        log = base / "registry.log"
        for _ in range(5):
            port = free_port()
            config = base / "config.yml"
            config.write_text(_config_yaml(port, storage, auth_block))
            url = f"http://127.0.0.1:{port}"
            with open(log, "wb") as out:
                proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            try:
                if _wait_ready(proc, url, log):
                    break
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        else:
            raise RuntimeError(f"docker-registry would not start: {log.read_text()[-2000:]}")
        try:
            yield Registry(f"127.0.0.1:{port}", url, username, password, storage, issuer)
        finally:
            proc.kill()
            proc.wait()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
