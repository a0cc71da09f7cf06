"""The container verbs: run, ps, rm (more of docker's lifecycle lands here as the runtime grows)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import ImageNotFound, RootlessError
from ._app import App, each, main, pass_app
from ._format import Template, ago, table

if TYPE_CHECKING:
    from ..image.store import ImageRecord
    from ..runtime.containers import Container, Containers


def _containers(app: App) -> Containers:
    from ..runtime.containers import Containers

    return Containers(app.config)


def _image_for_run(app: App, name: str, pull: str, platform: str | None) -> ImageRecord:
    from ..image import reference

    store = app.store
    if pull != "always":
        try:
            return store.resolve(name)
        except ImageNotFound:
            if pull == "never":
                raise
    reference.parse(name)
    from .images import do_pull

    if pull != "always":
        click.echo(f"Unable to find image '{name}' locally", err=True)
    return do_pull(app, name, platform=platform, out=sys.stderr)


@main.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, help="Set an environment variable (KEY=VALUE, or KEY from here).")
@click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), help="Read variables from a file.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="name|uid[:group|gid], looked up in the container's /etc/passwd and /etc/group.")
@click.option("--entrypoint", help="Replace the image's ENTRYPOINT (and drop its CMD).")
@click.option("--name", help="Name the container.")
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-h", "--hostname", help="The container's host name (default: its short id).")
@click.option("--network", "--net", "network",
              help="private (the default: a network of its own through pasta, else slirp4netns), host (the host's) "
              "or none (only loopback); the config file's \"network\" changes the default.")
@click.option("-p", "--publish", multiple=True, help="Publish a container port on the host: [IP:][HOST:]CTR[/tcp|udp].")
@click.option("-P", "--publish-all", is_flag=True, help="Publish every port the image exposes on a free host port.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (it is passed through as it is).")
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container id.")
@click.option("-t", "--tty", is_flag=True, help="Give the container a terminal.")
@click.option("-v", "--volume", "volume", multiple=True,
              help="/host/path:/ctr/path[:ro], NAME:/ctr/path[:ro] (a named volume) or /ctr/path (anonymous).")
@click.option("--tmpfs", multiple=True, help="Mount a tmpfs: /ctr/path[:options].")
@click.option("--read-only", "read_only", is_flag=True, help="Mount the container's root read-only.")
@click.option("--init", "use_init", is_flag=True, help="Run a small init (tini) as pid 1 that reaps zombies and "
              "passes signals on.")
@click.option("--pull", type=click.Choice(["missing", "always", "never"]), default="missing", show_default=True,
              help="When to pull the image.")
@click.option("--platform", help="Platform to pull, if the image must be pulled.")
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: App, image: str, args: tuple[str, ...], env: tuple[str, ...], env_file: tuple[str, ...],
        workdir: str | None, user: str | None, entrypoint: str | None, name: str | None, remove: bool,
        hostname: str | None, network: str | None, publish: tuple[str, ...], publish_all: bool,
        interactive: bool, detach: bool, tty: bool,
        volume: tuple[str, ...], tmpfs: tuple[str, ...], read_only: bool, use_init: bool, pull: str,
        platform: str | None) -> None:
    """Run a command in a new container."""
    from ..image.inspect import read_config
    from ..runtime import network as net
    from ..runtime import spec
    from ..runtime import volumes as vol
    from ..runtime.containers import now

    record = _image_for_run(app, image, pull, platform)
    config = read_config(app.store, record)
    image_config: dict[str, Any] = config.get("config") or {}
    env_items = [item for path in env_file for item in spec.parse_env_file(path)] + list(env)
    network, ports, warning = net.run_options(network, app.config.extra.get("network"), publish, publish_all,
                                              image_config)
    if warning:
        click.echo(warning, err=True)
    volumes = vol.Volumes(app.config)
    mounts = [vol.parse_volume(v, volumes) for v in volume] + [vol.parse_tmpfs(t) for t in tmpfs]
    targets = [os.path.normpath(m.target) for m in mounts]
    duplicate = next((t for t in targets if targets.count(t) > 1), None)
    if duplicate:
        raise RootlessError(f"Duplicate mount point: {duplicate}", "mount one thing per container path")
    mounts += vol.image_volumes(image_config, set(targets), volumes)
    if use_init:
        _init_binary()
    lowers = [str(app.store.layer_path(d)) for d in reversed(record.layers)]
    containers = _containers(app)
    cid = containers.new_id()
    host = hostname or cid[:12]
    process = spec.build(image_config, args, entrypoint=entrypoint, env=env_items, workdir=workdir, user=user,
                         hostname=host, tty=tty)
    # One write makes the whole record, launch and start time included (mark_starting's part):
    # each write is an fsync and a rename on the way to the container's command.
    container = containers.create(name, {
        "Image": record.id,
        "Path": process.args[0], "Args": list(process.args[1:]),
        "Config": {"Image": image, "Entrypoint": [entrypoint] if entrypoint else image_config.get("Entrypoint"),
                   "Cmd": list(args) or image_config.get("Cmd"), "WorkingDir": process.cwd, "User": process.user,
                   "Labels": image_config.get("Labels"), "Hostname": host, "Env": list(process.env), "Tty": tty,
                   "OpenStdin": interactive},
        "HostConfig": {"NetworkMode": network, "PortBindings": net.port_bindings(ports) or None,
                       "PublishAllPorts": publish_all, "AutoRemove": remove, "ReadonlyRootfs": read_only,
                       "Binds": list(volume) or None, "Tmpfs": {t.partition(":")[0]: t.partition(":")[2]
                                                                 for t in tmpfs} or None},
        "Mounts": [m.record() for m in mounts],
        "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0,
                  "StartedAt": now(), "FinishedAt": "0001-01-01T00:00:00Z"},
        "Layers": list(record.layers),
        "IdMap": {"Subids": app.use_subids},
        "Storage": _storage_driver(app),
        "Launch": {"Process": {"Args": list(process.args), "Env": list(process.env),
                               "Cwd": process.cwd, "User": process.user},
                   "Hostname": host, "Network": network, "Ports": [p.as_json() for p in ports],
                   "Lowers": lowers,
                   "Interactive": interactive, "Tty": tty, "ReadOnly": read_only,
                   "Mounts": [dataclasses.asdict(m) for m in mounts], "Init": use_init},
    }, cid)
    sys.exit(_start(app, container, detach=detach, interactive=interactive, remove=remove, fresh=True))


def _start(app: App, container: Container, *, detach: bool, interactive: bool, remove: bool,
           fresh: bool = False) -> int:
    """Start CONTAINER from its record; attached, wait and return its exit code.  A FRESH container
    was just made with its start time in it."""
    from ..runtime import idmap, launch, network, spec
    from ..runtime.containers import mark_exited, mark_running, mark_starting
    from ..runtime.volumes import Mount

    saved = container.record["Launch"]
    mode = saved["Network"]
    etc = network.write_etc_files(str(container.dir), saved["Hostname"], mode)
    try:
        plan = network.plan(mode, [network.Port.from_json(p) for p in saved.get("Ports", [])],
                            state_dir=str(container.dir), hosts_file=etc["/etc/hosts"], hostname=saved["Hostname"],
                            host_loopback=app.config.extra.get("network-host-loopback", True) is not False,
                            endpoint=f"{container.name} ({container.id})")
    except RootlessError:
        if remove:
            _remove_container(app, container)
        raise
    if plan is not None:
        etc = network.write_etc_files(str(container.dir), saved["Hostname"], mode, plan.backend)
    p = saved["Process"]
    process = spec.ProcessSpec(tuple(p["Args"]), tuple(p["Env"]), p["Cwd"], p["User"])
    mounts = [Mount(**m) for m in saved.get("Mounts", [])]

    def on_exit(code: int) -> None:
        mark_exited(container, code)
        if remove:
            _remove_container(app, container)

    ids = idmap.for_record(container.record)
    try:
        shared = _shared_lower(app, container, list(saved["Lowers"]), ids)
    except RootlessError:
        if remove:
            _remove_container(app, container)
        raise

    job = launch.Launch(rootfs=str(container.rootfs), lowers=list(saved["Lowers"]), upper=str(container.upper),
                        work=str(container.work), process=process, ids=ids,
                        hostname=saved["Hostname"],
                        etc_files=etc, network=mode if plan is None else network.PRIVATE, net=plan,
                        fuse_log=str(container.dir / "fusefs.log"),
                        log_path=str(container.dir / "container.log"), interactive=interactive and not detach,
                        detach=detach, on_exit=on_exit, mounts=mounts, readonly=bool(saved.get("ReadOnly")),
                        init_binary=_init_binary() if saved.get("Init") else None,
                        shared_lower=shared.path if shared else None)
    pair = None
    if saved.get("Tty"):
        import socket

        from ..runtime.tty import terminal_size

        pair = socket.socketpair()
        job.tty_socket, job.tty_receiver, job.winsize = pair[1].fileno(), pair[0].fileno(), terminal_size()
    sys.stdout.flush()
    sys.stderr.flush()
    if not fresh:
        mark_starting(container)
    try:
        started = launch.start(job)
    finally:
        if shared is not None:
            shared.close()   # the helper holds the mount with its own copy of the lock
    master = None
    if pair is not None:
        pair[1].close()
        if not detach and started.error is None:
            master = launch.receive_fd(pair[0])
        pair[0].close()
    if started.error is not None:
        launch.wait(started)
        click.echo(f"Error: {started.error.message}", err=True)
        if remove:
            _remove_container(app, container)
        return started.error.code
    if started.init_pid:
        mark_running(container, started.init_pid, started.helper_pid,
                     NetworkSettings=network.settings(str(container.dir)) if plan else {},
                     SharedLower=shared.path if shared else None)
    if detach:
        click.echo(container.id)
        return 0
    if master is not None:
        from ..runtime.tty import relay

        relay(master, interactive=interactive, log_path=str(container.dir / "container.log"))
    return launch.wait(started)


@main.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only the container ids.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate ids and commands.")
@click.option("--format", "fmt", help="'json', or a template such as '{{.Names}}'.")
@pass_app
def ps(app: App, all_: bool, quiet: bool, no_trunc: bool, fmt: str | None) -> None:
    """List containers."""
    from ..runtime.containers import status_of
    from ..runtime.network import ports_column

    rows = []
    for c in _containers(app).all():
        state = c.record.get("State", {})
        running = _is_running(c)
        if not all_ and not running:
            continue
        command = " ".join([c.record.get("Path", ""), *c.record.get("Args", [])])
        shown = json.dumps(command if no_trunc or len(command) <= 20 else command[:19] + "…", ensure_ascii=False)
        if running:
            status = "Up " + ago(state.get("StartedAt", "")).removesuffix(" ago")
        elif state.get("Status") == "exited" or state.get("Running"):
            status = f"Exited ({state.get('ExitCode', 0)}) {ago(state.get('FinishedAt', ''))}"
        else:
            status = "Created"
        rows.append({"ID": c.id if no_trunc else c.id[:12], "Image": c.record.get("Config", {}).get("Image", ""),
                     "Command": shown, "CreatedAt": c.record.get("Created", ""),
                     "RunningFor": ago(c.record.get("Created", "")), "Status": status,
                     "Ports": ports_column((c.record.get("NetworkSettings") or {}).get("Ports")) if running else "",
                     "Names": c.name, "State": status_of(c)})
    if quiet:
        for r in rows:
            click.echo(r["ID"])
        return
    if fmt:
        template = Template(fmt)
        for r in rows:
            click.echo(template.render(r))
        return
    click.echo(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                     ([r["ID"], r["Image"], r["Command"], r["RunningFor"], r["Status"], r["Ports"], r["Names"]]
                      for r in rows)))


def _is_running(c: Container) -> bool:
    from ..runtime.containers import is_running

    return is_running(c)


def _storage_driver(app: App) -> str:
    """The storage of a new container (runtime/shared.py); overlay asked for without subordinate
    ids gives fusefs, with a warning."""
    from ..runtime import idmap, shared

    driver = app.config.extra.get("storage-driver", "auto")
    chosen = shared.choose(driver, idmap.detect(app.use_subids), app.config.store_dir)
    if driver == "overlay" and chosen != "overlay":
        click.echo('WARNING: "storage-driver": "overlay" needs a subordinate id range; this container uses fusefs',
                   err=True)
    return chosen


def _shared_lower(app: App, container: Container, lowers: list[str], ids: Any) -> Any:
    """For an overlay container run in a user namespace: the image's shared mount (held)."""
    from ..runtime import host, shared

    if container.record.get("Storage") != "overlay" or host.runtime_mode() != host.USERNS:
        return None
    return shared.acquire(app.config.runtime_dir, lowers, ids)


