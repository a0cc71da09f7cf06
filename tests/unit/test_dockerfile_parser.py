"""The Dockerfile parser reads what docker reads, refuses what docker refuses (naming the line),
and expands ``$VARIABLES`` where, and as, docker does.  Examples are the Dockerfile reference's."""

from __future__ import annotations

import pytest

from rootless.build import parser as p
from rootless.build.parser import (
    EXPANDS, Add, Arg, Cmd, Copy, DockerfileError, Entrypoint, Env, Expose, From, Healthcheck, Heredoc,
    Instruction, Label, Maintainer, Onbuild, Run, Shell, Stopsignal, User, Volume, Workdir, expand, expand_words,
    parse, parse_instruction,
)
from rootless.errors import RootlessError


def instructions(text: str) -> list[Instruction]:
    return parse(text).instructions


def only(text: str) -> Instruction:
    """The one instruction after ``FROM scratch``."""
    found = instructions("FROM scratch\n" + text)
    assert len(found) == 2, found
    return found[1]


def refused(text: str) -> DockerfileError:
    with pytest.raises(DockerfileError) as e:
        parse(text)
    return e.value


# --- parser directives ---------------------------------------------------------------------

WINDOWS_BACKSLASH = "FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n"
WINDOWS_BACKTICK = "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n"


def test_escape_backslash_joins_the_reference_windows_example_into_one_copy() -> None:
    df = parse(WINDOWS_BACKSLASH)
    assert df.escape == "\\"
    copy = df.stages[0].instructions
    assert len(copy) == 1 and isinstance(copy[0], Copy)
    assert copy[0].original == "COPY testfile.txt c:\\RUN dir c:"
    # what docker then fails on: GetFileAttributesEx c:RUN
    assert copy[0].expand({}).sources == ("testfile.txt", "c:RUN", "dir")


def test_escape_backtick_makes_the_reference_windows_example_work() -> None:
    df = parse(WINDOWS_BACKTICK)
    assert df.escape == "`"
    copy, run = df.stages[0].instructions
    assert isinstance(copy, Copy) and copy.expand({}).dest == "c:\\"
    assert isinstance(run, Run) and run.command == ("dir c:\\",)


@pytest.mark.parametrize("line", ["#escape=`", "# escape =`", "#\tescape= `", "# escape = `", "#\t  eScApE=`",
                                  "  # escape=`"])
def test_directive_spellings_are_all_the_same_directive(line: str) -> None:
    assert parse(f"{line}\nFROM scratch\n").escape == "`"


@pytest.mark.parametrize("text", [
    "FROM scratch\n# escape=`\n",                           # after an instruction: a comment
    "# About my dockerfile\n# escape=`\nFROM scratch\n",    # after a comment
    "# unknowndirective=value\n# escape=`\nFROM scratch\n",  # after an unknown directive
    "\n# escape=`\nFROM scratch\n",                         # after a blank line
])
def test_directives_anywhere_but_the_top_are_comments(text: str) -> None:
    assert parse(text).escape == "\\"


def test_a_directive_cannot_continue_its_line() -> None:
    e = refused("# direc \\\ntive=`\nFROM scratch\n")
    assert (e.line, e.reason) == (2, "unknown instruction: TIVE=`")


def test_syntax_and_check_are_recorded_and_otherwise_ignored() -> None:
    df = parse("# syntax=docker/dockerfile:1\n# check=skip=JSONArgsRecommended;error=true\nFROM scratch\n")
    assert (df.syntax, df.check) == ("docker/dockerfile:1", "skip=JSONArgsRecommended;error=true")
    assert parse("# unknowndirective=value\n# syntax=value\nFROM scratch\n").syntax is None


@pytest.mark.parametrize("text, line, reason", [
    ("# escape=`\n# escape=\\\nFROM scratch\n", 2, "only one escape parser directive can be used"),
    ("# syntax=a\n# SYNTAX=b\nFROM scratch\n", 2, "only one syntax parser directive can be used"),
    ("# escape=x\nFROM scratch\n", 1, "invalid escape token 'x' does not match ` or \\"),
])
def test_bad_directives_are_refused(text: str, line: int, reason: str) -> None:
    e = refused(text)
    assert (e.line, e.reason) == (line, reason)


# --- lines: comments, continuations, blanks, case ---------------------------------------------

