"""What a container runs, by docker's rules: the command from ENTRYPOINT/CMD and the run arguments,
the environment, the working directory and the user (resolved later, inside the container).

Pure functions of the image config and the options, so every rule is unit-tested here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RootlessError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UserNotFound(RootlessError):
    """-u names a user or group the container's /etc/passwd or /etc/group lacks."""


@dataclass(frozen=True)
class ProcessSpec:
    args: tuple[str, ...]
    env: tuple[str, ...]       # KEY=VALUE, in order
    cwd: str
    user: str                  # as given: "", "name", "uid", "name:group", "uid:gid"
    tty: bool = False


def command(config: Mapping[str, Any], args: Sequence[str], entrypoint: str | None) -> tuple[str, ...]:
    """ENTRYPOINT + CMD as docker combines them.

    Run arguments replace CMD and are appended to ENTRYPOINT; ``--entrypoint`` replaces
    the image's entrypoint and also drops its CMD (an empty string clears it); the shell
    form was already turned into ``/bin/sh -c ...`` when the image was built.
    """
    image_entry = list(config.get("Entrypoint") or [])
    image_cmd = list(config.get("Cmd") or [])
    if entrypoint is not None:
        entry = [entrypoint] if entrypoint else []
        cmd = list(args)
    else:
        entry = image_entry
        cmd = list(args) if args else image_cmd
    argv = entry + cmd
    if not argv:
        raise RootlessError("No command specified", "give a command after the image name, or use --entrypoint")
    return tuple(argv)


def parse_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VALUE lines, # comments and blank lines skipped, a bare KEY from the host."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise RootlessError(f"open {path}: {e.strerror.lower() if e.strerror else e}",
                            "check the --env-file path") from None
    out = []
    for number, line in enumerate(lines, 1):
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        key = text.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise RootlessError(f"{path}:{number}: variable '{key}' contains whitespaces",
                                "write KEY=VALUE, one per line")
        out.append(text)
    return out


def environment(config: Mapping[str, Any], options: Sequence[str], hostname: str, tty: bool,
                host_env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """PATH (docker's default where the image sets none), HOSTNAME, the image's Env, then -e/--env-file."""
    host_env = os.environ if host_env is None else host_env
    merged: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    if tty:
        merged["TERM"] = "xterm"
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        merged[key] = value
    for item in options:
        key, sep, value = item.partition("=")
        if not key:
            raise RootlessError(f"invalid environment variable: {item}", "write -e KEY=VALUE or -e KEY")
        if sep:
            merged[key] = value
        elif key in host_env:
            merged[key] = host_env[key]
        else:
            merged.pop(key, None)
    return tuple(f"{k}={v}" for k, v in merged.items())


def working_dir(config: Mapping[str, Any], option: str | None) -> str:
    cwd = option if option is not None else (config.get("WorkingDir") or "/")
    if not cwd.startswith("/"):
        raise RootlessError(f"the working directory '{cwd}' is invalid, it needs to be an absolute path",
                            "give -w an absolute path")
    return cwd


def build(config: Mapping[str, Any], args: Sequence[str], *, entrypoint: str | None = None,
          env: Sequence[str] = (), workdir: str | None = None, user: str | None = None,
          hostname: str = "", tty: bool = False) -> ProcessSpec:
    return ProcessSpec(command(config, args, entrypoint), environment(config, env, hostname, tty),
                       working_dir(config, workdir), user if user is not None else str(config.get("User") or ""),
                       tty)


# -- users, resolved inside the container's root ------------------------------------------------

@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


def resolve_user(spec: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> User:
    """docker's -u: ``name|uid[:group|gid]``; names are looked up in the container's files.

    A numeric uid need not exist in /etc/passwd (its gid is then 0, home /); a name must.
    Supplementary groups are those /etc/group lists the user in, as runc does.
    """
    user_part, _, group_part = (spec or "0").partition(":")
    users = _entries(passwd)
    groups = _entries(group)
    name = None
    home = "/"
    if user_part.isdigit():
        uid, gid = int(user_part), 0
        for e in users:
            if len(e) >= 7 and e[2] == user_part:
                name, gid, home = e[0], int(e[3]) if e[3].isdigit() else 0, e[5] or "/"
                break
    else:
        for e in users:
            if len(e) >= 7 and e[0] == user_part and e[2].isdigit():
                name, uid, home = e[0], int(e[2]), e[5] or "/"
                gid = int(e[3]) if e[3].isdigit() else 0
                break
        else:
            raise UserNotFound(f"unable to find user {user_part}: no matching entries in passwd file",
                               "use a user the image's /etc/passwd has, or a numeric uid")
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            for e in groups:
                if len(e) >= 3 and e[0] == group_part and e[2].isdigit():
                    gid = int(e[2])
                    break
            else:
                raise UserNotFound(f"unable to find group {group_part}: no matching entries in group file",
                                   "use a group the image's /etc/group has, or a numeric gid")
    extra = []
    if name is not None and not group_part:
        for e in groups:
            if len(e) >= 4 and e[2].isdigit() and name in e[3].split(","):
                extra.append(int(e[2]))
    return User(uid, gid, tuple(dict.fromkeys([gid, *extra])), home)
