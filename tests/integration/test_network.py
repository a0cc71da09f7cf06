"""Container networks as a user sees them: private (pasta, slirp4netns) by default, host, none, and -p.

Every packet stays on this machine: the host side is 127.0.0.1, the container side its
own namespace.  Nothing here resolves a name (that would ask the host's DNS server).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from capabilities import verdict
from polling import wait_for
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

from rootless.runtime import linux, network

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry, pytest.mark.net]

PAGE = b"served from the container\n"


@pytest.fixture(scope="module")
def images(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """busybox, and web: busybox httpd serving /www on port 80, which it EXPOSEs (with 53/udp)."""
    tmp = tmp_path_factory.mktemp("images")
    rootfs = busybox_rootfs()
    base = {"Env": ["PATH=/bin"]}
    made = {
        "busybox": make_image([rootfs], {**base, "Cmd": ["sh"]}),
        "web": make_image([rootfs, {"www/index.html": PAGE}],
                          {**base, "Cmd": ["httpd", "-f", "-p", "80", "-h", "/www"],
                           "ExposedPorts": {"80/tcp": {}, "53/udp": {}}}),
    }
    return push_all(reg.host, made, tmp)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]) -> Cli:
    c = Cli(tmp_path_factory.mktemp("net"))
    for name in images.values():
        c("pull", "-q", name)
    return c


@pytest.fixture(params=network.BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn; one this host cannot use skips, or fails under CI (which must have both)."""
    found = {b.name: b for b in network.available_backends()}[request.param]
    outcome = verdict(f"net ({found.name})", None if found.usable else f"{found.detail} ({found.hint})", os.environ)
    if outcome is not None:
        (pytest.fail if outcome.action == "fail" else pytest.skip)(outcome.message)
    return str(request.param)


def ok(cli: Cli, *args: str) -> str:
    done = cli.proc(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def inspect(cli: Cli, name: str) -> dict:
    return json.loads(ok(cli, "inspect", name))[0]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interfaces(proc_net_dev: str) -> list[str]:
    return [line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:]]