@pytest.mark.parametrize("text, originals", [
    ("FROM x\nRUN echo hello \\\n# comment\nworld\n", ["FROM x", "RUN echo hello world"]),
    ("FROM x\nRUN echo hello \\\nworld\n", ["FROM x", "RUN echo hello world"]),
    ("FROM x\n        # this is a comment-line\n    RUN echo hello\nRUN echo world\n",
     ["FROM x", "RUN echo hello", "RUN echo world"]),
    ('FROM x\nRUN echo "\\\n     hello\\\n     world"\n', ["FROM x", 'RUN echo "     hello     world"']),
    ("FROM x\nRUN echo 'we are running some # of cool things'\n",
     ["FROM x", "RUN echo 'we are running some # of cool things'"]),
    ("FROM x\n# a comment \\\nRUN true\n", ["FROM x", "RUN true"]),         # comments do not continue
    ("FROM x\nRUN a \\   \n  b\n", ["FROM x", "RUN a   b"]),                 # blanks after the escape
    ("FROM x\nRUN a \\\n\n   \nb\n", ["FROM x", "RUN a b"]),                 # empty continuation lines
    ("FROM x\nRUN a \\\n  # indented comment\nb\n", ["FROM x", "RUN a b"]),
    ("FROM x\nRUN a \\", ["FROM x", "RUN a "]),                               # continued into the end
    ("\ufeffFROM x\r\nRUN a\r\n\r\n", ["FROM x", "RUN a"]),                   # BOM, CRLF
    ("from x\nrun a\nCoPy a b\n", ["from x", "run a", "CoPy a b"]),
])
def test_logical_lines(text: str, originals: list[str]) -> None:
    assert [i.original for i in instructions(text)] == originals


def test_keywords_are_case_insensitive() -> None:
    assert [type(i) for i in instructions("from x\nrun a\nCoPy a b\nEnTrYpOiNt x\n")] == [From, Run, Copy, Entrypoint]


def test_each_instruction_keeps_its_first_and_last_line() -> None:
    text = "# syntax=x\n\nFROM x\n\nRUN a \\\n  b \\\n# c\n  d\nRUN <<EOF\nbody\nEOF\nUSER u\n"
    assert [(i.keyword, i.line, i.end_line) for i in instructions(text)] == [
        ("FROM", 3, 3), ("RUN", 5, 8), ("RUN", 9, 11), ("USER", 12, 12)]


def test_an_empty_continuation_line_warns_as_docker_does() -> None:
    df = parse("FROM x\nRUN a \\\n\nb\n")
    assert len(df.warnings) == 1 and "empty continuation line" in df.warnings[0]
    assert parse("FROM x\nRUN a \\\nb\n").warnings == ()


# --- errors name the file and the line, in docker's words ------------------------------------

def test_an_unknown_instruction_names_its_line() -> None:
    e = refused("FROM x\n\n# c\nRUN a \\\n  b\n\nFOO bar\n")
    assert str(e) == "Dockerfile:7: unknown instruction: FOO"
    assert (e.file, e.line, e.reason) == ("Dockerfile", 7, "unknown instruction: FOO")
    assert isinstance(e, RootlessError) and e.exit_code == 125


def test_errors_use_the_name_given_and_suggest_a_keyword() -> None:
    with pytest.raises(DockerfileError) as e:
        parse("FORM busybox\n", name="app/Dockerfile.dev")
    assert str(e.value).startswith("app/Dockerfile.dev:1: unknown instruction: FORM")
    assert e.value.hint == "did you mean FROM?"


