"""``.dockerignore``: which files of a build context the build may use, by docker's rules.

One pattern a line, relative to the context's root (a leading ``/`` or ``./`` changes
nothing); a line starting with ``#`` in its first column is a comment.  Patterns follow
Go's ``filepath.Match`` (``*`` and ``?`` stay within a path component, ``[...]`` with
``^`` to negate, ``\\`` to escape) plus ``**``, any number of components, none included.
A pattern excludes what it matches *and everything below it*; a ``!pattern`` line makes an
exception, and the last line that matches a path decides.  So an excluded directory still
has to be walked where an exception may re-include something under it -- ``walk`` does
that, and prunes the directories no exception can reach.

The ``Dockerfile`` and ``.dockerignore`` may be excluded like any file: the builder still
reads them, but ``COPY`` and ``ADD`` cannot see them.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

from ..errors import RootlessError

__all__ = ["IgnoreError", "Matcher", "Pattern", "load", "matcher", "walk"]


class IgnoreError(RootlessError):
    """A ``.dockerignore`` line docker would refuse: a bare ``!``, a malformed ``[...]``, a
    trailing ``\\``."""


@dataclass(frozen=True)
class Pattern:
    """One cleaned ``.dockerignore`` pattern; ``exception`` for a ``!`` line."""

    text: str
    exception: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile(_translate(self.text), re.DOTALL)

    @cached_property
    def segments(self) -> tuple[re.Pattern[str] | None, ...]:
        """Per path component: its regex, or None for a ``**`` component."""
        return tuple(None if s == "**" else re.compile(_translate(s), re.DOTALL) for s in self.text.split("/"))

    def matches(self, path: str) -> bool:
        """Whether the pattern matches PATH itself (a cleaned, ``/``-separated relative path)."""
        return self.regex.fullmatch(path) is not None

    def may_match_below(self, directory: str) -> bool:
        """Whether the pattern may match some path strictly below DIRECTORY without matching
        DIRECTORY or one of its parents -- the only way an exception can re-include something
        under an excluded directory.  Errs towards True."""
        parts = self.text.split("/")
        if "\\" in self.text or "[^" in self.text or any("**" in s and s != "**" for s in parts):
            return True               # escapes, [^/]-able classes, ** inside a component: too odd to reason about
        dirs = directory.split("/")
        segments = self.segments
        seen: set[tuple[int, int]] = set()

        def reach(p: int, d: int) -> bool:
            if (p, d) in seen:
                return False
            seen.add((p, d))
            if d == len(dirs):
                return p < len(segments)          # pattern left over: it reaches below
            if p == len(segments):
                return False                      # it ended at a parent: matches that, not below
            seg = segments[p]
            if seg is None:
                return reach(p + 1, d) or reach(p, d + 1)
            return seg.fullmatch(dirs[d]) is not None and reach(p + 1, d + 1)

        return reach(0, 0)


def read_patterns(text: str, *, source: str = ".dockerignore") -> list[Pattern]:
    """The patterns of a ``.dockerignore`` file's TEXT, cleaned as docker cleans them."""
    out: list[Pattern] = []
    if text.startswith("\ufeff"):
        text = text[1:]
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("#"):
            continue
        line = line.strip()
        if not line:
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
            if not line:
                raise IgnoreError(f'{source}:{number}: illegal exclusion pattern: "!"',
                                  "write !PATTERN to re-include what PATTERN matches")
        line = _clean(line)
        if len(line) > 1 and line.startswith("/"):
            line = line[1:]
        try:
            _translate(line)
        except ValueError as e:
            raise IgnoreError(f"{source}:{number}: syntax error in pattern {line!r}: {e}",
                              "escape a literal [ or \\ with \\") from None
        out.append(Pattern(line, exception))
    return out


