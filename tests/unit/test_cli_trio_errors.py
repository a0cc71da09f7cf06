"""The CLI's trio runs: a user's error raised in a nursery's task reaches the CLI as itself."""

from __future__ import annotations

import pytest
import trio

from rootless.cli.images import _run
from rootless.errors import RootlessError, Unauthorized


def test_an_error_in_a_nursery_task_comes_out_unwrapped() -> None:
    async def refused() -> None:
        raise Unauthorized("unauthorized: authentication required", "log in")

    async def main() -> None:
        async with trio.open_nursery() as outer:
            outer.start_soon(trio.sleep_forever)
            async with trio.open_nursery() as inner:
                inner.start_soon(refused)

    with pytest.raises(Unauthorized) as e:
        _run(main)
    assert e.value.hint == "log in"


def test_other_exception_groups_are_left_alone() -> None:
    async def broken() -> None:
        raise ValueError("a bug")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broken)

    with pytest.raises((ValueError, BaseExceptionGroup)) as e:   # a group where trio's groups are strict
        _run(main)
    assert not isinstance(e.value, RootlessError)
    if isinstance(e.value, BaseExceptionGroup):
        assert e.value.subgroup(lambda x: isinstance(x, ValueError)) is not None


def test_a_plain_error_and_a_result_pass_through() -> None:
    async def answer() -> int:
        return 42

    async def refused() -> None:
        raise RootlessError("no")

    assert _run(answer) == 42
    with pytest.raises(RootlessError):
        _run(refused)
