"""Image manifests and indexes: media types, parsing and validation, platform choice, digests.

Both wire formats are accepted: Docker's schema 2 (manifest and manifest list) and OCI's
(manifest and index).  Parsing never trusts the JSON further than it checks it: every
descriptor has a valid digest and a non-negative size before anyone uses it.
"""

from __future__ import annotations

import hashlib
import json
import platform as _host
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import DigestError, ManifestError, RootlessError

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

# -- media types ---------------------------------------------------------------------------

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
#: What a client puts in ``Accept`` to get any of the four.
ACCEPTED_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_FOREIGN_LAYER = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_FOREIGN_LAYER_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_FOREIGN_LAYER_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

#: Layer media type -> compression (None: a plain tar).
LAYER_TYPES: Mapping[str, str | None] = {
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_FOREIGN_LAYER_GZIP: "gzip",
    OCI_LAYER: None,
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_FOREIGN_LAYER: None,
    OCI_FOREIGN_LAYER_GZIP: "gzip",
    OCI_FOREIGN_LAYER_ZSTD: "zstd",
}
FOREIGN_LAYER_TYPES = frozenset({DOCKER_FOREIGN_LAYER_GZIP, OCI_FOREIGN_LAYER, OCI_FOREIGN_LAYER_GZIP,
                                 OCI_FOREIGN_LAYER_ZSTD})
CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG)

#: Registries cap manifests at 4 MiB too; a bigger one is an attack or a mistake.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None for an uncompressed tar; ManifestError for a non-layer type."""
    try:
        return LAYER_TYPES[media_type]
    except KeyError:
        raise ManifestError(f"unsupported layer media type {media_type!r}",
                            "layers must be tar, tar+gzip or tar+zstd (docker or OCI media types)") from None


def is_foreign_layer(media_type: str) -> bool:
    """Foreign (non-distributable) layers are fetched from their ``urls``, not pushed to registries."""
    return media_type in FOREIGN_LAYER_TYPES


# -- digests -------------------------------------------------------------------------------

_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


def validate_digest(digest: str) -> str:
    """Return DIGEST if it is ``sha256:<64 hex>`` or ``sha512:<128 hex>`` (lowercase), else raise."""
    if not isinstance(digest, str):
        raise DigestError(f"invalid digest {digest!r}: not a string")
    algorithm, sep, hexa = digest.partition(":")
    if not sep:
        raise DigestError(f"invalid digest {digest!r}", "a digest looks like sha256:<64 hex digits>")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r} in {digest!r}", "only sha256 and sha512 are supported")
    if len(hexa) != length or not _HEX.match(hexa):
        raise DigestError(f"invalid digest {digest!r}: {algorithm} needs {length} lowercase hex digits")
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher_for(digest: str) -> Hash:
    """A fresh hash object of DIGEST's algorithm, to verify content streamed through it."""
    return hashlib.new(validate_digest(digest).partition(":")[0])


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    if algorithm not in _DIGEST_HEX_LENGTH:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}", "only sha256 and sha512 are supported")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


# -- platforms -----------------------------------------------------------------------------

_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
                       "aix", "plan9", "android", "ios", "js", "wasip1", "dragonfly"})


