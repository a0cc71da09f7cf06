"""`rootless build` as a user sees it: docker's classic output, the image it makes, COPY's rules, the cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]


@pytest.fixture(scope="module")
def busybox(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox image with users: root, and app (1000) in group app (1000)."""
    rootfs = busybox_rootfs()
    rootfs["etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    rootfs["etc/group"] = b"root:x:0:\napp:x:1000:\nstaff:x:50:\n"
    image = make_image([rootfs], {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]})
    return push_all(reg.host, {"busybox": image}, tmp_path_factory.mktemp("busybox"))["busybox"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Cli:
    return Cli.with_images(tmp_path_factory.mktemp("build"), busybox)


def build(cli: Cli, context: Path, *args: str, code: int = 0, dockerfile: str | None = None) -> str:
    if dockerfile is not None:
        (context / "Dockerfile").write_text(dockerfile)
    done = cli.proc("build", *args, str(context), timeout=300)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def run(cli: Cli, *args: str, code: int = 0) -> str:
    done = cli.proc("run", "--rm", "--network", "none", *args)   # the build is under test, not the network
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout


def inspect(cli: Cli, name: str) -> dict:
    return json.loads(cli("image", "inspect", name).output)[0]


def test_mycentos_metadata_and_history(cli: Cli, busybox: str, tmp_path: Path) -> None:
    out = build(cli, tmp_path, "-t", "mycentos:0.1", dockerfile=f"""\
FROM {busybox}
MAINTAINER kuangshen<24736743@qq.com>

ENV MYPATH /usr/local
WORKDIR $MYPATH

RUN mkdir -p made-here && echo built > made-here/file

EXPOSE 80

CMD echo $MYPATH
CMD echo "---end---"
CMD /bin/sh
""")
    assert "Step 1/9 : FROM " + busybox in out
    assert "Step 5/9 : RUN mkdir -p made-here && echo built > made-here/file" in out
    assert re.search(r" ---> Running in [0-9a-f]{12}\n", out)
    assert re.search(r"Removing intermediate container [0-9a-f]{12}\n", out)
    built = re.search(r"Successfully built ([0-9a-f]{12})\n", out)
    assert built and "Successfully tagged mycentos:0.1" in out
    doc = inspect(cli, "mycentos:0.1")
    assert doc["Id"].startswith("sha256:" + built.group(1))
    assert doc["Author"] == "kuangshen<24736743@qq.com>"
    cfg = doc["Config"]
    assert "MYPATH=/usr/local" in cfg["Env"]
    assert cfg["WorkingDir"] == "/usr/local"
    assert cfg["ExposedPorts"] == {"80/tcp": {}}
    assert cfg["Cmd"] == ["/bin/sh", "-c", "/bin/sh"]
    history = cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", "mycentos:0.1").output.splitlines()
    assert history[:8] == [
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "/bin/sh"]',
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo \\"---end---\\""]',
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo $MYPATH"]',
        "/bin/sh -c #(nop)  EXPOSE 80",
        "/bin/sh -c mkdir -p made-here && echo built > made-here/file",
        "/bin/sh -c #(nop) WORKDIR /usr/local",
        "/bin/sh -c #(nop)  ENV MYPATH=/usr/local",
        "/bin/sh -c #(nop)  MAINTAINER kuangshen<24736743@qq.com>",
    ]
    assert run(cli, "mycentos:0.1", "sh", "-c", "pwd; cat made-here/file") == "/usr/local\nbuilt\n"


def test_workdir_makes_its_directory_as_the_user(cli: Cli, busybox: str, tmp_path: Path) -> None:
    build(cli, tmp_path, "-t", "workdir-made", dockerfile=f"""\
FROM {busybox}
WORKDIR /etc
WORKDIR /opt/tool
USER app
WORKDIR data/cache
""")
    doc = inspect(cli, "workdir-made")
    assert doc["Config"]["WorkingDir"] == "/opt/tool/data/cache"
    assert len(doc["RootFS"]["Layers"]) == len(inspect(cli, busybox)["RootFS"]["Layers"]) + 2   # /etc was there
    out = run(cli, "workdir-made", "stat", "-c", "%u:%g %a %n", "/opt", "/opt/tool", "/opt/tool/data", ".")
    # made even though nothing uses it, parents too, by the USER of the moment (as BuildKit does)
    assert out.splitlines() == ["0:0 755 /opt", "0:0 755 /opt/tool", "1000:1000 755 /opt/tool/data", "1000:1000 755 ."]