INIT_BINARIES = ("/usr/bin/tini-static", "/usr/libexec/podman/catatonit", "/usr/bin/catatonit")


def _init_binary() -> str:
    """A static init for --init: Debian's tini-static (docker's own --init is tini too)."""
    for path in INIT_BINARIES:
        if os.access(path, os.X_OK):
            return path
    raise RootlessError("--init needs tini-static, which is not installed", "as root: apt-get install tini")


def _remove_container(app: App, container: Container, volumes: bool = True) -> None:
    """Remove CONTAINER and, as docker's --rm and rm -v do, the anonymous volumes it made."""
    from ..runtime.network import teardown_dir
    from ..runtime.volumes import Volumes

    teardown_dir(str(container.dir))   # a network daemon that a killed helper left behind
    if container.record.get("Storage") == "overlay":
        from ..runtime import idmap, shared

        shared.empty_writable_layer(str(container.upper), str(container.work), idmap.for_record(container.record))
    _containers(app).remove(container)
    if volumes:
        store = Volumes(app.config)
        for m in container.record.get("Launch", {}).get("Mounts", []):
            if m.get("anonymous"):
                try:
                    store.remove(m["name"])
                except RootlessError:
                    pass


@main.command()
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.option("-v", "--volumes", is_flag=True, help="Remove the anonymous volumes it made too.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def rm(app: App, names: tuple[str, ...], force: bool, volumes: bool) -> None:
    """Remove one or more containers."""
    containers = _containers(app)

    def one(name: str) -> None:
        c = containers.get(name)
        if _is_running(c):
            if not force:
                raise RootlessError(f"You cannot remove a running container {c.id}. Stop the container "
                                    "before attempting removal or force remove")
            os.kill(int(c.record["State"]["Pid"]), 9)
            _wait_exit(c, 10)
        _remove_container(app, c, volumes)
        click.echo(name)

    each(names, one)


# -- lifecycle ----------------------------------------------------------------------------------------

def _signal_number(name: str) -> int:
    import signal

    text = name.upper().removeprefix("SIG")
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals["SIG" + text])
    except KeyError:
        raise RootlessError(f"Invalid signal: {name}", "give a name such as TERM or KILL, or a number") from None


