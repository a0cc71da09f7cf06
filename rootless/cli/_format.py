"""Output in docker's shapes: human sizes and ages, padded tables, and ``--format`` templates.

``--format`` takes ``json`` (one JSON object per line, as docker) or a small subset of Go
templates, the part people put in scripts: ``{{.Field}}``, ``{{.A.B}}``, ``{{json .X}}``,
``{{index .Map "key"}}``, ``{{upper .X}}``/``{{lower .X}}``, and a leading ``table``.
Anything else is refused with a clear error rather than printed wrong.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ..errors import RootlessError

_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def human_size(size: float) -> str:
    """Decimal units with 3 significant digits: ``4.26MB``, ``528kB``, ``0B`` (docker's go-units)."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """``Less than a second``, ``About a minute``, ``3 weeks``: docker's wording for ages."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time with up to nanoseconds (Go writes 9 digits; Python reads 6)."""
    if not text:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text.strip())
    if m is None:
        return None
    frac = (m.group(2) or ".0")[:7]
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    try:
        return datetime.fromisoformat(f"{m.group(1)}{frac}{zone}")
    except ValueError:
        return None


def ago(text: str, now: datetime | None = None) -> str:
    """``2 weeks ago`` for an RFC 3339 time; ``N/A`` where there is none (as docker for a zero time)."""
    when = parse_time(text)
    if when is None or when.year <= 1:
        return "N/A"
    now = now or datetime.now(timezone.utc)
    return human_duration(max(0.0, (now - when).total_seconds())) + " ago"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as docker's tabwriter pads them: at least 10 wide, 3 spaces apart; no trailing blanks."""
    rows = [list(headers)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(headers))]
    lines = []
    for r in rows:
        cells = [cell.ljust(max(widths[i] + 3, 10)) if i < len(r) - 1 else cell for i, cell in enumerate(r)]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


# -- --format ---------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)


class Template:
    """A compiled ``--format`` value; ``render(obj)`` gives one line of output."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.is_json = text.strip() == "json"
        self.is_table = text.lstrip().startswith("table ")
        body = text.lstrip()[len("table "):] if self.is_table else text
        self._parts: list[str | list[str]] = []
        pos = 0
        for m in _ACTION.finditer(body):
            self._parts.append(_unescape(body[pos:m.start()]))
            try:
                words = shlex.split(m.group(1))
            except ValueError as e:
                raise _bad(text, str(e)) from None
            _check(words, text)
            self._parts.append(words)
            pos = m.end()
        self._parts.append(_unescape(body[pos:]))

    def header(self, names: Mapping[str, str]) -> str:
        """The header row of a ``table`` template: each field's column title."""
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                field = part[-1]
                out.append(names.get(field.lstrip(".").split(".")[0], field.lstrip(".").upper()))
        return "".join(out)

    def render(self, obj: Mapping[str, Any]) -> str:
        if self.is_json:
            return json.dumps(obj, separators=(",", ":"))
        out = []
        for part in self._parts:
            out.append(part if isinstance(part, str) else _evaluate(part, obj))
        return "".join(out)


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def _bad(text: str, why: str) -> RootlessError:
    return RootlessError(f"template parsing error in {text!r}: {why}",
                         "use {{.Field}}, {{json .Field}}, {{index .Map \"key\"}} or 'json'")


def _check(words: list[str], text: str) -> None:
    if not words:
        raise _bad(text, "empty action")
    if words[0] in ("json", "upper", "lower", "title"):
        if len(words) != 2 or not words[1].startswith("."):
            raise _bad(text, f"{words[0]} takes one field")
    elif words[0] == "index":
        if len(words) < 3 or not words[1].startswith("."):
            raise _bad(text, "index takes a field and keys")
    elif len(words) != 1 or not words[0].startswith("."):
        raise _bad(text, f"unsupported action {' '.join(words)!r}")


def _lookup(obj: Any, path: str) -> Any:
    value = obj
    for key in [k for k in path.lstrip(".").split(".") if k]:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        else:
            raise RootlessError(f"template: can't evaluate field {key}",
                                "check the field name (it is case-sensitive; --format json shows them all)")
    return value


def _show(value: Any) -> str:
    """As Go's text/template prints a value: maps as map[k:v], lists as [a b], nil as <no value>."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_show(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_show(v) for v in value) + "]"
    return str(value)


def _evaluate(words: list[str], obj: Mapping[str, Any]) -> str:
    head = words[0]
    if head == "json":
        return json.dumps(_lookup(obj, words[1]), separators=(",", ":"))
    if head in ("upper", "lower", "title"):
        text = _show(_lookup(obj, words[1]))
        return getattr(text, head)()
    if head == "index":
        value = _lookup(obj, words[1])
        for key in words[2:]:
            if isinstance(value, Mapping):
                value = value.get(key)
            elif isinstance(value, (list, tuple)) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                value = None
        return _show(value)
    return _show(_lookup(obj, head))
