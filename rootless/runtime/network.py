"""A container's network: host, none (loopback only) or private, through pasta or slirp4netns.

    host      the host's network namespace, shared (the HPC choice: nothing in between)
    none      a network namespace of its own with only ``lo``, brought up
    private   a network namespace of its own, joined to the host by a user-mode network
              daemon: pasta (package passt; preferred) or slirp4netns; outbound access,
              docker's ``-p [IP:]HOST:CTR[/tcp|udp]`` forwarding, and the host's loopback
              reachable at the gateway address (``host.containers.internal``)

How a private network comes up, in launch.py's process tree:

    helper    makes the container's user and net namespaces in one unshare and waits for
              its id maps
    parent    (outside the user namespace, as the user) starts the daemon against
              /proc/HELPER (``Attachment.begin``), writes the id maps and lets the helper go
              on: the daemon joins those namespaces, which the user owns, makes the tap
              device and binds the published ports on the host, while the helper mounts the
              root and forks init, which inherits the namespace; the parent then waits for it
              (``Attachment.finish``), completes /etc/hosts with the address the container
              got and lets init go on
    init      brings ``lo`` up, makes its mounts and waits on a pipe (``Attachment.wait_attached``)
              before the exec
    helper    outlives init; once init has exited it stops the daemon (``teardown``)

Neither daemon quits by itself when the namespace goes away: the parent tells the helper
which process it is (a pipe), and the helper stops it.  slirp4netns also watches a pipe
only the container's processes hold (--exit-fd), so it quits even if they are killed;
for pasta, the pid and start time (against a reused pid) are kept in ``network.json``
in the container's directory, and ``rm`` or the next start stops one a killed helper
left behind.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import RootlessError
from . import linux

HOST = "host"
NONE = "none"
PRIVATE = "private"
PASTA = "pasta"
SLIRP4NETNS = "slirp4netns"
BACKENDS = (PASTA, SLIRP4NETNS)
#: What ``--network`` and the config file's ``"network"`` accept; ``bridge`` (docker's
#: default's name) and ``private`` pick the first usable backend.
MODES = (HOST, NONE, PRIVATE, "bridge", PASTA, SLIRP4NETNS)
DEFAULT_MODE = PRIVATE

#: pasta answers DNS sent here with the host's resolver (also one on the host's loopback).
PASTA_DNS = "169.254.1.1"
SLIRP_DNS = "10.0.2.3"
MTU = 65520
HOST_ALIASES = "host.containers.internal host.docker.internal"
STATE_FILE = "network.json"
LOG_FILE = "network.log"
START_TIMEOUT = 30.0

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class NetworkError(RootlessError):
    """The container's network cannot be what was asked: a bad option, a missing tool, a busy port."""


# -- -p / --publish ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Port:
    """One published port.  ``host`` 0 means any free port, chosen when the container starts;
    ``host_end`` > ``host`` means a free one of that range (docker's ``8000-8010:80``)."""

    container: int
    host: int = 0
    proto: str = "tcp"
    host_ip: str = ""          # "" = every address
    host_end: int = 0

    @property
    def key(self) -> str:
        return f"{self.container}/{self.proto}"

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Port:
        return cls(int(d["container"]), int(d.get("host", 0)), str(d.get("proto", "tcp")),
                   str(d.get("host_ip", "")), int(d.get("host_end", 0)))


def _port_range(text: str) -> tuple[int, int]:
    """``80`` or ``8000-8010`` -> (start, end); ValueError unless 1 <= start <= end <= 65535."""
    start_text, sep, end_text = text.partition("-")
    if not start_text.isdigit() or (sep and not end_text.isdigit()):
        raise ValueError(text)
    start = int(start_text)
    end = int(end_text) if sep else start
    if not 0 < start <= end <= 65535:
        raise ValueError(text)
    return start, end


