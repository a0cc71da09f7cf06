"""``--change`` values: the Dockerfile instructions ``import`` (and ``commit``) apply to an image's config.

Each change is one instruction line, ``CMD ["sh"]`` or ``ENV A=1 B="two words"``, read as
docker reads it: JSON (exec) form where the arguments are a JSON array of strings, else
shell form; quotes and backslashes as in a Dockerfile; ``$VAR`` and ``${VAR}`` (with
``:-`` and ``:+``) replaced from the environment the image had before the instruction,
for the instructions where docker does that (not CMD or ENTRYPOINT, which the
container's shell expands).  The result uses the docker field names of an image
config's ``config`` object.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import RootlessError

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/([A-Za-z]+))?$")
_PROTOCOLS = ("tcp", "udp", "sctp")


class ChangeError(RootlessError):
    """A ``--change`` that is not a supported instruction, or not a valid one."""


def apply_changes(config: Mapping[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """CONFIG (an image config's ``config`` object) with CHANGES applied in order, as a new dict."""
    out = json.loads(json.dumps(dict(config)))  # a deep copy: the caller's lists stay as they are
    for change in changes:
        _apply(out, change)
    return out


def _apply(config: dict[str, Any], change: str) -> None:
    parts = change.split(None, 1)
    word = parts[0] if parts else ""
    rest = parts[1].strip() if len(parts) > 1 else ""
    instruction = word.upper()
    if instruction not in SUPPORTED:
        raise ChangeError(f"{word or change!r} is not a Dockerfile instruction --change accepts",
                          f"use one of {', '.join(SUPPORTED)}, e.g. --change 'CMD [\"/bin/sh\"]'")
    if not rest:
        raise ChangeError(f"invalid --change {change!r}: {instruction} needs arguments")
    env = _env(config)
    try:
        if instruction in ("CMD", "ENTRYPOINT"):
            exec_form = _json_array(rest)
            config["Cmd" if instruction == "CMD" else "Entrypoint"] = (
                exec_form if exec_form is not None else ["/bin/sh", "-c", rest])
        elif instruction in ("ENV", "LABEL"):
            pairs = _pairs(rest, env)
            if instruction == "ENV":
                entries = [e for e in config.get("Env") or [] if isinstance(e, str)]
                for key, value in pairs:
                    entries = [e for e in entries if e.split("=", 1)[0] != key]
                    entries.append(f"{key}={value}")
                config["Env"] = entries
            else:
                labels = dict(config.get("Labels") or {})
                labels.update(pairs)
                config["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for spec in words(rest, env):
                for port in _ports(spec):
                    ports[port] = {}
            config["ExposedPorts"] = ports
        elif instruction == "USER":
            user = _one(rest, env)
            config["User"] = user
        elif instruction == "VOLUME":
            paths = _json_array(rest)
            if paths is None:
                paths = words(rest, env)
            if not paths or any(not p.strip() for p in paths):
                raise ValueError("VOLUME needs non-empty paths")
            volumes = dict(config.get("Volumes") or {})
            volumes.update({p: {} for p in paths})
            config["Volumes"] = volumes
        elif instruction == "WORKDIR":
            path = _one(rest, env)
            config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", path))
    except ValueError as e:
        raise ChangeError(f"invalid --change {change!r}: {e}") from None


def _env(config: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in config.get("Env") or []:
        if isinstance(entry, str):
            key, _, value = entry.partition("=")
            out[key] = value
    return out


def _json_array(text: str) -> list[str] | None:
    """TEXT's exec form, or None where it is not a JSON array of strings (then it is shell form)."""
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _pairs(text: str, env: Mapping[str, str]) -> list[tuple[str, str]]:
    """``a=1 b="x y"``, or the old ``key value with spaces`` form."""
    parts = text.split(None, 1)
    if "=" not in parts[0]:
        if len(parts) < 2:
            raise ValueError(f"{parts[0]} needs a value: use KEY=VALUE")
        return [(parts[0], _one(parts[1].strip(), env))]
    pairs = []
    for word in words(text, env):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ValueError(f"{word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _one(text: str, env: Mapping[str, str]) -> str:
    """TEXT as one value: quotes removed and variables replaced, the spaces in it kept."""
    return "".join(_lex(text, env, split=False))


def words(text: str, env: Mapping[str, str]) -> list[str]:
    """TEXT split at unquoted blanks, each word with its quotes removed and variables replaced."""
    return _lex(text, env, split=True)


def _lex(text: str, env: Mapping[str, str], split: bool) -> list[str]:
    out: list[str] = []
    word: list[str] = []
    started = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if split and c in " \t":
            if started:
                out.append("".join(word))
                word, started = [], False
            i += 1
            continue
        started = True
        if c == "\\" and i + 1 < n:
            word.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ValueError("unmatched single quote")
            word.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unmatched double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$':
                    word.append(text[i + 1])
                    i += 2
                elif c == "$":
                    value, i = _variable(text, i, env)
                    word.append(value)
                else:
                    word.append(c)
                    i += 1
        elif c == "$":
            value, i = _variable(text, i, env)
            word.append(value)
        else:
            word.append(c)
            i += 1
    if started:
        out.append("".join(word))
    return out


def _variable(text: str, i: int, env: Mapping[str, str]) -> tuple[str, int]:
    """The value of the variable at TEXT[I] (a ``$``) and where the text goes on after it."""
    if text.startswith("${", i):
        end = text.find("}", i)
        if end < 0:
            raise ValueError("missing '}' after '${'")
        body = text[i + 2:end]
        m = _NAME.match(body)
        if m is None:
            raise ValueError(f"bad substitution ${{{body}}}")
        name, modifier = m.group(0), body[m.end():]
        value = env.get(name, "")
        if modifier.startswith(":-"):
            value = value or modifier[2:]
        elif modifier.startswith(":+"):
            value = modifier[2:] if value else ""
        elif modifier:
            raise ValueError(f"bad substitution ${{{body}}}: only ${{VAR}}, ${{VAR:-word}} and ${{VAR:+word}} are supported")
        return value, end + 1
    m = _NAME.match(text, i + 1)
    if m is None:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def _ports(spec: str) -> list[str]:
    m = _PORT.match(spec)
    if m is None:
        raise ValueError(f"invalid port {spec!r}: expected PORT[/PROTOCOL] or START-END[/PROTOCOL]")
    start, end, proto = int(m.group(1)), int(m.group(2) or m.group(1)), (m.group(3) or "tcp").lower()
    if proto not in _PROTOCOLS:
        raise ValueError(f"invalid protocol {proto!r} in {spec!r}: expected tcp, udp or sctp")
    if not 0 < start <= end <= 65535:
        raise ValueError(f"invalid port range {spec!r}")
    return [f"{p}/{proto}" for p in range(start, end + 1)]