class Matcher:
    """The ignore rules of one build context.  A Matcher is also the predicate
    ``matcher(relpath) -> excluded``."""

    def __init__(self, patterns: Iterable[Pattern] = ()) -> None:
        self.patterns: tuple[Pattern, ...] = tuple(patterns)
        self._exceptions = tuple(p for p in self.patterns if p.exception)

    def __repr__(self) -> str:
        return f"Matcher({[('!' if p.exception else '') + p.text for p in self.patterns]})"

    def __call__(self, relpath: str) -> bool:
        return self.excluded(relpath)

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether RELPATH (relative to the context's root, ``/``-separated) is left out.

        IS_DIR changes nothing -- docker's rules give a file and a directory of the same name
        the same answer (``foo/`` is cleaned to ``foo``) -- and is accepted for callers that
        know it.  The root itself is never excluded.
        """
        path = _relative(relpath)
        if not path or not self.patterns:
            return False
        hits = None
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            hits = self._hits("/".join(parts[:i]), hits)
        return self._decide(hits or ())

    def may_reinclude_below(self, relpath: str) -> bool:
        """Whether some exception may re-include a path below the directory RELPATH, so an
        excluded directory must still be walked."""
        path = _relative(relpath)
        return any(p.may_match_below(path) for p in self._exceptions)

    def _hits(self, path: str, parent: tuple[bool, ...] | None) -> tuple[bool, ...]:
        """For each pattern, whether it matches PATH or a parent (given the parent's answers)."""
        if parent is None:
            return tuple(p.matches(path) for p in self.patterns)
        return tuple(hit or p.matches(path) for hit, p in zip(parent, self.patterns))

    def _decide(self, hits: tuple[bool, ...]) -> bool:
        for hit, pattern in zip(reversed(hits), reversed(self.patterns)):
            if hit:
                return not pattern.exception
        return False


def matcher(text: str, *, source: str = ".dockerignore") -> Matcher:
    """The Matcher of a ``.dockerignore`` file's TEXT."""
    return Matcher(read_patterns(text, source=source))


def load(context_dir: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None = None) -> Matcher:
    """The ignore rules of the build context CONTEXT_DIR: its ``.dockerignore``, or, where
    DOCKERFILE (a path) has one beside it, ``DOCKERFILE.dockerignore``, which docker prefers.
    No file, no rules."""
    candidates = [os.fspath(dockerfile) + ".dockerignore"] if dockerfile is not None else []
    candidates.append(os.path.join(os.fspath(context_dir), ".dockerignore"))
    for path in candidates:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise IgnoreError(f"cannot read {path}: {e.strerror}") from None
        return matcher(text, source=path)
    return Matcher()


def walk(context_dir: str | os.PathLike[str], rules: Matcher) -> Iterator[str]:
    """The paths of CONTEXT_DIR that RULES leave in, relative and ``/``-separated, each
    directory before what it holds, names in sorted order.

    Symbolic links are listed, never followed.  An excluded directory is entered only where
    an exception may re-include something below it, and is listed (just before its first
    included entry) only where one does, so that a copy of the listing can create it.
    """
    root = os.fspath(context_dir)
    pending: list[str] = []           # excluded directories entered, not listed yet

    def visit(rel: str, hits: tuple[bool, ...] | None) -> Iterator[str]:
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except NotADirectoryError:
            return
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            entry_hits = rules._hits(path, hits) if rules.patterns else ()
            is_dir = entry.is_dir(follow_symlinks=False)
            if not rules._decide(entry_hits):
                yield from pending
                pending.clear()
                yield path
                if is_dir:
                    yield from visit(path, entry_hits)
            elif is_dir and rules.may_reinclude_below(path):
                pending.append(path)
                yield from visit(path, entry_hits)
                if pending and pending[-1] == path:
                    pending.pop()

    yield from visit("", None)


def _relative(relpath: str) -> str:
    """RELPATH cleaned as docker compares it: ``/``-separated, no ``.``, ``..`` or leading ``/``."""
    path = _clean(relpath.replace(os.sep, "/"))
    path = path.lstrip("/")
    return "" if path == "." else path


def _clean(path: str) -> str:
    """Go's ``filepath.Clean``: like ``posixpath.normpath``, but ``//x`` is ``/x``."""
    cleaned = posixpath.normpath(path)
    return cleaned[1:] if cleaned.startswith("//") else cleaned


def _translate(pattern: str) -> str:
    """A ``.dockerignore`` pattern as a regular expression for ``fullmatch``.

    ``*`` and ``?`` do not cross ``/``; ``**/`` is any number of leading components and a
    final ``**`` anything (docker's reading, so ``a**b`` is ``a`` then components then ``b``);
    ``[...]`` as in Go's ``filepath.Match``.  Raises ValueError for a malformed pattern.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            if i < n and pattern[i] == "*":
                i += 1
                if i < n and pattern[i] == "/":
                    i += 1
                out.append(".*" if i == n else "(?:.*/)?")
            else:
                out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            cls, i = _char_class(pattern, i)
            out.append(cls)
        elif c == "\\":
            if i == n:
                raise ValueError("trailing \\")
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(c))
    return "".join(out)


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """The ``[...]`` that starts before PATTERN[I], as a regex class, and where it ends."""
    n = len(pattern)
    negate = i < n and pattern[i] == "^"
    if negate:
        i += 1
    ranges: list[str] = []
    while True:
        if i >= n:
            raise ValueError("unterminated [")
        if pattern[i] == "]" and ranges:
            return ("[^" if negate else "[") + "".join(ranges) + "]", i + 1
        lo, i = _class_char(pattern, i)
        if i < n and pattern[i] == "-":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise ValueError(f"bad range {lo}-{hi}")
            ranges.append(f"{re.escape(lo)}-{re.escape(hi)}")
        else:
            ranges.append(re.escape(lo))


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    n = len(pattern)
    if i >= n or pattern[i] in "-]":
        raise ValueError("bad character class")
    if pattern[i] == "\\":
        if i + 1 >= n:
            raise ValueError("trailing \\")
        return pattern[i + 1], i + 2
    return pattern[i], i + 1