def parse_publish(spec: str) -> list[Port]:
    """docker's ``-p [IP:][HOST:]CTR[/PROTO]``, ranges included, with docker's messages for bad ones."""
    parts = spec.split(":")
    if len(parts) == 1:
        ip, host, ctr = "", "", parts[0]
    elif len(parts) == 2:
        ip, host, ctr = "", parts[0], parts[1]
    else:
        ip, host, ctr = ":".join(parts[:-2]), parts[-2], parts[-1]
    ctr, _, proto = ctr.partition("/")
    if not ctr:
        raise NetworkError(f"no port specified: {spec}<empty>", "write -p [IP:]HOST_PORT:CONTAINER_PORT[/PROTO]")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise NetworkError(f"invalid proto: {proto}", "use tcp or udp")
    if proto == "sctp":
        raise NetworkError("invalid proto: sctp: rootless networks forward only tcp and udp", "use tcp or udp")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise NetworkError(f"invalid IP address: {ip}", "give an address of this host, or leave it out") from None
    try:
        start, end = _port_range(ctr)
    except ValueError:
        raise NetworkError(f"invalid containerPort: {ctr}", "container ports are numbers from 1 to 65535") from None
    host_start = host_end = 0
    if host:
        try:
            host_start, host_end = _port_range(host)
        except ValueError:
            raise NetworkError(f"invalid hostPort: {host}", "host ports are numbers from 1 to 65535") from None
        if end - start != host_end - host_start and end != start:
            raise NetworkError(f"invalid ranges specified for container and host Ports: {ctr} and {host}",
                               "give ranges of the same length, or one container port")
    if start == end:
        return [Port(start, host_start, proto, ip, host_end if host_end != host_start else 0)]
    return [Port(c, host_start + i if host else 0, proto, ip) for i, c in enumerate(range(start, end + 1))]


def exposed_ports(image_config: Mapping[str, Any]) -> list[Port]:
    """-P: each port the image EXPOSEs, on a free host port."""
    out = []
    for key in image_config.get("ExposedPorts") or {}:
        number, _, proto = str(key).partition("/")
        if number.isdigit() and (proto or "tcp") in ("tcp", "udp"):
            out.append(Port(int(number), 0, proto or "tcp"))
    return out


def port_bindings(ports: Iterable[Port]) -> dict[str, list[dict[str, str]]]:
    """docker's HostConfig.PortBindings / NetworkSettings.Ports shape."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in ports:
        host = f"{p.host}-{p.host_end}" if p.host_end else (str(p.host) if p.host else "")
        out.setdefault(p.key, []).append({"HostIp": p.host_ip, "HostPort": host})
    return out


def ports_column(bindings: Mapping[str, Any] | None) -> str:
    """``docker ps``'s PORTS from NetworkSettings.Ports: ``0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp``."""
    shown = []
    for key, hosts in (bindings or {}).items():
        for h in hosts or []:
            ip = h.get("HostIp") or "0.0.0.0"
            shown.append(f"{f'[{ip}]' if ':' in ip else ip}:{h.get('HostPort', '')}->{key}")
    return ", ".join(shown)


# -- the mode and the backend ----------------------------------------------------------------------

def resolve_mode(value: object) -> str:
    """``--network`` (or the config file's ``"network"``) -> host, none, private, pasta or slirp4netns."""
    text = DEFAULT_MODE if value is None or value == "" else str(value)
    if text == "bridge":
        return PRIVATE
    if text not in MODES:
        raise NetworkError(f"network {text} not found",
                           "use host, none, private (the default), pasta or slirp4netns")
    return text


def run_options(network: str | None, configured: object, publish: Sequence[str], publish_all: bool,
                image_config: Mapping[str, Any]) -> tuple[str, list[Port], str | None]:
    """``run``'s --network (else the config file's ``"network"``), -p and -P -> (mode, ports, a warning).

    Published ports need a network of the container's own; with host or none they are
    dropped with docker's warning.  Where private is only the default (neither asked for
    nor configured) and no backend is usable, the container gets the host's network and
    a warning saying why: a host without pasta, slirp4netns or /dev/net/tun still runs
    containers, as before there were private networks.
    """
    mode = resolve_mode(network if network is not None else configured)
    ports = [p for spec in publish for p in parse_publish(spec)]
    if publish_all:
        asked = {p.key for p in ports}
        ports += [p for p in exposed_ports(image_config) if p.key not in asked]
    warning = None
    if mode == PRIVATE and network is None and configured is None and not ports:
        try:
            choose_backend(PRIVATE)
        except NetworkError as e:
            mode, warning = HOST, f"WARNING: {e.message}: the container uses the host's network"
    if ports and mode in (HOST, NONE):
        return mode, [], f"WARNING: Published ports are discarded when using {mode} network mode"
    return mode, ports, warning