def _wait_exit(c: Container, timeout: float | None) -> bool:
    """Wait until C has exited and its helper has recorded how (or is gone without doing so)."""
    import time

    from ..runtime.containers import has_ended

    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while not has_ended(c):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True


@main.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing as the container writes.")
@click.option("--tail", default="all", help="Only the last N lines.")
@click.option("-t", "--timestamps", is_flag=True, help="Show when each line was written.")
@click.argument("name")
@pass_app
def logs(app: App, name: str, follow: bool, tail: str, timestamps: bool) -> None:
    """Show what a container wrote to stdout and stderr."""
    import time

    from ..runtime.containers import is_running

    c = _containers(app).get(name)
    path = c.dir / "container.log"
    if tail != "all" and not tail.isdigit():
        raise RootlessError(f"invalid value for --tail: {tail}", "give a number of lines, or all")
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return
    with f:
        data = f.read()
        *lines, pending = data.split(b"\n")   # a line being written stays pending
        if tail != "all":
            lines = lines[len(lines) - int(tail):] if int(tail) else []
        for raw in lines:
            _print_log_line(raw, timestamps)
        if not follow:
            return
        while True:
            running = is_running(_containers(app).get(c.id))
            chunk = f.read()
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    _print_log_line(raw, timestamps)
            elif not running:
                return
            else:
                time.sleep(0.05)


