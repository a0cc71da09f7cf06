"""The container verbs: run, ps, rm (more of docker's lifecycle lands here as the runtime grows)."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import ImageNotFound, RootlessError
from ._app import App, main, pass_app
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


def _etc_files(container: Container, hostname: str, network: str) -> dict[str, str]:
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if network == "host":
        try:
            with open("/etc/hosts") as f:
                hosts = [line.rstrip("\n") for line in f]
        except OSError:
            pass
    hosts.append(f"127.0.1.1\t{hostname}")
    files = {"/etc/hosts": "\n".join(hosts) + "\n", "/etc/hostname": hostname + "\n"}
    if network != "none":
        try:
            with open("/etc/resolv.conf") as f:
                files["/etc/resolv.conf"] = f.read()
        except OSError:
            files["/etc/resolv.conf"] = ""
    out = {}
    for target, text in files.items():
        path = container.dir / os.path.basename(target)
        path.write_text(text)
        out[target] = str(path)
    return out


@main.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option("-e", "--env", "env", multiple=True, help="Set an environment variable (KEY=VALUE, or KEY from here).")
@click.option("--env-file", multiple=True, type=click.Path(dir_okay=False), help="Read variables from a file.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", help="name|uid[:group|gid], looked up in the container's /etc/passwd and /etc/group.")
@click.option("--entrypoint", help="Replace the image's ENTRYPOINT (and drop its CMD).")
@click.option("--name", help="Name the container.")
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-h", "--hostname", help="The container's host name (default: its short id).")
@click.option("--network", "--net", "network", type=click.Choice(["host", "none"]), default="host",
              show_default=True, help="host: the host's network; none: only a loopback device.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open (it is passed through as it is).")
@click.option("--pull", type=click.Choice(["missing", "always", "never"]), default="missing", show_default=True,
              help="When to pull the image.")
@click.option("--platform", help="Platform to pull, if the image must be pulled.")
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def run(app: App, image: str, args: tuple[str, ...], env: tuple[str, ...], env_file: tuple[str, ...],
        workdir: str | None, user: str | None, entrypoint: str | None, name: str | None, remove: bool,
        hostname: str | None, network: str, interactive: bool, pull: str, platform: str | None) -> None:
    """Run a command in a new container."""
    from ..image.inspect import read_config
    from ..runtime import idmap, launch, spec
    from ..runtime.containers import now

    record = _image_for_run(app, image, pull, platform)
    config = read_config(app.store, record)
    image_config: dict[str, Any] = config.get("config") or {}
    env_items = [item for path in env_file for item in spec.parse_env_file(path)] + list(env)
    containers = _containers(app)
    lowers = [str(app.store.layer_path(d)) for d in reversed(record.layers)]
    process = spec.build(image_config, args, entrypoint=entrypoint, env=env_items, workdir=workdir, user=user,
                         hostname="", tty=False)
    container = containers.create(name, {
        "Image": record.id,
        "Path": process.args[0], "Args": list(process.args[1:]),
        "Config": {"Image": image, "Entrypoint": [entrypoint] if entrypoint else image_config.get("Entrypoint"),
                   "Cmd": list(args) or image_config.get("Cmd"), "WorkingDir": process.cwd, "User": process.user,
                   "Labels": image_config.get("Labels")},
        "HostConfig": {"NetworkMode": network, "AutoRemove": remove},
        "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0,
                  "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
        "Layers": list(record.layers),
    })
    host = hostname or container.id[:12]
    process = spec.build(image_config, args, entrypoint=entrypoint, env=env_items, workdir=workdir, user=user,
                         hostname=host, tty=False)
    container.record["Config"].update(Hostname=host, Env=list(process.env))
    job = launch.Launch(rootfs=str(container.rootfs), lowers=lowers, upper=str(container.upper),
                        work=str(container.work), process=process, ids=idmap.detect(), hostname=host,
                        etc_files=_etc_files(container, host, network), network=network,
                        fuse_log=str(container.dir / "fusefs.log"))
    sys.stdout.flush()
    sys.stderr.flush()
    started = launch.start(job)
    container.record["State"].update(Status="running", Running=True, Pid=started.init_pid or 0, StartedAt=now())
    container.save()
    code = launch.wait(started)
    if started.error is not None:
        click.echo(f"Error: {started.error.message}", err=True)
        code = started.error.code
    container.record["State"].update(Status="exited", Running=False, Pid=0, ExitCode=code, FinishedAt=now())
    container.save()
    if remove:
        containers.remove(container)
    sys.exit(code)


@main.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only the container ids.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate ids and commands.")
@click.option("--format", "fmt", help="'json', or a template such as '{{.Names}}'.")
@pass_app
def ps(app: App, all_: bool, quiet: bool, no_trunc: bool, fmt: str | None) -> None:
    """List containers."""
    rows = []
    for c in _containers(app).all():
        state = c.record.get("State", {})
        running = _is_running(c)
        if not all_ and not running:
            continue
        command = " ".join([c.record.get("Path", ""), *c.record.get("Args", [])])
        shown = json.dumps(command if no_trunc or len(command) <= 20 else command[:19] + "…", ensure_ascii=False)
        status = "Up" if running else (f"Exited ({state.get('ExitCode', 0)}) {ago(state.get('FinishedAt', ''))}"
                                       if state.get("Status") == "exited" else "Created")
        rows.append({"ID": c.id if no_trunc else c.id[:12], "Image": c.record.get("Config", {}).get("Image", ""),
                     "Command": shown, "CreatedAt": c.record.get("Created", ""),
                     "RunningFor": ago(c.record.get("Created", "")), "Status": status, "Ports": "",
                     "Names": c.name, "State": "running" if running else state.get("Status", "created")})
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
    """A container recorded as running whose init is gone (killed, or the host rebooted) has exited."""
    state = c.record.get("State", {})
    if not state.get("Running"):
        return False
    pid = int(state.get("Pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


@main.command()
@click.option("-f", "--force", is_flag=True, help="Kill and remove a running container.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def rm(app: App, names: tuple[str, ...], force: bool) -> None:
    """Remove one or more containers."""
    containers = _containers(app)
    failed: RootlessError | None = None
    for name in names:
        try:
            c = containers.get(name)
            if _is_running(c):
                if not force:
                    raise RootlessError(f"You cannot remove a running container {c.id}. Stop the container "
                                        "before attempting removal or force remove")
                os.kill(int(c.record["State"]["Pid"]), 9)
            containers.remove(c)
            click.echo(name)
        except RootlessError as e:
            click.echo(f"Error: {e.message}", err=True)
            failed = e
    if failed is not None:
        sys.exit(failed.exit_code)
