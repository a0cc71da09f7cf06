"""The parser's typed instructions as the builder records them: errors, history text, config values.

The parser (``parser.parse``) reads and checks the Dockerfile and ``Instruction.expand``
replaces ``$VARIABLES`` where docker does; what is left here is what docker's builder
makes of an instruction that is neither: the ``created_by`` text of its history row, an
``ONBUILD`` trigger read back from an image's config, ``HEALTHCHECK`` as config.
"""

from __future__ import annotations

from typing import Any

from ..errors import RootlessError
from .parser import Arg, Healthcheck, Instruction, parse_instruction


class BuildError(RootlessError):
    """A Dockerfile that cannot be built as written, or a step that failed."""


def error(instr: Instruction, reason: str, hint: str | None = None) -> BuildError:
    """A BuildError about INSTR, located the way the parser locates its own (``Dockerfile:7: ...``)."""
    return BuildError(f"{instr.file}:{instr.line}: {reason}", hint)


def arguments(instr: Instruction) -> str:
    """INSTR's text after its keyword, as written (flags included): what docker's history shows
    for the instructions it records without a value of their own."""
    parts = instr.original.strip().split(None, 1)
    return parts[1] if len(parts) > 1 else ""


def arg_text(arg: Arg) -> str:
    """ARG's names and defaults as written: ``ARG A=1 B``."""
    return " ".join(name if default is None else f"{name}={default}" for name, default in arg.args)


def trigger(text: str, escape: str = "\\", image: str = "") -> Instruction:
    """One ``OnBuild`` entry of a base image's config, parsed as the Dockerfile line it was
    (heredoc bodies included, as the parser records them)."""
    return parse_instruction(text, escape=escape, name=f"ONBUILD trigger of {image}" if image else "ONBUILD")


def healthcheck_config(h: Healthcheck) -> dict[str, Any]:
    """HEALTHCHECK as an image config's ``Healthcheck``: the options given (non-zero) only."""
    out: dict[str, Any] = {"Test": list(h.test)}
    if h.test == ("NONE",):
        return out
    for name, value in (("Interval", h.interval), ("Timeout", h.timeout), ("StartPeriod", h.start_period),
                        ("StartInterval", h.start_interval), ("Retries", h.retries)):
        if value:
            out[name] = value
    return out
