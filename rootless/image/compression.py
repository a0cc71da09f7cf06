"""Compressed streams: told apart by their magic bytes, decompressed strictly and in bounded memory.

Archives and layers arrive gzip-, zstd-, bzip2- or xz-compressed, or plain, and often on
a pipe, so the kind is read from the first bytes, never from a file name, and nothing
seeks.  Every frame (gzip member, zstd frame, bzip2 or xz stream) must end where its
format says it ends: a stream cut short is an error here, not a short file, because the
readers above (tarfile) would take a cut at a block boundary for a clean end.  Frames
may follow one another, as ``cat a.gz b.gz`` makes them.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib

try:
    # zlib-ng inflates about twice as fast as zlib (0.40 s against 0.81 s for a 170 MB
    # Debian layer here), and layers are gzip: it is most of a pull's CPU time.
    from zlib_ng import zlib_ng as _inflate
except ImportError:  # pragma: no cover (the package is a dependency; zlib still works)
    _inflate = zlib  # type: ignore[assignment]
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol, cast

import zstandard

GZIP = "gzip"
ZSTD = "zstd"
BZIP2 = "bzip2"
XZ = "xz"
MAGIC: dict[str, bytes] = {
    GZIP: b"\x1f\x8b",
    ZSTD: b"\x28\xb5\x2f\xfd",
    BZIP2: b"BZh",
    XZ: b"\xfd7zXZ\x00",
}
_HEAD = max(len(m) for m in MAGIC.values())
_CHUNK = 1 << 20
# zstd's decompressobj has no output bound: feeding it small pieces bounds what one
# call can expand to (a block is at most 128 KiB per few input bytes).
_ZSTD_FEED = 16 << 10


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class CorruptStream(Exception):
    """The compressed data is invalid or ends inside a frame; the message says which."""


def sniff(head: bytes) -> str | None:
    """The compression HEAD (the first bytes) starts, or None for data that is not compressed."""
    for kind, magic in MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def open_stream(src: Readable) -> tuple[str | None, BinaryIO]:
    """Read SRC's first bytes to tell its compression; return it and a reader of the plain bytes."""
    head = _read_exactly(src, _HEAD)
    kind = sniff(head)
    raw = _Prefixed(head, src)
    return kind, (decompress(raw, kind) if kind is not None else cast(BinaryIO, io.BufferedReader(raw, _CHUNK)))


def decompress(src: Readable, kind: str | None) -> BinaryIO:
    """A reader of SRC decompressed as KIND (``gzip``, ``zstd``, ``bzip2``, ``xz``; None: as it is).

    Reading raises CorruptStream where the data is invalid or cut short.
    """
    if kind is None:
        return cast(BinaryIO, io.BufferedReader(_Prefixed(b"", src), _CHUNK))
    try:
        make = _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown compression {kind!r}") from None
    return cast(BinaryIO, io.BufferedReader(_Frames(src, kind, make), _CHUNK))


def _read_exactly(src: Readable, n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = src.read(n - len(out))
        if not more:
            break
        out += more
    return out


class _Prefixed(io.RawIOBase):
    """SRC with HEAD (bytes already read from it) put back in front."""

    def __init__(self, head: bytes, src: Readable) -> None:
        self._head = head
        self._src = src

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._src.read(len(view))
        view[:len(data)] = data
        return len(data)


# (a fresh decoder, one step: (decoder, input) -> (output, input left over), its error type)
_Kind = tuple[Callable[[], Any], Callable[[Any, bytes], tuple[bytes, bytes]], tuple[type[Exception], ...]]


def _zlib_step(d: Any, data: bytes) -> tuple[bytes, bytes]:
    out = d.decompress(data, _CHUNK)
    # At a member's end zlib leaves the rest of the input in unused_data *and* in
    # unconsumed_tail; the caller takes it from unused_data, so it must not come twice.
    return out, b"" if d.eof else d.unconsumed_tail


def _buffered_step(d: Any, data: bytes) -> tuple[bytes, bytes]:
    # bz2 and lzma keep the input they could not use yet; it comes out on calls with b"".
    return d.decompress(data, _CHUNK), b""


def _zstd_step(d: Any, data: bytes) -> tuple[bytes, bytes]:
    return d.decompress(data[:_ZSTD_FEED]), data[_ZSTD_FEED:]


_KINDS: dict[str, _Kind] = {
    GZIP: (lambda: _inflate.decompressobj(16 + zlib.MAX_WBITS), _zlib_step, (zlib.error, _inflate.error)),
    ZSTD: (lambda: zstandard.ZstdDecompressor().decompressobj(), _zstd_step, (zstandard.ZstdError,)),
    BZIP2: (bz2.BZ2Decompressor, _buffered_step, (OSError, ValueError)),
    XZ: (lzma.LZMADecompressor, _buffered_step, (lzma.LZMAError,)),
}


class _Frames(io.RawIOBase):
    """Frames of one kind back to back, each checked to its end."""

    def __init__(self, src: Readable, kind: str, make: _Kind) -> None:
        self._src = src
        self._kind = kind
        self._new, self._step, self._errors = make
        self._d = self._new()
        self._in_frame = False
        self._pending = b""
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        while not self._out:
            if not self._more():
                return 0
        n = min(len(view), len(self._out))
        view[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _more(self) -> bool:
        """Decompress one step into _out; False at a clean end of the input."""
        if not self._pending and not self._buffered():
            self._pending = self._src.read(_CHUNK)
            if not self._pending:
                if self._in_frame:
                    raise CorruptStream(f"the {self._kind} data is truncated")
                return False
        self._in_frame = True
        try:
            self._out, self._pending = self._step(self._d, self._pending)
        except self._errors as e:
            raise CorruptStream(f"the {self._kind} data is corrupt: {e}") from None
        if self._d.eof:
            self._pending = self._d.unused_data + self._pending
            self._d = self._new()
            self._in_frame = False
        return True

    def _buffered(self) -> bool:
        """Whether the decoder holds input it has not turned into output yet (bz2, lzma)."""
        return self._in_frame and not getattr(self._d, "needs_input", True)
