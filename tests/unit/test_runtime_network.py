"""network.py's pure parts: docker's -p grammar and messages, modes, backends, /etc files, pasta's argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from rootless.runtime import network
from rootless.runtime.network import Addresses, Backend, NetworkError, Plan, Port


@pytest.mark.parametrize(("spec", "ports"), [
    ("80", [Port(80)]),
    ("8080:80", [Port(80, 8080)]),
    ("8080:80/udp", [Port(80, 8080, "udp")]),
    ("8080:80/TCP", [Port(80, 8080, "tcp")]),
    ("127.0.0.1:8080:80", [Port(80, 8080, "tcp", "127.0.0.1")]),
    ("127.0.0.1::80", [Port(80, 0, "tcp", "127.0.0.1")]),
    ("[::1]:8080:80", [Port(80, 8080, "tcp", "::1")]),
    ("::1:8080:80", [Port(80, 8080, "tcp", "::1")]),
    ("8000-8001:80-81", [Port(80, 8000), Port(81, 8001)]),
    ("80-81", [Port(80), Port(81)]),
    ("8000-8010:80", [Port(80, 8000, "tcp", "", 8010)]),
])
def test_publish_specs_parse_as_docker_reads_them(spec: str, ports: list[Port]) -> None:
    assert network.parse_publish(spec) == ports


@pytest.mark.parametrize(("spec", "message"), [
    ("", "no port specified: <empty>"),
    ("8080:", "no port specified: 8080:<empty>"),
    ("abc", "invalid containerPort: abc"),
    ("0", "invalid containerPort: 0"),
    ("70000", "invalid containerPort: 70000"),
    ("81-80", "invalid containerPort: 81-80"),
    ("x:80", "invalid hostPort: x"),
    ("80/icmp", "invalid proto: icmp"),
    ("80/sctp", "invalid proto: sctp: rootless networks forward only tcp and udp"),
    ("1.2.3:80:80", "invalid IP address: 1.2.3"),
    ("8000-8002:80-81", "invalid ranges specified for container and host Ports: 80-81 and 8000-8002"),
])
def test_bad_publish_specs_get_dockers_messages(spec: str, message: str) -> None:
    with pytest.raises(NetworkError) as e:
        network.parse_publish(spec)
    assert e.value.message == message
    assert e.value.exit_code == 125


def test_modes_and_their_aliases() -> None:
    assert network.resolve_mode(None) == network.resolve_mode("") == network.resolve_mode("bridge") == "private"
    for mode in ("host", "none", "private", "pasta", "slirp4netns"):
        assert network.resolve_mode(mode) == mode
    with pytest.raises(NetworkError, match="network moon not found"):
        network.resolve_mode("moon")


def test_run_options_publish_all_and_ports_with_host_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    image = {"ExposedPorts": {"80/tcp": {}, "53/udp": {}, "9/sctp": {}}}
    mode, ports, warning = network.run_options("pasta", None, ["8080:80"], True, image)
    assert (mode, warning) == ("pasta", None)
    assert ports == [Port(80, 8080), Port(53, 0, "udp")]          # -p wins over -P for 80/tcp; sctp skipped
    mode, ports, warning = network.run_options(None, "host", ["8080:80"], False, image)
    assert (mode, ports) == ("host", [])
    assert warning == "WARNING: Published ports are discarded when using host network mode"


def test_the_default_falls_back_to_host_only_when_neither_asked_nor_configured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(mode: str, backends: object = None) -> Backend:
        raise NetworkError("cannot set up a private network (pasta: not found; slirp4netns: not found)")

    monkeypatch.setattr(network, "choose_backend", nothing)
    mode, _, warning = network.run_options(None, None, [], False, {})
    assert mode == "host" and warning is not None and "pasta: not found" in warning
    assert network.run_options("private", None, [], False, {})[0] == "private"   # asked for: fails at start
    assert network.run_options(None, "private", [], False, {})[0] == "private"


def test_backends_say_why_they_cannot_be_used(tmp_path: Path) -> None:
    tun = tmp_path / "tun"
    tun.write_text("")
    found = {"pasta": "/usr/bin/pasta", "slirp4netns": "/usr/bin/slirp4netns"}
    usable = network.available_backends(found.get, str(tun), lambda: True)
    assert [(b.name, b.usable) for b in usable] == [("pasta", True), ("slirp4netns", True)]
    no_route = network.available_backends(found.get, str(tun), lambda: False)
    assert [(b.name, b.usable) for b in no_route] == [("pasta", False), ("slirp4netns", True)]
    assert "no default route" in no_route[0].detail
    assert network.choose_backend("private", no_route).name == "slirp4netns"
    missing = network.available_backends({}.get, str(tmp_path / "absent"), lambda: True)
    assert not any(b.usable for b in missing) and missing[0].hint == "as root: apt-get install passt"
    no_tun = network.available_backends(found.get, str(tmp_path / "absent"), lambda: True)
    assert "No such file" in no_tun[1].detail and "chmod 0666 /dev/net/tun" in no_tun[1].hint
    with pytest.raises(NetworkError) as e:
        network.choose_backend("pasta", no_route)
    assert "pasta: no default route" in e.value.message and "slirp4netns" not in e.value.message


def test_default_routes_are_read_from_proc(tmp_path: Path) -> None:
    route, route6 = tmp_path / "route", tmp_path / "ipv6_route"
    header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    route.write_text(header + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    reject = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n")
    route6.write_text(reject)
    assert not network.has_default_route(str(route), str(route6))
    route.write_text(header + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert network.has_default_route(str(route), str(route6))


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     +-- 10.0.2.0/24 2 0 2
        |-- 10.0.2.0
           /24 link UNICAST
        |-- 10.0.2.100
           /32 host LOCAL
"""


