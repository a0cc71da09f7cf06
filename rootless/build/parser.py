"""Dockerfile text to typed instructions, by docker's grammar; and docker's ``$VARIABLE`` expansion.

Pure: no files, no images, no environment of its own.  ``parse`` reads a Dockerfile the
way BuildKit's frontend does -- parser directives, escape-character continuations, comment
lines dropped inside them, heredocs, exec (JSON) and shell forms, flags -- and checks what
docker checks before it runs anything (unknown instructions and flags, argument counts,
``FROM ... AS`` names, ``ONBUILD`` triggers, ``HEALTHCHECK`` options), so a bad
Dockerfile fails before the first step, naming its line::

    Dockerfile:7: unknown instruction: FOO

Nothing is expanded here: which variables an instruction sees (a stage's ``ENV`` and
``ARG``\\ s, the global ``ARG``\\ s for ``FROM``) is the builder's business.  It calls
``instruction.expand(env)``, which replaces ``$VAR`` where docker does (the instructions in
``EXPANDS``) and returns every other instruction as it is -- ``RUN``, ``CMD`` and
``ENTRYPOINT`` are left to the container's shell, ``ONBUILD`` is stored raw.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Self

from ..errors import RootlessError

__all__ = [
    "EXPANDS", "INSTRUCTIONS", "Add", "Arg", "Cmd", "Copy", "Dockerfile", "DockerfileError", "Entrypoint", "Env",
    "Expose", "From", "Healthcheck", "Heredoc", "Instruction", "Label", "Maintainer", "Onbuild", "Run", "Shell",
    "Stage", "Stopsignal", "User", "Volume", "Workdir", "expand", "expand_words", "parse", "parse_instruction",
]

#: The instructions whose arguments the builder expands (docker's "environment replacement"
#: list, plus ARG's defaults).  ``Run.expand`` also expands ``--mount`` values, as BuildKit does.
EXPANDS = frozenset({"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
                     "WORKDIR"})

_DEFAULT_SHELL = ("/bin/sh", "-c")


class DockerfileError(RootlessError):
    """A Dockerfile docker would refuse, or a ``$VARIABLE`` it could not expand.

    ``reason`` is docker's wording; ``file`` and ``line`` say where, when known, and then
    lead the message: ``Dockerfile:7: unknown instruction: FOO``.
    """

    def __init__(self, reason: str, hint: str | None = None, *, file: str | None = None,
                 line: int | None = None) -> None:
        where = f"{file or 'Dockerfile'}:{line}: " if line is not None else ""
        super().__init__(where + reason, hint)
        self.reason = reason
        self.file = file
        self.line = line

    def at(self, file: str, line: int) -> DockerfileError:
        """This error, located (unless it already was)."""
        if self.line is not None:
            return self
        return type(self)(self.reason, self.hint, file=file, line=line)


# ---------------------------------------------------------------------------------------
# Variable expansion: docker's shell lexer (BuildKit's shell.Lex), quotes and all.

def expand(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """WORD with its quotes removed, escapes applied and ``$VAR``\\ s replaced from ENV; blanks kept.

    ``$VAR``, ``${VAR}``, ``${VAR:-word}``/``${VAR-word}`` (default when unset, or with ``:``
    empty), ``${VAR:+word}``/``${VAR+word}`` (alternative when set), ``${VAR:?message}``/
    ``${VAR?message}`` (error when unset).  ``'...'`` is literal; in ``"..."`` only ``$``
    expands and ESCAPE escapes only ``"``, ``$`` and itself; elsewhere ESCAPE takes the next
    character literally, so ``\\$VAR`` stays ``$VAR``.  An unset variable is empty.
    """
    return _lex(word, env, escape)[0]


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """TEXT expanded as ``expand`` does, then split at unquoted blanks -- blanks a variable's
    value brings included, as docker splits ``EXPOSE $PORTS``.  Empty words are dropped."""
    return _lex(text, env, escape)[1]


def _lex(text: str, env: Mapping[str, str], escape: str, **options: bool) -> tuple[str, list[str]]:
    try:
        return _Lexer(text, env, escape, **options).run()
    except DockerfileError as e:
        raise DockerfileError(f"failed to process {text!r}: {e.reason}", e.hint) from None


def _expand_heredoc(content: str, env: Mapping[str, str]) -> str:
    """A heredoc body with ``$VAR``\\ s replaced and quotes left alone, as BuildKit expands
    ``COPY <<EOF`` (its escape is always the backslash, whatever ``# escape=`` says)."""
    return _lex(content, env, "\\", quotes=False)[0]


class _Words:
    """The words of a lexed text: blanks split them, except blanks that came quoted or escaped."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.word = ""

    def char(self, c: str) -> None:
        if not c.isspace():
            self.word += c
        elif self.word:
            self.words.append(self.word)
            self.word = ""

    def text(self, s: str) -> None:
        for c in s:
            self.char(c)

    def raw(self, s: str) -> None:
        self.word += s

    def done(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
        return self.words


_SPECIAL_PARAMS = "@*#?-$!"
_SUPPORTED_FORMS = ("only ${VAR}, ${VAR:-word}, ${VAR-word}, ${VAR:+word}, ${VAR+word}, ${VAR:?message} "
                    "and ${VAR?message} are supported")


class _Lexer:
    """One pass over a text: the expanded string and its words.

    ``raw_quotes`` and ``raw_escapes`` keep quote and escape characters in the output (the
    heredoc scan needs the words as written); ``quotes=False`` makes quotes ordinary
    characters (heredoc bodies).
    """

    def __init__(self, text: str, env: Mapping[str, str], escape: str, *, raw_quotes: bool = False,
                 raw_escapes: bool = False, quotes: bool = True) -> None:
        self.text = text
        self.env = env
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.quotes = quotes
        self.pos = 0

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str | None:
        c = self.peek()
        if c is not None:
            self.pos += 1
        return c

    def run(self) -> tuple[str, list[str]]:
        return self.until(None, self.raw_escapes)

    def until(self, stop: str | None, raw_escapes: bool) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        while (c := self.peek()) is not None:
            if c == stop:
                self.pos += 1
                return "".join(out), words.done()
            if c == "$":
                value = self.dollar()
                out.append(value)
                words.text(value)     # a variable's value splits into words
            elif self.quotes and c in "'\"":
                value = self.single_quoted() if c == "'" else self.double_quoted()
                out.append(value)
                words.raw(value)
            else:
                self.pos += 1
                if c == self.escape:
                    if raw_escapes:
                        out.append(c)
                        words.raw(c)
                    nxt = self.take()
                    if nxt is None:
                        break         # an escape at the very end escapes nothing
                    c = nxt
                    words.raw(c)
                else:
                    words.char(c)
                out.append(c)
        if stop == "}":
            raise DockerfileError("syntax error: missing '}'", "close ${ with }")
        return "".join(out), words.done()

    def single_quoted(self) -> str:
        self.pos += 1
        end = self.text.find("'", self.pos)
        if end < 0:
            raise DockerfileError("unexpected end of statement while looking for matching single-quote",
                                  "unmatched single quote: close it (nothing can be escaped inside '...')")
        value = self.text[self.pos:end]
        self.pos = end + 1
        return f"'{value}'" if self.raw_quotes else value

    def double_quoted(self) -> str:
        self.pos += 1
        out = ['"'] if self.raw_quotes else []
        while True:
            c = self.peek()
            if c is None:
                raise DockerfileError("unexpected end of statement while looking for matching double-quote",
                                      f"unmatched double quote: close it, or write {self.escape}\" for a literal one")
            if c == '"':
                self.pos += 1
                if self.raw_quotes:
                    out.append(c)
                return "".join(out)
            if c == "$":
                out.append(self.dollar())
                continue
            self.pos += 1
            if c == self.escape:
                if self.raw_escapes:
                    out.append(c)
                nxt = self.peek()
                if nxt is None:
                    continue
                if nxt in ('"', "$", self.escape):
                    c = nxt
                    self.pos += 1
                elif self.raw_escapes:
                    continue          # already written; the next character is ordinary
            out.append(c)

    def name(self) -> str:
        c = self.peek()
        if c is None:
            return ""
        if c.isdigit():               # positional: $1, $10
            start = self.pos
            while (d := self.peek()) is not None and d.isdigit():
                self.pos += 1
            return self.text[start:self.pos]
        if c in _SPECIAL_PARAMS:
            self.pos += 1
            return c
        start = self.pos
        while (d := self.peek()) is not None and (d.isalnum() or d == "_"):
            self.pos += 1
        return self.text[start:self.pos]

    def dollar(self) -> str:
        self.pos += 1
        if self.peek() != "{":
            name = self.name()
            return self.env.get(name, "") if name else "$"
        self.pos += 1
        c = self.peek()
        if c is None:
            raise DockerfileError("syntax error: missing '}'", "close ${ with }")
        if c in "{}:":
            raise DockerfileError("syntax error: bad substitution", _SUPPORTED_FORMS)
        name = self.name()
        c = self.take()
        if c is None:
            raise DockerfileError("syntax error: missing '}'", "close ${ with }")
        if c == "}":
            return self.env.get(name, "")
        modifier, null_is_unset = c, False
        if c == ":":
            null_is_unset = True
            c = self.take()
            if c is None:
                raise DockerfileError("syntax error: missing '}'", "close ${ with }")
            modifier += c
        if c not in "-+?":
            raise DockerfileError(f"unsupported modifier ({modifier}) in substitution",
                                  f"bad substitution: {_SUPPORTED_FORMS}")
        word, _ = self.until("}", False)
        value = self.env.get(name)
        unset = value is None or (null_is_unset and value == "")
        if c == "-":
            return word if unset else str(value)
        if c == "+":
            return "" if unset else word
        if value is None:
            raise DockerfileError(f"{name}: {word or 'is not allowed to be unset'}")
        if unset:
            raise DockerfileError(f"{name}: {word or 'is not allowed to be empty'}")
        return value


# ---------------------------------------------------------------------------------------
# The instructions.

@dataclass(frozen=True)
class Heredoc:
    """A here-document: ``<<NAME`` on the instruction's line, the lines up to ``NAME`` after it.

    ``content`` ends with a newline unless empty; for ``<<-NAME`` (``chomp``) the leading
    tabs of its lines are already removed.  ``expand`` is False where any part of the
    delimiter was quoted (``<<'EOF'``, ``<<"EOF"``): then ``COPY`` writes it as it is.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction: where it is and how it was written.

    ``original`` is the instruction as docker records it: the logical line, continuations
    joined and comment lines dropped (heredoc bodies are in the ``heredocs`` of those that
    have them).  ``line`` is the 1-based line it starts on, ``end_line`` the last line it
    took.  ``escape`` is the file's escape character, which ``expand`` uses.
    """

    keyword: ClassVar[str] = ""
    original: str
    line: int
    end_line: int
    file: str = "Dockerfile"
    escape: str = "\\"

    def expand(self, env: Mapping[str, str]) -> Self:
        """This instruction with ``$VARIABLES`` replaced from ENV where docker replaces them;
        itself for the instructions docker leaves alone."""
        return self

    def error(self, reason: str, hint: str | None = None) -> DockerfileError:
        """An error about this instruction, located at its line (for the builder's use too)."""
        return DockerfileError(reason, hint, file=self.file, line=self.line)

    def _one(self, word: str, env: Mapping[str, str]) -> str:
        try:
            return expand(word, env, escape=self.escape)
        except DockerfileError as e:
            raise e.at(self.file, self.line) from None

    def _many(self, text: str, env: Mapping[str, str]) -> list[str]:
        try:
            return expand_words(text, env, escape=self.escape)
        except DockerfileError as e:
            raise e.at(self.file, self.line) from None

    def _opt(self, word: str | None, env: Mapping[str, str]) -> str | None:
        return None if word is None else self._one(word, env)


@dataclass(frozen=True, kw_only=True)
class _CommandLine(Instruction):
    """``command`` is the JSON array for the exec form; for the shell form, one string: the
    text as written, which the shell will read."""

    command: tuple[str, ...]
    exec_form: bool

    def argv(self, shell: Sequence[str] = _DEFAULT_SHELL) -> list[str]:
        """The process to run: the exec form as it is, the shell form given to SHELL."""
        return list(self.command) if self.exec_form else [*shell, self.command[0]]


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    """``FROM [--platform=P] IMAGE [AS NAME]``; ``name`` is lowercased, as docker matches stage names."""

    keyword: ClassVar[str] = "FROM"
    image: str
    name: str | None = None
    platform: str | None = None

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, image=self._one(self.image, env), platform=self._opt(self.platform, env))


@dataclass(frozen=True, kw_only=True)
class Run(_CommandLine):
    """``RUN``; ``mounts`` are the ``--mount`` values as written (``type=cache,target=/x``)."""

    keyword: ClassVar[str] = "RUN"
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[str, ...] = ()
    network: str | None = None
    security: str | None = None
    devices: tuple[str, ...] = ()

    def expand(self, env: Mapping[str, str]) -> Self:
        if not self.mounts:
            return self
        return dataclasses.replace(self, mounts=tuple(self._mount(m, env) for m in self.mounts))

    def _mount(self, spec: str, env: Mapping[str, str]) -> str:
        fields = []
        for field in spec.split(","):
            key, sep, value = field.partition("=")
            fields.append(f"{key}={self._one(value, env)}" if sep else field)
        return ",".join(fields)

    def script(self) -> Heredoc | None:
        """The heredoc that is the whole command (``RUN <<EOF``), which docker runs as a script
        -- written to a file and executed when it starts with ``#!``, else given to the shell."""
        if self.exec_form or len(self.heredocs) != 1 or _heredoc_spec(self.command[0].strip()) is None:
            return None
        return self.heredocs[0]

    def shell_command(self) -> str:
        """What the shell form gives the shell: the command; a lone heredoc's content; or, where
        the command feeds heredocs to a program (``RUN python3 <<EOF``), the command followed by
        each heredoc and its delimiter, for the shell to read as here-documents."""
        if self.exec_form:
            raise ValueError("the exec form has no shell command")
        script = self.script()
        if script is not None:
            return script.content
        return self.command[0] + "".join(f"\n{h.content}{h.name}" for h in self.heredocs)

    def argv(self, shell: Sequence[str] = _DEFAULT_SHELL) -> list[str]:
        return list(self.command) if self.exec_form else [*shell, self.shell_command()]


@dataclass(frozen=True, kw_only=True)
class Cmd(_CommandLine):
    keyword: ClassVar[str] = "CMD"


@dataclass(frozen=True, kw_only=True)
class Entrypoint(_CommandLine):
    keyword: ClassVar[str] = "ENTRYPOINT"


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    """``SHELL ["executable", "parameters"]`` (JSON form only)."""

    keyword: ClassVar[str] = "SHELL"
    command: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class _Pairs(Instruction):
    """``pairs`` as written (quotes and escapes in place) until ``expand``; every pair is
    expanded with the same ENV, the one from before the instruction."""

    pairs: tuple[tuple[str, str], ...]

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, pairs=tuple((self._one(k, env), self._one(v, env)) for k, v in self.pairs))