@dataclass(frozen=True)
class Backend:
    """A user-mode network daemon, and whether it can be used here (and if not, why and what to do)."""

    name: str
    path: str | None
    usable: bool
    detail: str          # what was found, or why it cannot be used
    hint: str = ""

    def as_json(self) -> dict[str, object]:
        return {"Name": self.name, "Path": self.path, "Usable": self.usable, "Detail": self.detail,
                "Hint": self.hint}


def has_default_route(route: str = "/proc/net/route", route6: str = "/proc/net/ipv6_route") -> bool:
    """Whether an interface other than lo holds a default route (pasta copies it, and refuses without)."""
    try:
        with open(route) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1] == "00000000" and fields[0] != "lo" and int(fields[3], 16) & 0x1:
                    return True
    except (OSError, ValueError):
        pass
    try:
        with open(route6) as f:
            for line in f:
                fields = line.split()
                # destination ::/0, up (RTF_UP 0x1) and not a reject route (RTF_REJECT 0x200)
                if (len(fields) >= 10 and fields[0] == "0" * 32 and fields[1] == "00" and fields[9] != "lo"
                        and int(fields[8], 16) & 0x1 and not int(fields[8], 16) & 0x200):
                    return True
    except (OSError, ValueError):
        pass
    return False


def _tun_problem(tun: str) -> str | None:
    try:
        fd = os.open(tun, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"{tun}: {e.strerror}"
    os.close(fd)
    return None


def available_backends(which: Callable[[str], str | None] = shutil.which, tun: str = "/dev/net/tun",
                       default_route: Callable[[], bool] = has_default_route) -> list[Backend]:
    """pasta and slirp4netns, best first, each usable or not with the reason (``rootless info`` shows these)."""
    tun_problem = _tun_problem(tun)
    tun_hint = "as root: modprobe tun; chmod 0666 /dev/net/tun"
    out = []
    for name, package in ((PASTA, "passt"), (SLIRP4NETNS, "slirp4netns")):
        path = which(name)
        if path is None:
            out.append(Backend(name, None, False, "not found", f"as root: apt-get install {package}"))
        elif tun_problem:
            out.append(Backend(name, path, False, tun_problem, tun_hint))
        elif name == PASTA and not default_route():
            out.append(Backend(name, path, False, "no default route: pasta copies the addresses and routes of the "
                                                  "host's interface that has one",
                               "slirp4netns works without one; or use --network host"))
        else:
            out.append(Backend(name, path, True, path))
    return out


def choose_backend(mode: str, backends: Sequence[Backend] | None = None) -> Backend:
    """The backend for MODE (private: the first usable one), or a NetworkError saying why there is none."""
    found = list(backends) if backends is not None else available_backends()
    wanted = [b for b in found if mode == PRIVATE or b.name == mode]
    for b in wanted:
        if b.usable:
            return b
    why = "; ".join(f"{b.name}: {b.detail}" for b in wanted)
    hints = "; ".join(dict.fromkeys(b.hint for b in wanted if b.hint))
    raise NetworkError(f"cannot set up a private network ({why})",
                       f"{hints}; or run with --network host" if hints else "run with --network host")


# -- the plan: what the parent starts, decided before anything is forked -----------------------------

@dataclass(frozen=True)
class Plan:
    """A private network for one start of a container; its ports have concrete host numbers."""

    backend: str
    path: str                          # the daemon's executable
    ports: tuple[Port, ...]
    state_dir: str                     # the container's directory: network.json, network.log
    hosts_file: str | None = None      # the generated /etc/hosts, completed with the address
    hostname: str = ""
    host_loopback: bool = True         # the host's 127.0.0.1 reachable at the gateway address
    endpoint: str = ""                 # "NAME (ID)", for docker's messages


def plan(mode: str, ports: Sequence[Port], *, state_dir: str, hosts_file: str | None = None, hostname: str = "",
         host_loopback: bool = True, endpoint: str = "", backends: Sequence[Backend] | None = None) -> Plan | None:
    """A Plan for a private MODE (None for host and none): the backend chosen, stale daemons of an
    earlier start stopped, and each published port checked free, or given one, on the host."""
    if mode in (HOST, NONE):
        return None
    backend = choose_backend(mode, backends)
    assert backend.path is not None
    v6 = next((p for p in ports if ":" in p.host_ip), None)
    if backend.name == SLIRP4NETNS and v6 is not None:
        raise NetworkError(f"slirp4netns cannot publish on an IPv6 address ({v6.host_ip})",
                           "publish on an IPv4 address, or use --network pasta")
    teardown_dir(state_dir)
    return Plan(backend.name, backend.path, tuple(allocate(ports, endpoint)), state_dir, hosts_file, hostname,
                host_loopback, endpoint)


def allocate(ports: Sequence[Port], endpoint: str = "") -> list[Port]:
    """Each port with a concrete, currently free host port: docker's messages where one is taken."""
    out: list[Port] = []
    taken: set[tuple[str, int]] = set()
    for p in ports:
        if p.host and not p.host_end:
            _check_free(p.proto, p.host_ip, p.host, endpoint)
            number = p.host
        elif p.host_end:
            number = next((n for n in range(p.host, p.host_end + 1)
                           if (p.proto, n) not in taken and _is_free(p.proto, p.host_ip, n)), 0)
            if not number:
                raise NetworkError(f"driver failed programming external connectivity on endpoint {endpoint}: "
                                   f"all ports from {p.host} to {p.host_end} are allocated",
                                   "free one of them, or publish on another range")
        else:
            number = _free_port(p.proto, p.host_ip, taken)
        taken.add((p.proto, number))
        out.append(Port(p.container, number, p.proto, p.host_ip))
    return out


def _bind_probe(proto: str, ip: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        if proto == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT leftovers don't count
        sock.bind((ip or "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _is_free(proto: str, ip: str, port: int) -> bool:
    try:
        _bind_probe(proto, ip, port).close()
        return True
    except OSError:
        return False


def _check_free(proto: str, ip: str, port: int, endpoint: str) -> None:
    where = f"{ip or '0.0.0.0'}:{port}" if ":" not in ip else f"[{ip}]:{port}"
    family = "6" if ":" in ip else "4"
    try:
        _bind_probe(proto, ip, port).close()
    except OSError as e:
        prefix = f"driver failed programming external connectivity on endpoint {endpoint}: " \
                 f"Error starting userland proxy: "
        if e.errno == errno.EADDRINUSE:
            raise NetworkError(f"{prefix}listen {proto}{family} {where}: bind: address already in use",
                               f"another program holds {proto} port {port}: stop it, or publish on another port") \
                from None
        if e.errno == errno.EACCES:
            start = _unprivileged_port_start()
            raise NetworkError(f"{prefix}cannot expose privileged port {port}: listen {proto}{family} {where}: "
                               "bind: permission denied",
                               f"choose a port >= {start}, or as root: sysctl "
                               f"net.ipv4.ip_unprivileged_port_start={port}") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise NetworkError(f"{prefix}listen {proto}{family} {where}: bind: cannot assign requested address",
                               f"{ip} is not an address of this host") from None
        raise NetworkError(f"{prefix}listen {proto}{family} {where}: bind: {e.strerror}") from None


def _free_port(proto: str, ip: str, taken: set[tuple[str, int]]) -> int:
    for _ in range(100):
        with _bind_probe(proto, ip, 0) as sock:
            number = int(sock.getsockname()[1])
        if (proto, number) not in taken:
            return number
    raise NetworkError("no free host port to publish on")


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


# -- /etc/hosts and /etc/resolv.conf ------------------------------------------------------------------

@dataclass(frozen=True)
class Addresses:
    """What the container got, read back from its namespace once the daemon configured it."""

    ipv4: str | None = None
    gateway: str | None = None
    ipv6: str | None = None
    interface: str | None = None


HOSTS_BASE = ("127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
              "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters")


def hosts_text(mode: str, hostname: str, addresses: Addresses | None = None, host_loopback: bool = True,
               host_hosts: str = "/etc/hosts") -> str:
    """The container's /etc/hosts: the host's for host mode, docker's own otherwise, naming the container once."""
    lines: list[str] = list(HOSTS_BASE)
    if mode == HOST:
        try:
            with open(host_hosts) as f:
                lines = [line.rstrip("\n") for line in f]
        except OSError:
            pass
    if addresses is not None and addresses.ipv4:
        lines.append(f"{addresses.ipv4}\t{hostname}")
        if addresses.gateway and host_loopback:
            lines.append(f"{addresses.gateway}\t{HOST_ALIASES}")
    else:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_text(mode: str, backend: str | None = None, host_resolv: str = "/etc/resolv.conf") -> str | None:
    """The container's /etc/resolv.conf: the host's (host mode), or its search and options lines with
    the daemon's DNS forwarder as the nameserver; None for ``none`` (nothing to resolve with)."""
    if mode == NONE:
        return None
    try:
        with open(host_resolv) as f:
            text = f.read()
    except OSError:
        text = ""
    if mode == HOST or backend is None:
        return text
    kept = [line for line in text.splitlines() if line.split()[:1] in (["search"], ["domain"], ["options"])]
    server = PASTA_DNS if backend == PASTA else SLIRP_DNS
    return "\n".join([f"nameserver {server}", *kept]) + "\n"


def write_etc_files(directory: str, hostname: str, mode: str, backend: str | None = None) -> dict[str, str]:
    """A container's /etc/hosts, /etc/hostname and (unless it keeps the image's) /etc/resolv.conf,
    written into DIRECTORY to be bound over the image's: container path -> file."""
    files = {"/etc/hosts": hosts_text(mode, hostname), "/etc/hostname": hostname + "\n"}
    resolv = resolv_text(mode, backend)
    if resolv is not None:
        files["/etc/resolv.conf"] = resolv
    out = {}
    for target, text in files.items():
        path = os.path.join(directory, os.path.basename(target))
        with open(path, "w") as f:
            f.write(text)
        out[target] = path
    return out


# -- in init: the namespace's side ----------------------------------------------------------------

def loopback_up() -> None:
    """Bring ``lo`` up in this (new) network namespace, as docker does for every container."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, request + b"\0" * 22)[:18])[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP) + b"\0" * 22)


# -- in the parent: starting the daemon ---------------------------------------------------------

class Attachment:
    """One private network's pipes between the processes of launch.py, made before the fork.

    ``go`` (parent -> init): init waits on it until the daemon is attached.  ``daemon``
    (parent -> helper): which process the daemon is, for the helper to stop at the end;
    in memory, because ``rm -f`` may remove the container's directory before the helper
    gets there.  ``alive`` (helper -> slirp4netns' --exit-fd): only the helper, its middle
    process and init hold the write end, so slirp4netns quits when they are gone, even
    killed.  The children call ``forked()``, the parent ``parent_side()``, then ``begin``
    once the helper has made its namespaces and ``finish`` once their id maps are written.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._go_r, self._go_w = os.pipe()
        self._daemon_r, self._daemon_w = os.pipe()
        self.alive_r, self._alive_w = os.pipe()
        self._starting: Starting | None = None
        self._problem: NetworkError | None = None

    def forked(self) -> None:
        """In the forked helper: the read ends stay, for init (go) and the helper itself (daemon)."""
        os.close(self._go_w)
        os.close(self._daemon_w)
        os.close(self.alive_r)

    def parent_side(self) -> None:
        os.close(self._go_r)
        os.close(self._daemon_r)
        os.close(self._alive_w)

    def begin(self, pid: int) -> None:
        """Start the daemon on process PID's network namespace (the helper's: init's to be)."""
        try:
            self._starting = begin(self.plan, pid, self.alive_r)
        except NetworkError as e:
            self._problem = e

    def finish(self, wanted: bool = True) -> str | None:
        """Once the daemon has configured the namespace, let init go on; an error message if
        that failed.  Not WANTED (the container failed to start otherwise): the daemon goes."""
        try:
            if self._problem is not None:
                raise self._problem
            assert self._starting is not None
            if not wanted:
                self._starting.abandon()
                return None
            daemon, addresses = self._starting.finish()
            os.write(self._daemon_w, json.dumps(asdict(daemon)).encode())
            if self.plan.hosts_file:
                _write_file(self.plan.hosts_file, hosts_text(PRIVATE, self.plan.hostname, addresses,
                                                             self.plan.host_loopback))
            os.write(self._go_w, b"g")
        except NetworkError as e:
            return e.message + (f" ({e.hint})" if e.hint else "")
        finally:
            self.close()
        return None

    def close(self) -> None:
        """The parent is done: init and the helper see EOF on their ends from now on."""
        for name in ("_go_w", "_daemon_w", "alive_r"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def wait_attached(self) -> bool:
        """In init: block until the parent says the daemon is attached (True) or gives up (False)."""
        try:
            while True:
                try:
                    return os.read(self._go_r, 1) == b"g"
                except InterruptedError:
                    continue
        finally:
            os.close(self._go_r)

    def daemon(self) -> Daemon | None:
        """In the helper, at the end: the daemon the parent started, if it started one."""
        data = b""
        while chunk := os.read(self._daemon_r, 4096):
            data += chunk
        os.close(self._daemon_r)
        try:
            d = json.loads(data)
            return Daemon(int(d["pid"]), d.get("start_ticks"))
        except (ValueError, KeyError, TypeError):
            return None


def begin(plan: Plan, pid: int, alive: int | None = None) -> Starting:
    """Start PLAN's daemon on process PID's network namespace; ``finish()`` waits until the
    container's side is configured.  The daemon joins PID's user namespace, whose owner the
    user is, even before its id maps are written: it may start as soon as the namespace exists.

    ALIVE, where given, is a pipe's read end that reaches EOF when the container is gone
    (slirp4netns then quits by itself; pasta has no such option).
    """
    return _PastaStart(plan, pid) if plan.backend == PASTA else _SlirpStart(plan, pid, alive)


class Starting:
    """A daemon started and not yet known to be ready."""

    def __init__(self, plan: Plan, pid: int) -> None:
        self.plan = plan
        self.pid = pid
        self.log_path = os.path.join(plan.state_dir, LOG_FILE)
        self.proc: subprocess.Popen[bytes] | None = None

    def _popen(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             pass_fds=pass_fds, start_new_session=True)
            except OSError as e:
                raise NetworkError(f"cannot run {self.plan.path}: {e.strerror}") from None

    def finish(self) -> tuple[Daemon, Addresses]:
        """Wait until the daemon has configured the namespace; its state is then saved."""
        daemon = self._ready()
        try:
            addresses = read_addresses(self.pid)
            _save_state(self.plan.state_dir, daemon, self.plan, addresses)
            return daemon, addresses
        except BaseException:
            _stop(daemon)
            raise

    def abandon(self) -> None:
        """The container will not run: the daemon goes, ready or not."""
        try:
            daemon = self._ready()
        except NetworkError:
            return
        _stop(daemon)

    def _ready(self) -> Daemon:
        raise NotImplementedError


def pasta_argv(plan: Plan, pid: int, pidfile: str) -> list[str]:
    argv = [plan.path, "--config-net", "--quiet", "--pid", pidfile, "--dns-forward", PASTA_DNS,
            # no forwarding between the two loopbacks, and none of pasta's automatic port forwarding:
            # only what -p asks for
            "--tcp-ns", "none", "--udp-ns", "none"]
    if not plan.host_loopback:
        argv.append("--no-map-gw")
    for proto, flag in (("tcp", "--tcp-ports"), ("udp", "--udp-ports")):
        specs = [f"{p.host_ip + '/' if p.host_ip else ''}{p.host}:{p.container}" for p in plan.ports
                 if p.proto == proto]
        for spec in specs or ["none"]:
            argv += [flag, spec]
    return argv + [str(pid)]


@dataclass(frozen=True)
class Daemon:
    pid: int
    start_ticks: int | None


class _PastaStart(Starting):
    """pasta configures the namespace, then forks into the background and exits: its exit
    status says whether the network is ready."""

    def __init__(self, plan: Plan, pid: int) -> None:
        super().__init__(plan, pid)
        self.pidfile = os.path.join(plan.state_dir, "pasta.pid")
        _unlink(self.pidfile)
        self._popen(pasta_argv(plan, pid, self.pidfile))
        self._daemon: Daemon | None = None

    def _ready(self) -> Daemon:
        if self._daemon is not None:
            return self._daemon
        assert self.proc is not None
        try:
            returncode = linux.wait_child(self.proc, START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise NetworkError(f"pasta did not set up the network within {START_TIMEOUT:.0f} s",
                               f"see {self.log_path}") from None
        if returncode != 0:
            raise NetworkError(f"pasta failed to set up the container's network: {_log_tail(self.log_path)}",
                               f"see {self.log_path}")
        try:
            with open(self.pidfile) as f:
                daemon_pid = int(f.read().strip())
        except (OSError, ValueError):
            raise NetworkError("pasta did not write its pid file", f"see {self.log_path}") from None
        self._daemon = Daemon(daemon_pid, _start_ticks(daemon_pid))
        return self._daemon


class _SlirpStart(Starting):
    """slirp4netns says on --ready-fd that the namespace is configured; the published ports are
    then added through its API socket."""

    def __init__(self, plan: Plan, pid: int, alive: int | None) -> None:
        super().__init__(plan, pid)
        # The API socket's path must fit sockaddr_un (108 bytes): a short private directory.
        self.api_dir = tempfile.mkdtemp(prefix="rootless-net-")
        self.ready_r, ready_w = os.pipe()
        argv = [plan.path, "--configure", f"--mtu={MTU}", f"--ready-fd={ready_w}",
                f"--api-socket={self.api_dir}/api.sock"]
        if not plan.host_loopback:
            argv.append("--disable-host-loopback")
        if alive is not None:
            argv.append(f"--exit-fd={alive}")
        try:
            self._popen(argv + [str(pid), "tap0"], (ready_w,) if alive is None else (ready_w, alive))
        except BaseException:
            self._close()
            raise
        finally:
            os.close(ready_w)
        assert self.proc is not None
        self.daemon = Daemon(self.proc.pid, _start_ticks(self.proc.pid))

    def _ready(self) -> Daemon:
        if self.ready_r < 0:
            return self.daemon
        try:
            readable, _, _ = select.select([self.ready_r], [], [], START_TIMEOUT)
            if not readable or os.read(self.ready_r, 1) != b"1":
                raise NetworkError(f"slirp4netns failed to set up the container's network: "
                                   f"{_log_tail(self.log_path)}", f"see {self.log_path}")
            for p in self.plan.ports:
                _slirp_forward(f"{self.api_dir}/api.sock", p, self.plan.endpoint)
        except BaseException:
            _stop(self.daemon)
            raise
        finally:
            self._close()
        return self.daemon

    def _close(self) -> None:
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        shutil.rmtree(self.api_dir, ignore_errors=True)   # the forwards are made; nothing more is asked of it


def _slirp_forward(api: str, p: Port, endpoint: str) -> None:
    request = {"execute": "add_hostfwd",
               "arguments": {"proto": p.proto, "host_addr": p.host_ip or "0.0.0.0", "host_port": p.host,
                             "guest_port": p.container}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(START_TIMEOUT)
        sock.connect(api)
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = {"error": {"desc": answer.decode(errors="replace")}}
    if "error" in reply:
        where = f"{p.host_ip or '0.0.0.0'}:{p.host}"
        raise NetworkError(f"driver failed programming external connectivity on endpoint {endpoint}: "
                           f"slirp4netns cannot forward {where} to {p.key}: {reply['error'].get('desc', reply)}",
                           f"is {p.proto} port {p.host} in use?")


def read_addresses(pid: int, proc: str = "/proc") -> Addresses:
    """The container's IPv4 address, gateway and first global IPv6 address, from /proc/PID/net."""
    base = f"{proc}/{pid}/net"
    try:
        with open(f"{base}/fib_trie") as f:
            trie = f.read()
    except OSError:
        trie = ""
    gateway = interface = None
    try:
        with open(f"{base}/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 2 and fields[1] == "00000000":
                    gateway = socket.inet_ntoa(struct.pack("<I", int(fields[2], 16)))
                    interface = fields[0]
                    break
    except (OSError, ValueError):
        pass
    ipv6 = None
    try:
        with open(f"{base}/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[5] != "lo" and int(fields[3], 16) == 0:   # scope global
                    ipv6 = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
                    break
    except (OSError, ValueError):
        pass
    return Addresses(local_ipv4(trie), gateway, ipv6, interface)


def local_ipv4(fib_trie: str) -> str | None:
    """The first non-loopback address the kernel's fib_trie lists as a local /32 host route."""
    previous = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            previous = text[3:].strip()
        elif text == "/32 host LOCAL" and previous and not previous.startswith("127."):
            return previous
    return None


# -- the end: stopping the daemon --------------------------------------------------------------

def _save_state(state_dir: str, daemon: Daemon, plan: Plan, addresses: Addresses) -> None:
    _write_file(os.path.join(state_dir, STATE_FILE),
                json.dumps({"Backend": plan.backend, "Pid": daemon.pid, "StartTicks": daemon.start_ticks,
                            "Ports": [p.as_json() for p in plan.ports], "IPAddress": addresses.ipv4,
                            "Gateway": addresses.gateway, "GlobalIPv6Address": addresses.ipv6}))


def teardown(link: Attachment | None) -> None:
    """In the helper, once init has exited: stop the daemon, if one was started and is still that process."""
    if link is None:
        return
    daemon = link.daemon()
    if daemon is not None:
        _stop(daemon, wait=bool(link.plan.ports))
    _unlink(os.path.join(link.plan.state_dir, STATE_FILE))


def teardown_dir(state_dir: str) -> None:
    """Stop a daemon that network.json names, if it still runs: one a killed helper left behind."""
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path) as f:
            state = json.load(f)
        daemon = Daemon(int(state["Pid"]), state.get("StartTicks"))
    except (OSError, ValueError, KeyError, TypeError):
        return
    _stop(daemon)
    _unlink(path)


def _stop(daemon: Daemon, wait: bool = True) -> None:
    """SIGTERM, then SIGKILL after a second; never a process that merely reuses the pid (the pidfd
    is opened before the start time is checked).  With WAIT, until it is gone, so that the ports
    it published are free again when the container's run returns; without, only the signal: its
    exit closes its tap device, which waits for an RCU grace period in the kernel (20-60 ms
    measured here), time a container without ports need not spend."""
    try:
        fd = os.pidfd_open(daemon.pid)
    except OSError:   # gone already
        return
    try:
        if daemon.start_ticks is None or _start_ticks(daemon.pid) != daemon.start_ticks:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(fd, sig)
            except (ProcessLookupError, PermissionError):
                break
            if not wait or linux.wait_pidfd(fd, 1.0):
                break
        _reap(daemon.pid)
    finally:
        os.close(fd)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)   # slirp4netns is the parent's child while the parent lives
    except ChildProcessError:
        pass


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (None once gone, or a zombie that only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if not fields or fields[0] == b"Z":
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip() and "syslog" not in line]
    except OSError:
        return "(no log)"
    return "; ".join(lines[-3:]) or "(no message)"


def _write_file(path: str, text: str) -> None:
    """In place: the file may already be bound into the container's mount namespace by path."""
    with open(path, "w") as f:
        f.write(text)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- what the container record keeps ------------------------------------------------------------

def settings(state_dir: str) -> dict[str, object]:
    """docker inspect's NetworkSettings of a started private network (empty where there is none)."""
    try:
        with open(os.path.join(state_dir, STATE_FILE)) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return {}
    return {"Ports": port_bindings(Port.from_json(p) for p in state.get("Ports", [])),
            "IPAddress": state.get("IPAddress") or "", "Gateway": state.get("Gateway") or "",
            "GlobalIPv6Address": state.get("GlobalIPv6Address") or "", "Backend": state.get("Backend", "")}