@pytest.mark.parametrize("text, line, reason", [
    ("", 1, "file with no instructions"),
    ("# only a comment\n\n", 2, "file with no instructions"),
    ("RUN a\n", 1, "no build stage in current context"),
    ("ARG A\n", 1, "dockerfile contains no stages to build"),
    ("FROM x\nFROM y AS b\nFROM z AS B\n", 3, "duplicate stage name 'b'"),
    ("FROM\n", 1, "FROM requires at least one argument"),
    ("FROM x y\n", 1, "FROM requires either one or three arguments"),
    ("FROM x AS\n", 1, "FROM requires either one or three arguments"),
    ("FROM x IS y\n", 1, "FROM requires either one or three arguments"),
    ("FROM x AS 1st\n", 1, "invalid name for build stage: '1st', name can't start with a number or contain symbols"),
    ("FROM x AS a/b\n", 1, "invalid name for build stage: 'a/b', name can't start with a number or contain symbols"),
    ("FROM --platfrom=linux/amd64 x\n", 1, "unknown flag: platfrom"),
    ("FROM x\nRUN --mount=type=cache,target=/x --network=none --network=host make\n", 2,
     "Duplicate flag specified: network"),
    ("FROM x\nCOPY --from a b\n", 2, "missing a value on flag: from"),
    ("FROM x\nCOPY --link=maybe a b\n", 2, "expecting boolean value for flag link, not: maybe"),
    ("FROM x\nCOPY --from=a b\n", 2, "COPY requires at least two arguments, but only one was provided. "
                                    "Destination could not be determined."),
    ("FROM x\nADD\n", 2, "ADD requires at least two arguments"),
    ("FROM x\nCOPY a <<EOF\nbody\nEOF\n", 2, "COPY cannot take a heredoc as its destination"),
    ("FROM x\nENV --x=1 A=1\n", 2, "unknown flag: x"),
    ("FROM x\nENV\n", 2, "ENV requires at least one argument"),
    ("FROM x\nENV A\n", 2, "ENV must have two arguments"),
    ("FROM x\nLABEL A=1 B\n", 2, "Syntax error - can't find = in 'B'. Must be of the form: name=value"),
    ("FROM x\nENV =1\n", 2, "ENV names can not be blank"),
    ("FROM x\nARG =1\n", 2, "ARG names can not be blank"),
    ("FROM x\nRUN\n", 2, "RUN requires at least one argument"),
    ("FROM x\nRUN []\n", 2, "RUN requires at least one argument"),
    ("FROM x\nCMD [1, 2]\n", 2, "when using JSON array syntax, arrays must be comprised of strings only"),
    ("FROM x\nVOLUME [\"/a\", \"\"]\n", 2, "VOLUME specified can not be an empty string"),
    ("FROM x\nSHELL /bin/bash -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ("FROM x\nSHELL []\n", 2, "SHELL requires at least one argument"),
    ("FROM x\nUSER\n", 2, "USER requires at least one argument"),
    ("FROM x\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    ("FROM x\nHEALTHCHECK CURL x\n", 2, 'Unknown type "CURL" in HEALTHCHECK (try CMD)'),
    ("FROM x\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    ("FROM x\nHEALTHCHECK --interval=5s NONE\n", 2, "unknown flag: interval"),
    ("FROM x\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"),
    ("FROM x\nHEALTHCHECK --retries=-1 CMD true\n", 2, "--retries cannot be negative (-1)"),
    ("FROM x\nHEALTHCHECK --retries=many CMD true\n", 2, "invalid --retries value 'many': not a number"),
    ("FROM x\nHEALTHCHECK --interval=10us CMD true\n", 2, 'Interval "interval" cannot be less than 1ms'),
    ("FROM x\nHEALTHCHECK --timeout=5 CMD true\n", 2, 'time: invalid duration "5"'),
    ("FROM x\nHEALTHCHECK --timeout=1x CMD true\n", 2, 'time: invalid duration "1x"'),
    ("FROM x\nONBUILD ONBUILD RUN a\n", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM x\nONBUILD FROM y\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM x\nonbuild maintainer me\n", 2, "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("FROM x\nONBUILD FOO\n", 2, "unknown instruction: FOO"),
    ("FROM x\nONBUILD COPY --form=a b c\n", 2, "unknown flag: form"),
    ("FROM x\n\nRUN <<EOF\nbody\n", 3, "unterminated heredoc"),
    ("FROM x\nRUN <<-EOF\n  EOF\n", 2, "unterminated heredoc"),     # <<- strips tabs, not spaces
])
def test_refusals(text: str, line: int, reason: str) -> None:
    e = refused(text)
    assert (e.line, e.reason) == (line, reason)
    assert str(e).startswith(f"Dockerfile:{line}: {reason}")


def test_a_refusal_says_what_to_do_where_docker_would_leave_you_guessing() -> None:
    assert refused("FROM x\nCOPY --form=a b c\n").hint == "COPY takes --from, --chown, --chmod, --link, --parents, --exclude"
    assert refused("FROM x\nENV A\n").hint == "A needs a value: ENV A=VALUE"
    assert refused("FROM x\nRUN <<EOF\n").hint == "end it with a line holding only EOF"


# --- exec and shell form -----------------------------------------------------------------------

@pytest.mark.parametrize("line, cls, command, exec_form", [
    ('RUN ["/bin/bash", "-c", "echo hello"]', Run, ("/bin/bash", "-c", "echo hello"), True),
    ('RUN [ "echo", "$HOME" ]', Run, ("echo", "$HOME"), True),
    ("RUN source $HOME/.bashrc && echo $HOME", Run, ("source $HOME/.bashrc && echo $HOME",), False),
    ('RUN ["c:\\windows\\system32\\tasklist.exe"]', Run, ('["c:\\windows\\system32\\tasklist.exe"]',), False),
    ('RUN ["c:\\\\windows\\\\system32\\\\tasklist.exe"]', Run, ("c:\\windows\\system32\\tasklist.exe",), True),
    ("RUN [not json", Run, ("[not json",), False),
    ('RUN ["a"] trailing', Run, ('["a"] trailing',), False),
    ("RUN [NaN]", Run, ("[NaN]",), False),
    ('CMD ["-c"]', Cmd, ("-c",), True),
    ("CMD []", Cmd, (), True),
    ("CMD echo $HOME", Cmd, ("echo $HOME",), False),
    ('ENTRYPOINT ["top", "-b"]', Entrypoint, ("top", "-b"), True),
    ("ENTRYPOINT exec top -b", Entrypoint, ("exec top -b",), False),
    ('SHELL ["powershell", "-command"]', Shell, ("powershell", "-command"), True),
])
def test_exec_and_shell_form(line: str, cls: type, command: tuple[str, ...], exec_form: bool) -> None:
    i = only(line)
    assert isinstance(i, cls)
    assert i.command == command  # type: ignore[attr-defined]
    if not isinstance(i, Shell):
        assert i.exec_form == exec_form  # type: ignore[attr-defined]


def test_argv_gives_the_shell_form_to_the_shell() -> None:
    assert only("CMD echo hi").argv() == ["/bin/sh", "-c", "echo hi"]  # type: ignore[attr-defined]
    assert only("RUN echo hi").argv(["bash", "-c"]) == ["bash", "-c", "echo hi"]  # type: ignore[attr-defined]
    assert only('ENTRYPOINT ["top", "-b"]').argv(["bash", "-c"]) == ["top", "-b"]  # type: ignore[attr-defined]


# --- flags -------------------------------------------------------------------------------------

def test_copy_and_add_flags() -> None:
    c = only("COPY --from=build --chown=55:mygroup --chmod=644 --link --parents --exclude=*.txt --exclude=*.md "
             "files* /somedir/")
    assert isinstance(c, Copy)
    assert (c.from_, c.chown, c.chmod, c.link, c.parents, c.exclude, c.sources, c.dest) == (
        "build", "55:mygroup", "644", True, True, ("*.txt", "*.md"), ("files*",), "/somedir/")
    a = only("ADD --checksum=sha256:24454f83 --keep-git-dir=true --unpack=false --link=false "
             "https://example.com/a.tar.gz /")
    assert isinstance(a, Add)
    assert (a.checksum, a.keep_git_dir, a.unpack, a.link) == ("sha256:24454f83", True, False, False)
    assert only("ADD a b").unpack is None  # type: ignore[attr-defined]


def test_run_flags_are_recorded_for_the_builder_to_honour_or_refuse() -> None:
    r = only("RUN --mount=type=cache,target=/root/.cache/go-build --mount=type=secret,id=aws "
             "--network=none --security=insecure --device=vendor1.com/device=foo go build")
    assert isinstance(r, Run)
    assert r.mounts == ("type=cache,target=/root/.cache/go-build", "type=secret,id=aws")
    assert (r.network, r.security, r.devices, r.command) == ("none", "insecure", ("vendor1.com/device=foo",),
                                                            ("go build",))


@pytest.mark.parametrize("line, flags_seen, rest", [
    ('COPY --chown="my user" a b', "my user", ("a",)),       # quotes in a flag's value
    ("COPY --chown=a\\ b a b", "a b", ("a",)),                 # an escaped blank
    ("COPY -- --chown=x b", None, ("--chown=x",)),             # -- ends the flags
    ("COPY a --chown=x b", None, ("a", "--chown=x")),          # flags only lead
])
def test_flag_words_are_read_like_docker(line: str, flags_seen: str | None, rest: tuple[str, ...]) -> None:
    c = only(line)
    assert isinstance(c, Copy) and (c.chown, c.sources) == (flags_seen, rest)


def test_from_takes_a_platform_and_a_stage_name() -> None:
    f = parse("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\n").stages[0].base
    assert (f.image, f.platform, f.name) == ("golang:1.22", "$BUILDPLATFORM", "build")
    assert f.expand({"BUILDPLATFORM": "linux/amd64"}).platform == "linux/amd64"


# --- ENV, LABEL, ARG ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, pairs", [
    ('ENV MY_NAME="John Doe"', [("MY_NAME", "John Doe")]),
    ("ENV MY_DOG=Rex\\ The\\ Dog", [("MY_DOG", "Rex The Dog")]),
    ("ENV MY_CAT=fluffy", [("MY_CAT", "fluffy")]),
    ('ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy',
     [("MY_NAME", "John Doe"), ("MY_DOG", "Rex The Dog"), ("MY_CAT", "fluffy")]),
    ("ENV MY_VAR my-value", [("MY_VAR", "my-value")]),
    ("ENV ONE TWO= THREE=world", [("ONE", "TWO= THREE=world")]),
    ("ENV EMPTY= QUOTED=\"\" SINGLE='$HOME'", [("EMPTY", ""), ("QUOTED", ""), ("SINGLE", "$HOME")]),
    ("ENV A='it''s'", [("A", "its")]),
    ('LABEL "com.example.vendor"="ACME Incorporated"', [("com.example.vendor", "ACME Incorporated")]),
    ('LABEL com.example.label-with-value="foo"', [("com.example.label-with-value", "foo")]),
    ('LABEL version="1.0"', [("version", "1.0")]),
    ('LABEL description="This text illustrates \\\nthat label-values can span multiple lines."',
     [("description", "This text illustrates that label-values can span multiple lines.")]),
    ('LABEL multi.label1="value1" \\\n      multi.label2="value2" \\\n      other="value3"',
     [("multi.label1", "value1"), ("multi.label2", "value2"), ("other", "value3")]),
    ('LABEL example="foo-$ENV_VAR" literal=\'foo-$ENV_VAR\'', [("example", "foo-bar"), ("literal", "foo-$ENV_VAR")]),
])
def test_env_and_label(text: str, pairs: list[tuple[str, str]]) -> None:
    i = only(text)
    assert isinstance(i, (Env, Label))
    assert list(i.expand({"ENV_VAR": "bar", "HOME": "/root"}).pairs) == pairs


def test_every_pair_of_an_env_sees_the_env_from_before_the_instruction() -> None:
    first, second, third = parse("FROM x\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n").stages[0].instructions
    env: dict[str, str] = {}
    for instr in (first, second, third):
        assert isinstance(instr, Env)
        env.update(instr.expand(env).pairs)
    assert env == {"abc": "bye", "def": "hello", "ghi": "bye"}


def test_arg_names_and_defaults() -> None:
    a = only('ARG user1=someuser buildno=1 plain quoted="a b" tricky=${user1:-x}')
    assert isinstance(a, Arg)
    assert a.args == (("user1", "someuser"), ("buildno", "1"), ("plain", None), ("quoted", '"a b"'),
                      ("tricky", "${user1:-x}"))
    assert a.expand({}).args[3:] == (("quoted", "a b"), ("tricky", "x"))


def test_global_args_come_before_the_first_from_and_only_from_expands_with_them() -> None:
    df = parse("ARG  CODE_VERSION=latest\nFROM base:${CODE_VERSION}\nCMD  /code/run-app\n\n"
               "FROM extras:${CODE_VERSION}\nCMD  /code/run-extras\n")
    assert [a.args for a in df.args] == [(("CODE_VERSION", "latest"),)]
    assert [s.base.expand({"CODE_VERSION": "latest"}).image for s in df.stages] == ["base:latest", "extras:latest"]
    assert [s.instructions[0].original for s in df.stages] == ["CMD  /code/run-app", "CMD  /code/run-extras"]


def test_stages_are_found_by_name_or_index() -> None:
    df = parse("FROM a AS Build\nRUN x\nFROM build AS final\n")
    assert df.stage("BUILD") is df.stages[0] and df.stage(1) is df.stages[1] and df.stage(-1) is df.stages[1]
    assert df.stage("nope") is None and df.stage(2) is None
    assert [s.name for s in df.stages] == ["build", "final"]


# --- the other instructions ------------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("EXPOSE 80 443/tcp 53/udp", Expose(ports=("80", "443/tcp", "53/udp"), original="", line=0, end_line=0)),
    ('VOLUME ["/var/www", "/var/log/apache2", "/etc/apache2"]',
     Volume(paths=("/var/www", "/var/log/apache2", "/etc/apache2"), exec_form=True, original="", line=0, end_line=0)),
    ("VOLUME /var/log /var/db", Volume(paths=("/var/log", "/var/db"), original="", line=0, end_line=0)),
    ("USER patrick:staff", User(user="patrick:staff", original="", line=0, end_line=0)),
    ("WORKDIR /path/to/workdir", Workdir(path="/path/to/workdir", original="", line=0, end_line=0)),
    ("STOPSIGNAL SIGKILL", Stopsignal(signal="SIGKILL", original="", line=0, end_line=0)),
    ("MAINTAINER Sven Dowideit <sven@home.org.au>",
     Maintainer(name="Sven Dowideit <sven@home.org.au>", original="", line=0, end_line=0)),
])
def test_simple_instructions(line: str, expected: Instruction) -> None:
    got = only(line)
    assert got == dataclass_like(expected, got)


