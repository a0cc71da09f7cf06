"""``ADD <url>`` in ``rootless build``: files from an HTTP server the test runs on 127.0.0.1, as docker places them."""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import re
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from registry import Registry, serving_http
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]

#: what the server says of every file unless told otherwise: 2015-10-21 07:28:00 UTC
MODIFIED = 1445412480


@dataclass
class Served:
    """What the test server answers: path -> (content, Last-Modified as epoch seconds or None)."""

    url: str
    files: dict[str, tuple[bytes, int | None]] = field(default_factory=dict)
    gets: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    served = Served("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            served.gets.append(self.path)
            if self.path not in served.files:
                self.send_error(404)
                return
            body, modified = served.files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            if modified is not None:
                self.send_header("Last-Modified", email.utils.formatdate(modified, usegmt=True))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with serving_http(Handler) as served.url:
        yield served


@pytest.fixture(scope="module")
def busybox(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = make_image([busybox_rootfs()], {"Env": ["PATH=/bin"], "Cmd": ["sh"]})
    return push_all(reg.host, {"busybox": image}, tmp_path_factory.mktemp("busybox"))["busybox"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Cli:
    return Cli.with_images(tmp_path_factory.mktemp("build-remote"), busybox)


def build(cli: Cli, context: Path, dockerfile: str, *args: str, code: int = 0) -> str:
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    done = cli.proc("build", *args, str(context), timeout=300)
    assert done.returncode == code, (args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def run(cli: Cli, image: str, script: str) -> str:
    done = cli.proc("run", "--rm", "--network", "none", image, "sh", "-c", script)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout


def tar_gz(files: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return data.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_downloads_are_named_dated_0600_and_unpacked_only_if_asked(cli: Cli, busybox: str, server: Served,
                                                                  tmp_path: Path) -> None:
    conf, tool, archive = b"key = value\n", b"#!/bin/sh\necho tool ran\n", tar_gz({"inner.txt": b"inside\n"})
    server.files.update({"/files/app.conf": (conf, MODIFIED), "/files/tool.sh": (tool, MODIFIED + 60),
                         "/nameless/": (b"no name\n", None), "/site.tar.gz": (archive, MODIFIED)})
    u = server.url
    build(cli, tmp_path / "ctx", f"""\
FROM {busybox}
WORKDIR /work
ADD {u}/files/app.conf /etc/
ADD {u}/files/app.conf renamed.conf
ADD {u}/nameless/ /nameless
ADD {u}/site.tar.gz /archives/
ADD --chmod=0755 --chown=app:staff {u}/files/tool.sh /usr/local/bin/
ADD {u}/files/app.conf {u}/files/tool.sh /both/
ADD --checksum={sha256(conf)} {u}/files/app.conf /pinned
ADD --unpack=true {u}/site.tar.gz /unpacked/
""", "-t", "remote")
    out = run(cli, "remote", "cd /; for f in etc/app.conf work/renamed.conf nameless archives/site.tar.gz "
                             "usr/local/bin/tool.sh both/app.conf both/tool.sh pinned; do "
                             "stat -c '%n %a %u:%g %Y' $f; done; ls archives; cat /nameless; sha256sum /archives/*; "
                             "/usr/local/bin/tool.sh; ls /unpacked; cat /unpacked/inner.txt")
    lines = out.splitlines()
    assert lines[:8] == [
        f"etc/app.conf 600 0:0 {MODIFIED}",
        f"work/renamed.conf 600 0:0 {MODIFIED}",
        "nameless 600 0:0 " + lines[2].split()[-1],
        f"archives/site.tar.gz 600 0:0 {MODIFIED}",
        f"usr/local/bin/tool.sh 755 1000:50 {MODIFIED + 60}",
        f"both/app.conf 600 0:0 {MODIFIED}",
        f"both/tool.sh 600 0:0 {MODIFIED + 60}",
        f"pinned 600 0:0 {MODIFIED}",
    ]
    assert int(lines[2].split()[-1]) > time.time() - 600   # no Last-Modified: the time of the download
    assert lines[8:] == ["site.tar.gz", "no name", f"{sha256(archive)[7:]}  /archives/site.tar.gz", "tool ran", "inner.txt", "inside"]
    history = cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", "remote").output.splitlines()
    assert re.fullmatch(r"/bin/sh -c #\(nop\) ADD file:[0-9a-f]+ in /pinned ", history[1])


def test_a_name_the_url_lacks_must_be_given(cli: Cli, busybox: str, server: Served, tmp_path: Path) -> None:
    server.files["/dir/"] = (b"x", None)
    out = build(cli, tmp_path, f"FROM {busybox}\nADD {server.url}/dir/ /somewhere/\n", code=125)
    assert f"cannot determine filename for source {server.url}/dir/" in out


def test_checksum_mismatch_names_the_url_and_both_digests(cli: Cli, busybox: str, server: Served,
                                                         tmp_path: Path) -> None:
    server.files["/pinned.bin"] = (b"what is served\n", None)
    wrong = sha256(b"what was expected\n")
    out = build(cli, tmp_path, f"FROM {busybox}\nADD --checksum={wrong} {server.url}/pinned.bin /p\n", code=125)
    error = next(line for line in out.splitlines() if line.startswith("Error:"))
    assert f"{server.url}/pinned.bin" in error and wrong in error and sha256(b"what is served\n") in error


def test_http_errors_and_unreachable_hosts_fail_the_build(cli: Cli, busybox: str, server: Served,
                                                         tmp_path: Path) -> None:
    out = build(cli, tmp_path, f"FROM {busybox}\nADD {server.url}/missing.txt /m\n", code=125)
    assert f"Error: ADD failed: failed to GET {server.url}/missing.txt with status 404 Not Found\n" in out
    assert "Hint: check the URL" in out
    with socket.socket() as unheard:   # bound, never listening: the connection is refused
        unheard.bind(("127.0.0.1", 0))
        port = unheard.getsockname()[1]
        out = build(cli, tmp_path, f"FROM {busybox}\nADD http://127.0.0.1:{port}/x /x\n", code=125)
    assert f"Error: ADD failed: cannot download http://127.0.0.1:{port}/x: [Errno 111] Connection refused\n" in out


def test_the_cache_is_hit_while_the_content_is_the_same(cli: Cli, busybox: str, server: Served,
                                                       tmp_path: Path) -> None:
    server.files["/cached.txt"] = (b"first\n", MODIFIED)
    dockerfile = f"FROM {busybox}\nADD {server.url}/cached.txt /cached.txt\n"

    def built() -> tuple[str, bool]:
        before = len(server.gets)
        out = build(cli, tmp_path, dockerfile, "-t", "cached")
        assert server.gets[before:] == ["/cached.txt"]   # downloaded every time, as docker does
        return inspect_id(cli, "cached"), "Using cache" in out

    first, _ = built()
    assert built() == (first, True)
    server.files["/cached.txt"] = (b"first\n", MODIFIED + 3600)     # a new date alone: the same bytes
    assert built() == (first, True)
    server.files["/cached.txt"] = (b"second\n", MODIFIED)
    changed, hit = built()
    assert (changed != first, hit) == (True, False)
    assert run(cli, "cached", "cat /cached.txt") == "second\n"


def inspect_id(cli: Cli, name: str) -> str:
    return str(json.loads(cli("image", "inspect", name).output)[0]["Id"])