def test_cmd_is_replaced_and_entrypoint_is_appended_to(cli: Cli, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "e").mkdir()
    build(cli, tmp_path / "c", "-t", "cmd-test", dockerfile=f'FROM {busybox}\nCMD ["ls","-a"]\n')
    build(cli, tmp_path / "e", "-t", "entrypoint-test", dockerfile=f'FROM {busybox}\nENTRYPOINT ["ls","-a"]\n')
    assert ".." in run(cli, "cmd-test").split()
    done = cli.proc("run", "--rm", "cmd-test", "-l")
    assert done.returncode == 127 and 'exec: "-l": executable file not found in $PATH' in done.stderr
    listing = run(cli, "entrypoint-test", "-l")
    assert re.search(r"^d.* \.\.$", listing, re.M)


def test_copy_and_add(cli: Cli, busybox: str, tmp_path: Path) -> None:
    import tarfile

    ctx = tmp_path / "ctx"
    (ctx / "dir/sub").mkdir(parents=True)
    (ctx / "dir/a.txt").write_text("a\n")
    (ctx / "dir/sub/b.txt").write_text("b\n")
    (ctx / "one.txt").write_text("one\n")
    (ctx / "x1.conf").write_text("1\n")
    (ctx / "x2.conf").write_text("2\n")
    (ctx / "secret.key").write_text("no\n")
    (ctx / "run.sh").write_text("#!/bin/sh\necho run\n")
    (ctx / ".dockerignore").write_text("*.key\n")
    payload = tmp_path / "payload"
    (payload / "inner").mkdir(parents=True)
    (payload / "inner/f").write_text("from the tar\n")
    with tarfile.open(ctx / "arch.tar.gz", "w:gz") as t:
        t.add(payload / "inner", arcname="inner")
    build(cli, ctx, "-t", "copytest", dockerfile=f"""\
FROM {busybox}
WORKDIR /work
COPY dir /contents/
COPY one.txt rel/
COPY one.txt /renamed
COPY x*.conf /confs/
COPY --chown=app:staff one.txt /owned/one.txt
COPY --chown=1234 dir /numeric
COPY --chmod=0751 run.sh /bin/
COPY . /all
ADD arch.tar.gz /unpacked
ADD one.txt /added.txt
""")
    out = run(cli, "copytest", "sh", "-c",
              "cat /contents/a.txt /contents/sub/b.txt /work/rel/one.txt /renamed; ls /confs;"
              "stat -c '%U:%G %u:%g %a %n' /owned/one.txt /owned /numeric/a.txt /numeric /bin/run.sh /contents/a.txt;"
              "ls -a /all | tr '\\n' ' '; echo; cat /unpacked/inner/f /added.txt")
    lines = out.splitlines()
    assert lines[:4] == ["a", "b", "one", "one"]
    assert lines[4:6] == ["x1.conf", "x2.conf"]
    assert lines[6] == "app:staff 1000:50 644 /owned/one.txt"
    assert lines[7] == "app:staff 1000:50 755 /owned"   # a missing parent is made with the owner, as docker does
    assert lines[8].split()[1:] == ["1234:1234", "644", "/numeric/a.txt"]
    assert lines[9].split()[1:] == ["1234:1234", "755", "/numeric"]
    assert lines[10].split()[1:] == ["0:0", "751", "/bin/run.sh"]
    assert lines[11].startswith("root:root 0:0 644")
    assert "secret.key" not in lines[12] and "one.txt" in lines[12] and "dir" in lines[12]
    assert lines[13:] == ["from the tar", "one"]


def test_add_unpacks_tars_only(cli: Cli, busybox: str, tmp_path: Path) -> None:
    import gzip

    text = gzip.compress(b"not a tar\n")
    (tmp_path / "text.gz").write_bytes(text)
    (tmp_path / "looks.tar").write_bytes(b"x" * 1024)
    build(cli, tmp_path, "-t", "add-plain", dockerfile=f"FROM {busybox}\nADD text.gz looks.tar /d/\n")
    # docker reads a tar header to know an archive: a compressed text is copied as it is
    assert run(cli, "add-plain", "sh", "-c", "ls /d; wc -c < /d/text.gz") == f"looks.tar\ntext.gz\n{len(text)}\n"