def _print_log_line(raw: bytes, timestamps: bool) -> None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return
    text = entry.get("log", "")
    stream = sys.stderr if entry.get("stream") == "stderr" else sys.stdout
    if timestamps:
        text = f"{entry.get('time', '')} {text}"
    stream.write(text)
    stream.flush()


@main.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True,
              help="Seconds to wait after the stop signal before killing.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def stop(app: App, names: tuple[str, ...], timeout: int) -> None:
    """Stop running containers: the image's STOPSIGNAL (default SIGTERM), then SIGKILL."""

    def one(name: str) -> None:
        c = _containers(app).get(name)
        if _is_running(c):
            sig = _signal_number(str((c.record.get("Config") or {}).get("StopSignal") or "SIGTERM"))
            pid = int(c.record["State"]["Pid"])
            _kill(pid, sig)
            if not _wait_exit(c, timeout):
                _kill(pid, 9)
                _wait_exit(c, None)
        click.echo(name)

    each(names, one)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@main.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="The signal to send.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def kill(app: App, names: tuple[str, ...], sig: str) -> None:
    """Send a signal to running containers."""
    number = _signal_number(sig)

    def one(name: str) -> None:
        c = _containers(app).get(name)
        if not _is_running(c):
            raise RootlessError(f"cannot kill container: {name}: container {c.id} is not running")
        _kill(int(c.record["State"]["Pid"]), number)
        click.echo(name)

    each(names, one)