def test_addresses_come_back_from_proc(tmp_path: Path) -> None:
    assert network.local_ipv4(FIB_TRIE) == "10.0.2.100"
    assert network.local_ipv4("") is None
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    (net / "fib_trie").write_text(FIB_TRIE)
    (net / "route").write_text("Iface\tDestination\tGateway\n" "tap0\t00000000\t0202000A\t0003\n")
    (net / "if_inet6").write_text("00000000000000000000000000000001 01 80 10 80       lo\n"
                                  "fd000000000000000000000000000002 02 40 00 80     eth0\n")
    assert network.read_addresses(42, str(tmp_path)) == Addresses("10.0.2.100", "10.0.2.2", "fd00::2", "tap0")


def test_hosts_and_resolv_fit_the_mode(tmp_path: Path) -> None:
    private = network.hosts_text("private", "c0ffee", Addresses("10.0.2.100", "10.0.2.2"))
    assert private.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert "10.0.2.100\tc0ffee" in private.splitlines()
    assert "10.0.2.2\thost.containers.internal host.docker.internal" in private.splitlines()
    closed = network.hosts_text("private", "c0ffee", Addresses("10.0.2.100", "10.0.2.2"), host_loopback=False)
    assert "host.containers.internal" not in closed
    assert "127.0.1.1\tc0ffee" in network.hosts_text("none", "c0ffee").splitlines()
    host_hosts = tmp_path / "hosts"
    host_hosts.write_text("127.0.0.1 localhost\n10.1.1.1 cluster-node\n")
    assert network.hosts_text("host", "c0ffee", host_hosts=str(host_hosts)) == \
        "127.0.0.1 localhost\n10.1.1.1 cluster-node\n127.0.1.1\tc0ffee\n"

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nsearch example.org\noptions edns0\n")
    assert network.resolv_text("host", None, str(resolv)) == resolv.read_text()
    assert network.resolv_text("none", None, str(resolv)) is None
    assert network.resolv_text("private", "pasta", str(resolv)) == \
        "nameserver 169.254.1.1\nsearch example.org\noptions edns0\n"
    assert network.resolv_text("private", "slirp4netns", str(resolv)).startswith("nameserver 10.0.2.3\n")


def test_pasta_gets_only_the_forwards_asked_for() -> None:
    plan = Plan("pasta", "/usr/bin/pasta", (Port(80, 8080), Port(53, 5353, "udp", "127.0.0.1")), "/s")
    argv = network.pasta_argv(plan, 1234, "/s/pasta.pid")
    assert argv[0] == "/usr/bin/pasta" and argv[-1] == "1234"
    pairs = list(zip(argv[1:-1], argv[2:-1]))
    assert ("--tcp-ports", "8080:80") in pairs and ("--udp-ports", "127.0.0.1/5353:53") in pairs
    assert ("--tcp-ns", "none") in pairs and ("--udp-ns", "none") in pairs
    assert "--no-map-gw" not in argv
    bare = network.pasta_argv(Plan("pasta", "pasta", (), "/s", host_loopback=False), 1, "p")
    assert ["--tcp-ports", "none"] == bare[bare.index("--tcp-ports"):bare.index("--tcp-ports") + 2]
    assert ["--udp-ports", "none"] == bare[bare.index("--udp-ports"):bare.index("--udp-ports") + 2]
    assert "--no-map-gw" in bare


def test_docker_shapes_for_inspect_and_ps() -> None:
    ports = [Port(80, 8080), Port(53, 5353, "udp", "127.0.0.1"), Port(80, 8081)]
    bindings = network.port_bindings(ports)
    assert bindings == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "", "HostPort": "8081"}],
                        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}
    assert network.ports_column(bindings) == \
        "0.0.0.0:8080->80/tcp, 0.0.0.0:8081->80/tcp, 127.0.0.1:5353->53/udp"
    assert network.ports_column({"80/tcp": [{"HostIp": "::1", "HostPort": "8080"}]}) == "[::1]:8080->80/tcp"
    assert network.ports_column(None) == ""
    assert Port.from_json(Port(80, 8080, "udp", "::1", 0).as_json()) == Port(80, 8080, "udp", "::1")


def test_ports_are_checked_free_and_chosen(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(NetworkError) as e:
            network.allocate([Port(80, port, "tcp", "127.0.0.1")], "web (abc)")
    assert e.value.message == ("driver failed programming external connectivity on endpoint web (abc): Error "
                               f"starting userland proxy: listen tcp4 127.0.0.1:{port}: bind: address already in use")
    chosen = network.allocate([Port(80), Port(81), Port(53, 0, "udp")])
    assert all(p.host > 0 for p in chosen) and len({p.host for p in chosen[:2]}) == 2


def test_slirp4netns_refuses_ipv6_host_addresses(tmp_path: Path) -> None:
    slirp = [Backend("slirp4netns", "/usr/bin/slirp4netns", True, "/usr/bin/slirp4netns")]
    with pytest.raises(NetworkError, match=r"slirp4netns cannot publish on an IPv6 address \(::1\)"):
        network.plan("private", [Port(80, 8080, "tcp", "::1")], state_dir=str(tmp_path), backends=slirp)
