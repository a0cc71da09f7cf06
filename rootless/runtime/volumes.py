"""Volumes and binds: docker's ``-v``/``--tmpfs`` syntax, named volumes on disk, and safe targets.

    <data_dir>/volumes/<name>/_data         a named (or anonymous, 64-hex) volume's content
    <data_dir>/volumes/<name>/volume.json   {Name, CreatedAt, Labels, Anonymous}

A target is resolved inside the container's root as the kernel would from inside it:
symlinks in the image are followed but can never lead out of the root, so a hostile
image cannot make a bind land on a host path.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import RootlessError

_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_MODES = {"ro", "rw", "z", "Z", "shared", "rshared", "slave", "rslave", "private", "rprivate", "nocopy"}


@dataclass(frozen=True)
class Mount:
    kind: str                 # bind | volume | tmpfs
    target: str               # absolute path in the container
    source: str = ""          # host path (bind), the volume's _data directory (volume)
    name: str = ""            # the volume's name
    readonly: bool = False
    options: str = ""         # tmpfs mount data
    seed: bool = False        # copy the image's content at TARGET into a new, empty volume
    anonymous: bool = False

    def record(self) -> dict[str, Any]:
        """docker's Mounts entry."""
        if self.kind == "bind":
            return {"Type": "bind", "Source": self.source, "Destination": self.target, "Mode": "",
                    "RW": not self.readonly, "Propagation": "rprivate"}
        if self.kind == "volume":
            return {"Type": "volume", "Name": self.name, "Source": self.source, "Destination": self.target,
                    "Driver": "local", "Mode": "", "RW": not self.readonly, "Propagation": ""}
        return {"Type": "tmpfs", "Source": "", "Destination": self.target, "Mode": self.options,
                "RW": not self.readonly, "Propagation": ""}


@dataclass
class Volumes:
    config: Config
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.config.data_dir / "volumes"

    def path(self, name: str) -> Path:
        return self.root / name / "_data"

    def create(self, name: str | None = None, labels: dict[str, str] | None = None) -> tuple[str, Path, bool]:
        """(name, _data path, whether it is new); an existing named volume is reused, as docker."""
        anonymous = name is None
        name = name or secrets.token_hex(32)
        if not _VOLUME_NAME.match(name):
            raise RootlessError(f'"{name}" includes invalid characters for a local volume name, only '
                                '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed',
                                "a host path must be absolute; a volume name is letters, digits, _ . -")
        base = self.root / name
        data = base / "_data"
        if data.is_dir():
            return name, data, False
        data.mkdir(parents=True, exist_ok=True, mode=0o755)
        meta = {"Name": name, "Driver": "local", "CreatedAt": _now(), "Labels": labels or {},
                "Anonymous": anonymous}
        tmp = base / ".volume.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, base / "volume.json")
        return name, data, True

    def all(self) -> list[dict[str, Any]]:
        out = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                meta = json.loads((Path(entry.path) / "volume.json").read_text())
            except (OSError, ValueError):
                continue
            meta["Mountpoint"] = str(Path(entry.path) / "_data")
            meta.setdefault("Scope", "local")
            meta.setdefault("Options", {})
            out.append(meta)
        return out

    def get(self, name: str) -> dict[str, Any]:
        for meta in self.all():
            if meta["Name"] == name:
                return meta
        raise RootlessError(f"get {name}: no such volume", "list them with rootless volume ls")

    def remove(self, name: str) -> None:
        self.get(name)
        _remove_tree(self.root / name)


def _remove_tree(path: Path) -> None:
    from .containers import remove_tree

    remove_tree(str(path))


def _now() -> str:
    from .containers import now

    return now()


# -- docker's flag syntax -------------------------------------------------------------------------------

def parse_volume(spec: str, volumes: Volumes) -> Mount:
    """``-v`` as docker reads it: ``/host:/ctr[:opts]``, ``name:/ctr[:opts]`` or ``/ctr`` (anonymous)."""
    parts = spec.split(":")
    if len(parts) == 1:
        target = parts[0]
        _check_target(target, spec)
        name, data, _ = volumes.create(None)
        return Mount("volume", target, str(data), name, seed=True, anonymous=True)
    if len(parts) > 3 or not parts[0] or not parts[1]:
        raise RootlessError(f"invalid volume specification: '{spec}'",
                            "write -v /host/path:/container/path[:ro] or -v NAME:/container/path")
    source, target = parts[0], parts[1]
    modes = set(parts[2].split(",")) if len(parts) == 3 and parts[2] else set()
    unknown = modes - _MODES
    if unknown:
        raise RootlessError(f"invalid mode: {','.join(sorted(unknown))}", "use ro or rw")
    _check_target(target, spec)
    readonly = "ro" in modes
    if source.startswith("/") or source.startswith("."):
        host = os.path.abspath(source)
        if not os.path.exists(host):
            raise RootlessError(f"invalid volume specification: '{spec}': bind source path does not exist: {host}",
                                "create it first, or fix the path")
        return Mount("bind", target, host, readonly=readonly)
    name, data, new = volumes.create(source)
    return Mount("volume", target, str(data), name, readonly=readonly, seed=new and "nocopy" not in modes)


def parse_tmpfs(spec: str) -> Mount:
    target, _, options = spec.partition(":")
    _check_target(target, spec)
    return Mount("tmpfs", target, options=options or "mode=1777")


def image_volumes(config: dict[str, Any], taken: set[str], volumes: Volumes) -> list[Mount]:
    """An anonymous volume, seeded from the image, for each VOLUME nothing else is mounted on."""
    out = []
    for target in sorted((config.get("Volumes") or {}).keys()):
        if os.path.normpath(target) in taken:
            continue
        name, data, _ = volumes.create(None)
        out.append(Mount("volume", os.path.normpath(target), str(data), name, seed=True, anonymous=True))
    return out


def _check_target(target: str, spec: str) -> None:
    if not target.startswith("/"):
        raise RootlessError(f"invalid volume specification: '{spec}': invalid mount config for type \"bind\": "
                            f"invalid mount path: '{target}' mount path must be absolute")
    if os.path.normpath(target) == "/":
        raise RootlessError(f"invalid volume specification: '{spec}': invalid mount config: destination can't be '/'")


# -- inside the container's root --------------------------------------------------------------------

MAX_SYMLINKS = 40


def resolve_in_root(root: str, path: str) -> str:
    """PATH looked up as from inside ROOT: symlinks followed, '..' and absolute links stopped at ROOT.

    Returns a host path under ROOT whose last component may not exist yet.
    """
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved) if resolved else root


def seed(src: str, dest: str) -> None:
    """Copy the image's content at SRC into the new volume DEST (docker does this once, for an empty volume)."""
    if not os.path.isdir(src) or any(os.scandir(dest)):
        return
    st = os.stat(src)
    os.chmod(dest, stat.S_IMODE(st.st_mode))
    try:
        os.chown(dest, st.st_uid, st.st_gid)
    except OSError:
        pass
    for entry in os.scandir(src):
        s, d = entry.path, os.path.join(dest, entry.name)
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(s, d, symlinks=True, copy_function=shutil.copy2)
        else:
            shutil.copy2(s, d, follow_symlinks=False)