@main.command("wait")
@click.argument("names", nargs=-1, required=True)
@pass_app
def wait_cmd(app: App, names: tuple[str, ...]) -> None:
    """Wait for containers to exit and print their exit codes."""
    for name in names:
        c = _containers(app).get(name)
        _wait_exit(c, None)
        click.echo(_containers(app).get(c.id).record["State"].get("ExitCode", 0))


@main.command()
@click.option("-a", "--attach", is_flag=True, help="Attach to its output and wait for it.")
@click.option("-i", "--interactive", is_flag=True, help="Attach stdin.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def start(app: App, names: tuple[str, ...], attach: bool, interactive: bool) -> None:
    """Start stopped containers; their writable layer is kept."""
    code = 0
    for name in names:
        c = _containers(app).get(name)
        if _is_running(c):
            click.echo(name)
            continue
        if attach:
            code = _start(app, c, detach=False, interactive=interactive, remove=False)
        else:
            code = _start_quiet(app, c)
            click.echo(name)
    sys.exit(code)


def _start_quiet(app: App, c: Container) -> int:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return _start(app, c, detach=True, interactive=False, remove=bool(c.record["HostConfig"].get("AutoRemove")))


@main.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True,
              help="Seconds to wait after the stop signal before killing.")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def restart(ctx: click.Context, names: tuple[str, ...], timeout: int) -> None:
    """Stop and start containers again."""
    for name in names:
        with _quiet():
            ctx.invoke(stop, names=(name,), timeout=timeout)
        c = _containers(ctx.obj).get(name)
        _start_quiet(ctx.obj, c)
        click.echo(name)


def _quiet():  # type: ignore[no-untyped-def]
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


@main.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, help="Set an environment variable.")
@click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), help="Read variables from a file.")
@click.option("-u", "--user", help="name|uid[:group|gid] (default: the container's user).")
@click.option("-w", "--workdir", help="Working directory (default: the container's).")
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin through.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.argument("name")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def exec_cmd(app: App, name: str, args: tuple[str, ...], env: tuple[str, ...], env_file: tuple[str, ...],
             user: str | None, workdir: str | None, interactive: bool, tty: bool) -> None:
    """Run a command in a running container."""
    from ..runtime import idmap, launch, spec

    c = _containers(app).get(name)
    if not _is_running(c):
        raise RootlessError(f"container {c.id} is not running", f"start it first: rootless start {name}")
    saved = c.record["Launch"]["Process"]
    items = [item for path in env_file for item in spec.parse_env_file(path)] + list(env)
    merged = spec.environment({"Env": saved["Env"]}, items, c.record["Config"].get("Hostname", ""), tty)
    cwd = workdir if workdir is not None else saved["Cwd"]
    if not cwd.startswith("/"):
        raise RootlessError(f"the working directory '{cwd}' is invalid, it needs to be an absolute path")
    process = spec.ProcessSpec(tuple(args), merged, cwd, user if user is not None else saved["User"])
    sys.stdout.flush()
    try:
        code = launch.exec_in(int(c.record["State"]["Pid"]), process, idmap.for_record(c.record), interactive=interactive,
                              tty=tty)
    except launch.StartError as e:
        click.echo(f"Error: {e.message}", err=True)
        sys.exit(e.code)
    sys.exit(code)


