"""Compressed streams: kinds told by magic bytes, frames back to back, cut or corrupt data refused."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable

import pytest
import zstandard

from rootless.image import compression

DATA = os.urandom(200_000) + b"x" * 3_000_000  # more than one read's worth after decompression
KINDS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


class Pipe:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._buf.read(min(size, 5000) if size > 0 else size)


def read_all(data: bytes, size: int = 65536) -> tuple[str | None, bytes]:
    kind, reader = compression.open_stream(Pipe(data))
    out = bytearray()
    while chunk := reader.read(size):
        out += chunk
    return kind, bytes(out)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_frames_back_to_back_read_as_one_stream(kind: str) -> None:
    compress = KINDS[kind]
    assert read_all(compress(DATA)) == (kind, DATA)
    # A big frame then a small one: the bytes after a frame's end come once, not twice.
    assert read_all(compress(DATA) + compress(b"tail") + compress(DATA[:1000]), 1 << 22) == (
        kind, DATA + b"tail" + DATA[:1000])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cut_data_is_an_error_not_a_short_stream(kind: str) -> None:
    blob = KINDS[kind](DATA)
    for cut in (len(blob) // 2, len(blob) - 1, 10):
        with pytest.raises(compression.CorruptStream, match=f"{kind} data is (truncated|corrupt)"):
            read_all(blob[:cut])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_corrupt_data_is_an_error(kind: str) -> None:
    blob = bytearray(KINDS[kind](DATA))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(compression.CorruptStream, match=f"{kind} data is corrupt"):
        read_all(bytes(blob))


def test_plain_data_passes_through() -> None:
    assert read_all(b"") == (None, b"")
    assert read_all(b"ab") == (None, b"ab")
    assert read_all(DATA) == (None, DATA)
    assert compression.sniff(b"\x1f\x8b\x08") == "gzip" and compression.sniff(b"ustar") is None
