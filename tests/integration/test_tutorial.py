"""The classic Docker tutorial, end to end through the CLI, in the order a user follows it.

Build "mycentos" on a real Debian, tell CMD from ENTRYPOINT, serve a site from a tarball
that ADD unpacks (with a host directory live in it and the port published), commit the
running container, push it to a registry that wants a login, and run it from a brand-new
store that pulls it back.  Each step is a fixture the next builds on, so any test can
run alone; containers are removed at the end whatever happened.
"""

from __future__ import annotations

import io
import json
import re
import socket
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from baseimages import push_debian
from registry import Registry, running_registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry, pytest.mark.net, pytest.mark.slow]

SITE = {"index.html": b"<h1>welcome to the tutorial</h1>\n", "docs/about.html": b"about this site\n"}
ADDED = b"added in the container before commit\n"


def ok(cli: Cli, *args: str, input: str | None = None) -> str:
    done = cli.proc(*args, input=input, timeout=300)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def build(cli: Cli, context: Path, dockerfile: str, tag: str) -> str:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    return ok(cli, "build", "-t", tag, str(context))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(port: int, path: str = "/", timeout: float = 20) -> bytes:
    """GET http://127.0.0.1:PORT/PATH, retrying while the container's server starts (a 404 is an answer)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Where the tutorial pushes its image: a registry that wants a login (htpasswd)."""
    with running_registry(tmp_path_factory.mktemp("private"), auth="basic") as r:
        yield r