def test_multi_stage_copy_from_and_target(cli: Cli, busybox: str, tmp_path: Path) -> None:
    text = f"""\
ARG BASE={busybox}
FROM $BASE AS builder
RUN echo compiled > /artifact
FROM {busybox}
COPY --from=builder /artifact /app/artifact
CMD ["cat", "/app/artifact"]
"""
    out = build(cli, tmp_path, "-t", "multi", dockerfile=text)
    assert "Step 1/6 : ARG BASE=" in out
    assert run(cli, "multi") == "compiled\n"
    build(cli, tmp_path, "-t", "multi-builder", "--target", "builder")
    assert run(cli, "multi-builder", "cat", "/artifact") == "compiled\n"
    assert "/app" not in run(cli, "multi-builder", "ls", "/")


def test_copy_from_a_stage_keeps_owners(cli: Cli, busybox: str, tmp_path: Path) -> None:
    build(cli, tmp_path, "-t", "from-owners", dockerfile=f"""\
FROM {busybox} AS made
RUN mkdir -p /out/sub && touch /out/sub/f /out/g && chown -R 1000:50 /out/sub && chown 1234:1234 /out/g
FROM {busybox}
COPY --from=made /out /copied
COPY --from=made --chown=app:app /out/g /chowned
""")
    out = run(cli, "from-owners", "stat", "-c", "%u:%g %n", "/copied", "/copied/sub", "/copied/sub/f", "/copied/g",
              "/chowned")
    # The made directory is root's; what the stage owned keeps its owner unless --chown.
    assert out.splitlines() == ["0:0 /copied", "1000:50 /copied/sub", "1000:50 /copied/sub/f", "1234:1234 /copied/g",
                                "1000:1000 /chowned"]


def test_args_and_unused_build_args(cli: Cli, busybox: str, tmp_path: Path) -> None:
    out = build(cli, tmp_path, "-t", "argtest", "--build-arg", "GREETING=hello", "--build-arg", "NOBODY=x",
                dockerfile=f"FROM {busybox}\nARG GREETING=hi\nARG OTHER=dflt\nRUN echo $GREETING $OTHER > /said\n")
    assert "[Warning] One or more build-args [NOBODY] were not consumed" in out
    assert run(cli, "argtest", "cat", "/said") == "hello dflt\n"
    assert "GREETING" not in json.dumps(inspect(cli, "argtest")["Config"].get("Env"))
    history = cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", "argtest").output.splitlines()
    assert history[0] == "|2 GREETING=hello OTHER=dflt /bin/sh -c echo $GREETING $OTHER > /said"


def test_cache(cli: Cli, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "b.txt").write_text("b\n")
    text = f"""\
FROM {busybox}
RUN echo first > /first
COPY a.txt /a.txt
RUN cat /a.txt > /copy
COPY b.txt /b.txt
"""
    first = build(cli, tmp_path, "-t", "cached", dockerfile=text)
    assert "Using cache" not in first
    again = build(cli, tmp_path, "-t", "cached")
    assert again.count(" ---> Using cache") == 4
    assert _built(first) == _built(again)
    (tmp_path / "a.txt").write_text("two\n")
    changed = build(cli, tmp_path, "-t", "cached")
    steps = changed.split("Step ")
    assert " ---> Using cache" in steps[2]            # RUN echo first
    assert all(" ---> Using cache" not in s for s in steps[3:])
    assert run(cli, "cached", "cat", "/copy") == "two\n"
    fresh = build(cli, tmp_path, "-t", "cached", "--no-cache")
    assert "Using cache" not in fresh and fresh.count("Running in") == 2


def _built(out: str) -> str:
    m = re.search(r"Successfully built ([0-9a-f]{12})", out)
    assert m, out
    return m.group(1)


def test_a_failing_run_leaves_nothing(cli: Cli, busybox: str, tmp_path: Path) -> None:
    before, dangling = cli("images", "-q").output, cli("images").output.count("<none>")
    out = build(cli, tmp_path, "-t", "broken", code=1, dockerfile=f"FROM {busybox}\nRUN echo going\nRUN false\n")
    assert "The command '/bin/sh -c false' returned a non-zero code: 1" in out
    assert cli("ps", "-a", "-q").output == ""
    assert cli("images", "-q").output == before
    assert cli("images").output.count("<none>") == dangling


def test_quiet_prints_only_the_id(cli: Cli, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox}\nRUN echo noisy\nLABEL a=b\n")
    done = cli.proc("build", "-q", str(tmp_path))
    assert done.returncode == 0, done
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", done.stdout)


