"""The suite's skip-or-fail policy for tests whose host capability is missing."""

from __future__ import annotations

from pathlib import Path

import capabilities
import pytest
from capabilities import is_strict, verdict

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def test_present_capability_runs_everywhere() -> None:
    assert verdict("fuse", None, {}) is None
    assert verdict("fuse", None, {"CI": "true"}) is None


def test_missing_capability_skips_on_a_developer_machine() -> None:
    outcome = verdict("fuse", "/dev/fuse does not exist", {})
    assert outcome is not None
    assert outcome.action == "skip"
    assert "/dev/fuse does not exist" in outcome.message


def test_missing_capability_fails_in_ci() -> None:
    outcome = verdict("userns", "unshare failed", {"CI": "true"})
    assert outcome is not None
    assert outcome.action == "fail"
    assert "unshare failed" in outcome.message


def test_strictness_comes_from_ci_or_an_explicit_switch() -> None:
    assert is_strict({"CI": "true"})
    assert is_strict({"CI": "TRUE"})
    assert is_strict({"ROOTLESS_TEST_STRICT": "1"})
    assert not is_strict({})
    assert not is_strict({"CI": "false"})
    assert not is_strict({"ROOTLESS_TEST_STRICT": "0"})


def test_hook_skips_or_fails_a_marked_test(pytester: pytest.Pytester) -> None:
    """End to end through the real tests/conftest.py, with fusermount3 off PATH."""
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(capabilities=Path(capabilities.__file__).read_text())
    pytester.makeini("[pytest]\nmarkers =\n    fuse: x\n    userns: x\n    registry: x\n")
    pytester.makepyfile("import pytest\n\n@pytest.mark.fuse\ndef test_needs_fuse():\n    pass\n")
    empty_path = pytester.mkdir("empty-path")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(empty_path))
        mp.delenv("CI", raising=False)
        mp.delenv("ROOTLESS_TEST_STRICT", raising=False)
        relaxed = pytester.runpytest_subprocess("-ra")
        mp.setenv("CI", "true")
        strict = pytester.runpytest_subprocess("-ra")

    relaxed.assert_outcomes(skipped=1)
    relaxed.stdout.fnmatch_lines(["*needs fuse:*"])
    strict.assert_outcomes(errors=1)
    strict.stdout.fnmatch_lines(["*fail instead of skipping because CI=true*"])