@dataclass(frozen=True, kw_only=True)
class Env(_Pairs):
    keyword: ClassVar[str] = "ENV"


@dataclass(frozen=True, kw_only=True)
class Label(_Pairs):
    keyword: ClassVar[str] = "LABEL"


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``ARG NAME[=DEFAULT] ...``; ``expand`` expands the defaults (all with the same ENV:
    a builder that wants ``ARG A=1 B=$A`` to see ``A`` expands one at a time with ``expand``)."""

    keyword: ClassVar[str] = "ARG"
    args: tuple[tuple[str, str | None], ...]

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, args=tuple((k, self._opt(v, env)) for k, v in self.args))


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """``EXPOSE 80 53/udp``; a variable may hold several ports (``EXPOSE $PORTS``)."""

    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, ports=tuple(p for word in self.ports for p in self._many(word, env)))


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]
    exec_form: bool = False

    def expand(self, env: Mapping[str, str]) -> Self:
        paths = tuple(self._one(p, env) for p in self.paths)
        if any(not p.strip() for p in paths):
            raise self.error("VOLUME specified can not be an empty string")
        return dataclasses.replace(self, paths=paths)


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, user=self._one(self.user, env))


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, path=self._one(self.path, env))


@dataclass(frozen=True, kw_only=True)
class Stopsignal(Instruction):
    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, signal=self._one(self.signal, env))


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    keyword: ClassVar[str] = "MAINTAINER"
    name: str


@dataclass(frozen=True, kw_only=True)
class _Copying(Instruction):
    """COPY and ADD: ``sources`` (context paths, or a stage's with ``from_``), ``dest``, and
    ``heredocs`` -- the inline files of ``COPY <<EOF /path``, each named by its delimiter."""

    sources: tuple[str, ...]
    dest: str
    heredocs: tuple[Heredoc, ...] = ()
    exec_form: bool = False
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()

    def _expanded(self, env: Mapping[str, str]) -> dict[str, Any]:
        heredocs = []
        for h in self.heredocs:
            try:
                heredocs.append(dataclasses.replace(h, content=_expand_heredoc(h.content, env)) if h.expand else h)
            except DockerfileError as e:
                raise e.at(self.file, self.line) from None
        return {"sources": tuple(self._one(s, env) for s in self.sources), "dest": self._one(self.dest, env),
                "heredocs": tuple(heredocs), "chown": self._opt(self.chown, env),
                "chmod": self._opt(self.chmod, env), "exclude": tuple(self._one(x, env) for x in self.exclude)}


@dataclass(frozen=True, kw_only=True)
class Copy(_Copying):
    """``COPY [--from=STAGE|IMAGE] [--chown] [--chmod] [--link] [--parents] [--exclude] SRC... DEST``."""

    keyword: ClassVar[str] = "COPY"
    from_: str | None = None
    parents: bool = False

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, from_=self._opt(self.from_, env), **self._expanded(env))


@dataclass(frozen=True, kw_only=True)
class Add(_Copying):
    """``ADD [--chown] [--chmod] [--link] [--checksum] [--keep-git-dir] [--unpack] [--exclude] SRC... DEST``;
    ``unpack`` is None where the flag is absent (docker's default depends on the source)."""

    keyword: ClassVar[str] = "ADD"
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None

    def expand(self, env: Mapping[str, str]) -> Self:
        return dataclasses.replace(self, checksum=self._opt(self.checksum, env),
                                   **self._expanded(env))


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [options] CMD ...``, as an image config's
    ``Healthcheck``: ``test`` is ``("NONE",)``, ``("CMD", *argv)`` or ``("CMD-SHELL", command)``;
    durations are in nanoseconds and, like ``retries``, 0 where not given."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """``ONBUILD INSTRUCTION``: ``trigger`` is what the image config's ``OnBuild`` keeps (the
    text after ONBUILD, heredoc bodies appended), ``instruction`` the trigger parsed."""

    keyword: ClassVar[str] = "ONBUILD"
    trigger: str
    instruction: Instruction


#: Every instruction docker knows, by keyword.
INSTRUCTIONS: dict[str, type[Instruction]] = {c.keyword: c for c in (
    Add, Arg, Cmd, Copy, Entrypoint, Env, Expose, From, Healthcheck, Label, Maintainer, Onbuild, Run, Shell,
    Stopsignal, User, Volume, Workdir)}


@dataclass(frozen=True)
class Stage:
    """A build stage: its ``FROM`` (``base``) and the instructions after it."""

    index: int
    base: From
    instructions: tuple[Instruction, ...]

    @property
    def name(self) -> str | None:
        return self.base.name


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: ``args`` are the global ARGs (before the first FROM), which only
    FROM lines see; ``syntax`` and ``check`` are the parser directives' values, recorded and
    otherwise ignored; ``warnings`` are docker's (empty continuation lines)."""

    name: str
    escape: str
    args: tuple[Arg, ...]
    stages: tuple[Stage, ...]
    syntax: str | None = None
    check: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def instructions(self) -> list[Instruction]:
        """All the instructions, in the file's order."""
        out: list[Instruction] = list(self.args)
        for stage in self.stages:
            out.append(stage.base)
            out.extend(stage.instructions)
        return out

    def stage(self, ref: str | int) -> Stage | None:
        """The stage named REF (case-insensitive), or the one at index REF."""
        if isinstance(ref, int):
            return self.stages[ref] if -len(self.stages) <= ref < len(self.stages) else None
        wanted = ref.lower()
        return next((s for s in self.stages if s.name == wanted), None)


# ---------------------------------------------------------------------------------------
# Reading the text: directives, logical lines, heredoc bodies.

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*", re.ASCII)
_DIRECTIVES = ("escape", "syntax", "check")
_BLANKS = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"(\d*)<<(-?)([^<]*)", re.DOTALL)
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_HEREDOC_KEYWORDS = ("RUN", "COPY", "ADD")