# -- volumes ------------------------------------------------------------------------------------------

@main.group()
def volume() -> None:
    """Manage volumes."""


def _volumes(app: App):  # type: ignore[no-untyped-def]
    from ..runtime.volumes import Volumes

    return Volumes(app.config)


def _volumes_in_use(app: App) -> set[str]:
    return {m["name"] for c in _containers(app).all() for m in c.record.get("Launch", {}).get("Mounts", [])
            if m.get("kind") == "volume"}


@volume.command("create")
@click.option("--label", multiple=True, help="KEY=VALUE")
@click.argument("name", required=False)
@pass_app
def volume_create(app: App, name: str | None, label: tuple[str, ...]) -> None:
    """Create a volume (a random name without NAME)."""
    created, _, _ = _volumes(app).create(name, dict(item.partition("=")[::2] for item in label))
    click.echo(created)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only the names.")
@click.option("--format", "fmt", help="'json', or a template such as '{{.Name}}'.")
@pass_app
def volume_ls(app: App, quiet: bool, fmt: str | None) -> None:
    """List volumes."""
    rows = _volumes(app).all()
    if quiet:
        for v in rows:
            click.echo(v["Name"])
    elif fmt:
        template = Template(fmt)
        for v in rows:
            click.echo(template.render({**v, "Driver": "local"}))
    else:
        click.echo(table(["DRIVER", "VOLUME NAME"], (["local", v["Name"]] for v in rows)))


@volume.command("inspect")
@click.option("-f", "--format", "fmt", help="A template such as '{{.Mountpoint}}'.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def volume_inspect(app: App, names: tuple[str, ...], fmt: str | None) -> None:
    """Show volumes as JSON."""
    docs = [_volumes(app).get(n) for n in names]
    if fmt:
        template = Template(fmt)
        for d in docs:
            click.echo(template.render(d))
    else:
        click.echo(json.dumps(docs, indent=4))


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove it even if a container uses it.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def volume_rm(app: App, names: tuple[str, ...], force: bool) -> None:
    """Remove volumes."""
    used = _volumes_in_use(app)

    def one(name: str) -> None:
        if name in used and not force:
            users = [c.id for c in _containers(app).all()
                     if any(m.get("name") == name for m in c.record.get("Launch", {}).get("Mounts", []))]
            raise RootlessError(f"remove {name}: volume is in use - [{', '.join(users)}]",
                                "remove those containers first, or use -f")
        _volumes(app).remove(name)
        click.echo(name)

    each(names, one)


@volume.command("prune")
@click.option("-f", "--force", is_flag=True, help="Don't ask for confirmation.")
@click.option("-a", "--all", "all_", is_flag=True, help="Named volumes too, not only anonymous ones.")
@pass_app
def volume_prune(app: App, force: bool, all_: bool) -> None:
    """Remove volumes no container uses."""
    if not force:
        if not sys.stdin.isatty():
            raise RootlessError("this will remove unused volumes, and stdin is not a terminal to confirm it",
                                "add -f to go ahead")
        if not click.confirm("WARNING! This will remove anonymous local volumes not used by at least one "
                             "container.\nAre you sure you want to continue?", default=False):
            return
    used = _volumes_in_use(app)
    removed = []
    for v in _volumes(app).all():
        if v["Name"] in used or (not all_ and not v.get("Anonymous")):
            continue
        _volumes(app).remove(v["Name"])
        removed.append(v["Name"])
    if removed:
        click.echo("Deleted Volumes:")
        for name in removed:
            click.echo(name)
        click.echo("")
    click.echo("Total reclaimed space: 0B" if not removed else f"Total reclaimed space: {len(removed)} volumes")
