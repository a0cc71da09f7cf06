"""Image references parse and normalise as docker's do."""

from __future__ import annotations

import pytest

from rootless.errors import InvalidReference
from rootless.image.reference import parse

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, full, familiar", [
    ("busybox", "docker.io/library/busybox:latest", "busybox"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox"),
    ("user/app", "docker.io/user/app:latest", "user/app"),
    ("localhost/app", "localhost/app:latest", "localhost/app"),
    ("localhost:5000/ns/app:v1", "localhost:5000/ns/app:v1", "localhost:5000/ns/app"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "127.0.0.1:5000/app"),
    ("[::1]:5000/app:tag", "[::1]:5000/app:tag", "[::1]:5000/app"),
    ("registry.example.com/ns/name:tag", "registry.example.com/ns/name:tag", "registry.example.com/ns/name"),
    ("Registry.Example.com/ns/name", "Registry.Example.com/ns/name:latest", "Registry.Example.com/ns/name"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}", "busybox"),
    (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}", "busybox"),
    ("a__b-c/e---f.g", "docker.io/a__b-c/e---f.g:latest", "a__b-c/e---f.g"),
])
def test_normalisation(text, full, familiar):
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar


@pytest.mark.parametrize("text, says", [
    ("Busybox", "must be lowercase"),
    ("user/App:1", "must be lowercase"),
    ("", "invalid reference format"),
    ("busy box", "invalid reference format"),
    ("busybox:", "invalid reference format"),
    ("busybox:-tag", "invalid reference format"),
    ("a" * 256, "255"),
    ("busybox@sha256:abc", "invalid reference format"),
    ("-busybox", "invalid reference format"),
    ("busybox:" + "t" * 129, "invalid reference format"),
    (DIGEST, "image id"),
])
def test_invalid(text, says):
    with pytest.raises(InvalidReference) as e:
        parse(text)
    assert says in str(e.value)
    assert e.value.exit_code == 125