def dataclass_like(expected: Instruction, got: Instruction) -> Instruction:
    """EXPECTED with GOT's location, to compare the rest."""
    import dataclasses
    return dataclasses.replace(expected, original=got.original, line=got.line, end_line=got.end_line)


@pytest.mark.parametrize("line, test, interval, timeout, start_period, start_interval, retries", [
    ("HEALTHCHECK --interval=5m --timeout=3s \\\n  CMD curl -f http://localhost/ || exit 1",
     ("CMD-SHELL", "curl -f http://localhost/ || exit 1"), 300 * 10**9, 3 * 10**9, 0, 0, 0),
    ('HEALTHCHECK --start-period=1m30s --start-interval=500ms --retries=5 CMD ["/bin/check", "-q"]',
     ("CMD", "/bin/check", "-q"), 0, 0, 90 * 10**9, 500 * 10**6, 5),
    ("HEALTHCHECK --interval=1.5h --timeout=0 cmd /bin/check-running", ("CMD-SHELL", "/bin/check-running"),
     5400 * 10**9, 0, 0, 0, 0),
    ("HEALTHCHECK none", ("NONE",), 0, 0, 0, 0, 0),
])
def test_healthcheck_becomes_docker_config(line: str, test: tuple[str, ...], interval: int, timeout: int,
                                           start_period: int, start_interval: int, retries: int) -> None:
    h = only(line)
    assert isinstance(h, Healthcheck)
    assert (h.test, h.interval, h.timeout, h.start_period, h.start_interval, h.retries) == (
        test, interval, timeout, start_period, start_interval, retries)


