"""docker's output conventions: sizes, ages, table padding, --format templates, progress lines."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest

from rootless.cli._format import Template, ago, human_duration, human_size, table
from rootless.cli._progress import ProgressDisplay
from rootless.errors import RootlessError
from rootless.image.events import Event


@pytest.mark.parametrize("size, text", [(0, "0B"), (999, "999B"), (1000, "1kB"), (4_261_234, "4.26MB"),
                                        (528_000, "528kB"), (1_234_567_890, "1.23GB"), (2_000_000, "2MB")])
def test_human_size_is_decimal_with_three_digits(size: int, text: str) -> None:
    assert human_size(size) == text


@pytest.mark.parametrize("seconds, text", [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (5400, "2 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"), (13 * 86400, "13 days"),
    (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"), (60 * 86400, "2 months"), (800 * 86400, "2 years")])
def test_human_duration_words_ages_as_docker(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_ago_reads_go_nanosecond_times() -> None:
    now = datetime(2026, 11, 29, tzinfo=timezone.utc)
    assert ago("2026-11-15T00:00:00.123456789Z", now) == "2 weeks ago"
    assert ago("2026-11-28T23:00:00+00:00", now) == "About an hour ago"
    assert ago("", now) == "N/A" and ago("garbage", now) == "N/A"


def test_table_pads_columns_like_tabwriter() -> None:
    out = table(["REPOSITORY", "TAG", "SIZE"], [["busybox", "latest", "4.26MB"], ["a", "1", "0B"]])
    assert out.splitlines() == ["REPOSITORY   TAG       SIZE",
                                "busybox      latest    4.26MB",
                                "a            1         0B"]


def test_templates_cover_fields_json_index_and_tables() -> None:
    doc = {"Repository": "busybox", "Tag": "latest", "Config": {"Cmd": ["sh", "-c"], "Labels": {"a.b": "x"},
                                                                 "Env": None}}
    assert Template("{{.Repository}}:{{.Tag}}").render(doc) == "busybox:latest"
    assert Template("{{ .Config.Cmd }}").render(doc) == "[sh -c]"
    assert Template("{{json .Config.Cmd}}").render(doc) == '["sh","-c"]'
    assert Template('{{index .Config.Labels "a.b"}}').render(doc) == "x"
    assert Template("{{.Config.Env}}").render(doc) == "<no value>"
    assert Template("{{upper .Tag}}\\t{{.Repository}}").render(doc) == "LATEST\tbusybox"
    assert Template("json").render({"a": 1}) == '{"a":1}'
    t = Template("table {{.Repository}}\t{{.Tag}}")
    assert t.is_table and t.header({"Repository": "REPOSITORY", "Tag": "TAG"}) == "REPOSITORY\tTAG"
    assert t.render(doc) == "busybox\tlatest"
    with pytest.raises(RootlessError, match="can't evaluate field Nope"):
        Template("{{.Nope}}").render(doc)
    with pytest.raises(RootlessError, match="unsupported action"):
        Template("{{range .Config.Cmd}}{{.}}{{end}}")


def test_progress_without_a_terminal_prints_milestones_only() -> None:
    out = io.StringIO()
    show = ProgressDisplay(out, tty=False)
    for event in [Event("aaa", "Pulling fs layer"), Event("aaa", "Downloading", 10, 100),
                  Event("aaa", "Downloading", 50, 100), Event("aaa", "Verifying Checksum"),
                  Event("aaa", "Extracting"), Event("aaa", "Pull complete"), Event(None, "Digest: x")]:
        show(event)
    assert out.getvalue().splitlines() == ["aaa: Pulling fs layer", "aaa: Verifying Checksum", "aaa: Pull complete",
                                           "Digest: x"]


def test_progress_on_a_terminal_rewrites_each_layers_line() -> None:
    out = io.StringIO()
    show = ProgressDisplay(out, tty=True)
    show(Event("aaa", "Pulling fs layer"))
    show(Event("bbb", "Pulling fs layer"))
    show(Event("aaa", "Downloading", 50, 100))
    text = out.getvalue()
    assert text.startswith("aaa: Pulling fs layer\nbbb: Pulling fs layer\n")
    # Two lines up to aaa's line, cleared, a bar at half, two lines back down.
    assert "\x1b[2A\r\x1b[2Kaaa: Downloading [========================>" in text
    assert text.endswith("]  50B/100B\x1b[2B\r")