def test_a_dockerfile_of_another_name_and_labels_from_the_command_line(cli: Cli, busybox: str, tmp_path: Path) -> None:
    """docker's `build -f file1 -t mycentos:1 .`, run in the context directory, with --label."""
    (tmp_path / "Dockerfile").write_text(f"FROM {busybox}\nRUN false\n")   # never read
    (tmp_path / "file1").write_text(f"FROM {busybox}\nLABEL from.file=yes\nCMD echo file1\n")
    done = subprocess.run(cli.argv("build", "-f", "file1", "-t", "mycentos:1", "--label", "release=1.0",
                                   "--label", "from.file=overridden", "."),
                          cwd=tmp_path, env={**os.environ, **cli.env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "Successfully tagged mycentos:1" in done.stdout
    labels = inspect(cli, "mycentos:1")["Config"]["Labels"]
    assert labels == {"from.file": "overridden", "release": "1.0"}   # the command line's win, as in docker
    assert run(cli, "mycentos:1") == "file1\n"


def test_onbuild_healthcheck_and_stdin(cli: Cli, busybox: str, tmp_path: Path) -> None:
    import io
    import tarfile

    build(cli, tmp_path, "-t", "onbuild-parent", dockerfile=f"""\
FROM {busybox}
ONBUILD COPY marker /marker
HEALTHCHECK --interval=5s --retries=2 CMD ["true"]
STOPSIGNAL SIGINT
USER app
""")
    cfg = inspect(cli, "onbuild-parent")["Config"]
    assert cfg["OnBuild"] == ["COPY marker /marker"]
    assert cfg["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert cfg["StopSignal"] == "SIGINT" and cfg["User"] == "app"
    (tmp_path / "marker").write_text("triggered\n")
    done = cli.proc("build", "-t", "onbuild-child", "-f", "-", str(tmp_path),
                    input="FROM onbuild-parent\nRUN cat /marker; id -u\n")
    assert done.returncode == 0, done
    assert "# Executing 1 build trigger" in done.stdout
    assert "triggered\n1000\n" in done.stdout   # the trigger ran first; RUN runs as the USER
    assert run(cli, "onbuild-child", "cat", "/marker") == "triggered\n"
    assert not inspect(cli, "onbuild-child")["Config"].get("OnBuild")
    # The context as a tar on stdin, its Dockerfile inside.
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as t:
        for name, text in (("Dockerfile", f"FROM {busybox}\nCOPY hello /hello\n"), ("hello", "from a tar\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            t.addfile(info, io.BytesIO(text.encode()))
    done2 = subprocess.run(cli.argv("build", "-t", "from-stdin", "-"), input=data.getvalue(), capture_output=True,
                           env={**__import__("os").environ, **cli.env}, timeout=120)
    assert done2.returncode == 0, done2
    assert run(cli, "from-stdin", "cat", "/hello") == "from a tar\n"


def test_scratch_and_refusals(cli: Cli, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x\n")
    build(cli, tmp_path, "-t", "fromscratch", dockerfile="FROM scratch\nCOPY f /f\nCMD [\"/f\"]\n")
    assert len(inspect(cli, "fromscratch")["RootFS"]["Layers"]) == 1
    out = build(cli, tmp_path, code=125, dockerfile=f"FROM {busybox}\nADD --checksum=sha256:{'0' * 64} f /f\n")
    assert "ADD --checksum is for one HTTP(S) source alone" in out
    out = build(cli, tmp_path, code=125, dockerfile=f"FROM {busybox}\nCOPY missing /x\n")
    assert "file not found in build context" in out
    out = build(cli, tmp_path, "--target", "nope", code=125, dockerfile=f"FROM {busybox}\n")
    assert "failed to reach build target nope in Dockerfile" in out


def test_run_heredocs(cli: Cli, busybox: str, tmp_path: Path) -> None:
    build(cli, tmp_path, "-t", "run-heredocs", dockerfile=f"""\
FROM {busybox}
ENV NAME=world
RUN <<EOF
echo "one $0" > /plain
echo two >> /plain
EOF
RUN <<EOF
#!/bin/sh
echo "script $0" > /shebang
EOF
RUN cat <<EOF > /greeting
hello $NAME
EOF
RUN <<-EOF sh
\techo "from stdin" > /stdin
\tEOF
""")
    out = run(cli, "run-heredocs", "sh", "-c", "cat /plain /shebang /greeting /stdin; ls /dev/pipes 2>&1 || true")
    assert out.splitlines()[:5] == ["one /bin/sh", "two", "script /dev/pipes/EOF", "hello world", "from stdin"]
    assert "EOF" not in out.splitlines()[5:]   # the script stayed outside the layer
    history = cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", "run-heredocs").output
    assert "/bin/sh -c cat <<EOF > /greeting\nhello $NAME\nEOF" in history


def test_copy_heredocs(cli: Cli, busybox: str, tmp_path: Path) -> None:
    (tmp_path / "ctx.txt").write_text("from the context\n")
    build(cli, tmp_path, "-t", "copy-heredocs", dockerfile=f"""\
FROM {busybox}
ARG WHO=world
COPY <<EOF /etc/motd
hello $WHO
EOF
COPY --chmod=0750 --chown=app:staff <<EOF /usr/local/bin/hi
#!/bin/sh
echo hi from a heredoc
EOF
COPY <<'EOF' /raw
keep $WHO
EOF
COPY ctx.txt <<A <<B /two/
a
A
b
B
""")
    out = run(cli, "copy-heredocs", "sh", "-c",
              "cat /etc/motd /raw; /usr/local/bin/hi; stat -c '%U:%G %a' /usr/local/bin/hi /etc/motd; ls /two; cat /two/A /two/B")
    assert out.splitlines() == ["hello world", "keep $WHO", "hi from a heredoc", "app:staff 750", "root:root 644",
                                "A", "B", "ctx.txt", "a", "b"]
    # The content is part of the cache key: a changed heredoc is copied again.
    again = build(cli, tmp_path, "-t", "copy-heredocs", "--build-arg", "WHO=you")
    assert run(cli, "copy-heredocs", "cat", "/etc/motd") == "hello you\n"
    assert "Using cache" not in again.split("Step ")[3]


def test_dockerignore_exceptions_reach_into_excluded_directories(cli: Cli, busybox: str, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "logs/sub").mkdir(parents=True)
    (ctx / "logs/keep.txt").write_text("kept\n")
    (ctx / "logs/drop.txt").write_text("dropped\n")
    (ctx / "logs/sub/deep.txt").write_text("deep\n")
    (ctx / "a.tmp").write_text("tmp\n")
    (ctx / "b.txt").write_text("b\n")
    (ctx / ".dockerignore").write_text("logs\n!logs/keep.txt\n*.tmp\n")
    build(cli, ctx, "-t", "ignore-test", dockerfile=f"FROM {busybox}\nCOPY . /ctx\nCOPY logs /logs\n")
    out = run(cli, "ignore-test", "sh", "-c", "cd /ctx && find . -type f | sort; ls /logs; cat /logs/keep.txt")
    assert out.splitlines() == ["./.dockerignore", "./Dockerfile", "./b.txt", "./logs/keep.txt",
                                "keep.txt", "kept"]
    out = build(cli, ctx, code=125, dockerfile=f"FROM {busybox}\nCOPY logs/drop.txt /x\n")
    assert "file not found in build context or excluded by .dockerignore" in out
    # A Dockerfile's own NAME.dockerignore beside it wins over the context's.
    (tmp_path / "other.Dockerfile").write_text(f"FROM {busybox}\nCOPY . /ctx\n")
    (tmp_path / "other.Dockerfile.dockerignore").write_text("*\n!b.txt\n")
    build(cli, ctx, "-t", "ignore-other", "-f", str(tmp_path / "other.Dockerfile"))
    assert run(cli, "ignore-other", "ls", "-A", "/ctx") == "b.txt\n"


def test_args_scope_and_the_parsers_values(cli: Cli, busybox: str, tmp_path: Path) -> None:
    out = build(cli, tmp_path, "-t", "scopes", "--build-arg", "B=given", dockerfile=f"""\
ARG TAG=latest
FROM {busybox}:$TAG
ARG A=1 B C=$A-$B
ENV A=from-env
ARG D=$A
LABEL c=$C d=$D tag=x$TAG
HEALTHCHECK --interval=1m30s --start-period=500ms CMD true
""")
    assert "were not consumed" not in out
    cfg = inspect(cli, "scopes")["Config"]
    # C sees A and B declared before it on the same line; ENV wins over ARG; TAG is FROM's only.
    assert cfg["Labels"] == {"c": "1-given", "d": "from-env", "tag": "x"}
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 90_000_000_000,
                                  "StartPeriod": 500_000_000}
    out = build(cli, tmp_path, code=125, dockerfile=f"FROM {busybox}\nRUN --mount=type=cache,target=/c true\n")
    assert "Dockerfile:2: RUN --mount is not supported by this builder yet" in out
