"""Credentials are read and written in docker's config.json format, rootless's file before docker's."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from rootless.config import Config
from rootless.errors import RootlessError
from rootless.image.auth import DOCKER_HUB_KEY, CredentialStore, normalize_host


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "config" / "rootless" / "auth.json", tmp_path / "docker" / "config.json")


def write_docker(store: CredentialStore, doc: dict[str, object]) -> None:
    store.docker_config.parent.mkdir(parents=True, exist_ok=True)
    store.docker_config.write_text(json.dumps(doc))


def test_login_writes_a_private_docker_format_file(store: CredentialStore) -> None:
    assert store.get("registry.example.com") is None
    store.login("registry.example.com:5000", "alice", "pa:ss")
    mode = stat.S_IMODE(store.auth_file.stat().st_mode)
    assert mode == 0o600
    doc = json.loads(store.auth_file.read_text())
    assert doc == {"auths": {"registry.example.com:5000": {"auth": b64("alice:pa:ss")}}}
    assert store.get("registry.example.com:5000") == ("alice", "pa:ss")
    assert store.get("registry.example.com") is None
    assert store("registry.example.com:5000") == ("alice", "pa:ss")
    assert not list(store.auth_file.parent.glob(".*.tmp"))


def test_docker_hub_key(store: CredentialStore) -> None:
    store.login("docker.io", "bob", "pw")
    assert list(json.loads(store.auth_file.read_text())["auths"]) == [DOCKER_HUB_KEY]
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/"):
        assert store.get(host) == ("bob", "pw")


def test_login_replaces_and_keeps_others(store: CredentialStore) -> None:
    store.auth_file.parent.mkdir(parents=True)
    store.auth_file.write_text(json.dumps({"auths": {"https://other.io/v2/": {"auth": b64("o:p")},
                                                     "reg.io": {"auth": b64("old:old")}},
                                           "credHelpers": {"x": "y"}}))
    store.login("https://reg.io", "new", "new")
    doc = json.loads(store.auth_file.read_text())
    assert doc["credHelpers"] == {"x": "y"}
    assert store.get("reg.io") == ("new", "new")
    assert store.get("other.io") == ("o", "p")


def test_logout(store: CredentialStore) -> None:
    store.login("reg.io", "a", "b")
    store.login("docker.io", "c", "d")
    assert store.logout("reg.io") is True
    assert store.get("reg.io") is None
    assert store.get("docker.io") == ("c", "d")
    assert store.logout("reg.io") is False
    assert stat.S_IMODE(store.auth_file.stat().st_mode) == 0o600


def test_docker_config_is_the_fallback(store: CredentialStore) -> None:
    write_docker(store, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:1")},
                                   "http://reg.io:5000/v2/": {"auth": b64("docker:2")},
                                   "plain.io": {"username": "u", "password": "p"}}})
    assert store.get("docker.io") == ("hub", "1")
    assert store.get("reg.io:5000") == ("docker", "2")
    assert store.get("plain.io") == ("u", "p")
    store.login("reg.io:5000", "mine", "3")
    assert store.get("reg.io:5000") == ("mine", "3"), "rootless's own file comes first"
    store.logout("reg.io:5000")
    assert store.get("reg.io:5000") == ("docker", "2")
    assert json.loads(store.docker_config.read_text())["auths"]["http://reg.io:5000/v2/"], "docker's file is never written"


def test_docker_config_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    (tmp_path / "dockercfg").mkdir()
    (tmp_path / "dockercfg" / "config.json").write_text(json.dumps({"auths": {"r.io": {"auth": b64("e:f")}}}))
    config = Config(tmp_path / "data", tmp_path / "cfg", tmp_path / "run")
    store = CredentialStore.from_config(config)
    assert store.auth_file == config.auth_file
    assert store.get("r.io") == ("e", "f")


def test_credential_helpers_are_named_not_run(store: CredentialStore) -> None:
    write_docker(store, {"credsStore": "desktop", "credHelpers": {"gcr.io": "gcloud"},
                         "auths": {"gcr.io": {}}})
    assert store.get("gcr.io") is None
    assert store.helper_for("gcr.io") == "gcloud"
    assert store.helper_for("docker.io") == "desktop"


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[]", "must hold a JSON object"),
    ('{"auths": []}', "'auths' must be an object"),
    ('{"auths": {"r.io": {"auth": "!!!"}}}', "not base64"),
])
def test_broken_files_are_clear_errors(store: CredentialStore, text: str, message: str) -> None:
    store.auth_file.parent.mkdir(parents=True)
    store.auth_file.write_text(text)
    with pytest.raises(RootlessError, match=message) as e:
        store.get("r.io")
    assert str(store.auth_file) in str(e.value)


def test_empty_file_is_no_credentials(store: CredentialStore) -> None:
    store.auth_file.parent.mkdir(parents=True)
    store.auth_file.write_text("")
    assert store.get("r.io") is None


@pytest.mark.parametrize("key, host", [
    ("https://index.docker.io/v1/", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("http://localhost:5000/v2/", "localhost:5000"),
    ("reg.io", "reg.io"),
])
def test_normalize_host(key: str, host: str) -> None:
    assert normalize_host(key) == host