def parse(text: str, *, name: str = "Dockerfile") -> Dockerfile:
    """TEXT, a whole Dockerfile, parsed and checked as docker checks it before building;
    NAME is how errors refer to it.  Raises DockerfileError."""
    lines = _split_lines(text)
    directives = _directives(lines, name)
    escape = directives.get("escape", "\\")
    reader = _Reader(lines, escape, name)
    instructions = list(reader.instructions())
    if not instructions:
        raise DockerfileError("file with no instructions", "a Dockerfile starts with FROM IMAGE",
                              file=name, line=max(len(lines), 1))
    global_args: list[Arg] = []
    stages: list[Stage] = []
    current: tuple[From, list[Instruction]] | None = None
    for instr in instructions:
        if isinstance(instr, From):
            if current is not None:
                stages.append(Stage(len(stages), current[0], tuple(current[1])))
            if instr.name is not None and any(s.name == instr.name for s in stages):
                raise instr.error(f"duplicate stage name {instr.name!r}", "give each stage its own name")
            current = (instr, [])
        elif current is not None:
            current[1].append(instr)
        elif isinstance(instr, Arg):
            global_args.append(instr)
        else:
            raise instr.error("no build stage in current context",
                              "only ARG may come before the first FROM; start a stage with FROM IMAGE")
    if current is None:
        raise DockerfileError("dockerfile contains no stages to build", "add FROM IMAGE",
                              file=name, line=instructions[-1].line)
    stages.append(Stage(len(stages), current[0], tuple(current[1])))
    return Dockerfile(name=name, escape=escape, args=tuple(global_args), stages=tuple(stages),
                      syntax=directives.get("syntax"), check=directives.get("check"),
                      warnings=tuple(reader.warnings))


