"""The project's base images (scripts/base_images.py) for tests that need a real distribution.

The Debian image is made by mmdebstrap from the Debian mirror, about half a minute the first
time, then taken from the builder's cache ($XDG_CACHE_HOME/rootless-base-images), which the
second CI pass and later test modules share.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from capabilities import is_strict


def _load() -> ModuleType:
    # scripts/ is not a package; the module is loaded by path, as scripts/bench_pull.py is run.
    path = Path(__file__).resolve().parents[2] / "scripts" / "base_images.py"
    spec = importlib.util.spec_from_file_location("base_images", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bi = sys.modules.get("base_images") or _load()


def require(tool: str, problem: str | None) -> None:
    """Skip (fail in CI) when a host tool the test needs is missing; scripts/setup installs them all."""
    if problem is None:
        return
    message = f"needs {tool}: {problem}"
    if is_strict(os.environ):
        pytest.fail(message + " [CI=true or ROOTLESS_TEST_STRICT=1]", pytrace=False)
    pytest.skip(message)


def push_debian(registry_host: str) -> str:
    """debian:bookworm (mmdebstrap minbase, one layer) pushed to REGISTRY_HOST; returns its name there."""
    require("mmdebstrap", bi.mmdebstrap_problem())
    layout = bi.build_debian(bi.default_cache_dir())
    return bi.push(layout, registry_host)
