"""scripts/bench_build.py's reading of the contenders' build output and the commands it gives ch-image."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

CH_IMAGE_CACHED = """\
  1* FROM 127.0.0.1:5000/debian:bookworm
  2* ENV APP_HOME='/src'
  2* ENV LANG='C.UTF-8'
  3* WORKDIR /src
  4* COPY ['tree/'] -> '/src/'
  5* RUN find /src -type f | wc -l > /count && echo done
warning: not yet supported, ignored: issue #780: CMD instruction
  6  CMD (unsupported)
grown in 6 instructions: benchbuild:latest
"""

CH_IMAGE_CHANGED = """\
  1* FROM 127.0.0.1:5000/debian:bookworm
  2* ENV APP_HOME='/src'
  2* ENV LANG='C.UTF-8'
  3* WORKDIR /src
  4. COPY ['tree/'] -> '/src/'
updating existing image ...
  5. RUN find /src -type f | wc -l > /count && echo done
done
warning: not yet supported, ignored: issue #780: CMD instruction
  6  CMD (unsupported)
"""

BUILDAH_CACHED = """\
STEP 1/6: FROM 127.0.0.1:5000/debian:bookworm
STEP 2/6: ENV APP_HOME=/src LANG=C.UTF-8
--> Using cache 1f0c
STEP 3/6: WORKDIR /src
--> Using cache 2a1d
STEP 4/6: COPY tree/ /src/
--> Using cache 3b2e
"""


@pytest.fixture
def bench_build(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # scripts/ is no package: its modules import each other by their plain names.
    monkeypatch.syspath_prepend(str(SCRIPTS))
    return importlib.import_module("bench_build")


def test_ch_image_cached_steps_count_instructions_not_env_lines_nor_from(bench_build: ModuleType) -> None:
    assert bench_build.cache_hits(CH_IMAGE_CACHED) == 4


def test_ch_image_changed_file_keeps_only_the_steps_before_copy(bench_build: ModuleType) -> None:
    assert bench_build.cache_hits(CH_IMAGE_CHANGED) == 2


def test_using_cache_lines_still_count(bench_build: ModuleType) -> None:
    assert bench_build.cache_hits(BUILDAH_CACHED) == 3
    assert bench_build.cache_hits("STEP 1/2: FROM x\nSTEP 2/2: RUN true\n") == 0


def test_ignored_instructions_are_reported(bench_build: ModuleType) -> None:
    assert bench_build.ignored_instructions(CH_IMAGE_CACHED) == {"issue #780: CMD instruction"}
    assert bench_build.ignored_instructions(BUILDAH_CACHED) == set()


def test_ch_image_imports_the_base_under_the_name_from_gives(bench_build: ModuleType, tmp_path: Path) -> None:
    c = bench_build.Builder("ch-image", "ch-image", tmp_path / "xdg", registry="127.0.0.1:5000",
                            base_tarball=tmp_path / "debian.tar.gz")
    t = bench_build.Try(tmp_path, tmp_path / "store", tmp_path / "home", tmp_path / "tmp", tmp_path / "rr")
    dockerfile = bench_build.DOCKERFILE.format(base=f"{c.registry}/debian:bookworm")
    imported = c.pull("debian:bookworm", t)
    assert imported[-3:] == ["import", str(tmp_path / "debian.tar.gz"), "127.0.0.1:5000/debian:bookworm"]
    assert f"FROM {imported[-1]}\n" in dockerfile
    for command in (imported, c.build(tmp_path / "context", t)):
        assert command[:4] == ["ch-image", "--cache", "--storage", str(t.store)]