def parse_instruction(text: str, *, escape: str = "\\", name: str = "Dockerfile", line: int = 1) -> Instruction:
    """TEXT as exactly one instruction (an ``ONBUILD`` trigger, a ``--change``): continuation
    lines, comments and heredoc bodies as in a Dockerfile, no directives, no FROM needed."""
    reader = _Reader(_split_lines(text), escape, name, first_line=line)
    found = list(reader.instructions())
    if len(found) != 1:
        raise DockerfileError(f"expected one instruction, found {len(found)}", file=name, line=line)
    return found[0]


def _split_lines(text: str) -> list[str]:
    """TEXT's lines as Go's line scanner gives them: split at \\n, a trailing \\r dropped, no
    empty last line, the first line's byte-order mark removed."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _directives(lines: list[str], name: str) -> dict[str, str]:
    """The parser directives at the top; the first line that is not one (a comment, a blank
    line, an instruction, an unknown directive) ends them."""
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        m = _DIRECTIVE.fullmatch(line.lstrip())
        if m is None:
            break
        key, value = m.group(1).lower(), m.group(2)
        if key not in _DIRECTIVES:
            break
        if key in found:
            raise DockerfileError(f"only one {key} parser directive can be used", file=name, line=number)
        if key == "escape" and value not in ("\\", "`"):
            raise DockerfileError(f"invalid escape token '{value}' does not match ` or \\",
                                  "write # escape=\\ or # escape=`", file=name, line=number)
        found[key] = value
    return found


class _Reader:
    """The lines of a Dockerfile, read instruction by instruction."""

    def __init__(self, lines: list[str], escape: str, file: str, first_line: int = 1) -> None:
        self.lines = lines
        self.escape = escape
        self.file = file
        self.offset = first_line - 1
        self.next = 0                 # index of the next unread line
        self.continuation = re.compile(re.escape(escape) + r"[ \t]*$")
        self.warnings: list[str] = []

    @property
    def lineno(self) -> int:
        """The 1-based number of the last line read."""
        return self.offset + self.next

    def _read(self) -> str | None:
        if self.next >= len(self.lines):
            return None
        self.next += 1
        return self.lines[self.next - 1]

    def _trim(self, line: str) -> tuple[str, bool]:
        """LINE without a final escape character, and whether one was there (the line goes on)."""
        m = self.continuation.search(line)
        return (line[:m.start()], True) if m else (line, False)

    def instructions(self) -> Iterator[Instruction]:
        while (raw := self._read()) is not None:
            start = self.lineno
            first = raw.lstrip()
            if first.startswith("#"):
                continue              # comments (and directives) never continue
            text, more = self._trim(first)
            empty_continuation = False
            while more and (raw := self._read()) is not None:
                if raw.lstrip().startswith("#"):
                    continue
                if not raw.strip():
                    empty_continuation = True
                    continue
                part, more = self._trim(raw)   # a continuation line keeps its leading blanks
                text += part
            if not text.strip():
                continue
            if empty_continuation:
                self.warnings.append(f"{self.file}:{start}: empty continuation line found in: {text}")
            try:
                yield self._instruction(text, start)
            except DockerfileError as e:
                raise e.at(self.file, start) from None

    def _instruction(self, text: str, start: int) -> Instruction:
        keyword, flag_words, rest = _split_command(text)
        kind = _kind(keyword)
        heredocs: tuple[Heredoc, ...] = ()
        if "<<" in text and _takes_heredocs(kind, rest):
            heredocs = tuple(self._heredoc(spec, start) for spec in _heredoc_specs(text))
        return _build(_Line(kind, flag_words, rest, heredocs, original=text, line=start, end_line=self.lineno,
                            file=self.file, escape=self.escape))

    def _heredoc(self, spec: Heredoc, start: int) -> Heredoc:
        body: list[str] = []
        while (line := self._read()) is not None:
            if (line.lstrip("\t") if spec.chomp else line) == spec.name:
                content = "".join(body)
                if spec.chomp:
                    content = _LEADING_TABS.sub("", content)
                return dataclasses.replace(spec, content=content)
            body.append(line + "\n")
        raise DockerfileError("unterminated heredoc", f"end it with a line holding only {spec.name}",
                              file=self.file, line=start)


def _split_command(text: str) -> tuple[str, list[str], str]:
    """The keyword, the leading ``--flags`` and the rest of an instruction's logical line."""
    parts = _BLANKS.split(text.strip(), maxsplit=1)
    if len(parts) < 2:
        return parts[0], [], ""
    flags, rest = _extract_flags(parts[1])
    return parts[0], flags, rest.strip()


