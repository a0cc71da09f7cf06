"""Capability markers: tests needing FUSE, user namespaces or a registry skip where the host lacks them, and fail in CI."""

from __future__ import annotations

import os

import pytest

from capabilities import PROBES, is_strict, verdict

# `rootless` processes the tests start hand their commands to a warm process as a user's
# do (rootless/warm.py); the suite's warm processes end 20 s after its last command.
os.environ.setdefault("ROOTLESS_WARM", "20")

_problems_key = pytest.StashKey[dict[str, str | None]]()


def capability_problem(config: pytest.Config, capability: str) -> str | None:
    """Probe once per session; a probe can spawn a process, and the answer will not change."""
    problems = config.stash.setdefault(_problems_key, {})
    if capability not in problems:
        problems[capability] = PROBES[capability]()
    return problems[capability]


def pytest_report_header(config: pytest.Config) -> list[str]:
    states = []
    for capability in PROBES:
        problem = capability_problem(config, capability)
        states.append(f"{capability}={'yes' if problem is None else 'NO'}")
    policy = "fail" if is_strict(os.environ) else "skip"
    return [f"capabilities: {' '.join(states)}; tests needing a missing one will {policy}"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for capability in PROBES:
        if item.get_closest_marker(capability) is None:
            continue
        outcome = verdict(capability, capability_problem(item.config, capability), os.environ)
        if outcome is None:
            continue
        if outcome.action == "fail":
            pytest.fail(outcome.message, pytrace=False)
        pytest.skip(outcome.message)


_marked_key = pytest.StashKey[dict[str, int]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_marked_key] = {
        capability: sum(1 for item in session.items if item.get_closest_marker(capability))
        for capability in PROBES
    }


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    # .ci/run reads this line to tell "no fuse tests exist" from "fuse tests were lost".
    counts = config.stash.get(_marked_key, None)
    if counts is not None:
        listed = " ".join(f"{capability}={count}" for capability, count in counts.items())
        terminalreporter.write_line(f"selected tests needing a capability: {listed}")
