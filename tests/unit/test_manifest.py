"""Manifests and indexes parse and validate as registries and docker expect; platforms are chosen as containerd does."""

from __future__ import annotations

import hashlib
import json

import pytest

from rootless.errors import DigestError, ManifestError, RootlessError
from rootless.image import manifest as mf
from rootless.image.manifest import Descriptor, Index, Manifest, Platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def image(media_type: str | None = mf.OCI_MANIFEST, layers: list[dict[str, object]] | None = None,
          **extra: object) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc["config"] = {"mediaType": mf.OCI_CONFIG, "digest": D1, "size": 10}
    doc["layers"] = layers if layers is not None else [
        {"mediaType": mf.OCI_LAYER_GZIP, "digest": D2, "size": 20},
        {"mediaType": mf.OCI_LAYER_ZSTD, "digest": D3, "size": 30, "urls": ["https://example.com/l"]},
    ]
    doc.update(extra)
    return json.dumps(doc).encode()


def index(entries: list[tuple[str, str, str]], media_type: str = mf.OCI_INDEX) -> bytes:
    manifests = []
    for n, (os_name, arch, variant) in enumerate(entries):
        platform = {"os": os_name, "architecture": arch}
        if variant:
            platform["variant"] = variant
        manifests.append({"mediaType": mf.OCI_MANIFEST, "digest": "sha256:" + f"{n:x}" * 64, "size": 100 + n,
                          "platform": platform})
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}).encode()


def test_parse_an_oci_manifest() -> None:
    raw = image()
    m = mf.parse(raw, mf.OCI_MANIFEST)
    assert isinstance(m, Manifest)
    assert m.config == Descriptor(mf.OCI_CONFIG, D1, 10)
    assert [layer.digest for layer in m.layers] == [D2, D3]
    assert m.layers[1].urls == ("https://example.com/l",)
    assert m.media_type == mf.OCI_MANIFEST
    assert m.raw == raw
    assert m.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert [mf.layer_compression(layer.media_type) for layer in m.layers] == ["gzip", "zstd"]


def test_parse_a_docker_manifest_and_list() -> None:
    raw = image(mf.DOCKER_MANIFEST, layers=[{"mediaType": mf.DOCKER_LAYER_GZIP, "digest": D2, "size": 1}])
    assert isinstance(mf.parse(raw, mf.DOCKER_MANIFEST), Manifest)
    lst = mf.parse(index([("linux", "amd64", "")], mf.DOCKER_MANIFEST_LIST), mf.DOCKER_MANIFEST_LIST)
    assert isinstance(lst, Index)
    assert lst.manifests[0].platform == Platform("linux", "amd64")


def test_media_type_comes_from_the_json_when_the_header_is_generic() -> None:
    assert isinstance(mf.parse(image(mf.DOCKER_MANIFEST), "application/json"), Manifest)
    # OCI allows mediaType to be absent: the fields tell a manifest from an index.
    assert mf.parse(image(None), None).media_type == mf.OCI_MANIFEST
    raw = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert isinstance(mf.parse(raw), Index)


def test_layer_types() -> None:
    assert mf.layer_compression(mf.OCI_LAYER) is None
    assert mf.layer_compression(mf.DOCKER_LAYER_GZIP) == "gzip"
    assert mf.is_foreign_layer(mf.DOCKER_FOREIGN_LAYER_GZIP)
    assert not mf.is_foreign_layer(mf.OCI_LAYER_GZIP)
    with pytest.raises(ManifestError, match="unsupported layer media type"):
        mf.layer_compression("application/vnd.in-toto+json")


