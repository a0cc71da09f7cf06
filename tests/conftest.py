"""Capability markers: tests needing FUSE, user namespaces or a registry skip where the host lacks them, and fail in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import pytest


def probe_fuse() -> str | None:
    """Return why FUSE mounts are impossible here, or None if they are possible."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module, or pass --device /dev/fuse to the container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return f"/dev/fuse is not readable and writable by uid {os.getuid()} (as root: chmod 0666 /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not on PATH (as root: apt-get install fuse3)"
    return None


def probe_userns() -> str | None:
    """Return why unprivileged user namespaces are unavailable, or None if they work."""
    if shutil.which("unshare") is None:
        return "unshare is not on PATH (as root: apt-get install util-linux)"
    try:
        result = subprocess.run(
            ["unshare", "--user", "--map-root-user", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "unshare --user --map-root-user true did not finish within 30 s"
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        return (
            f"unshare --user --map-root-user true failed: {detail} "
            "(check sysctls kernel.unprivileged_userns_clone and user.max_user_namespaces)"
        )
    return None


def probe_registry() -> str | None:
    """Return why a local registry cannot be started, or None if it can."""
    if not os.access("/usr/bin/docker-registry", os.X_OK):
        return "/usr/bin/docker-registry is missing (as root: apt-get install docker-registry)"
    return None


# Marker name -> probe. The markers themselves are declared in setup.cfg.
PROBES: Mapping[str, Callable[[], str | None]] = {
    "fuse": probe_fuse,
    "userns": probe_userns,
    "registry": probe_registry,
}


def is_strict(environ: Mapping[str, str]) -> bool:
    """CI must never skip silently: there a missing capability is a failure, not a skip."""
    return environ.get("CI", "").lower() == "true" or environ.get("ROOTLESS_TEST_STRICT") == "1"


@dataclass(frozen=True)
class Verdict:
    action: Literal["skip", "fail"]
    message: str


def verdict(capability: str, problem: str | None, environ: Mapping[str, str]) -> Verdict | None:
    """Decide what happens to a test that needs `capability`; None means it runs."""
    if problem is None:
        return None
    if is_strict(environ):
        return Verdict(
            "fail",
            f"needs {capability}, which this host lacks: {problem} "
            "[missing capabilities fail instead of skipping because CI=true or ROOTLESS_TEST_STRICT=1]",
        )
    return Verdict("skip", f"needs {capability}: {problem}")


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