def _extract_flags(text: str) -> tuple[list[str], str]:
    """The ``--name[=value]`` words that open TEXT (quotes and backslashes processed), and
    what follows them; a lone ``--`` ends the flags."""
    flags: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if not text.startswith("--", i):
            return flags, text[i:]
        word, quoted, quote = "", False, ""
        while i < n:
            c = text[i]
            i += 1
            if quote:
                if c == quote:
                    quote = ""
                    continue
            elif c.isspace():
                i -= 1
                break
            elif c in "'\"":
                quote, quoted = c, True
                continue
            if c == "\\":
                if i == n:
                    quote = ""
                    continue
                c = text[i]
                i += 1
            word += c
        if word == "--":
            return flags, text[i:]
        if word or quoted:
            flags.append(word)


def _raw_words(text: str, escape: str) -> list[str]:
    """TEXT split at blanks that are neither quoted nor escaped, each word as written (quotes
    and escapes kept, for ``expand`` later): how docker splits ENV, LABEL and ARG."""
    words: list[str] = []
    word, quote, quoted = "", "", False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if not quote and c.isspace():
            if word or quoted:
                words.append(word)
            word, quoted = "", False
            continue
        if quote:
            if c == quote:
                quote = ""
            elif c == escape and quote != "'":
                if i == n:
                    continue          # an escape at the end escapes nothing
                word += c
                c = text[i]
                i += 1
        elif c in "'\"":
            quote, quoted = c, True
        elif c == escape:
            if i == n:
                continue
            word += c
            c = text[i]
            i += 1
        word += c
    if word or quoted:
        words.append(word)
    return words