def test_onbuild_keeps_the_trigger_raw_and_checks_it() -> None:
    o = only("ONBUILD ADD . /app/src")
    assert isinstance(o, Onbuild) and o.trigger == "ADD . /app/src" and isinstance(o.instruction, Add)
    o = only("onbuild   RUN /usr/local/bin/python-build --dir $SRC")
    assert isinstance(o, Onbuild) and o.trigger == "RUN /usr/local/bin/python-build --dir $SRC"
    assert o.expand({"SRC": "x"}) is o, "a trigger is stored raw, expanded when it runs downstream"
    o = only("ONBUILD COPY --from=build /usr/bin/app /app")
    assert isinstance(o, Onbuild) and isinstance(o.instruction, Copy) and o.instruction.from_ == "build"


# --- heredocs ----------------------------------------------------------------------------------

def test_run_heredoc_as_a_script_or_as_a_programs_stdin() -> None:
    df = parse("FROM debian\nRUN <<EOT bash\n  set -ex\n  apt-get update\n  apt-get install -y vim\nEOT\n"
               "RUN <<EOT\n  mkdir -p foo/bar\nEOT\n"
               "RUN python3 <<EOF\nprint('hi')\nEOF\n")
    as_stdin, script, python = df.stages[0].instructions
    assert isinstance(as_stdin, Run) and isinstance(script, Run) and isinstance(python, Run)
    assert as_stdin.heredocs == (Heredoc("EOT", "  set -ex\n  apt-get update\n  apt-get install -y vim\n"),)
    assert as_stdin.script() is None
    assert as_stdin.argv() == ["/bin/sh", "-c",
                               "<<EOT bash\n  set -ex\n  apt-get update\n  apt-get install -y vim\nEOT"]
    assert script.script() == Heredoc("EOT", "  mkdir -p foo/bar\n")
    assert script.argv() == ["/bin/sh", "-c", "  mkdir -p foo/bar\n"]
    assert python.shell_command() == "python3 <<EOF\nprint('hi')\nEOF"
    assert [i.line for i in df.instructions] == [1, 2, 7, 10]


