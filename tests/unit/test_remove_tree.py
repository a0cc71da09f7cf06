"""containers.remove_tree: rm -rf of a container's directory, volumes and overlayfs' work dirs,
whose directories may be closed to their owner (overlayfs leaves work/work at mode 0)."""

from __future__ import annotations

import os
from pathlib import Path

from rootless.runtime.containers import remove_tree


def test_directories_closed_to_their_owner_are_removed_too(tmp_path: Path) -> None:
    top = tmp_path / "c"
    for d in ("work/work/inner", "upper/ro", "upper/wo"):
        (top / d).mkdir(parents=True)
    (top / "work/work/inner/f").write_text("x")
    (top / "upper/ro/f").write_text("x")
    (top / "upper/ro/f").chmod(0o400)
    os.chmod(top / "work/work/inner", 0)
    os.chmod(top / "work/work", 0)
    os.chmod(top / "upper/ro", 0o500)
    os.chmod(top / "upper/wo", 0o200)
    os.chmod(top, 0o500)
    remove_tree(str(top))
    assert not top.exists()


def test_a_symlink_is_removed_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "kept").write_text("x")
    os.chmod(outside, 0o555)
    top = tmp_path / "c"
    top.mkdir()
    (top / "link").symlink_to(outside)
    try:
        remove_tree(str(top))
        assert not top.exists()
        assert (outside / "kept").exists() and (outside.stat().st_mode & 0o777) == 0o555
    finally:
        os.chmod(outside, 0o755)


def test_a_missing_tree_is_no_error(tmp_path: Path) -> None:
    remove_tree(str(tmp_path / "absent"))