def _json_array(text: str) -> list[str] | None:
    """TEXT's exec form, or None where it is not valid JSON (then docker reads the shell form)."""
    text = text.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, str) for v in value):
        raise DockerfileError("when using JSON array syntax, arrays must be comprised of strings only",
                              'quote every element: ["executable", "param1"]')
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")   # NaN and Infinity: Go's JSON has no such thing


def _takes_heredocs(kind: str, rest: str) -> bool:
    if kind == "ONBUILD":
        inner, _, inner_rest = _split_command(rest)
        kind, rest = inner.upper(), inner_rest
    if kind not in _HEREDOC_KEYWORDS:
        return False
    try:
        return _json_array(rest) is None
    except DockerfileError:
        return False


def _heredoc_specs(text: str) -> list[Heredoc]:
    """The heredocs the line TEXT opens, in order, without their bodies."""
    try:
        words = _Lexer(text, {}, "\\", raw_quotes=True, raw_escapes=True).run()[1]
    except DockerfileError:
        return []                     # a line the shell lexer cannot read opens no heredoc, as in docker
    return [spec for word in words if (spec := _heredoc_spec(word)) is not None]


def _heredoc_spec(word: str) -> Heredoc | None:
    """The heredoc WORD opens (``<<EOF``, ``<<-EOF``, ``<<'EOF'``), or None."""
    m = _HEREDOC.fullmatch(word)
    if m is None or not m.group(3):
        return None
    delimiter = m.group(3)
    plain = _lex(delimiter, {}, "\\")[1]
    if len(plain) != 1:
        return None
    raw = _lex(delimiter, {}, "\\", raw_quotes=True)[1]
    # a quote anywhere in the delimiter turns expansion off: the raw word then has more quotes
    expands = _quotes(plain[0]) == _quotes(raw[0])
    return Heredoc(plain[0], "", expand=expands, chomp=m.group(2) == "-")


def _quotes(word: str) -> int:
    return word.count("'") + word.count('"')


# ---------------------------------------------------------------------------------------
# From a logical line to a typed instruction.

_STAGE_NAME = re.compile(r"[a-z][a-z0-9-_.]*")
_Flags = dict[str, "str | bool | list[str]"]
#: the flags each instruction takes: str (needs a value), bool (--x, --x=true|false), list (repeatable)
_FLAG_KINDS: dict[str, dict[str, type]] = {
    "FROM": {"platform": str},
    "RUN": {"mount": list, "network": str, "security": str, "device": list},
    "COPY": {"from": str, "chown": str, "chmod": str, "link": bool, "parents": bool, "exclude": list},
    "ADD": {"chown": str, "chmod": str, "link": bool, "keep-git-dir": bool, "checksum": str, "exclude": list,
            "unpack": bool},
    "HEALTHCHECK": {"interval": str, "timeout": str, "start-period": str, "start-interval": str, "retries": str},
}


def _kind(keyword: str) -> str:
    kind = keyword.upper()
    if kind not in INSTRUCTIONS:
        close = difflib.get_close_matches(kind, INSTRUCTIONS, n=1)
        raise DockerfileError(f"unknown instruction: {kind}", f"did you mean {close[0]}?" if close else None)
    return kind