def _normalize_os(os_name: str) -> str:
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's normalisation: aarch64 is arm64, arm64/v8 is plain arm64, plain arm is arm/v7."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
        return "arm", variant
    return arch, variant


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``, always normalised (see ``Platform.of``)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def of(cls, os: str, architecture: str, variant: str = "") -> Platform:
        arch, var = _normalize_arch(architecture, variant)
        return cls(_normalize_os(os), arch, var)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``--platform``: ``os/arch[/variant]``, or just ``os`` or ``arch`` (the rest from the host)."""
        parts = text.strip().split("/")
        if not text.strip() or len(parts) > 3 or any(not p or not re.match(r"^[A-Za-z0-9_.-]+$", p) for p in parts):
            raise RootlessError(f"invalid platform {text!r}", "expected os/arch[/variant], e.g. linux/arm64 or linux/arm/v7")
        host = host_platform()
        if len(parts) == 1:
            if _normalize_os(parts[0]) in _KNOWN_OS:
                return cls.of(parts[0], host.architecture, host.variant)
            return cls.of(host.os, parts[0])
        return cls.of(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def compatible(self) -> tuple[Platform, ...]:
        """What a host of this platform can run, best first (containerd's ``platforms.Only``)."""
        out = [self]
        arch, variant = self.architecture, self.variant
        if arch == "amd64" and variant.startswith("v") and variant[1:].isdigit():
            out += [Platform(self.os, "amd64", f"v{n}") for n in range(int(variant[1:]) - 1, 1, -1)]
            out.append(Platform(self.os, "amd64", ""))
        elif arch == "arm64":
            if variant:
                out.append(Platform(self.os, "arm64", ""))
            out += [Platform(self.os, "arm", f"v{n}") for n in (8, 7, 6, 5)]
        elif arch == "arm" and variant.startswith("v") and variant[1:].isdigit():
            out += [Platform(self.os, "arm", f"v{n}") for n in range(int(variant[1:]) - 1, 4, -1)]
        seen: list[Platform] = []
        for p in out:
            if p not in seen:
                seen.append(p)
        return tuple(seen)


def host_platform() -> Platform:
    """The platform this process runs on (Linux only; the machine name as containerd maps it)."""
    machine = _host.machine() or "amd64"
    variant = ""
    if machine in ("armv7l", "armv7"):
        machine, variant = "arm", "v7"
    elif machine in ("armv6l", "armv6"):
        machine, variant = "arm", "v6"
    elif machine in ("armv5tel", "armv5l"):
        machine, variant = "arm", "v5"
    return Platform.of("linux", machine, variant)


# -- manifests and indexes -----------------------------------------------------------------

@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: its media type, digest and size, where else it lives, and its platform."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: Platform | None = None


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config blob and the layers, bottom first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str
    raw: bytes
    digest: str


@dataclass(frozen=True)
class Index:
    """A manifest list or OCI index: one manifest per platform."""

    manifests: tuple[Descriptor, ...]
    media_type: str
    raw: bytes
    digest: str

    def select(self, wanted: Platform | None = None) -> Descriptor:
        """The entry docker would pull for WANTED (default: the host): exact, else the best compatible."""
        return choose_platform(self.manifests, wanted)


def choose_platform(entries: Sequence[Descriptor], wanted: Platform | None = None) -> Descriptor:
    wanted = wanted or host_platform()
    candidates = [d for d in entries if d.platform is not None and d.media_type in MANIFEST_TYPES + INDEX_TYPES]
    for platform in wanted.compatible():
        for d in candidates:
            if d.platform == platform:
                return d
    offered = sorted({str(d.platform) for d in candidates})
    raise ManifestError(f"no matching manifest for {wanted} in the manifest list entries",
                        f"this image offers {', '.join(offered)}; pick one with --platform" if offered else None)


def check_size(length: int) -> None:
    if length > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest too large: {length} bytes (the limit is {MAX_MANIFEST_SIZE})")


def detect_media_type(raw: bytes, content_type: str | None = None) -> str:
    """The manifest's media type: the ``Content-Type`` if it names a manifest, else the JSON's own claim."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype in ACCEPTED_TYPES or ctype in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        return ctype
    try:
        doc = json.loads(raw)
    except ValueError:
        return ctype
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str):
            return declared
        # OCI lets mediaType be absent: tell the kinds apart by their fields.
        if "manifests" in doc:
            return OCI_INDEX
        if "config" in doc and "layers" in doc:
            return OCI_MANIFEST
    return ctype


def parse(raw: bytes, media_type: str | None = None, digest: str | None = None) -> Manifest | Index:
    """Parse and validate RAW, served as MEDIA_TYPE (a ``Content-Type``; None to trust the JSON).

    DIGEST, where given, is checked against RAW.
    """
    check_size(len(raw))
    if digest is not None:
        validate_digest(digest)
        if digest_of(raw, digest.partition(":")[0]) != digest:
            raise DigestError(f"manifest digest mismatch: expected {digest}, got {digest_of(raw, digest.partition(':')[0])}")
    else:
        digest = sha256_digest(raw)
    kind = detect_media_type(raw, media_type)
    if kind in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise ManifestError("unsupported manifest: Docker Image manifest version 2, schema 1 is deprecated",
                            "push the image again with a current docker or buildah to get a schema 2 or OCI manifest")
    if kind not in ACCEPTED_TYPES:
        raise ManifestError(f"unsupported manifest media type {kind or '(none)'!r}",
                            "expected a docker schema 2 or OCI image manifest or index")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"invalid manifest JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("invalid manifest: not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise ManifestError(f"invalid manifest: schemaVersion is {doc.get('schemaVersion')!r}, expected 2")
    declared = doc.get("mediaType")
    if declared is not None and declared != kind:
        raise ManifestError(f"invalid manifest: served as {kind} but its mediaType is {declared!r}")
    if kind in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError("invalid manifest list: 'manifests' must be a list")
        return Index(tuple(_descriptor(e, "manifests[]") for e in entries), kind, raw, digest)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ManifestError("invalid manifest: 'layers' must be a list")
    config = _descriptor(doc.get("config"), "config")
    return Manifest(config, tuple(_descriptor(e, f"layers[{i}]") for i, e in enumerate(layers)), kind, raw, digest)


def _descriptor(obj: object, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestError(f"invalid manifest: {where} must be an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"invalid manifest: {where} has no mediaType")
    if not isinstance(digest, str):
        raise ManifestError(f"invalid manifest: {where} has no digest")
    try:
        validate_digest(digest)
    except DigestError as e:
        raise ManifestError(f"invalid manifest: {where}: {e.message}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"invalid manifest: {where} has no valid size")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"invalid manifest: {where}.urls must be a list of strings")
    platform = None
    raw_platform = obj.get("platform")
    if raw_platform is not None:
        if not isinstance(raw_platform, dict):
            raise ManifestError(f"invalid manifest: {where}.platform must be an object")
        os_name, arch, variant = raw_platform.get("os"), raw_platform.get("architecture"), raw_platform.get("variant", "")
        if not isinstance(os_name, str) or not isinstance(arch, str) or not isinstance(variant, str):
            raise ManifestError(f"invalid manifest: {where}.platform needs os and architecture strings")
        platform = Platform.of(os_name, arch, variant)
    return Descriptor(media_type, digest, size, tuple(urls), platform)