@pytest.fixture(scope="module")
def bases(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    busybox = make_image([busybox_rootfs()], {"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    push(reg.host, "busybox:latest", busybox, tmp_path_factory.mktemp("busybox"))
    return {"debian": push_debian(reg.host), "busybox": f"{reg.host}/busybox"}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, bases: dict[str, str]) -> Cli:
    return Cli(tmp_path_factory.mktemp("tutorial"))


@pytest.fixture(scope="module")
def containers(cli: Cli) -> Iterator[list[str]]:
    """Names of the containers the module starts in CLI's store; all removed at the end."""
    made: list[str] = []
    yield made
    for name in made:
        cli.proc("rm", "-f", name)


# -- a Dockerfile of one's own --------------------------------------------------------------------

def test_mycentos_on_debian(cli: Cli, bases: dict[str, str], tmp_path: Path) -> None:
    out = build(cli, tmp_path, f"""\
FROM {bases["debian"]}
MAINTAINER kuangshen<24736743@qq.com>

ENV MYPATH /usr/local
WORKDIR $MYPATH

RUN useradd --create-home tutor && echo "made by RUN in $(pwd)" > made && chown tutor: made

EXPOSE 80

CMD echo $MYPATH
CMD echo "---end---"
CMD /bin/bash
""", "mycentos:0.1")
    assert "Step 1/9 : FROM " + bases["debian"] in out and "Successfully tagged mycentos:0.1" in out
    doc = json.loads(cli("image", "inspect", "mycentos:0.1").output)[0]
    assert doc["Author"] == "kuangshen<24736743@qq.com>"
    assert doc["Config"]["WorkingDir"] == "/usr/local" and doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    assert doc["Config"]["Cmd"] == ["/bin/sh", "-c", "/bin/bash"]
    # Only the last CMD runs: bash, reading its commands from stdin.
    shown = ok(cli, "run", "--rm", "-i", "mycentos:0.1",
               input="pwd; echo $MYPATH; cat made; stat -c %U:%G made; stat -c %U /home/tutor\n")
    assert shown.splitlines() == ["/usr/local", "/usr/local", "made by RUN in /usr/local", "tutor:tutor", "tutor"]
    history = cli("history", "--format", "{{.CreatedBy}}", "--no-trunc", "mycentos:0.1").output.splitlines()
    assert [row for row in history if "CMD" in row] == [
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "/bin/bash"]',
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo \\"---end---\\""]',
        '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo $MYPATH"]']


def test_cmd_is_replaced_and_entrypoint_is_appended_to(cli: Cli, bases: dict[str, str], tmp_path: Path) -> None:
    build(cli, tmp_path / "cmd", f'FROM {bases["debian"]}\nCMD ["ls","-a"]\n', "cmd-test")
    build(cli, tmp_path / "entrypoint", f'FROM {bases["debian"]}\nENTRYPOINT ["ls","-a"]\n', "entrypoint-test")
    assert {".", "..", "etc", "usr"} <= set(ok(cli, "run", "--rm", "cmd-test").split())
    done = cli.proc("run", "--rm", "cmd-test", "-l")
    assert done.returncode == 127, (done.stdout, done.stderr)
    assert 'exec: "-l": executable file not found in $PATH' in done.stderr
    listing = ok(cli, "run", "--rm", "entrypoint-test", "-l")
    for name in (r"\.\.", "etc"):
        assert re.search(rf"^d[rwx-]{{9}}\S* +\d+ root +root .* {name}$", listing, re.M), listing


# -- a web server, its site from a tarball, a host directory live in it -------------------------------

@pytest.fixture(scope="module")
def web_image(cli: Cli, bases: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    context = tmp_path_factory.mktemp("web")
    with tarfile.open(context / "site.tar.gz", "w:gz") as t:
        for name, content in SITE.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            t.addfile(info, io.BytesIO(content))
    build(cli, context, f"""\
FROM {bases["busybox"]}
ADD site.tar.gz /www/
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
""", "tutorial-web:1")
    return "tutorial-web:1"


@pytest.fixture(scope="module")
def web(cli: Cli, web_image: str, containers: list[str], tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[str, int, Path]:
    """The web server running detached: (name, host port, host directory bound at /www/live)."""
    live = tmp_path_factory.mktemp("live")
    port = free_port()
    containers.append("tutorial-web")
    ok(cli, "run", "-d", "--name", "tutorial-web", "-p", f"{port}:80", "-v", f"{live}:/www/live", web_image)
    return "tutorial-web", port, live


def test_the_site_from_the_tarball_is_served_and_host_edits_show_at_once(web: tuple[str, int, Path]) -> None:
    _, port, live = web
    assert fetch(port) == SITE["index.html"]
    assert fetch(port, "/docs/about.html") == SITE["docs/about.html"]
    (live / "note.html").write_text("written on the host\n")
    assert fetch(port, "/live/note.html") == b"written on the host\n"
    (live / "note.html").write_text("edited on the host, and longer than before\n")
    assert fetch(port, "/live/note.html") == b"edited on the host, and longer than before\n"


# -- commit, push to a registry that wants a login, pull into a new store ---------------------------

@pytest.fixture(scope="module")
def pushed(cli: Cli, web: tuple[str, int, Path], private: Registry) -> str:
    """The running web container, with a page added inside it, committed, tagged and pushed."""
    name, port, live = web
    (live / "note.html").write_text("only on the host\n")
    ok(cli, "exec", name, "sh", "-c", f"printf '{ADDED.decode().strip()}\\n' > /www/added.html")
    image_id = cli("commit", "-a", "kuangshen", "-m", "add a page", name, "tutorial/web:1.1").output.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id)
    remote = f"{private.host}/tutorial/web:1.1"
    cli("tag", "tutorial/web:1.1", remote)
    assert private.username and private.password
    denied = cli("push", remote, code=125)
    assert "unauthorized" in denied.stderr
    login = cli("login", "-u", private.username, "--password-stdin", private.host, input=private.password + "\n")
    assert login.stdout == "Login Succeeded\n"
    assert re.search(r"digest: sha256:[0-9a-f]{64}", cli("push", remote).stdout, re.M)
    return remote


def test_commit_records_author_and_message(cli: Cli, pushed: str) -> None:
    doc = json.loads(cli("image", "inspect", "tutorial/web:1.1").output)[0]
    assert doc["Author"] == "kuangshen" and doc["Comment"] == "add a page"
    assert doc["Config"]["Cmd"] == ["httpd", "-f", "-p", "80", "-h", "/www"]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    history = cli("history", "tutorial/web:1.1").output.splitlines()
    assert history[0].split()[:1] == ["IMAGE"] and history[0].rstrip().endswith("COMMENT")
    assert history[1].rstrip().endswith("add a page")
    tagged = json.loads(cli("image", "inspect", pushed).output)[0]
    assert tagged["Id"] == doc["Id"]


def test_a_new_store_pulls_the_pushed_image_and_serves_the_page(pushed: str, private: Registry,
                                                                 tmp_path: Path) -> None:
    fresh = Cli(tmp_path / "elsewhere")
    assert fresh("images", "-q").output == ""
    assert "unauthorized" in fresh("pull", pushed, code=125).stderr
    assert private.username and private.password
    fresh("login", "-u", private.username, "--password-stdin", private.host, input=private.password + "\n")
    assert pushed in fresh("pull", pushed).stdout
    port = free_port()
    try:
        ok(fresh, "run", "-d", "--name", "pulled-web", "-p", f"{port}:80", pushed)
        assert fetch(port, "/added.html") == ADDED
        assert fetch(port) == SITE["index.html"]
        # The bind mount was no part of the container's layer: its file stayed on the host.
        with pytest.raises(urllib.error.HTTPError) as missing:
            fetch(port, "/live/note.html")
        assert missing.value.code == 404
    finally:
        fresh.proc("rm", "-f", "pulled-web")