def test_run_heredoc_with_a_shebang_is_a_script_the_builder_runs_as_a_file() -> None:
    r = only('RUN <<EOT\n#!/usr/bin/env python\nprint("hello world")\nEOT')
    assert isinstance(r, Run)
    script = r.script()
    assert script is not None and script.content.startswith("#!/usr/bin/env python\n")


def test_several_heredocs_on_one_line() -> None:
    r = only("RUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2")
    assert isinstance(r, Run)
    assert r.heredocs == (Heredoc("FILE1", "I am\nfirst\n"), Heredoc("FILE2", "I am\nsecond\n"))
    assert r.shell_command() == "<<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2"


def test_copy_heredoc_is_an_inline_file_expanded_unless_its_delimiter_is_quoted() -> None:
    df = parse('FROM alpine\nARG FOO=bar\nCOPY <<EOF greeting.txt\nhello world\nEOF\n'
               'COPY <<-EOT /script.sh\n\t\techo "hello ${FOO}"\n\tEOT\n'
               'COPY <<-"EOT" /quoted.sh\n  echo "hello ${FOO}"\nEOT\n'
               "COPY <<E'O'F /partly.sh\n$FOO\nEOF\n")
    greeting, script, quoted, partly = df.stages[0].instructions[1:]
    assert isinstance(greeting, Copy) and greeting.sources == () and greeting.dest == "greeting.txt"
    assert greeting.heredocs == (Heredoc("EOF", "hello world\n"),)
    assert isinstance(script, Copy) and script.heredocs == (Heredoc("EOT", 'echo "hello ${FOO}"\n', chomp=True),)
    assert script.expand({"FOO": "bar"}).heredocs[0].content == 'echo "hello bar"\n', "quotes stay: it is a script"
    assert isinstance(quoted, Copy) and not quoted.heredocs[0].expand
    assert quoted.expand({"FOO": "bar"}).heredocs[0].content == '  echo "hello ${FOO}"\n'
    assert isinstance(partly, Copy) and partly.heredocs == (Heredoc("EOF", "$FOO\n", expand=False),)


def test_copy_mixes_heredocs_and_paths() -> None:
    c = only("COPY --chmod=755 a.txt <<one <<two /dest/\n1\none\n2\ntwo")
    assert isinstance(c, Copy)
    assert (c.sources, c.dest, [h.name for h in c.heredocs], c.chmod) == (("a.txt",), "/dest/", ["one", "two"], "755")


@pytest.mark.parametrize("line", [
    'RUN ["cat", "<<EOF"]',        # the exec form has no heredocs
    'RUN echo "<<EOF"',            # quoted
    "RUN echo '<<EOF'",
    "RUN echo x<<EOF",             # not a word of its own
    "RUN cat << EOF",              # docker wants the delimiter attached
    "ENV A=<<EOF",                 # not RUN, COPY or ADD
])
def test_what_opens_no_heredoc(line: str) -> None:
    i = only(line)
    assert getattr(i, "heredocs", ()) == ()


def test_heredoc_bodies_are_taken_verbatim() -> None:
    r = only("RUN <<EOF\n# not a comment \\\n  \n\nFROM not-an-instruction\nEOF")
    assert isinstance(r, Run) and r.heredocs[0].content == "# not a comment \\\n  \n\nFROM not-an-instruction\n"
    r = only("RUN <<EOF\r\nwindows\r\nEOF\r")
    assert isinstance(r, Run) and r.heredocs[0].content == "windows\n"
    r = only("RUN cat <<EOF\nEOF")
    assert isinstance(r, Run) and r.heredocs == (Heredoc("EOF", ""),)


