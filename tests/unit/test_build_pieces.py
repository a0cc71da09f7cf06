"""The builder's pure pieces: cache entries and keys, COPY's source lookup, --chown names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootless.build import cache, ignore
from rootless.build.copying import ContextTree, InlineTree, find_sources, parse_chown
from rootless.build.instructions import BuildError
from rootless.image import manifest as mf
from rootless.image.local import StoredLayer
from rootless.image.store import Store
from rootless.runtime.tree import DiskTree


def test_a_cache_entry_whose_layer_is_gone_is_a_miss(tmp_path: Path) -> None:
    store = Store.open_at(tmp_path / "store")
    c = cache.Cache(store)
    key = cache.step_key("sha256:parent", "RUN true", {"A": "1"})
    assert key != cache.step_key("sha256:parent", "RUN true", {"A": "2"})
    c.put(key, {"config": {"Env": ["X=1"]}}, [])
    entry = c.get(key)
    assert entry is not None and entry.config == {"config": {"Env": ["X=1"]}}
    gone = StoredLayer("sha256:" + "0" * 64, mf.Descriptor(mf.DOCKER_LAYER_GZIP, "sha256:" + "1" * 64, 3))
    c.put(key, {"config": {}}, [gone])
    assert c.get(key) is None
    assert c.get("no-such-key") is None
    assert not [p for p in c.dir.iterdir() if p.name.startswith(".tmp-")]


def test_the_content_hash_sees_content_and_mode_not_time(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d/f"
    f.write_text("one")
    tree = DiskTree(os.fsencode(str(tmp_path)))
    first = cache.hash_tree(tree, [b"d"], [b"d"])
    os.utime(f, (1, 1))
    assert cache.hash_tree(tree, [b"d"], [b"d"]) == first
    f.chmod(0o600)
    assert cache.hash_tree(tree, [b"d"], [b"d"]) != first
    f.write_text("two")
    assert cache.hash_tree(tree, [b"d"], [b"d"]) != first


def test_sources_with_wildcards_and_ignored_files(tmp_path: Path) -> None:
    for name in ("a.conf", "b.conf", "c.txt", "skip.conf"):
        (tmp_path / name).write_text(name)
    tree = ContextTree(tmp_path, ignore.matcher("skip.conf\n"))
    found = find_sources(tree, ["*.conf", "./c.txt"], "COPY", "build context")
    assert [rel for rel, _ in found.items] == [b"a.conf", b"b.conf", b"c.txt"]
    with pytest.raises(BuildError, match="file not found in build context"):
        find_sources(tree, ["skip.conf"], "COPY", "build context")
    with pytest.raises(BuildError):
        find_sources(tree, ["*.none"], "COPY", "build context")


def test_a_source_named_through_a_symlink_is_its_target_under_the_links_name(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("real")
    (tmp_path / "x.conf").write_text("x")
    os.symlink("real.txt", tmp_path / "link")
    found = find_sources(ContextTree(tmp_path, ignore.matcher("")), ["link", "real.txt", "x.conf"], "COPY",
                         "build context")
    assert [rel for rel, _ in found.items] == [b"real.txt", b"real.txt", b"x.conf"]
    # COPY link real.txt x.conf /dir/ makes /dir/link, /dir/real.txt and /dir/x.conf, as docker does
    assert [found.name(i) for i in range(3)] == [b"link", b"real.txt", b"x.conf"]


def test_chown_names_come_from_the_images_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:\n")
    tree = DiskTree(os.fsencode(str(tmp_path)))
    assert parse_chown("app:staff", tree) == (1000, 50)
    assert parse_chown("app", tree) == (1000, 1000)
    assert parse_chown("12:34", tree) == (12, 34)
    with pytest.raises(BuildError, match="no such user: nobody"):
        parse_chown("nobody", tree)


def test_an_exception_reincludes_a_file_under_an_excluded_directory(tmp_path: Path) -> None:
    (tmp_path / "logs/sub").mkdir(parents=True)
    for name in ("logs/keep.txt", "logs/drop.txt", "logs/sub/deep.txt", "top.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache/x").write_text("x")
    tree = ContextTree(tmp_path, ignore.matcher("logs\ncache\n!logs/keep.txt\n"))
    assert sorted(tree.names(b"")) == [b"logs", b"top.txt"]   # cache: nothing in it is re-included
    assert tree.names(b"logs") == [b"keep.txt"]
    assert tree.meta(b"logs/sub") is None and tree.meta(b"cache") is None
    found = find_sources(tree, ["logs"], "COPY", "build context")
    assert [rel for rel, _ in found.items] == [b"logs"]
    with pytest.raises(BuildError):
        find_sources(tree, ["logs/drop.txt"], "COPY", "build context")


def test_inline_sources_are_0644_files_named_by_their_delimiter() -> None:
    tree = InlineTree({"EOF": b"hello\n"})
    assert tree.names(b"") == [b"EOF"]
    meta = tree.meta(b"EOF")
    assert meta is not None and meta.perm == 0o644 and meta.size == 6 and (meta.uid, meta.gid) == (0, 0)
    with tree.open(b"EOF") as f:
        assert f.read() == b"hello\n"
    assert tree.meta(b"other") is None
