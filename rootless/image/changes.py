"""``--change`` values: the Dockerfile instructions ``import`` (and ``commit``) apply to an image's config.

Each change is one instruction, ``CMD ["sh"]`` or ``ENV A=1 B="two words"``, read by the
Dockerfile parser (``rootless.build.parser``): exec or shell form, quotes and escapes,
``$VAR`` and ``${VAR}`` (``:-``, ``-``, ``:+``, ``+``, ``:?``, ``?``) replaced from the
environment the image had before the instruction, for the instructions where docker does
that (not CMD or ENTRYPOINT, which the container's shell expands).  ``apply_instruction``
is the part a builder shares: an expanded instruction onto a config, with docker's field
names of an image config's ``config`` object.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..build import parser
from ..errors import RootlessError

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR")
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
    keyword = word.upper()
    if keyword not in SUPPORTED:
        raise ChangeError(f"{word or change!r} is not a Dockerfile instruction --change accepts",
                          f"use one of {', '.join(SUPPORTED)}, e.g. --change 'CMD [\"/bin/sh\"]'")
    if not rest:
        raise ChangeError(f"invalid --change {change!r}: {keyword} needs arguments")
    if keyword in ("CMD", "ENTRYPOINT") and _array_of_non_strings(rest):
        # import and commit have always taken this as shell form; a Dockerfile refuses it
        config["Cmd" if keyword == "CMD" else "Entrypoint"] = ["/bin/sh", "-c", rest]
        return
    try:
        instruction = parser.parse_instruction(change).expand(_env(config))
        apply_instruction(config, instruction)
    except parser.DockerfileError as e:
        raise ChangeError(f"invalid --change {change!r}: {e.reason}", e.hint) from None
    except ValueError as e:
        raise ChangeError(f"invalid --change {change!r}: {e}") from None


def apply_instruction(config: dict[str, Any], instruction: parser.Instruction) -> None:
    """An instruction that only changes the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER,
    VOLUME, WORKDIR), already expanded, applied to CONFIG in place.  Raises ValueError for
    values docker refuses (ports, empty volumes) and for any other instruction."""
    if isinstance(instruction, (parser.Cmd, parser.Entrypoint)):
        config["Cmd" if isinstance(instruction, parser.Cmd) else "Entrypoint"] = instruction.argv()
    elif isinstance(instruction, parser.Env):
        entries = [e for e in config.get("Env") or [] if isinstance(e, str)]
        for key, value in instruction.pairs:
            entries = [e for e in entries if e.split("=", 1)[0] != key]
            entries.append(f"{key}={value}")
        config["Env"] = entries
    elif isinstance(instruction, parser.Label):
        labels = dict(config.get("Labels") or {})
        labels.update(instruction.pairs)
        config["Labels"] = labels
    elif isinstance(instruction, parser.Expose):
        ports = dict(config.get("ExposedPorts") or {})
        for spec in instruction.ports:
            for port in _ports(spec):
                ports[port] = {}
        config["ExposedPorts"] = ports
    elif isinstance(instruction, parser.User):
        config["User"] = instruction.user
    elif isinstance(instruction, parser.Volume):
        if not instruction.paths or any(not p.strip() for p in instruction.paths):
            raise ValueError("VOLUME needs non-empty paths")
        volumes = dict(config.get("Volumes") or {})
        volumes.update({p: {} for p in instruction.paths})
        config["Volumes"] = volumes
    elif isinstance(instruction, parser.Workdir):
        config["WorkingDir"] = posixpath.normpath(posixpath.join(config.get("WorkingDir") or "/", instruction.path))
    else:
        raise ValueError(f"{instruction.keyword} does not only change the config")


def _env(config: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in config.get("Env") or []:
        if isinstance(entry, str):
            key, _, value = entry.partition("=")
            out[key] = value
    return out


def _array_of_non_strings(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, list) and not all(isinstance(v, str) for v in value)


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
