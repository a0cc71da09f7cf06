"""Real fusefs mounts for the integration tests, made and torn down as the unprivileged test user."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from mounts import Union, build_tree, wait_daemon_gone
from registry import Registry, running_registry


@pytest.fixture
def make_union(tmp_path: Path) -> Iterator[Callable[..., Union]]:
    """make_union(layers={"l1": {...}, "l2": {...}}, upper=True, extra=[]) -> mounted Union.

    Each layer is a dict path -> content: bytes/str for a file, None for a directory,
    ("symlink", target) for a symlink; built before mounting.
    """
    made: list[Union] = []

    def make(layers: dict[str, dict] | None = None, upper: bool = True, extra: list[str] | None = None) -> Union:
        base = tmp_path / f"u{len(made)}"
        lowers = []
        for name, tree in (layers or {"lower": {}}).items():
            d = base / name
            d.mkdir(parents=True)
            build_tree(d, tree)
            lowers.append(d)
        up = wk = None
        if upper:
            up, wk = base / "upper", base / "work"
            up.mkdir()
            wk.mkdir()
        mnt = base / "mnt"
        mnt.mkdir()
        u = Union(base, lowers, up, wk, mnt, extra or [])
        u.mount()
        made.append(u)
        return u

    yield make
    for u in made:
        try:
            u.unmount()
        finally:
            wait_daemon_gone(u.mnt)


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A docker-registry on 127.0.0.1 for the module's tests, without auth."""
    with running_registry(tmp_path_factory.mktemp("registry")) as r:
        yield r
