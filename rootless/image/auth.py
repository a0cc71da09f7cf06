"""Registry credentials, stored in docker's config.json format: rootless's auth.json first, then docker's.

``$XDG_CONFIG_HOME/rootless/auth.json`` (``Config.auth_file``) is the only file written;
``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``) is read as a fallback so
that an existing ``docker login`` keeps working.  Both hold ``{"auths": {KEY: {"auth":
base64("user:password")}}}``.  Docker Hub's key is ``https://index.docker.io/v1/``; other
keys are matched by host whatever scheme or path they carry, as docker does.

Credential helpers (``credsStore``, ``credHelpers``) are not run: rootless does not execute
``docker-credential-*`` programs.  ``helper_for(host)`` names the helper that holds a host's
credentials so that the caller can tell the user to ``rootless login`` instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from ..config import Config
from ..errors import RootlessError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def normalize_host(key: str) -> str:
    """``https://host:5000/v2/`` -> ``host:5000``; every Docker Hub spelling -> ``docker.io``."""
    host = key.strip()
    for scheme in ("https://", "http://"):
        if host.lower().startswith(scheme):
            host = host[len(scheme):]
    host = host.split("/", 1)[0]
    return "docker.io" if host.lower() in _DOCKER_HUB_HOSTS else host


def storage_key(host: str) -> str:
    """The key docker writes for HOST: Docker Hub's legacy URL, else the bare host[:port]."""
    host = normalize_host(host)
    return DOCKER_HUB_KEY if host == "docker.io" else host


def default_docker_config() -> Path:
    configured = os.environ.get("DOCKER_CONFIG")
    base = Path(configured) if configured else Path.home() / ".docker"
    return base / "config.json"


class CredentialStore:
    """Looks credentials up by registry host; also usable directly as ``credentials(host)``."""

    def __init__(self, auth_file: Path, docker_config: Path | None = None) -> None:
        self.auth_file = Path(auth_file)
        self.docker_config = docker_config if docker_config is not None else default_docker_config()

    @classmethod
    def from_config(cls, config: Config) -> CredentialStore:
        return cls(config.auth_file)

    def __call__(self, host: str) -> tuple[str, str] | None:
        return self.get(host)

    def get(self, host: str) -> tuple[str, str] | None:
        """(user, password) for HOST from auth.json, else docker's config.json, else None."""
        wanted = normalize_host(host)
        for path in (self.auth_file, self.docker_config):
            found = self._lookup(_read(path), wanted, path)
            if found is not None:
                return found
        return None

    def helper_for(self, host: str) -> str | None:
        """The credential helper docker would ask for HOST (``credHelpers``, else ``credsStore``), if any."""
        doc = _read(self.docker_config)
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if normalize_host(key) == normalize_host(host) and isinstance(helper, str):
                    return helper
        store = doc.get("credsStore")
        return store if isinstance(store, str) and store else None

    def login(self, host: str, username: str, password: str) -> None:
        """Save the credentials for HOST in auth.json (mode 0600), replacing any for the same host."""
        if not username:
            raise RootlessError("login: a username is needed")
        if ":" in username:
            raise RootlessError("login: the username must not contain ':'")
        doc = _read(self.auth_file)
        auths = _auths(doc, self.auth_file)
        wanted = normalize_host(host)
        for key in [k for k in auths if normalize_host(k) == wanted]:
            del auths[key]
        auths[storage_key(host)] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        doc["auths"] = auths
        _write_atomic(self.auth_file, doc)

    def logout(self, host: str) -> bool:
        """Forget HOST's credentials in auth.json; False if there were none there."""
        doc = _read(self.auth_file)
        auths = _auths(doc, self.auth_file)
        wanted = normalize_host(host)
        keys = [k for k in auths if normalize_host(k) == wanted]
        if not keys:
            return False
        for key in keys:
            del auths[key]
        doc["auths"] = auths
        _write_atomic(self.auth_file, doc)
        return True

    @staticmethod
    def _lookup(doc: dict[str, object], wanted: str, path: Path) -> tuple[str, str] | None:
        auths = _auths(doc, path)
        # An exact key wins over one that only normalises to the host (docker's order).
        keys = sorted((k for k in auths if normalize_host(k) == wanted), key=lambda k: k != storage_key(wanted))
        for key in keys:
            entry = auths[key]
            if not isinstance(entry, dict):
                continue
            encoded = entry.get("auth")
            if isinstance(encoded, str) and encoded:
                try:
                    user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    raise RootlessError(f"{path}: the auth entry for {key} is not base64 of user:password",
                                        f"run rootless login {wanted} again") from None
                if sep and user:
                    return user, password
            plain_user, plain_password = entry.get("username"), entry.get("password")
            if isinstance(plain_user, str) and plain_user and isinstance(plain_password, str):
                return plain_user, plain_password
        return None


def _read(path: Path) -> dict[str, object]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RootlessError(f"cannot read credentials file {path}: {e.strerror}") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RootlessError(f"credentials file {path} is not valid JSON: {e}", "fix it, or remove it and log in again") from None
    if not isinstance(doc, dict):
        raise RootlessError(f"credentials file {path} must hold a JSON object", "fix it, or remove it and log in again")
    return doc


def _auths(doc: dict[str, object], path: Path) -> dict[str, object]:
    auths = doc.get("auths", {})
    if not isinstance(auths, dict):
        raise RootlessError(f"credentials file {path}: 'auths' must be an object", "fix it, or remove it and log in again")
    return auths


def _write_atomic(path: Path, doc: dict[str, object]) -> None:
    """Temp file (0600) + fsync + rename + fsync of the directory: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = (json.dumps(doc, indent="\t") + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise RootlessError(f"cannot write credentials file {path}: {e.strerror}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
