"""ADD URL's pure rules: the name a download gets, where it may go, --checksum's form, Last-Modified."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from rootless.build.instructions import BuildError
from rootless.build.remote import (UNNAMED, Download, RemoteTree, file_name, is_url, last_modified_ns,
                                   parse_checksum, source_name)


@pytest.mark.parametrize("url, disposition, name", [
    ("http://h/dir/file.txt", None, "file.txt"),
    ("https://h:8080/a/b/archive.tar.gz?x=1#frag", None, "archive.tar.gz"),   # query and fragment are not the name
    ("http://h/with%20space", None, "with space"),
    ("http://h/dir/", None, None),
    ("http://h", None, None),
    ("http://h/", 'attachment; filename="report.csv"', "report.csv"),
    ("http://h/", "attachment; filename=../../etc/passwd", "passwd"),       # only ever a name, never a path
    ("http://h/", 'attachment; filename="dir/"', None),
    ("http://h/named", 'attachment; filename="other"', "named"),             # the URL's name comes first
])
def test_the_file_name_comes_from_the_url_then_the_server(url: str, disposition: str | None, name: str | None) -> None:
    assert file_name(url, disposition) == name


def test_a_nameless_url_needs_a_destination_that_names_the_file() -> None:
    assert source_name("http://h/f", "f", "/d/") == "f"
    assert source_name("http://h/", None, "/d/target") == UNNAMED
    with pytest.raises(BuildError) as e:
        source_name("http://h/", None, "/d/")
    assert "cannot determine filename for source http://h/" in e.value.message


def test_only_http_and_https_are_downloaded() -> None:
    assert is_url("http://h/x") and is_url("https://h/x")
    assert not is_url("ftp://h/x") and not is_url("git@github.com:a/b.git") and not is_url("http.txt")


def test_checksums_name_their_algorithm_and_have_its_length() -> None:
    assert parse_checksum("sha256:" + "AB" * 32) == ("sha256", "ab" * 32)
    assert parse_checksum("sha512:" + "0" * 128) == ("sha512", "0" * 128)
    for bad in ("sha256:abc", "md5:" + "0" * 32, "0" * 64, "sha256:" + "g" * 64):
        with pytest.raises(BuildError, match="invalid checksum digest format"):
            parse_checksum(bad)


def test_last_modified_is_read_as_http_dates_are_written() -> None:
    assert last_modified_ns("Wed, 21 Oct 2015 07:28:00 GMT") == 1445412480 * 1_000_000_000
    assert last_modified_ns("not a date") is None
    assert last_modified_ns(None) is None


def test_downloads_are_0600_files_placed_by_name_even_where_two_share_one(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"one")
    (tmp_path / "b").write_bytes(b"three")
    tree = RemoteTree([("same", Download("http://h/1/same", "same", tmp_path / "a", 3, 5, "")),
                       ("same", Download("http://h/2/same", "same", tmp_path / "b", 5, 7, ""))])
    items = tree.found().items
    assert [rel.rsplit(b"/", 1)[1] for rel, _ in items] == [b"same", b"same"]
    assert [(m.kind, m.perm, m.uid, m.gid, m.size, m.mtime_ns) for _, m in items] == \
        [(stat.S_IFREG, 0o600, 0, 0, 3, 5), (stat.S_IFREG, 0o600, 0, 0, 5, 7)]
    with tree.open(items[1][0]) as f:
        assert f.read() == b"three"
    meta = tree.meta(b"")
    assert meta is not None and meta.is_dir
    assert tree.meta(b"nothing") is None
