"""``rootless info``: what this host allows, which way containers will run, and what is missing."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import click

from .. import __version__
from ..errors import RootlessError
from ._app import App, main, pass_app
from ._format import Template

#: The checks in the order and under the titles the human output shows them, by section.
SECTIONS = (
    ("Runtime", (("userns", "User namespaces"), ("subuid", "Subordinate uids"), ("subgid", "Subordinate gids"),
                 ("newuidmap", "newuidmap"), ("newgidmap", "newgidmap"), ("proot", "proot"))),
    ("FUSE", (("dev_fuse", "/dev/fuse"), ("fusermount3", "fusermount3"), ("user_allow_other", "user_allow_other"))),
    ("Network", (("pasta", "pasta"), ("slirp4netns", "slirp4netns"), ("tun", "/dev/net/tun"))),
    ("Storage", (("store_fs", "Filesystem"), ("store_xattrs", "User xattrs"), ("store_locks", "File locks"))),
)
TITLES = {key: title for _, checks in SECTIONS for key, title in checks}


def gather(app: App) -> dict[str, Any]:
    """docker's ``info`` shape: CamelCase keys, the warnings as a list of lines."""
    from .. import warm
    from ..runtime import host, idmap, shared
    from ..runtime.containers import Containers, is_running

    root = str(app.config.data_dir)
    checks = host.collect(root)
    forced = os.environ.get(host.RUNTIME_ENV, "").strip()
    mode = host.choose_mode(checks, forced if forced in (host.USERNS, host.PROOT) else "")
    containers = Containers(app.config).all()
    running = sum(1 for c in containers if is_running(c))
    uid, gid = os.getuid(), os.getgid()
    warnings = [f"{TITLES[key]}: {check.detail}" + (f"\n         Hint: {check.hint}" if check.hint else "")
                for key, check in checks.items() if not check.ok]
    if mode.name == host.UNUSABLE:
        warnings.insert(0, f"containers cannot run here: {mode.reason}")
    idle = warm.idle_setting(app.config.extra.get("warm-start", True), os.environ)
    configured = app.config.extra.get("storage-driver", "auto")
    try:
        driver, why = shared.decide(configured, idmap.detect(app.use_subids), app.config.store_dir, make=False)
    except RootlessError as e:
        driver, why = "none", e.message
        warnings.append(f"Storage driver: {e.message}" + (f"\n         Hint: {e.hint}" if e.hint else ""))
    return {
        "Version": __version__,
        "Python": platform.python_version(),
        "Pyfuse3": _pyfuse3_version(),
        "Runtime": {"Mode": mode.name, "Reason": mode.reason, "Forced": forced},
        "WarmStart": {"IdleSeconds": idle, "Pid": warm.listening(idle) if idle else None},
        "RootDir": root,
        "Driver": driver,
        "DriverStatus": [["Configured", str(configured)], ["Why", why],
                         ["Image mounts", str(len(shared.live_mounts(app.config.runtime_dir)))]],
        "Containers": len(containers),
        "ContainersRunning": running,
        "ContainersStopped": len(containers) - running,
        "KernelVersion": platform.release(),
        "OperatingSystem": host.os_release(),
        "Architecture": platform.machine(),
        "User": {"Name": host.user_name(uid), "Uid": uid, "Gid": gid},
        "Checks": {key: check.as_json() for key, check in checks.items()},
        "Warnings": warnings,
    }


def _pyfuse3_version() -> str:
    try:
        import pyfuse3
    except ImportError as e:
        return f"not importable: {e}"
    return str(getattr(pyfuse3, "__version__", "unknown"))


def render(doc: dict[str, Any]) -> str:
    checks = doc["Checks"]
    runtime = doc["Runtime"]
    lines = ["Client:", f" Version: {doc['Version']}", f" Python: {doc['Python']}", f" pyfuse3: {doc['Pyfuse3']}",
             ""]
    for section, entries in SECTIONS:
        lines.append(f"{section}:")
        if section == "Runtime":
            lines.append(f" Mode: {runtime['Mode']}")
            if runtime["Reason"]:
                lines.append(f"  Reason: {runtime['Reason']}")
            lines.append(f" Warm start: {_warm_line(doc['WarmStart'])}")
        if section == "Storage":
            lines += [f" Root Dir: {doc['RootDir']}", f" Driver: {doc['Driver']}"]
            lines += [f"  {key}: {value}" for key, value in doc["DriverStatus"]]
        for key, title in entries:
            lines.append(f" {title}: {checks[key]['Detail']}")
        if section == "Storage":
            lines += [f" Containers: {doc['Containers']}", f"  Running: {doc['ContainersRunning']}",
                      f"  Stopped: {doc['ContainersStopped']}"]
        lines.append("")
    user = doc["User"]
    lines += ["Host:", f" Kernel Version: {doc['KernelVersion']}", f" Operating System: {doc['OperatingSystem']}",
              f" Architecture: {doc['Architecture']}", f" User: {user['Name']} (uid {user['Uid']}, gid {user['Gid']})"]
    return "\n".join(lines)


def _warm_line(state: dict[str, Any]) -> str:
    if not state["IdleSeconds"]:
        return 'off ("warm-start": false in the config file, or ROOTLESS_WARM=0)'
    running = f"running as pid {state['Pid']}" if state["Pid"] else "not running (the next command starts it)"
    return f"on, {running}; it leaves after {state['IdleSeconds']:g} s without a command"


@main.command()
@click.option("-f", "--format", "fmt", help="'json', or a template such as '{{.Runtime.Mode}}'.")
@pass_app
def info(app: App, fmt: str | None) -> None:
    """Show what this host allows and how containers will run."""
    doc = gather(app)
    if fmt:
        click.echo(Template(fmt).render(doc))
        return
    click.echo(render(doc))
    # docker prints its warnings after the report, on stderr.
    for warning in doc["Warnings"]:
        click.echo(f"WARNING: {warning}", err=True)
    sys.stdout.flush()