def test_onbuild_heredoc_travels_in_the_trigger() -> None:
    o = only("ONBUILD RUN <<EOF\necho hi\nEOF")
    assert isinstance(o, Onbuild)
    assert o.trigger == "RUN <<EOF\necho hi\nEOF"
    assert isinstance(o.instruction, Run) and o.instruction.heredocs == (Heredoc("EOF", "echo hi\n"),)
    again = parse_instruction(o.trigger)
    assert isinstance(again, Run) and again.heredocs == o.instruction.heredocs


def test_parse_instruction_reads_one_instruction() -> None:
    i = parse_instruction("ENV A=1 \\\n  B=2", line=4, name="--change")
    assert isinstance(i, Env) and i.pairs == (("A", "1"), ("B", "2")) and (i.line, i.end_line) == (4, 5)
    with pytest.raises(DockerfileError, match="expected one instruction, found 2"):
        parse_instruction("ENV A=1\nENV B=2")
    with pytest.raises(DockerfileError, match="--change:1: unknown instruction: BOGUS"):
        parse_instruction("BOGUS x", name="--change")


# --- variable expansion ------------------------------------------------------------------------

ENV = {"FOO": "/bar", "EMPTY": "", "SP": "a  b", "HOME": "/root"}


@pytest.mark.parametrize("word, result", [
    ("$FOO", "/bar"),
    ("${FOO}", "/bar"),
    ("${FOO}_bar", "/bar_bar"),
    ("$FOO_bar", ""),                    # the name runs on
    ("$UNSET", ""),
    ("${UNSET:-word}", "word"), ("${EMPTY:-word}", "word"), ("${FOO:-word}", "/bar"),
    ("${UNSET-word}", "word"), ("${EMPTY-word}", ""), ("${FOO-word}", "/bar"),
    ("${UNSET:+word}", ""), ("${EMPTY:+word}", ""), ("${FOO:+word}", "word"),
    ("${UNSET+word}", ""), ("${EMPTY+word}", "word"), ("${FOO+word}", "word"),
    ("${UNSET:-$FOO/x}", "/bar/x"),       # the word is expanded too
    ('${UNSET:-"a  b"}', "a  b"),
    ("${FOO:?}", "/bar"), ("${EMPTY?}", ""),
    ("\\$FOO", "$FOO"), ("\\${FOO}", "${FOO}"),
    ("'$FOO'", "$FOO"),
    ('"$FOO"', "/bar"), ('"\\$FOO"', "$FOO"), ('"a\\"b"', 'a"b'), ('"a\\b"', "a\\b"), ('"a\\\\b"', "a\\b"),
    ("a\\ b", "a b"), ("a\\", "a"),
    ("$", "$"), ("a$", "a$"), ("$/x", "$/x"), ("$1", ""), ("$$", ""),
    ("  spaced  $SP  ", "  spaced  a  b  "),
    ("it's\"\"", None),                  # an open single quote: refused below
])
def test_expand(word: str, result: str | None) -> None:
    if result is None:
        with pytest.raises(DockerfileError):
            expand(word, ENV)
    else:
        assert expand(word, ENV) == result


@pytest.mark.parametrize("word, escape, result", [
    ("`$FOO", "`", "$FOO"),
    ("c:\\dir", "`", "c:\\dir"),
    ('"a`"b"', "`", 'a"b'),
    ("c:\\dir", "\\", "c:dir"),
])
def test_expand_with_the_escape_directive(word: str, escape: str, result: str) -> None:
    assert expand(word, ENV, escape=escape) == result