@dataclass
class _Line:
    """An instruction's logical line, split: what the per-instruction readers below work from."""

    kind: str
    flag_words: list[str]
    rest: str
    heredocs: tuple[Heredoc, ...]
    original: str
    line: int
    end_line: int
    file: str
    escape: str

    @property
    def where(self) -> dict[str, Any]:
        return {"original": self.original, "line": self.line, "end_line": self.end_line, "file": self.file,
                "escape": self.escape}

    def flags(self, allowed: Mapping[str, type] | None = None) -> _Flags:
        """The flags, checked against what the instruction takes."""
        allowed = _FLAG_KINDS.get(self.kind, {}) if allowed is None else allowed
        out: _Flags = {}
        for word in self.flag_words:
            name, has_value, value = word[2:].partition("=")
            kind = allowed.get(name)
            if kind is None:
                takes = ", ".join("--" + f for f in allowed)
                raise DockerfileError(f"unknown flag: {name}",
                                      f"{self.kind} takes {takes}" if takes else f"{self.kind} takes no flags")
            if kind is list:
                if not has_value:
                    raise DockerfileError(f"missing a value on flag: {name}", f"write --{name}=VALUE")
                listed = out.setdefault(name, [])
                assert isinstance(listed, list)
                listed.append(value)
            elif name in out:
                raise DockerfileError(f"Duplicate flag specified: {name}")
            elif kind is bool:
                if has_value and value.lower() not in ("true", "false"):
                    raise DockerfileError(f"expecting boolean value for flag {name}, not: {value}")
                out[name] = value.lower() != "false"
            elif not has_value:
                raise DockerfileError(f"missing a value on flag: {name}", f"write --{name}=VALUE")
            else:
                out[name] = value
        return out

    def require(self) -> None:
        if not self.rest:
            raise DockerfileError(f"{self.kind} requires at least one argument")


def _str(flags: _Flags, name: str) -> str | None:
    value = flags.get(name)
    return value if isinstance(value, str) else None


def _bool(flags: _Flags, name: str) -> bool | None:
    value = flags.get(name)
    return value if isinstance(value, bool) else None


def _list(flags: _Flags, name: str) -> tuple[str, ...]:
    value = flags.get(name)
    return tuple(value) if isinstance(value, list) else ()


def _build(ln: _Line) -> Instruction:
    return _READERS[ln.kind](ln)


def _from(ln: _Line) -> From:
    flags = ln.flags()
    ln.require()
    args = _BLANKS.split(ln.rest)
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise DockerfileError(f"invalid name for build stage: {args[2]!r}, name can't start with a number "
                                  "or contain symbols", "use letters, digits, '-', '_' and '.', a letter first")
    elif len(args) != 1:
        raise DockerfileError("FROM requires either one or three arguments", "write FROM IMAGE [AS NAME]")
    return From(image=args[0], name=name, platform=_str(flags, "platform"), **ln.where)


def _command_line(ln: _Line) -> Instruction:
    flags = ln.flags()
    ln.require()
    exec_form = _json_array(ln.rest)
    if ln.kind == "SHELL":
        if exec_form is None:
            raise DockerfileError("SHELL requires the arguments to be in JSON form", 'write SHELL ["/bin/sh", "-c"]')
        if not exec_form:
            raise DockerfileError("SHELL requires at least one argument")
        return Shell(command=tuple(exec_form), **ln.where)
    command = tuple(exec_form) if exec_form is not None else (ln.rest,)
    if ln.kind == "RUN":
        if not command:
            raise DockerfileError("RUN requires at least one argument")
        return Run(command=command, exec_form=exec_form is not None, heredocs=ln.heredocs,
                   mounts=_list(flags, "mount"), network=_str(flags, "network"), security=_str(flags, "security"),
                   devices=_list(flags, "device"), **ln.where)
    cls = Cmd if ln.kind == "CMD" else Entrypoint
    return cls(command=command, exec_form=exec_form is not None, **ln.where)


def _pairs(ln: _Line) -> Instruction:
    """``K=V ...``, or the legacy ``K value with spaces`` where the first word has no ``=``."""
    ln.flags()
    words = _raw_words(ln.rest, ln.escape)
    if not words:
        raise DockerfileError(f"{ln.kind} requires at least one argument")
    pairs: list[tuple[str, str]] = []
    if "=" not in words[0]:
        legacy = _BLANKS.split(ln.rest, maxsplit=1)
        if len(legacy) < 2:
            raise DockerfileError(f"{ln.kind} must have two arguments",
                                  f"{legacy[0]} needs a value: {ln.kind} {legacy[0]}=VALUE")
        pairs.append((legacy[0], legacy[1]))
    else:
        for word in words:
            key, has_value, value = word.partition("=")
            if not has_value:
                raise DockerfileError(f"Syntax error - can't find = in {word!r}. Must be of the form: name=value")
            if not key:
                raise DockerfileError(f"{ln.kind} names can not be blank", f"{word!r} is not KEY=VALUE")
            pairs.append((key, value))
    cls = Env if ln.kind == "ENV" else Label
    return cls(pairs=tuple(pairs), **ln.where)


def _arg(ln: _Line) -> Arg:
    ln.flags()
    words = _raw_words(ln.rest, ln.escape)
    if not words:
        raise DockerfileError("ARG requires at least one argument")
    args: list[tuple[str, str | None]] = []
    for word in words:
        key, has_value, value = word.partition("=")
        if not key:
            raise DockerfileError("ARG names can not be blank", f"{word!r} is not NAME[=DEFAULT]")
        args.append((key, value if has_value else None))
    return Arg(args=tuple(args), **ln.where)


def _words_or_json(rest: str) -> tuple[list[str], bool]:
    exec_form = _json_array(rest)
    if exec_form is not None:
        return exec_form, True
    return ([] if not rest else _BLANKS.split(rest)), False