def fetch(port: int, timeout: float = 20) -> bytes:
    """GET http://127.0.0.1:PORT/ on the host, retrying while the container's server starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
                return bytes(answer.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 only; yields its port."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"host says hi to {self.client_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def daemon_pid(cli: Cli, name: str) -> int:
    state = json.loads((Path(inspect(cli, name)["HostsPath"]).parent / network.STATE_FILE).read_text())
    return int(state["Pid"])


def gone(pid: int, timeout: float = 10) -> bool:
    def exited() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[1][0] == "Z"
        except OSError:
            return True    # gone (also between a look and the read)

    return wait_for(exited, timeout)


# -- the modes ----------------------------------------------------------------------------------

def test_the_default_is_a_private_network(cli: Cli, images: dict[str, str]) -> None:
    out = ok(cli, "run", "--rm", images["busybox"], "sh", "-c",
             "hostname; readlink /proc/self/ns/net; cat /proc/net/dev; echo ---; cat /etc/hosts; echo ---;"
             "cat /etc/resolv.conf; echo ---; ip -o -4 addr show; ip route")
    head, hosts, resolv, addrs = out.split("---\n")
    hostname, ns, dev = head.split("\n", 2)
    assert ns != os.readlink("/proc/self/ns/net")
    names = interfaces(dev)
    assert "lo" in names and len(names) == 2, names
    assert "127.0.0.1\tlocalhost" in hosts
    own = [line.split()[0] for line in hosts.splitlines() if line.split()[1:] == [hostname]]
    assert len(own) == 1 and f"inet {own[0]}/" in addrs, (hosts, addrs)     # docker's "ADDRESS\tHOSTNAME" line
    assert "host.containers.internal" in hosts
    assert resolv.startswith("nameserver ") and resolv.split()[1] in (network.PASTA_DNS, network.SLIRP_DNS)


def test_network_none_has_only_loopback_and_it_is_up(cli: Cli, images: dict[str, str]) -> None:
    out = ok(cli, "run", "--rm", "--network", "none", images["busybox"], "sh", "-c",
             "cat /proc/net/dev; echo ---; ip -o link show lo; ip -o -4 addr show lo;"
             "nc -l -p 7 > /tmp/got & sleep 0.3; echo over-lo | nc -w 1 127.0.0.1 7; wait; cat /tmp/got;"
             "echo ---; cat /etc/hosts")
    dev, link, etc = out.split("---\n")
    assert interfaces(dev) == ["lo"]
    assert "<LOOPBACK,UP,LOWER_UP>" in link and "127.0.0.1/8" in link and "over-lo" in link
    assert "\tlocalhost" in etc and "host.containers.internal" not in etc


def test_network_host_sees_the_hosts_interfaces(cli: Cli, images: dict[str, str]) -> None:
    out = ok(cli, "run", "--rm", "--network", "host", images["busybox"], "sh", "-c",
             "readlink /proc/self/ns/net; cat /proc/net/dev")
    ns, dev = out.split("\n", 1)
    assert ns == os.readlink("/proc/self/ns/net")
    with open("/proc/net/dev") as f:
        assert sorted(interfaces(dev)) == sorted(interfaces(f.read()))


def test_the_config_file_changes_the_default(cli: Cli, images: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": "host"}))
    out = ok(cli, "--config", str(config), "run", "--rm", images["busybox"], "readlink", "/proc/self/ns/net")
    assert out.strip() == os.readlink("/proc/self/ns/net")
    config.write_text(json.dumps({"network": "moon"}))
    bad = cli.proc("--config", str(config), "run", "--rm", images["busybox"], "true")
    assert bad.returncode == 125 and "network moon not found" in bad.stderr
    bad = cli.proc("run", "--rm", "--network", "moon", images["busybox"], "true")
    assert bad.returncode == 125 and "network moon not found" in bad.stderr


# -- a private network, through each backend ---------------------------------------------------

def test_outbound_reaches_a_server_on_the_host_loopback(cli: Cli, images: dict[str, str], backend: str) -> None:
    with host_server() as port:
        out = ok(cli, "run", "--rm", "--network", backend, images["busybox"], "sh", "-c",
                 "gw=$(awk '/host.containers.internal/ {print $1}' /etc/hosts); ip route | grep -q \"default via $gw\""
                 f" && timeout 20 wget -q -O- http://$gw:{port}/")
    assert out.startswith("host says hi to 127.0.0.1")


def test_publish_forwards_tcp_from_the_host(cli: Cli, images: dict[str, str], backend: str) -> None:
    port = free_port()
    cid = ok(cli, "run", "-d", "--name", f"web-{backend}", "--network", backend, "-p", f"{port}:80",
             images["web"]).strip()
    try:
        assert fetch(port) == PAGE
        doc = inspect(cli, cid)
        assert doc["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": str(port)}]}
        assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "", "HostPort": str(port)}]}
        assert doc["NetworkSettings"]["IPAddress"]
        listed = ok(cli, "ps", "--format", "{{.Names}} {{.Ports}}")
        assert f"web-{backend} 0.0.0.0:{port}->80/tcp" in listed
        # exec joins the same network namespace
        assert ok(cli, "exec", cid, "wget", "-q", "-O-", "http://127.0.0.1:80/").encode() == PAGE
        pid = daemon_pid(cli, cid)
    finally:
        ok(cli, "rm", "-f", cid)
    with socket.socket() as s:        # the host port is free again as soon as rm returns
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
    assert gone(pid), f"the {backend} daemon outlived its container"


def receive_udp_inside(pid: int, port: int, timeout: float = 20) -> bytes:
    """Bind UDP PORT in process PID's network namespace (busybox has no UDP server) and return the first
    datagram that reaches it, or b"" after TIMEOUT.  A forked child joins the namespaces: a threaded
    process cannot enter a user namespace."""
    ready_r, ready_w = os.pipe()
    data_r, data_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.close(data_r)
            for ns in ("user", "net"):
                fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY)
                linux.setns(fd)
                os.close(fd)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("0.0.0.0", port))
                s.settimeout(timeout)
                os.write(ready_w, b"r")
                os.write(data_w, s.recv(65536))
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(data_w)
    try:
        os.read(ready_r, 1)
        with os.fdopen(data_r, "rb") as f:
            return f.read()
    finally:
        os.close(ready_r)
        os.waitpid(child, 0)


def test_publish_forwards_udp_from_the_host(cli: Cli, images: dict[str, str], backend: str) -> None:
    port = free_port(socket.SOCK_DGRAM)
    cid = ok(cli, "run", "-d", "--network", backend, "-p", f"127.0.0.1:{port}:5353/udp", images["busybox"],
             "sleep", "60").strip()
    try:
        result: list[bytes] = []
        receiver = threading.Thread(target=lambda: result.append(receive_udp_inside(
            int(inspect(cli, cid)["State"]["Pid"]), 5353)))
        receiver.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while receiver.is_alive():
                s.sendto(b"udp reached it\n", ("127.0.0.1", port))
                receiver.join(0.2)
        assert result == [b"udp reached it\n"]
        assert inspect(cli, cid)["NetworkSettings"]["Ports"] == {"5353/udp": [{"HostIp": "127.0.0.1",
                                                                              "HostPort": str(port)}]}
    finally:
        ok(cli, "rm", "-f", cid)


def test_publish_without_a_host_port_and_publish_all(cli: Cli, images: dict[str, str]) -> None:
    cid = ok(cli, "run", "-d", "-P", images["web"]).strip()
    try:
        ports = inspect(cli, cid)["NetworkSettings"]["Ports"]
        assert set(ports) == {"80/tcp", "53/udp"}
        assert fetch(int(ports["80/tcp"][0]["HostPort"])) == PAGE
    finally:
        ok(cli, "rm", "-f", cid)
    cid = ok(cli, "run", "-d", "-p", "127.0.0.1::80", images["web"]).strip()
    try:
        ports = inspect(cli, cid)["NetworkSettings"]["Ports"]
        assert list(ports) == ["80/tcp"] and ports["80/tcp"][0]["HostIp"] == "127.0.0.1"
        assert fetch(int(ports["80/tcp"][0]["HostPort"])) == PAGE
    finally:
        ok(cli, "rm", "-f", cid)


# -- docker's errors --------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("abc", "invalid containerPort: abc"),
    ("8080:", "no port specified: 8080:<empty>"),
    ("x:80", "invalid hostPort: x"),
    ("99999:80", "invalid hostPort: 99999"),
    ("80/icmp", "invalid proto: icmp"),
    ("300.1.1.1:80:80", "invalid IP address: 300.1.1.1"),
    ("8000-8002:80-81", "invalid ranges specified for container and host Ports: 80-81 and 8000-8002"),
])
def test_a_bad_publish_spec_is_refused_as_docker_does(cli: Cli, images: dict[str, str], spec: str,
                                                      message: str) -> None:
    done = cli.proc("run", "--rm", "-p", spec, images["busybox"], "true")
    assert done.returncode == 125 and message in done.stderr, done.stderr
    assert ok(cli, "ps", "-aq") == ""


def test_a_host_port_in_use_is_refused_as_docker_does(cli: Cli, images: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli.proc("run", "--rm", "--name", "clash", "-p", f"{port}:80", images["web"])
    assert done.returncode == 125
    assert ("driver failed programming external connectivity on endpoint clash (" in done.stderr
            and f"listen tcp4 0.0.0.0:{port}: bind: address already in use" in done.stderr), done.stderr
    assert ok(cli, "ps", "-aq") == ""


def test_ports_are_discarded_with_the_host_network(cli: Cli, images: dict[str, str]) -> None:
    done = cli.proc("run", "--rm", "--network", "host", "-p", "8080:80", images["busybox"], "true")
    assert done.returncode == 0
    assert "WARNING: Published ports are discarded when using host network mode" in done.stderr


def test_no_daemon_outlives_a_killed_helper_and_rm(cli: Cli, images: dict[str, str], backend: str) -> None:
    """The helper normally stops the daemon; killed, slirp4netns quits by itself and rm stops pasta."""
    cid = ok(cli, "run", "-d", "--network", backend, images["busybox"], "sleep", "60").strip()
    record = json.loads((Path(inspect(cli, cid)["HostsPath"]).parent / "config.json").read_text())
    pid = daemon_pid(cli, cid)
    os.kill(int(record["State"]["HelperPid"]), 9)     # init and its middle process go with it
    if backend == network.SLIRP4NETNS:
        assert gone(pid)
    ok(cli, "rm", "-f", cid)
    assert gone(pid)


def test_restart_publishes_the_same_port_again(cli: Cli, images: dict[str, str]) -> None:
    port = free_port()
    cid = ok(cli, "run", "-d", "-p", f"{port}:80", images["web"]).strip()
    try:
        assert fetch(port) == PAGE
        ok(cli, "restart", "-t", "1", cid)
        assert fetch(port) == PAGE
        ok(cli, "stop", "-t", "1", cid)
        ok(cli, "start", cid)
        assert fetch(port) == PAGE
    finally:
        ok(cli, "rm", "-f", cid)


def cmdline(pid: int) -> bytes:
    """PID's command line, or b"" for a process gone since /proc was listed."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_a_daemon_started_for_a_container_that_fails_to_start_goes_too(backend: str, tmp_path: Path) -> None:
    """The parent starts the daemon as soon as the helper has made its namespaces, before the id
    maps; when the start fails after that (the maps, say), the daemon is stopped, ready or not."""
    made_r, made_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNET)   # as the helper does
            os.write(made_w, b"u")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(made_w)
    try:
        assert os.read(made_r, 1) == b"u"
        path = {b.name: b for b in network.available_backends()}[backend].path
        assert path is not None
        link = network.Attachment(network.Plan(backend, path, (), str(tmp_path)))
        link.begin(child)

        def daemons() -> list[int]:
            return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if pid != child and str(child).encode() in cmdline(pid)]

        # pasta execs twice and forks into the background: look until one of its processes shows
        assert wait_for(lambda: bool(daemons()), 5), "no daemon was started"
        assert link.finish(wanted=False) is None
        assert wait_for(lambda: not daemons(), 5), f"the {backend} daemon outlived the failed start: {daemons()}"
        assert not (tmp_path / network.STATE_FILE).exists()
    finally:
        os.close(made_r)
        os.kill(child, 9)
        os.waitpid(child, 0)
