"""Union semantics on a real mount: lookup through layers, whiteouts, opaque dirs, copy-up."""

from __future__ import annotations

import os
import stat

import pytest

pytestmark = pytest.mark.fuse


def upper_kind(u, rel: str) -> str:
    """What the upper layer holds at REL: 'whiteout', 'file', 'dir', or 'absent'."""
    p = u.upper / rel
    wh = p.parent / (".wh." + p.name)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return "whiteout" if wh.exists() else "absent"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "whiteout"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def test_leftmost_lowerdir_is_on_top(make_union):
    u = make_union({"top": {"a": "top", "only-top": "1"}, "bottom": {"a": "bottom", "only-bottom": "2"}})
    assert u.path("a").read_text() == "top"
    assert sorted(os.listdir(u.mnt)) == ["a", "only-bottom", "only-top"]


def test_oci_whiteouts_and_opaque_dirs_hide_lower_names(make_union):
    u = make_union({
        "l1": {".wh.gone": "", "d/.wh..wh..opq": "", "d/new": "n", "kdev": ("whiteout",)},
        "l2": {"gone": "x", "d/old": "o", "kdev": "k", "keep": "k"},
    })
    assert sorted(os.listdir(u.mnt)) == ["d", "keep"]
    assert os.listdir(u.path("d")) == ["new"]
    assert not u.path("gone").exists()
    assert not u.path(".wh.gone").exists()


def test_opaque_xattr_in_lower_layer(make_union, tmp_path):
    layers = {"l1": {"d": None}, "l2": {"d/below": "b"}}
    u = make_union(layers)
    assert os.listdir(u.path("d")) == ["below"]
    u.unmount()
    os.setxattr(u.lowers[0] / "d", "user.overlay.opaque", b"y")
    u.mount()
    assert os.listdir(u.path("d")) == []


def test_merged_readdir_has_no_duplicates_or_whiteout_names(make_union):
    u = make_union({"l1": {"d/a": "1", "d/b": "1", "d/.wh.c": ""}, "l2": {"d/b": "2", "d/c": "2", "d/e": "2"}})
    names = os.listdir(u.path("d"))
    assert sorted(names) == ["a", "b", "e"]
    assert len(names) == len(set(names))


def test_copy_up_on_write_keeps_mode_times_xattrs_and_holes(make_union):
    u = make_union({"l": {}})
    low = u.lowers[0] / "f"
    with open(low, "wb") as f:
        f.write(b"head")
        f.seek(64 << 20)
        f.write(b"tail")
    os.chmod(low, 0o640)
    os.setxattr(low, "user.note", b"kept")
    os.utime(low, ns=(1_000_000_123, 2_000_000_456))
    u.remount()
    before = os.stat(u.path("f"))
    with open(u.path("f"), "r+b") as f:
        f.seek(2)
        f.write(b"AD")
    up = os.stat(u.upper / "f")
    assert up.st_size == (64 << 20) + 4
    assert up.st_blocks * 512 < 1 << 20, "holes must stay holes after copy-up"
    after = os.stat(u.path("f"))
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert after.st_ino == before.st_ino
    assert os.getxattr(u.path("f"), "user.note") == b"kept"
    assert after.st_atime_ns == 1_000_000_123
    with open(u.path("f"), "rb") as f:
        assert f.read(4) == b"heAD"
    assert os.stat(u.lowers[0] / "f").st_size == (64 << 20) + 4
    assert (u.lowers[0] / "f").read_bytes()[:4] == b"head", "the lower layer is never written"


def test_copy_up_leaves_the_parents_times_alone(make_union):
    """As kernel overlayfs: copying a file up is no change to its directory (diff and commit rely on it)."""
    u = make_union({"l": {"dir/f": "x", "dir/sub/g": "y"}})
    for d in ("dir", "dir/sub"):
        os.utime(u.lowers[0] / d, ns=(10**18, 10**18))
    u.remount()
    with open(u.path("dir/sub/g"), "a") as f:
        f.write("more")
    os.chmod(u.path("dir/f"), 0o600)
    for d in ("dir", "dir/sub"):
        assert os.stat(u.upper / d).st_mtime_ns == 10**18, d
        assert os.stat(u.path(d)).st_mtime_ns == 10**18, d


