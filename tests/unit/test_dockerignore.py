""".dockerignore: docker's pattern rules, exceptions where the last matching line wins, and a
walk of the context that lists what the build may use and skips what nothing can re-include."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rootless.build.ignore import IgnoreError, Matcher, load, matcher, read_patterns, walk
from rootless.errors import RootlessError


def check(rules: str, included: list[str], excluded: list[str]) -> None:
    m = matcher(rules)
    assert [p for p in included if m.excluded(p)] == [], "these should be left in"
    assert [p for p in excluded if not m.excluded(p)] == [], "these should be left out"


# --- the reference's examples ------------------------------------------------------------------

def test_the_reference_example_file() -> None:
    check("# comment\n*/temp*\n*/*/temp*\ntemp?\n",
          included=["temporary.txt", "tempab", "somedir/xtemp", "a/b/c/temp", "comment", "# comment"],
          excluded=["somedir/temporary.txt", "somedir/temp", "somedir/temp/inside", "somedir/subdir/temporary.txt",
                    "tempa", "tempb", "tempa/below"])


@pytest.mark.parametrize("rule", ["/foo/bar/", "/foo/bar", "foo/bar/", "foo/bar", "./foo/bar", "foo//bar",
                                  "foo/./bar", "foo/baz/../bar", "  foo/bar  "])
def test_leading_and_trailing_slashes_and_dots_change_nothing(rule: str) -> None:
    check(rule, included=["foo", "bar", "x/foo/bar", "foo/barx", "foo/baz"],
          excluded=["foo/bar", "foo/bar/file", "foo/bar/a/b"])


def test_double_star_matches_any_number_of_directories() -> None:
    check("**/*.go", included=["go", "a.gox", "a/b.c"], excluded=["main.go", "cmd/main.go", "a/b/c/d.go"])
    check("a/**/b", included=["b", "x/a/b", "a/xb"], excluded=["a/b", "a/x/b", "a/x/y/b", "a/b/below"])
    check("a/**", included=["a", "b/a/c"], excluded=["a/x", "a/x/y"])
    check("**", included=[], excluded=["a", "a/b"])


def test_an_exception_re_includes() -> None:
    check("*.md\n!README.md\n", included=["README.md", "docs/guide.md", "main.c"],
          excluded=["CHANGES.md", "README-secret.md"])


def test_the_last_matching_line_decides() -> None:
    check("*.md\n!README*.md\nREADME-secret.md\n", included=["README.md", "README-x.md"],
          excluded=["README-secret.md", "other.md"])
    check("*.md\nREADME-secret.md\n!README*.md\n", included=["README.md", "README-secret.md"],
          excluded=["other.md"])


def test_a_directory_excluded_takes_its_contents_unless_an_exception_says_otherwise() -> None:
    check("node_modules\n", included=["node_modules_x", "src/node_modules2"],
          excluded=["node_modules", "node_modules/a", "node_modules/a/b/c.js"])
    check("build\n!build/keep.txt\n", included=["build/keep.txt"], excluded=["build", "build/other", "build/sub/x"])
    check("*\n!src\n", included=["src", "src/a.py", "src/deep/b.py"], excluded=["README", "docs/x"])


def test_dockerfile_and_dockerignore_can_be_excluded_yet_are_still_read(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("Dockerfile\n.dockerignore\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app").write_text("x")
    rules = load(tmp_path)
    assert rules.excluded("Dockerfile") and rules.excluded(".dockerignore")
    assert list(walk(tmp_path, rules)) == ["app"]
    assert (tmp_path / "Dockerfile").read_text() == "FROM scratch\n", "the builder reads it all the same"


# --- docker's line rules -------------------------------------------------------------------------

@pytest.mark.parametrize("text, patterns", [
    ("# comment\n#/this/is/a/comment\n\n   \n", []),
    (" # not a comment\n", ["# not a comment"]),       # only column 1 starts a comment
    ("\ufeff*.o\r\n!keep.o\r\n", ["*.o", "!keep.o"]),
    ("!  spaced\n", ["!spaced"]),
    ("/\n.\n..\n", ["/", ".", ".."]),
])
def test_lines(text: str, patterns: list[str]) -> None:
    assert [("!" if p.exception else "") + p.text for p in read_patterns(text)] == patterns


def test_dot_and_slash_patterns_exclude_nothing() -> None:
    check(".\n/\n", included=["a", ".hidden", "a/b"], excluded=[])


@pytest.mark.parametrize("rules, included, excluded", [
    ("file[0-9].txt", ["filex.txt", "file10.txt"], ["file0.txt", "file9.txt"]),
    ("file[^0-9].txt", ["file0.txt"], ["filex.txt"]),
    ("file[!x].txt", ["filey.txt"], ["file!.txt", "filex.txt"]),   # ! is a member; Go negates with ^
    ("file[a\\]].txt", ["fileb.txt"], ["filea.txt", "file].txt"]),
    ("\\*.txt", ["a.txt"], ["*.txt"]),
    ("a?c", ["ac", "a/c", "abbc"], ["abc"]),
    ("*", [], ["a", ".hidden", "a/b"]),
    ("*.o", ["a/b.o"], ["b.o"]),
    ("a*/b", ["a/c/b"], ["a/b", "abc/b"]),
    ("$x(y)+{z}|^", [], ["$x(y)+{z}|^"]),                   # regex characters are literal
])
def test_glob_syntax(rules: str, included: list[str], excluded: list[str]) -> None:
    check(rules, included, excluded)


@pytest.mark.parametrize("text, says", [
    ("!\n", 'illegal exclusion pattern: "!"'),
    ("a\n!   \n", 'illegal exclusion pattern: "!"'),
    ("[\n", "unterminated ["),
    ("a[b\n", "unterminated ["),
    ("[]\n", "bad character class"),
    ("[a-]\n", "bad character class"),
    ("[z-a]\n", "bad range z-a"),
    ("ok\nbad\\\n", "trailing \\"),
])
def test_bad_patterns_are_refused_with_their_line(text: str, says: str) -> None:
    with pytest.raises(IgnoreError) as e:
        read_patterns(text)
    assert says in str(e.value)
    assert f".dockerignore:{text.count(chr(10))}:" in str(e.value)
    assert isinstance(e.value, RootlessError)


@pytest.mark.parametrize("path", ["a/b", "./a/b", "/a/b", "a/b/", "a//b", "a/./b"])
def test_paths_are_cleaned_before_matching(path: str) -> None:
    assert matcher("a/b").excluded(path)
    assert matcher("a/b").excluded(path, is_dir=True)


def test_the_root_and_an_empty_matcher_exclude_nothing() -> None:
    assert not matcher("*").excluded(".") and not matcher("*").excluded("")
    assert not Matcher().excluded("anything/at/all")


def test_a_matcher_is_the_excluded_predicate() -> None:
    m = matcher("*.log")
    assert m("a.log") and not m("a.txt")


# --- load --------------------------------------------------------------------------------------

def test_load_reads_the_contexts_dockerignore_or_none(tmp_path: Path) -> None:
    assert load(tmp_path).patterns == ()
    (tmp_path / ".dockerignore").write_text("*.log\n")
    assert load(tmp_path).excluded("x.log")


def test_a_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("*.log\n")
    (tmp_path / "docker").mkdir()
    dockerfile = tmp_path / "docker" / "build.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    (tmp_path / "docker" / "build.Dockerfile.dockerignore").write_text("*.tmp\n")
    rules = load(tmp_path, dockerfile)
    assert rules.excluded("a.tmp") and not rules.excluded("a.log")
    assert load(tmp_path, tmp_path / "docker" / "other.Dockerfile").excluded("a.log")


def test_load_names_the_file_with_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("ok\n[oops\n")
    with pytest.raises(IgnoreError, match=r"\.dockerignore:2: syntax error in pattern '\[oops'"):
        load(tmp_path)


# --- walk --------------------------------------------------------------------------------------

def tree(root: Path, *paths: str) -> Path:
    for p in paths:
        target = root / p
        if p.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(p)
    return root


def test_walk_lists_what_is_left_in_parents_first_in_order(tmp_path: Path) -> None:
    tree(tmp_path, "b.txt", "a/z", "a/y/x", "c.log", "empty/", "node_modules/m/index.js")
    rules = matcher("*.log\nnode_modules\n")
    assert list(walk(tmp_path, rules)) == ["a", "a/y", "a/y/x", "a/z", "b.txt", "empty"]
    assert list(walk(tmp_path, Matcher())) == [
        "a", "a/y", "a/y/x", "a/z", "b.txt", "c.log", "empty", "node_modules", "node_modules/m",
        "node_modules/m/index.js"]


def test_walk_enters_an_excluded_directory_for_an_exception_and_lists_it_only_if_one_matches(tmp_path: Path) -> None:
    tree(tmp_path, "build/keep.txt", "build/other", "build/sub/x", "docs/a.md")
    assert list(walk(tmp_path, matcher("build\n!build/keep.txt\n"))) == ["build", "build/keep.txt", "docs",
                                                                         "docs/a.md"]
    assert list(walk(tmp_path, matcher("build\n!build/nothing-here\n"))) == ["docs", "docs/a.md"]


def test_walk_honours_wildcard_exceptions_deep_in_excluded_directories(tmp_path: Path) -> None:
    # docker's legacy walker only entered an excluded directory for an exception with that
    # directory as a literal prefix, and dropped these (docker/cli#2919); the matcher says they
    # are in, so the walk lists them
    tree(tmp_path, "top.py", "sub/x.py", "sub/deeper/y.py", "sub/notes.txt")
    assert list(walk(tmp_path, matcher("*\n!**/*.py\n"))) == ["sub", "sub/deeper", "sub/deeper/y.py", "sub/x.py",
                                                              "top.py"]


def test_walk_does_not_enter_what_no_exception_can_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path, "node_modules/a/b/c.js", "vendor/x/keep.go", "src/main.go", "README.md")
    listed: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: str) -> object:
        listed.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    found = list(walk(tmp_path, matcher("node_modules\nvendor\n!vendor/*/keep.go\n*.md\n")))
    assert found == ["src", "src/main.go", "vendor", "vendor/x", "vendor/x/keep.go"]
    assert sorted(listed) == [".", "src", "vendor", "vendor/x"], "node_modules is never read"


def test_walk_lists_symlinks_without_following_them(tmp_path: Path) -> None:
    tree(tmp_path, "real/file")
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to("nowhere")
    assert list(walk(tmp_path, Matcher())) == ["dangling", "link", "real", "real/file"]


@pytest.mark.parametrize("directory, exceptions, reaches", [
    ("build", ["build/keep.txt"], True),
    ("build", ["build"], False),                    # matches the directory itself, not only below
    ("a/b", ["a"], False),                          # a parent: cannot undo what excluded a/b
    ("a", ["a/b/c"], True),
    ("a", ["b/c"], False),
    ("a", ["*/keep"], True),
    ("node_modules", ["*.md"], False),              # *.md is a top-level name
    ("node_modules", ["**/*.md"], True),
    ("x/y", ["x/**/z"], True),
    ("x/y", ["q/**/z"], False),
    ("a", ["a[^x]b"], True),                         # [^x] could match the / itself: assume it reaches
])
def test_which_excluded_directories_an_exception_may_reach(directory: str, exceptions: list[str],
                                                           reaches: bool) -> None:
    rules = matcher("".join(f"{directory}\n!{e}\n" for e in exceptions))
    assert rules.may_reinclude_below(directory) is reaches
    assert matcher(directory).may_reinclude_below(directory) is False
