"""The instructions as the builder uses them: keyword, flags, arguments (exec or shell form), line.

``load`` turns a Dockerfile's text into ``Step``s through the parser (``parser.parse``);
``Step`` adds what the builder asks of an instruction: its words and values with
``$VARIABLES`` replaced from the build's environment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..errors import RootlessError
from ..image import changes


class BuildError(RootlessError):
    """A Dockerfile that cannot be built as written, or a step that failed."""


@dataclass(frozen=True)
class Step:
    keyword: str                        # upper case: RUN, COPY...
    text: str                           # the arguments as written (flags removed), continuations joined
    line: int = 0
    original: str = ""                  # the instruction as docker prints it in "Step n/m : ..."
    exec_form: list[str] | None = None  # the JSON array form, where the instruction was written so
    flags: dict[str, str] = field(default_factory=dict)

    def _lex(self, text: str, env: Mapping[str, str], split: bool) -> list[str]:
        try:
            return changes.words(text, env) if split else ["".join(changes._lex(text, env, split=False))]
        except ValueError as e:
            raise BuildError(f"Dockerfile line {self.line}: {self.keyword}: {e}") from None

    def words(self) -> list[str]:
        """The shell-form words, variables left as they are."""
        return self.text.split()

    def expand_words(self, env: Mapping[str, str]) -> list[str]:
        return self._lex(self.text, env, True)

    def expand_one(self, env: Mapping[str, str]) -> str:
        return self._lex(self.text.strip(), env, False)[0]

    def flag(self, name: str, env: Mapping[str, str]) -> str | None:
        value = self.flags.get(name)
        return None if value is None else self._lex(value, env, False)[0]

    def pairs(self, env: Mapping[str, str]) -> list[tuple[str, str]]:
        """ENV and LABEL: ``K=V K2="v 2"``, or the old ``K value with spaces``."""
        parts = self.text.split(None, 1)
        if not parts:
            raise BuildError(f"Dockerfile line {self.line}: {self.keyword} requires at least one argument")
        if "=" not in parts[0]:
            if len(parts) < 2:
                raise BuildError(f"Dockerfile line {self.line}: {self.keyword} names must be followed by a value",
                                 f"write {self.keyword} {parts[0]}=VALUE")
            return [(parts[0], self._lex(parts[1].strip(), env, False)[0])]
        out = []
        for word in self.expand_words(env):
            key, sep, value = word.partition("=")
            if not sep or not key:
                raise BuildError(f"Dockerfile line {self.line}: {self.keyword}: {word!r} is not KEY=VALUE")
            out.append((key, value))
        return out


def load(text: str, name: str = "Dockerfile") -> list[Step]:
    """The instructions of the Dockerfile TEXT, in order, checked by the parser (``parser.parse``).

    Each instruction's text as the parser joined it (continuations, comments and escapes
    handled there) is split into keyword, flags and arguments here.
    """
    from .parser import parse

    parsed = parse(text, name=name)
    out: list[Step] = []
    for i in [*parsed.args, *(x for stage in parsed.stages for x in (stage.base, *stage.instructions))]:
        if getattr(i, "heredocs", ()):
            raise BuildError(f"{name}:{i.line}: heredocs are not supported by this builder yet",
                             "write the file into the build context and COPY it")
        out.extend(replace(step, line=i.line) for step in _interim(i.original))
    return out


def triggers(lines: list[str]) -> list[Step]:
    """ONBUILD triggers: one instruction per entry, no FROM in front of them."""
    return [step for line in lines for step in _interim(line)]


def _interim(text: str) -> list[Step]:
    """Instructions already joined into one line each (by the parser, or ONBUILD's record) as Steps."""
    out: list[Step] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        exec_form = None
        if rest.startswith("["):
            try:
                parsed = json.loads(rest)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
                exec_form = parsed
        out.append(Step(keyword.upper(), rest, start, whole, exec_form, flags))
    return out