@pytest.mark.parametrize("change", ["chmod", "truncate", "utime", "setxattr", "link"])
def test_metadata_changes_copy_up(make_union, change):
    u = make_union({"l": {"f": "data"}})
    p = u.path("f")
    if change == "chmod":
        os.chmod(p, 0o600)
    elif change == "truncate":
        os.truncate(p, 2)
    elif change == "utime":
        os.utime(p, ns=(5, 6))
    elif change == "setxattr":
        os.setxattr(p, "user.k", b"v")
    else:
        os.link(p, u.path("g"))
    assert upper_kind(u, "f") == "file"
    assert (u.lowers[0] / "f").read_text() == "data"


def test_delete_leaves_whiteout_only_for_lower_names(make_union):
    u = make_union({"l": {"lower-file": "x", "d/inner": "y"}})
    u.path("fresh").write_text("new")
    os.unlink(u.path("fresh"))
    os.unlink(u.path("lower-file"))
    assert upper_kind(u, "fresh") == "absent"
    assert upper_kind(u, "lower-file") == "whiteout"
    assert not u.path("lower-file").exists()
    u.remount()
    assert not u.path("lower-file").exists()
    assert os.listdir(u.mnt) == ["d"]


def test_rmdir_merged_dir_and_mkdir_gives_empty_opaque_dir(make_union):
    u = make_union({"l1": {"d/a": "1"}, "l2": {"d/b": "2"}})
    with pytest.raises(OSError) as e:
        os.rmdir(u.path("d"))
    assert e.value.errno == 39  # ENOTEMPTY
    os.unlink(u.path("d/a"))
    os.unlink(u.path("d/b"))
    os.rmdir(u.path("d"))
    assert upper_kind(u, "d") == "whiteout"
    os.mkdir(u.path("d"))
    assert os.listdir(u.path("d")) == []
    u.remount()
    assert os.listdir(u.path("d")) == []


def test_rename_of_lower_directory_works(make_union):
    u = make_union({"l1": {"d/sub/f": "deep", "d/a": "1"}, "l2": {"d/b": "2"}})
    os.rename(u.path("d"), u.path("moved"))
    assert not u.path("d").exists()
    assert sorted(os.listdir(u.path("moved"))) == ["a", "b", "sub"]
    assert u.path("moved/sub/f").read_text() == "deep"
    u.remount()
    assert not u.path("d").exists()
    assert sorted(os.listdir(u.path("moved"))) == ["a", "b", "sub"]
    # The old name may come back as a fresh, empty directory.
    os.mkdir(u.path("d"))
    assert os.listdir(u.path("d")) == []


def test_hard_links_keep_one_identity_after_copy_up(make_union, tmp_path):
    u = make_union({"l": {"a": "shared"}})
    u.unmount()
    os.link(u.lowers[0] / "a", u.lowers[0] / "b")
    u.mount()
    sa, sb = os.stat(u.path("a")), os.stat(u.path("b"))
    assert sa.st_ino == sb.st_ino and sa.st_nlink == 2
    with open(u.path("a"), "a") as f:
        f.write("+more")
    assert u.path("b").read_text() == "shared+more"
    sa, sb = os.stat(u.path("a")), os.stat(u.path("b"))
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    u.remount()
    assert u.path("b").read_text() == "shared+more"
    assert os.stat(u.path("a")).st_nlink == 2


def test_read_only_union_without_upper(make_union):
    u = make_union({"l": {"f": "x"}}, upper=False)
    assert u.path("f").read_text() == "x"
    for attempt in (lambda: u.path("g").write_text("no"), lambda: os.unlink(u.path("f")),
                    lambda: os.mkdir(u.path("d"))):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == 30  # EROFS


def test_lower_layer_changed_under_live_mount_is_not_a_crash(make_union):
    u = make_union({"l": {"d/f": "x", "d/g": "y"}})
    assert sorted(os.listdir(u.path("d"))) == ["f", "g"]
    os.unlink(u.lowers[0] / "d" / "g")
    os.unlink(u.lowers[0] / "d" / "f")
    for name in ("f", "g"):
        try:
            u.path("d/" + name).read_text()
        except OSError:
            pass
    os.listdir(u.path("d"))
    u.path("still-alive").write_text("ok")
    assert u.path("still-alive").read_text() == "ok"