def _copying(ln: _Line) -> Instruction:
    flags = ln.flags()
    args, exec_form = _words_or_json(ln.rest)
    if len(args) < 2:
        detail = ", but only one was provided. Destination could not be determined." if args else ""
        raise DockerfileError(f"{ln.kind} requires at least two arguments{detail}", f"write {ln.kind} SRC... DEST")
    *sources, dest = args
    if _heredoc_spec(dest) is not None:
        raise DockerfileError(f"{ln.kind} cannot take a heredoc as its destination", f"write {ln.kind} <<EOF DEST")
    paths = tuple(s for s in sources if not (ln.heredocs and _heredoc_spec(s) is not None))
    common: dict[str, Any] = {
        "sources": paths, "dest": dest, "heredocs": ln.heredocs, "exec_form": exec_form,
        "chown": _str(flags, "chown"), "chmod": _str(flags, "chmod"), "link": bool(_bool(flags, "link")),
        "exclude": _list(flags, "exclude"), **ln.where}
    if ln.kind == "COPY":
        return Copy(from_=_str(flags, "from"), parents=bool(_bool(flags, "parents")), **common)
    return Add(checksum=_str(flags, "checksum"), keep_git_dir=bool(_bool(flags, "keep-git-dir")),
               unpack=_bool(flags, "unpack"), **common)


def _expose(ln: _Line) -> Expose:
    ln.flags()
    ln.require()
    return Expose(ports=tuple(_BLANKS.split(ln.rest)), **ln.where)


def _volume(ln: _Line) -> Volume:
    ln.flags()
    ln.require()
    paths, exec_form = _words_or_json(ln.rest)
    if not paths:
        raise DockerfileError("VOLUME requires at least one argument")
    if any(not p.strip() for p in paths):
        raise DockerfileError("VOLUME specified can not be an empty string")
    return Volume(paths=tuple(paths), exec_form=exec_form, **ln.where)


def _string(ln: _Line) -> Instruction:
    """USER, WORKDIR, STOPSIGNAL and MAINTAINER: the rest of the line is the one value."""
    ln.flags()
    ln.require()
    if ln.kind == "USER":
        return User(user=ln.rest, **ln.where)
    if ln.kind == "WORKDIR":
        return Workdir(path=ln.rest, **ln.where)
    if ln.kind == "STOPSIGNAL":
        return Stopsignal(signal=ln.rest, **ln.where)
    return Maintainer(name=ln.rest, **ln.where)


def _healthcheck(ln: _Line) -> Healthcheck:
    ln.require()
    parts = re.split(r"\s+", ln.rest, maxsplit=1)
    kind, command = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
    if kind == "NONE":
        ln.flags(allowed={})
        if command:
            raise DockerfileError("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(test=("NONE",), **ln.where)
    options = ln.flags()
    if kind != "CMD":
        raise DockerfileError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)',
                              "write HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE")
    exec_form = _json_array(command) if command else None
    if not command or exec_form == []:
        raise DockerfileError("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *exec_form) if exec_form is not None else ("CMD-SHELL", command)
    retries = 0
    if (text := _str(options, "retries")) is not None:
        try:
            retries = int(text, 10)
        except ValueError:
            raise DockerfileError(f"invalid --retries value {text!r}: not a number") from None
        if retries < 0:
            raise DockerfileError(f"--retries cannot be negative ({retries})")
    return Healthcheck(test=test, interval=_interval(options, "interval"), timeout=_interval(options, "timeout"),
                       start_period=_interval(options, "start-period"),
                       start_interval=_interval(options, "start-interval"), retries=retries, **ln.where)


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def _interval(options: _Flags, name: str) -> int:
    """A HEALTHCHECK duration flag (Go's syntax: ``30s``, ``1m30s``, ``1.5h``, ``500ms``) in
    nanoseconds; 0 where absent or zero, else at least 1ms, as docker requires."""
    text = _str(options, name)
    if text is None:
        return 0
    body, negative = text, False
    if body[:1] in ("+", "-"):
        negative, body = body[0] == "-", body[1:]
    total = Decimal(0)
    if body != "0":
        pos = 0
        while pos == 0 or pos < len(body):
            m = _DURATION_PART.match(body, pos)
            if m is None:
                raise DockerfileError(f'time: invalid duration "{text}"', "write e.g. 30s, 1m30s or 500ms")
            total += Decimal(m.group(1)) * _UNIT_NS[m.group(2)]
            pos = m.end()
    ns = int(-total if negative else total)
    if ns == 0:
        return 0
    if ns < 1_000_000:
        raise DockerfileError(f'Interval "{name}" cannot be less than 1ms')
    return ns


def _onbuild(ln: _Line) -> Onbuild:
    ln.flags()
    ln.require()
    keyword, flag_words, rest = _split_command(ln.rest)
    inner_kind = keyword.upper()
    if inner_kind == "ONBUILD":
        raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if inner_kind in ("FROM", "MAINTAINER"):
        raise DockerfileError(f"{inner_kind} isn't allowed as an ONBUILD trigger")
    inner = _build(dataclasses.replace(ln, kind=_kind(keyword), flag_words=flag_words, rest=rest, original=ln.rest))
    trigger = re.sub(r"^\s*ONBUILD\s*", "", ln.original, flags=re.IGNORECASE)
    trigger += "".join(f"\n{h.content}{h.name}" for h in ln.heredocs)
    return Onbuild(trigger=trigger, instruction=inner, **ln.where)


_READERS: dict[str, Callable[[_Line], Instruction]] = {
    "FROM": _from, "RUN": _command_line, "CMD": _command_line, "ENTRYPOINT": _command_line, "SHELL": _command_line,
    "ENV": _pairs, "LABEL": _pairs, "ARG": _arg, "COPY": _copying, "ADD": _copying, "EXPOSE": _expose,
    "VOLUME": _volume, "USER": _string, "WORKDIR": _string, "STOPSIGNAL": _string, "MAINTAINER": _string,
    "HEALTHCHECK": _healthcheck, "ONBUILD": _onbuild,
}
