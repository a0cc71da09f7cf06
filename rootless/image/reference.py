"""Image references parsed and normalised exactly as docker does.

``busybox`` is ``docker.io/library/busybox:latest``; ``host:5000/ns/app:1.0`` keeps its
registry; ``name@sha256:...`` pins a digest.  The grammar is distribution/reference's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_ANCHORED_DIGEST = re.compile(rf"^{_DIGEST}$")


@dataclass(frozen=True)
class Reference:
    """A normalised reference: ``domain/path`` plus a tag, a digest, or both."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """``docker.io/library/busybox``: the name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """The short form docker shows: ``busybox`` for docker.io/library/busybox."""
        if self.domain == DEFAULT_DOMAIN:
            if self.path.startswith(OFFICIAL_NAMESPACE + "/") and self.path.count("/") == 1:
                return self.path[len(OFFICIAL_NAMESPACE) + 1:]
            return self.path
        return self.repository

    def __str__(self) -> str:
        out = self.repository
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, None)


def parse(text: str) -> Reference:
    """Parse TEXT as docker does, defaulting the registry to docker.io and the tag to latest."""
    if not text:
        raise InvalidReference("invalid reference format", "an image name is needed, e.g. busybox or registry:5000/ns/app:tag")
    if _ANCHORED_DIGEST.match(text) and len(text.split(":", 1)[1]) == 64:
        raise InvalidReference(f"invalid reference format: {text} is an image id, not a name")
    m = _REFERENCE.match(text)
    if m is None:
        name = re.split(r"[:@]", text.split("/")[-1])[0]
        whole = text.rsplit("@", 1)[0]
        if any(c.isupper() for c in whole.split("/", 1)[-1].split(":")[0]) or (
                "/" not in whole and any(c.isupper() for c in name)):
            lowered = _REFERENCE.match(text.lower())
            if lowered is not None:
                raise InvalidReference(f"invalid reference format: repository name ({text}) must be lowercase")
        raise InvalidReference("invalid reference format",
                               f"{text!r} is not NAME[:TAG][@DIGEST] (lowercase names; tags of letters, digits, '_', '.', '-')")
    name, tag, digest = m.group("name"), m.group("tag"), m.group("digest")
    if len(name) > NAME_TOTAL_MAX:
        raise InvalidReference(f"invalid reference format: repository name must not be more than {NAME_TOTAL_MAX} characters")
    domain, path = _split_domain(name)
    if any(c.isupper() for c in path):
        raise InvalidReference(f"invalid reference format: repository name ({path}) must be lowercase")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


def names_tag(text: str) -> bool:
    """Whether TEXT itself gives a tag or digest (``parse`` fills in ``latest`` where it does not)."""
    return "@" in text or ":" in text.rsplit("/", 1)[-1]


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first.lower() == first):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    return domain, path
