"""ADD's remote sources: an http(s) URL downloaded into the build's scratch space, named and dated as docker does.

The file is named by the URL's last path element (else by the server's
Content-Disposition); a URL that names no file may only go to a destination that names
it (no trailing ``/``), and is then called ``__unnamed__`` on the way, as in docker's
classic builder.  It becomes a 0600 file, its time the server's ``Last-Modified`` where
it sent one, and it is never extracted, even where it is an archive.
``--checksum=ALGO:HEX`` is checked against what arrived.

The download streams to a temp file, with a timeout on each network read; proxies come
from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``), as urllib reads them.
"""

from __future__ import annotations

import email.message
import email.utils
import hashlib
import http.client
import io
import os
import posixpath
import stat
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .. import __version__
from ..runtime.tree import Meta
from .instructions import BuildError

if TYPE_CHECKING:
    from .copying import Found

#: the name a URL that names no file has on its way to a destination that names it
UNNAMED = "__unnamed__"
#: seconds a connection or a read may wait for the server before the download fails
TIMEOUT = 60.0
_DIGEST_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_CHUNK = 1 << 20


def is_url(src: str) -> bool:
    """Whether ADD downloads SRC rather than looking it up in the context (docker's rule: the scheme alone)."""
    return src.startswith(("http://", "https://"))


def file_name(url: str, content_disposition: str | None = None) -> str | None:
    """The name the file at URL gets: the path's last element, else the Content-Disposition's
    filename; None where neither names a file (a path ending in ``/``, none at all)."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if path and not path.endswith("/"):
        return posixpath.basename(path)
    if content_disposition:
        header = email.message.Message()
        header["content-disposition"] = content_disposition
        given = header.get_filename()
        if given and not given.endswith("/") and posixpath.basename(given) not in ("", ".", ".."):
            return posixpath.basename(given)
    return None


def source_name(url: str, name: str | None, dest: str) -> str:
    """The name the download of URL has among ADD's sources, NAME being what the URL and the
    server gave (``file_name``); without one, DEST must be the file's own path."""
    if name:
        return name
    if dest.endswith("/"):
        raise BuildError(f"cannot determine filename for source {url}",
                         "give the file's own path as the destination, without a trailing /")
    return UNNAMED


def parse_checksum(text: str) -> tuple[str, str]:
    """``--checksum``'s ``ALGO:HEX`` as (algo, lowercase hex); sha256, sha384 or sha512."""
    algo, _, hexa = text.partition(":")
    hexa = hexa.lower()
    if len(hexa) != _DIGEST_LENGTHS.get(algo, -1) or not all(c in "0123456789abcdef" for c in hexa):
        raise BuildError(f"invalid checksum digest format: {text!r}",
                         "write --checksum=sha256:<64 hex digits> (or sha384:, sha512:)")
    return algo, hexa


def last_modified_ns(header: str | None) -> int | None:
    """The Last-Modified header's time in ns since the epoch; None where absent or unreadable."""
    if not header:
        return None
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return int(when.timestamp()) * 1_000_000_000


@dataclass(frozen=True)
class Download:
    """One URL's content, on disk at PATH: NAME as the URL and server gave it (``file_name``)."""

    url: str
    name: str | None
    path: Path
    size: int
    mtime_ns: int
    digest: str          # sha256:HEX of the content


def download(url: str, where: Path, checksum: str | None = None, timeout: float = TIMEOUT) -> Download:
    """Fetch URL into a new file under WHERE; CHECKSUM (``ALGO:HEX``) must match what arrives."""
    expected = parse_checksum(checksum) if checksum else None
    request = urllib.request.Request(url, headers={"User-Agent": f"rootless/{__version__}"})
    fetch_hint = "check the URL, or download the file into the build context and ADD it from there"
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise BuildError(f"ADD failed: failed to GET {url} with status {e.code} {e.reason}", fetch_hint) from None
    except urllib.error.URLError as e:
        raise BuildError(f"ADD failed: cannot download {url}: {e.reason}",
                         "check the URL and that its host is reachable from here "
                         "(HTTP_PROXY, HTTPS_PROXY and NO_PROXY are honoured)") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise BuildError(f"ADD failed: cannot download {url}: {e or type(e).__name__}", fetch_hint) from None
    sha256 = hashlib.sha256()
    other = hashlib.new(expected[0]) if expected and expected[0] != "sha256" else None
    fd, tmp = tempfile.mkstemp(prefix="download-", dir=where)
    size = 0
    headers = response.headers
    try:
        with response, os.fdopen(fd, "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha256.update(chunk)
                if other is not None:
                    other.update(chunk)
                size += len(chunk)
    except (OSError, http.client.HTTPException) as e:
        os.unlink(tmp)
        raise BuildError(f"ADD failed: the download of {url} broke off after {size} bytes: "
                         f"{e or type(e).__name__}", "try again; if it keeps failing, " + fetch_hint) from None
    digest = "sha256:" + sha256.hexdigest()
    if expected is not None:
        got = f"{expected[0]}:{(other or sha256).hexdigest()}"
        if got != f"{expected[0]}:{expected[1]}":
            os.unlink(tmp)
            raise BuildError(f"ADD failed: checksum mismatch for {url}: expected {expected[0]}:{expected[1]}, "
                             f"downloaded {got}", "fix --checksum, or check what the server serves now")
    mtime_ns = last_modified_ns(headers.get("Last-Modified"))
    return Download(url, file_name(url, headers.get("Content-Disposition")), Path(tmp), size,
                    time.time_ns() if mtime_ns is None else mtime_ns, digest)


class RemoteTree:
    """Downloads as ADD's sources: each a regular file, 0600 and root's, dated by the server,
    at ``INDEX/NAME`` (so that two URLs of one name stay apart; ADD places each by NAME)."""

    def __init__(self, files: Sequence[tuple[str, Download]]) -> None:
        self.files = {os.fsencode(f"{i}/{name}"): d for i, (name, d) in enumerate(files)}

    def meta(self, rel: bytes) -> Meta | None:
        got = self.files.get(rel)
        if got is not None:
            return Meta(stat.S_IFREG, 0o600, 0, 0, got.size, got.mtime_ns)
        if not rel or any(r.startswith(rel + b"/") for r in self.files):
            return Meta(stat.S_IFDIR, 0o755, 0, 0)
        return None

    def names(self, rel: bytes) -> list[bytes]:
        prefix = rel + b"/" if rel else b""
        return sorted({r[len(prefix):].partition(b"/")[0] for r in self.files if r.startswith(prefix)})

    def readlink(self, rel: bytes) -> bytes:
        raise OSError(22, "not a symbolic link", os.fsdecode(rel))

    def open(self, rel: bytes) -> BinaryIO:
        return io.open(self.files[rel].path, "rb")

    def xattrs(self, rel: bytes) -> dict[bytes, bytes]:
        return {}

    def rels(self) -> list[bytes]:
        return list(self.files)

    def found(self) -> Found:
        from .copying import Found

        return Found(self, [(rel, meta) for rel in self.files if (meta := self.meta(rel)) is not None])