@pytest.mark.parametrize("text, words", [
    ("a b  c", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ("a\\ b c", ["a b", "c"]),
    ("$SP c", ["a", "b", "c"]),          # a value splits...
    ('"$SP" c', ["a  b", "c"]),          # ...unless quoted
    ('"" x \'\'', ["x"]),                # empty words go
    ("${UNSET:-8080 8443}", ["8080", "8443"]),
])
def test_expand_words(text: str, words: list[str]) -> None:
    assert expand_words(text, ENV) == words


@pytest.mark.parametrize("word, reason", [
    ('"open', "unexpected end of statement while looking for matching double-quote"),
    ("'open", "unexpected end of statement while looking for matching single-quote"),
    ("${FOO", "syntax error: missing '}'"),
    ("${FOO:-x", "syntax error: missing '}'"),
    ("${}", "syntax error: bad substitution"),
    ("${:-x}", "syntax error: bad substitution"),
    ("${FOO/a/b}", "unsupported modifier (/) in substitution"),
    ("${FOO#/}", "unsupported modifier (#) in substitution"),
    ("${FOO:=x}", "unsupported modifier (:=) in substitution"),
    ("${UNSET?}", "UNSET: is not allowed to be unset"),
    ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
    ("${UNSET:?give it a value}", "UNSET: give it a value"),
])
def test_expansion_errors_in_dockers_words(word: str, reason: str) -> None:
    with pytest.raises(DockerfileError) as e:
        expand(word, ENV)
    assert e.value.reason == f"failed to process {word!r}: {reason}"


def test_an_instruction_that_cannot_expand_names_its_line() -> None:
    w = parse("FROM x\n\nWORKDIR ${DIR\n").stages[0].instructions[0]
    with pytest.raises(DockerfileError) as e:
        w.expand({})
    assert str(e.value).startswith("Dockerfile:3: failed to process '${DIR': syntax error: missing '}'")


def test_the_reference_environment_replacement_example() -> None:
    workdir, add, copy = parse("FROM busybox\nENV FOO=/bar\nWORKDIR ${FOO}\nADD . $FOO\nCOPY \\$FOO /quux\n"
                               ).stages[0].instructions[1:]
    env = {"FOO": "/bar"}
    assert isinstance(workdir, Workdir) and workdir.expand(env).path == "/bar"
    assert isinstance(add, Add) and (add.expand(env).sources, add.expand(env).dest) == ((".",), "/bar")
    assert isinstance(copy, Copy) and (copy.expand(env).sources, copy.expand(env).dest) == (("$FOO",), "/quux")


def test_arg_scope_example_user_falls_back_until_declared() -> None:
    user = only("USER ${username:-some_user}")
    assert user.expand({}) == dataclass_like(User(user="some_user", original="", line=0, end_line=0), user)
    assert isinstance(user, User) and user.expand({"username": "what_user"}).user == "what_user"


def test_which_instructions_expand() -> None:
    assert EXPANDS == {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
                       "WORKDIR"}


@pytest.mark.parametrize("line, field, expanded", [
    ("ADD --chown=$U --chmod=$M --checksum=$C $S $D", "chown,chmod,checksum,sources,dest",
     ("u", "m", "c", ("s",), "d")),
    ("COPY --from=$S --chown=$U --exclude=$X $S $D", "from_,chown,exclude,sources,dest",
     ("s", "u", ("x",), ("s",), "d")),
    ('COPY ["$S", "$D"]', "sources,dest", (("s",), "d")),
    ("ENV $U=$S", "pairs", ((("u", "s"),),)),
    ("EXPOSE $PORTS", "ports", (("80", "443"),)),
    ("LABEL $U=$S", "pairs", ((("u", "s"),),)),
    ("STOPSIGNAL $SIG", "signal", ("SIGTERM",)),
    ("USER $U:$U", "user", ("u:u",)),
    ('VOLUME ["$D"]', "paths", (("d",),)),
    ("VOLUME $D $S", "paths", (("d", "s"),)),
    ("WORKDIR /$D", "path", ("/d",)),
    ("ARG A=$S B", "args", ((("A", "s"), ("B", None)),)),
    ("RUN --mount=type=cache,target=$D,id=$S echo $S", "mounts,command", (("type=cache,target=d,id=s",), ("echo $S",))),
])
def test_expanding_instructions(line: str, field: str, expanded: tuple[object, ...]) -> None:
    env = {"U": "u", "M": "m", "C": "c", "S": "s", "D": "d", "X": "x", "PORTS": "80 443", "SIG": "SIGTERM"}
    i = only(line)
    assert i.keyword in EXPANDS or i.keyword == "RUN"
    got = i.expand(env)
    assert tuple(getattr(got, f) for f in field.split(",")) == expanded


@pytest.mark.parametrize("line", [
    "RUN echo $S", 'RUN ["echo", "$S"]', "CMD echo $S", 'CMD ["echo", "$S"]', "ENTRYPOINT $S",
    'SHELL ["$S", "-c"]', "MAINTAINER $S", "HEALTHCHECK CMD echo $S", "ONBUILD RUN echo $S",
    "ONBUILD ENV A=$S",
])
def test_instructions_left_to_the_shell_or_stored_raw_do_not_expand(line: str) -> None:
    i = only(line)
    assert i.keyword not in EXPANDS
    assert i.expand({"S": "s"}) == i


# --- the model ---------------------------------------------------------------------------------

def test_every_keyword_has_a_class_and_instructions_are_frozen() -> None:
    assert set(p.INSTRUCTIONS) == {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                                   "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL",
                                   "USER", "VOLUME", "WORKDIR"}
    i = only("USER me")
    with pytest.raises(AttributeError):
        i.line = 3  # type: ignore[misc]


def test_a_whole_dockerfile() -> None:
    df = parse(
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=alpine\n"
        "FROM $BASE AS build\n"
        "WORKDIR /src\n"
        "COPY . .\n"
        "RUN --mount=type=cache,target=/root/.cache make\n"
        "\n"
        "FROM scratch\n"
        "COPY --from=build /src/app /app\n"
        'ENTRYPOINT ["/app"]\n')
    assert [s.name for s in df.stages] == ["build", None]
    assert [i.keyword for i in df.instructions] == ["ARG", "FROM", "WORKDIR", "COPY", "RUN", "FROM", "COPY",
                                                    "ENTRYPOINT"]
    assert [i.line for i in df.instructions] == [2, 3, 4, 5, 6, 8, 9, 10]
    assert df.name == "Dockerfile" and df.syntax == "docker/dockerfile:1"