@pytest.mark.parametrize("raw, media_type, message", [
    (b"{not json", mf.OCI_MANIFEST, "invalid manifest JSON"),
    (b"[]", mf.OCI_MANIFEST, "not a JSON object"),
    (image(schemaVersion=1), mf.OCI_MANIFEST, "schemaVersion"),
    (image(mf.DOCKER_MANIFEST), mf.OCI_MANIFEST, "its mediaType is"),
    (image(layers=[{"mediaType": mf.OCI_LAYER, "digest": "sha256:abc", "size": 1}]), mf.OCI_MANIFEST, "layers\\[0\\]"),
    (image(layers=[{"mediaType": mf.OCI_LAYER, "digest": D2, "size": -1}]), mf.OCI_MANIFEST, "size"),
    (image(layers=[{"mediaType": mf.OCI_LAYER, "digest": D2, "size": True}]), mf.OCI_MANIFEST, "size"),
    (image(layers=[{"digest": D2, "size": 1}]), mf.OCI_MANIFEST, "mediaType"),
    (image(layers="x"), mf.OCI_MANIFEST, "'layers' must be a list"),  # type: ignore[arg-type]
    (json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": {}}).encode(), mf.OCI_INDEX,
     "'manifests' must be a list"),
])
def test_invalid_manifests_are_refused(raw: bytes, media_type: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        mf.parse(raw, media_type)


def test_unknown_media_type_is_a_clear_error() -> None:
    with pytest.raises(ManifestError) as e:
        mf.parse(b'{"schemaVersion": 2}', "application/vnd.example.thing+json")
    assert "unsupported manifest media type 'application/vnd.example.thing+json'" in str(e.value)
    assert isinstance(e.value, RootlessError)
    with pytest.raises(ManifestError, match="schema 1"):
        mf.parse(b'{"schemaVersion": 1}', mf.DOCKER_SCHEMA1_SIGNED)


def test_size_limit() -> None:
    padding = " " * (mf.MAX_MANIFEST_SIZE + 1 - len(image()))
    too_big = image()[:-1] + padding.encode() + b"}"
    assert len(too_big) == mf.MAX_MANIFEST_SIZE + 1
    with pytest.raises(ManifestError, match="manifest too large"):
        mf.parse(too_big, mf.OCI_MANIFEST)
    at_limit = image()[:-1] + padding[1:].encode() + b"}"
    assert isinstance(mf.parse(at_limit, mf.OCI_MANIFEST), Manifest)


def test_expected_digest_is_checked() -> None:
    raw = image()
    assert mf.parse(raw, mf.OCI_MANIFEST, mf.sha256_digest(raw)).digest == mf.sha256_digest(raw)
    sha512 = "sha512:" + hashlib.sha512(raw).hexdigest()
    assert mf.parse(raw, mf.OCI_MANIFEST, sha512).digest == sha512
    with pytest.raises(DigestError, match="mismatch"):
        mf.parse(raw, mf.OCI_MANIFEST, D1)


def test_digest_helpers() -> None:
    assert mf.sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert mf.validate_digest(D1) == D1
    assert mf.validate_digest("sha512:" + "a" * 128)
    for bad in ["", "sha256", "sha256:" + "a" * 63, "sha256:" + "A" * 64, "sha256:" + "g" * 64,
                "sha512:" + "a" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 65]:
        with pytest.raises(DigestError):
            mf.validate_digest(bad)
    with pytest.raises(DigestError, match="only sha256 and sha512"):
        mf.validate_digest("blake3:" + "a" * 64)


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("linux/amd64/v1", Platform("linux", "amd64")),
    ("linux/arm64", Platform("linux", "arm64")),
    ("linux/arm64/v8", Platform("linux", "arm64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/arm", Platform("linux", "arm", "v7")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("linux/armhf", Platform("linux", "arm", "v7")),
    ("linux/armel", Platform("linux", "arm", "v6")),
    ("linux/arm/v5", Platform("linux", "arm", "v5")),
    ("linux/i386", Platform("linux", "386")),
    ("Linux/PPC64LE", Platform("linux", "ppc64le")),
    ("arm64", Platform("linux", "arm64")),
])
def test_platform_parsing_and_normalisation(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


@pytest.mark.parametrize("bad", ["", "linux/", "/amd64", "linux/arm/v7/extra", "linux amd64"])
def test_bad_platforms(bad: str) -> None:
    with pytest.raises(RootlessError, match="invalid platform"):
        Platform.parse(bad)


def test_host_platform_is_normalised() -> None:
    host = mf.host_platform()
    assert host.os == "linux"
    assert Platform.of(host.os, host.architecture, host.variant) == host


def test_choose_exact_platform() -> None:
    idx = mf.parse(index([("linux", "arm", "v7"), ("linux", "amd64", ""), ("linux", "arm64", "v8"),
                          ("windows", "amd64", "")]))
    assert isinstance(idx, Index)
    assert idx.select(Platform.parse("linux/amd64")).size == 101
    assert idx.select(Platform.parse("linux/arm64")).size == 102  # v8 in the index is arm64's default
    assert idx.select(Platform.parse("linux/arm/v7")).size == 100
    assert idx.select(Platform.parse("windows/amd64")).size == 103


def test_choose_a_compatible_platform() -> None:
    idx = mf.parse(index([("linux", "arm", "v6"), ("linux", "arm", "v5"), ("linux", "amd64", "")]))
    assert isinstance(idx, Index)
    assert idx.select(Platform.parse("linux/arm/v7")).size == 100  # v6 beats v5
    assert idx.select(Platform.parse("linux/arm64")).size == 100  # arm64 runs 32-bit arm
    assert idx.select(Platform.parse("linux/amd64/v3")).size == 102


def test_no_matching_platform() -> None:
    idx = mf.parse(index([("linux", "arm64", ""), ("linux", "s390x", ""),
                          ("unknown", "unknown", "")]))
    assert isinstance(idx, Index)
    with pytest.raises(ManifestError) as e:
        idx.select(Platform.parse("linux/amd64"))
    assert e.value.message == "no matching manifest for linux/amd64 in the manifest list entries"
    assert e.value.hint is not None and "linux/arm64" in e.value.hint and "linux/s390x" in e.value.hint
    with pytest.raises(ManifestError, match="linux/arm/v7"):
        idx.select(Platform.parse("linux/arm"))


def test_default_platform_is_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mf._host, "machine", lambda: "aarch64")
    idx = mf.parse(index([("linux", "amd64", ""), ("linux", "arm64", "v8")]))
    assert isinstance(idx, Index)
    assert mf.host_platform() == Platform("linux", "arm64")
    assert idx.select().size == 101
