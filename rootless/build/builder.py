"""``build``: a Dockerfile's instructions run one by one, each step an image, as docker's classic builder.

Every step starts from the image the step before made (its id is the digest of its
config) and makes the next one: RUN in a container of that image whose writable layer
becomes a layer, COPY and ADD by writing into such a layer in-process (``rootfs``), the
other instructions by changing the config alone, with a history row marked
``empty_layer``.  Intermediate images are never stored as images, only as cache entries
(``cache``) and the layers they name, so a build that fails leaves no image behind; the
layers it made stay until the store's gc takes them, and its cache entries with them.
Only the final image is stored, tagged, whole.

Library code: the output goes to the ``out`` it is given, errors are raised.
"""

from __future__ import annotations

import copy as copymod
import dataclasses
import json
import os
import platform
import posixpath
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ImageNotFound, RootlessError
from ..image import manifest as mf
from ..image.local import StoredLayer, config_bytes
from . import cache as cachemod
from . import ignore
from .instructions import BuildError, arg_text, arguments, error, healthcheck_config, trigger
from .parser import (Add, Arg, Cmd, Copy, Dockerfile, Entrypoint, Env, Expose, From, Healthcheck, Instruction,
                     Label, Maintainer, Onbuild, Run, Shell, Stopsignal, User, Volume, Workdir, parse)

if TYPE_CHECKING:
    from ..image.store import ImageRecord, Store
    from ..runtime.containers import Containers
    from ..runtime.idmap import IdMap
    from .remote import RemoteTree

DEFAULT_SHELL = ["/bin/sh", "-c"]
#: docker's predefined build args: usable without an ARG line, never reported as unused
PREDEFINED_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
#: where a RUN <<EOF script that starts with #! is put and run from, as BuildKit does (in the
#: container's /dev tmpfs: it never reaches the step's layer)
SCRIPTS_DIR = "/dev/pipes"


class RunFailed(BuildError):
    """A RUN whose command exited non-zero: docker's message, and exit status 1."""

    exit_code = 1


@dataclass
class Image:
    """The image a step made: its full config (``config``, ``rootfs``, ``history``) and its layers."""

    config: dict[str, Any]
    layers: list[StoredLayer]
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = mf.sha256_digest(config_bytes(self.config))

    @property
    def cfg(self) -> dict[str, Any]:
        return self.config.setdefault("config", {})


@dataclass
class Options:
    tags: Sequence[str] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    quiet: bool = False
    use_subids: bool = True
    #: Where RUN steps may share the image's mount under an overlayfs (runtime/shared.py):
    #: the config's "storage-driver" and the runtime dir the shared mounts live under.
    storage_driver: str = "auto"
    runtime_dir: Path | None = None


@dataclass
class _Stage:
    index: int
    name: str | None
    image: Image
    args: dict[str, str] = field(default_factory=dict)     # the ARGs in scope and their values
    cmd_set: bool = False                                  # a CMD of this stage's own


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _short(image_id: str) -> str:
    return image_id.partition(":")[2][:12]


class Builder:
    """One build: STORE for images and layers, CONTAINERS for the RUN steps' containers,
    PULL to fetch a base image the store lacks, OUT for docker's step-by-step output."""

    def __init__(self, store: Store, containers: Containers, *, options: Options, out: TextIO,
                 pull: Callable[[str], ImageRecord], ids: IdMap) -> None:
        self.store = store
        self.containers = containers
        self.options = options
        self.out = out
        self.pull = pull
        self.ids = ids
        self.cache = cachemod.Cache(store)
        self.used_args: set[str] = set()
        self.stages: list[_Stage] = []
        self.global_args: dict[str, str | None] = {}   # the ARGs before the first FROM
        self.context = Path(".")
        self.rules = ignore.Matcher()

    def say(self, text: str) -> None:
        if not self.options.quiet:
            self.out.write(text + "\n")
            self.out.flush()

    # -- the whole build -------------------------------------------------------------------------

    def build(self, dockerfile: str, context: Path, dockerfile_name: str = "Dockerfile",
              dockerfile_path: Path | None = None) -> ImageRecord:
        """Build DOCKERFILE's text with CONTEXT (a directory) and store the result, tagged.

        DOCKERFILE_PATH, where the text came from a file, may have its own ignore file
        beside it (``NAME.dockerignore``), which docker prefers to the context's."""
        parsed = parse(dockerfile, name=dockerfile_name)
        self.context = context
        self.rules = ignore.load(context, dockerfile_path)
        with self.store.lease():
            image = self._run_steps(parsed)
            return self._store_final(image)

    def _run_steps(self, parsed: Dockerfile) -> Image:
        stages = list(parsed.stages)
        if self.options.target:
            hit = parsed.stage(self.options.target)
            if hit is None:
                raise BuildError(f"failed to reach build target {self.options.target} in Dockerfile",
                                 "name a stage of the Dockerfile (FROM ... AS NAME)")
            stages = stages[:hit.index + 1]
        total = len(parsed.args) + sum(1 + len(st.instructions) for st in stages)
        number = 0

        def say_step(instr: Instruction) -> None:
            nonlocal number
            number += 1
            self.say(f"Step {number}/{total} : {instr.original}")

        for arg in parsed.args:
            say_step(arg)
            self._global_arg(arg)
        stage: _Stage | None = None
        for st in stages:
            say_step(st.base)
            stage = self._from(st.base)
            self.stages.append(stage)
            for instr in st.instructions:
                say_step(instr)
                stage.image = self._step(stage, instr)
                self.say(f" ---> {_short(stage.image.id)}")
        assert stage is not None   # the parser refuses a Dockerfile without a stage
        unused = sorted(k for k in self.options.build_args if k not in self.used_args and k not in PREDEFINED_ARGS)
        if unused:
            self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed")
        return stage.image

    def _store_final(self, image: Image) -> ImageRecord:
        from ..image.local import Ingest

        if self.options.labels:
            image = Image(copymod.deepcopy(image.config), list(image.layers))
            image.cfg["Labels"] = {**(image.cfg.get("Labels") or {}), **self.options.labels}
            image = Image(image.config, image.layers)
        image.config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in image.layers]}
        with Ingest(self.store) as ingest:
            ingest.add_image(config_bytes(image.config), image.layers, list(self.options.tags))
            record = ingest.commit()[0]
        self.say(f"Successfully built {_short(record.id)}")
        for tag in self.options.tags:
            self.say(f"Successfully tagged {_tag_shown(tag)}")
        return record

    # -- FROM ------------------------------------------------------------------------------------

    def _from(self, base: From) -> _Stage:
        # FROM sees the global ARGs only, as docker scopes them
        f = base.expand({k: v for k, v in self.global_args.items() if v is not None})
        ref = f.image
        if not ref:
            raise error(base, f"base name ({base.image}) should not be blank",
                        "give the image, or a default for the ARG it names")
        earlier = next((st for st in self.stages if st.name and st.name == ref.lower()), None)
        if earlier is not None:
            image = Image(copymod.deepcopy(earlier.image.config), list(earlier.image.layers), earlier.image.id)
        elif ref.lower() == "scratch":
            image = Image({"architecture": _arch(), "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": []}, "history": []}, [], "scratch")
        else:
            image = self._base_image(ref)
        if image.id != "scratch":
            self.say(f" ---> {_short(image.id)}")
        stage = _Stage(len(self.stages), f.name, image)
        triggers = list(image.cfg.get("OnBuild") or [])
        if triggers:
            image.cfg["OnBuild"] = None
            image = stage.image = Image(image.config, image.layers)
            self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}")
            for text in triggers:
                stage.image = self._step(stage, trigger(str(text), base.escape, ref))
                self.say(f" ---> {_short(stage.image.id)}")
        return stage

    def _base_image(self, ref: str) -> Image:
        from ..image.local import read_image

        try:
            record = self.store.resolve(ref)
        except ImageNotFound:
            record = self.pull(ref)
        local = read_image(self.store, record)
        config = copymod.deepcopy(local.config)
        layers = [StoredLayer(layer.diff_id, layer.blob) for layer in local.layers]
        return Image(config, layers, record.id)

    # -- one step --------------------------------------------------------------------------------

    def _env(self, stage: _Stage) -> dict[str, str]:
        """What $VARIABLES expand to: the ARGs in scope, the stage's ENV over them."""
        env = dict(stage.args)
        for item in stage.image.cfg.get("Env") or []:
            key, _, value = str(item).partition("=")
            env[key] = value
        return env

    def _step(self, stage: _Stage, instr: Instruction) -> Image:
        if isinstance(instr, Arg):
            return self._arg(stage, instr)
        expanded = instr.expand(self._env(stage))
        if isinstance(expanded, Run):
            return self._run(stage, expanded)
        if isinstance(expanded, (Copy, Add)):
            return self._copy(stage, expanded)
        return self._metadata(stage, expanded)

    def _cached(self, stage: _Stage, key: str) -> Image | None:
        if self.options.no_cache:
            return None
        entry = self.cache.get(key)
        if entry is None:
            return None
        self.say(" ---> Using cache")
        return Image(entry.config, list(entry.layers))

    def _commit(self, stage: _Stage, key: str, config: dict[str, Any], layers: list[StoredLayer]) -> Image:
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
        image = Image(config, layers)
        self.cache.put(key, config, layers)
        return image

    def _next_config(self, stage: _Stage, created_by: str, empty: bool) -> dict[str, Any]:
        config = copymod.deepcopy(stage.image.config)
        created = _now()
        config["created"] = created
        history = [h for h in config.get("history") or [] if isinstance(h, dict)]
        row: dict[str, Any] = {"created": created, "created_by": created_by}
        if empty:
            row["empty_layer"] = True
        config["history"] = [*history, row]
        config.setdefault("config", {})
        config.pop("container_config", None)
        return config

    # -- ARG -------------------------------------------------------------------------------------

    def _declare(self, arg: Arg, scope: Callable[[], Mapping[str, str]],
                 declare: Callable[[str, str | None], None]) -> None:
        """Each of ARG's names given to DECLARE with its default, expanded in SCOPE as it is
        after the names before it were declared (``ARG A=1 B=$A``)."""
        for name, default in arg.args:
            if default is not None:
                default = dataclasses.replace(arg, args=((name, default),)).expand(scope()).args[0][1]
            declare(name, default)

    def _global_arg(self, arg: Arg) -> None:
        def declare(name: str, default: str | None) -> None:
            given = self.options.build_args.get(name)
            if given is not None:
                self.used_args.add(name)
            self.global_args[name] = given if given is not None else default

        self._declare(arg, lambda: {k: v for k, v in self.global_args.items() if v is not None}, declare)

    def _arg(self, stage: _Stage, arg: Arg) -> Image:
        def declare(name: str, default: str | None) -> None:
            given = self.options.build_args.get(name)
            if name in self.options.build_args:
                self.used_args.add(name)
            if given is None and default is None:
                given = self.global_args.get(name)   # ARG NAME in a stage takes the global ARG's value
            value = given if given is not None else default
            if value is not None:
                stage.args[name] = value
            else:
                stage.args.pop(name, None)

        self._declare(arg, lambda: self._env(stage), declare)
        # docker records ARG as an empty-layer history row too; its cache key is the instruction
        text = arg_text(arg)
        key = cachemod.step_key(stage.image.id, "ARG " + text, stage.args)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        config = self._next_config(stage, f"/bin/sh -c #(nop)  ARG {text}", empty=True)
        return self._commit(stage, key, config, stage.image.layers)

    # -- the config instructions -----------------------------------------------------------------

    def _metadata(self, stage: _Stage, s: Instruction) -> Image:
        """The instructions that change the config alone; S is already expanded."""
        kind = s.keyword
        cfg = copymod.deepcopy(stage.image.cfg)
        shown = arguments(s)
        author: str | None = None
        if isinstance(s, Env):
            entries = [e for e in cfg.get("Env") or []]
            for k, v in s.pairs:
                entries = [e for e in entries if str(e).partition("=")[0] != k]
                entries.append(f"{k}={v}")
            cfg["Env"] = entries
            shown = " ".join(f"{k}={v}" for k, v in s.pairs)
        elif isinstance(s, Label):
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(s.pairs)}
            shown = " ".join(f"{k}={v}" for k, v in s.pairs)
        elif isinstance(s, Maintainer):
            author = s.name
        elif isinstance(s, Workdir):
            cfg["WorkingDir"] = posixpath.normpath(posixpath.join(cfg.get("WorkingDir") or "/", s.path))
            shown = cfg["WorkingDir"]
        elif isinstance(s, User):
            cfg["User"] = shown = s.user
        elif isinstance(s, Expose):
            ports = dict(cfg.get("ExposedPorts") or {})
            for word in s.ports:
                port = word if "/" in word else word + "/tcp"
                ports[port.lower()] = {}
            cfg["ExposedPorts"] = ports
            shown = " ".join(s.ports)
        elif isinstance(s, Volume):
            paths = list(s.paths)
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{p: {} for p in paths}}
            shown = json.dumps(paths) if s.exec_form else " ".join(paths)
        elif isinstance(s, (Cmd, Entrypoint)):
            argv = s.argv(self._shell(stage))
            cfg["Cmd" if kind == "CMD" else "Entrypoint"] = argv
            if kind == "CMD":
                stage.cmd_set = True
            elif not stage.cmd_set:
                cfg.pop("Cmd", None)   # an ENTRYPOINT resets the CMD of the base image, as docker does
            shown = "[" + " ".join(json.dumps(a) for a in argv) + "]"
        elif isinstance(s, Shell):
            cfg["Shell"] = list(s.command)
            shown = "[" + " ".join(json.dumps(a) for a in s.command) + "]"
        elif isinstance(s, Stopsignal):
            cfg["StopSignal"] = shown = s.signal
        elif isinstance(s, Healthcheck):
            cfg["Healthcheck"] = healthcheck_config(s)
        elif isinstance(s, Onbuild):
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), s.trigger]
            shown = s.trigger
        else:   # FROM as an ONBUILD trigger some other builder recorded
            raise error(s, f"{kind} isn't allowed as an ONBUILD trigger")
        sep = " " if kind == "WORKDIR" else "  "
        created_by = f"/bin/sh -c #(nop){sep}{kind} {shown}"
        key = cachemod.step_key(stage.image.id, created_by, stage.args)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        config = self._next_config(stage, created_by, empty=True)
        config["config"] = cfg
        if author is not None:
            config["author"] = author
        layers = stage.image.layers
        if isinstance(s, Workdir):
            made = self._workdir_layer(stage.image, cfg["WorkingDir"], str(cfg.get("User") or ""))
            if made is not None:
                layers = [*layers, made]
                del config["history"][-1]["empty_layer"]
        return self._commit(stage, key, config, layers)

    def _workdir_layer(self, image: Image, path: str, user: str) -> StoredLayer | None:
        """A layer with WORKDIR's PATH where IMAGE lacks it, None where it is there: docker
        makes it even if nothing uses it, with its missing parents, 0755 and USER's (BuildKit;
        the classic builder made it root's, which left a USER unable to write there)."""
        import tarfile

        from ..image.local import stage_dir
        from .copying import run_mkdir

        where = stage_dir(self.store, "build-")
        try:
            lowers = tuple(os.fsencode(str(self.store.layer_path(layer.diff_id))) for layer in reversed(image.layers))
            tar = where / "layer.tar"
            run_mkdir(path, user, where, lowers, tar, self.ids)
            with tarfile.open(tar) as t:
                if t.next() is None:
                    return None
            return self._ingest(tar)
        finally:
            shutil.rmtree(where, ignore_errors=True)

    def _shell(self, stage: _Stage) -> list[str]:
        return list(stage.image.cfg.get("Shell") or DEFAULT_SHELL)

    # -- RUN -------------------------------------------------------------------------------------

    def _run(self, stage: _Stage, s: Run) -> Image:
        network = self._run_network(s)
        shell = self._shell(stage)
        whole = s.argv(shell)   # what the shell runs; a heredoc's content included
        argv, files = whole, {}
        script = s.script()
        if script is not None and script.content.startswith("#!"):
            # docker runs a lone #! heredoc as the program it names, not through the SHELL
            path = posixpath.join(SCRIPTS_DIR, script.name)
            argv, files = [path], {path: script.content}
        cfg = stage.image.cfg
        env_keys = {str(e).partition("=")[0] for e in cfg.get("Env") or []}
        arg_env = {k: v for k, v in stage.args.items() if k not in env_keys}
        self.used_args.update(stage.args)
        prefix = f"|{len(arg_env)} " + " ".join(f"{k}={v}" for k, v in sorted(arg_env.items())) + " " if arg_env else ""
        created_by = prefix + " ".join(whole)
        described = json.dumps(argv) if not files else json.dumps([argv, files])
        if network != "host":
            described += " --network=" + network
        key = cachemod.step_key(stage.image.id, "RUN " + described, arg_env)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        env = [*(str(e) for e in cfg.get("Env") or []), *(f"{k}={v}" for k, v in arg_env.items())]
        if not any(e.startswith("PATH=") for e in env):
            from ..runtime.spec import DEFAULT_PATH

            env.insert(0, f"PATH={DEFAULT_PATH}")
        layer = self._run_container(stage.image, argv, env, str(cfg.get("WorkingDir") or "/"),
                                    str(cfg.get("User") or ""), " ".join(whole), files=files, network=network)
        config = self._next_config(stage, created_by, empty=False)
        return self._commit(stage, key, config, [*stage.image.layers, layer])

    @staticmethod
    def _run_network(s: Run) -> str:
        """RUN's network: the host's (docker's default for builds), or none with --network=none.
        The other BuildKit flags change what a RUN can see, so they are refused, not ignored."""
        if s.mounts:
            raise error(s, "RUN --mount is not supported by this builder yet",
                        "COPY what the command needs into the image first")
        if s.devices:
            raise error(s, "RUN --device is not supported by this builder")
        if s.security not in (None, "sandbox"):
            raise error(s, f"RUN --security={s.security} is not supported by this builder",
                        "a rootless build cannot grant more than the user has")
        if s.network in (None, "default", "host"):
            return "host"
        if s.network == "none":
            return "none"
        raise error(s, f"unsupported network mode {s.network!r} for RUN", "write --network=default, host or none")

    def _run_container(self, image: Image, argv: list[str], env: list[str], cwd: str, user: str,
                       shown: str, *, files: Mapping[str, str] | None = None, network: str = "host") -> StoredLayer:
        """Run ARGV in a container of IMAGE; its changes are the layer.  FILES (path in the
        container -> content) are bound in read-only, executable, from outside the layer."""
        from ..image.local import stage_dir
        from ..runtime import launch
        from ..runtime import network as netmod
        from ..runtime.commit import changes, run_on_layers, write_layer
        from ..runtime.rootfs import ContainerFS
        from ..runtime.spec import ProcessSpec

        diff_ids = [layer.diff_id for layer in image.layers]
        container = self.containers.create(None, {
            "Image": image.id if image.id != "scratch" else "", "Path": argv[0], "Args": argv[1:],
            "Config": {"Image": _short(image.id), "Cmd": argv, "Env": env, "WorkingDir": cwd, "User": user},
            "HostConfig": {"NetworkMode": network},
            "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0,
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Layers": diff_ids, "IdMap": {"Subids": self.options.use_subids}, "Builder": True})
        stage_path: Path | None = None
        try:
            self.say(f" ---> Running in {container.id[:12]}")
            hostname = container.id[:12]
            etc_files = netmod.write_etc_files(str(container.dir), hostname, network)
            for index, (target, text) in enumerate((files or {}).items()):
                path = container.dir / f"inline-{index}"
                path.write_text(text)
                path.chmod(0o755)
                etc_files[target] = str(path)
            lowers = [str(self.store.layer_path(d)) for d in reversed(diff_ids)]
            lower = self._shared_lower(lowers)
            if lower is not None:
                container.record["Storage"] = "overlay"
            job = launch.Launch(rootfs=str(container.rootfs), lowers=lowers,
                                upper=str(container.upper), work=str(container.work),
                                process=ProcessSpec(tuple(argv), tuple(env), cwd, user), ids=self.ids,
                                hostname=hostname, etc_files=etc_files, network=network,
                                fuse_log=str(container.dir / "fusefs.log"),
                                shared_lower=lower.path if lower is not None else None)
            try:
                code = self._start_and_wait(job)
            finally:
                if lower is not None:
                    lower.close()
            if code != 0:
                raise RunFailed(f"The command '{shown}' returned a non-zero code: {code}")
            stage_path = stage_dir(self.store, "build-")
            tar = stage_path / "layer.tar"

            def work(fs: ContainerFS) -> None:
                with open(tar, "wb") as out:
                    write_layer(out, fs, changes(fs))

            run_on_layers(container, self.store, work)
            layer = self._ingest(tar)
        finally:
            if stage_path is not None:
                shutil.rmtree(stage_path, ignore_errors=True)
            if container.record.get("Storage") == "overlay":
                from ..runtime.shared import empty_writable_layer

                empty_writable_layer(str(container.upper), str(container.work), self.ids)
            self.containers.remove(container)
        self.say(f"Removing intermediate container {container.id[:12]}")
        return layer

    def _shared_lower(self, lowers: list[str]) -> Any:
        """A RUN step's root as run's: overlay over the image's shared mount where that works
        (runtime/shared.py), else None (fusefs).  An image with no layers (scratch) has no lower."""
        from ..runtime import host, shared

        runtime_dir = self.options.runtime_dir
        if (runtime_dir is None or not lowers or host.runtime_mode() != host.USERNS
                or shared.choose(self.options.storage_driver, self.ids, self.store.root) != "overlay"):
            return None
        return shared.acquire(runtime_dir, lowers, self.ids)

    def _start_and_wait(self, job: Any) -> int:
        from ..runtime import launch

        sys.stdout.flush()
        sys.stderr.flush()
        saved: list[int] = []
        if self.options.quiet:   # -q: the command's output is not shown
            saved = [os.dup(1), os.dup(2)]
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(null)
        try:
            started = launch.start(job)
            code = launch.wait(started)
        finally:
            if saved:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        if started.error is not None:
            sys.stderr.write(f"{started.error.message}\n")
            sys.stderr.flush()
            return started.error.code
        return code

    def _ingest(self, tar: Path) -> StoredLayer:
        from ..image.local import Ingest

        # Committed at once, with no image: the layer stays for the cache until gc takes it.
        with Ingest(self.store) as ingest:
            layer = ingest.add_layer_tar(tar)
            ingest.commit()
        return layer

    # -- COPY and ADD ----------------------------------------------------------------------------

    def _copy(self, stage: _Stage, s: Copy | Add) -> Image:
        """COPY and ADD, S already expanded: context (or stage) paths, ADD's URLs (downloaded
        first, for the cache key is their content), then heredocs as files."""
        from ..image.local import stage_dir
        from .remote import RemoteTree, download, is_url, source_name

        kind = s.keyword
        if s.exclude:
            raise error(s, f"{kind} --exclude is not supported by this builder yet",
                        "list what to leave out in .dockerignore")
        if isinstance(s, Copy) and s.parents:
            raise error(s, "COPY --parents is not supported by this builder yet", "COPY each directory to its place")
        if isinstance(s, Add) and s.keep_git_dir:
            raise error(s, "ADD --keep-git-dir is for git sources, which this builder does not support yet",
                        "clone the repository into the build context and ADD or COPY it from there")
        # --link is accepted: it changes how BuildKit may rebase the layer, not what it holds.
        srcs, dest = list(s.sources), s.dest
        chmod = None
        if s.chmod:
            try:
                chmod = int(s.chmod, 8)
            except ValueError:
                raise error(s, f"invalid chmod parameter {s.chmod}", "give octal permission bits, e.g. 0755") from None
        urls = [src for src in srcs if isinstance(s, Add) and is_url(src)]
        local = [src for src in srcs if not (isinstance(s, Add) and is_url(src))]
        if isinstance(s, Add) and s.checksum and (local or s.heredocs or len(urls) != 1):
            raise error(s, "ADD --checksum is for one HTTP(S) source alone",
                        "ADD the URL whose content is pinned on a line of its own")
        downloads: Path | None = None
        try:
            remote = None
            if urls:
                assert isinstance(s, Add)
                downloads = stage_dir(self.store, "download-")
                got = [download(url, downloads, s.checksum) for url in urls]
                remote = RemoteTree([(source_name(d.url, d.name, dest), d) for d in got])
            return self._copy_sources(stage, s, local, remote, chmod)
        finally:
            if downloads is not None:
                shutil.rmtree(downloads, ignore_errors=True)

    def _copy_sources(self, stage: _Stage, s: Copy | Add, local: list[str], remote: RemoteTree | None,
                      chmod: int | None) -> Image:
        from .copying import CopyJob, InlineTree, context_sources

        kind, srcs, dest = s.keyword, list(s.sources), s.dest
        source_from = s.from_ if isinstance(s, Copy) else None
        inline = {h.name: h.content.encode() for h in s.heredocs}
        workdir = str(stage.image.cfg.get("WorkingDir") or "/")
        lowers_from: tuple[bytes, ...] | None = None
        hashes: list[str] = []
        count, first_is_dir = 0, False
        if srcs and source_from:
            other = next((st for st in self.stages if st is not stage and
                          ((st.name or "") == source_from.lower() or str(st.index) == source_from)), None)
            src_image = other.image if other is not None else self._base_image(source_from)
            lowers_from = tuple(os.fsencode(str(self.store.layer_path(layer.diff_id)))
                                for layer in reversed(src_image.layers))
            hashes.append(cachemod.step_key(src_image.id, json.dumps(srcs), {}))
            count, first_is_dir = len(srcs), True
        elif local:
            found = context_sources(self.context, local, self.rules, kind)
            rels = [rel for rel, _ in found.items]
            hashes.append(cachemod.hash_tree(found.tree, rels, rels))
            count, first_is_dir = len(found.items), bool(found.items and found.items[0][1].is_dir)
        if remote is not None:
            # Docker keys a download by its content and name, not its time: the same bytes hit.
            rels = remote.rels()
            hashes.append(cachemod.hash_tree(remote, rels, [os.path.basename(rel) for rel in rels]))
            first_is_dir = first_is_dir if count else False
            count += len(rels)
        if inline:
            names = InlineTree(inline).names(b"")
            hashes.append(cachemod.hash_tree(InlineTree(inline), names, names))
            first_is_dir = first_is_dir if count else False
            count += len(inline)
        sources_hash = hashes[0] if len(hashes) == 1 else cachemod.step_key("", json.dumps(hashes), {})
        label = "multi" if count > 1 else ("dir" if first_is_dir else "file")
        shown_dest = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        flags = {"chown": s.chown, "chmod": s.chmod, "from": source_from,
                 "unpack": None if not isinstance(s, Add) or s.unpack is None else str(s.unpack).lower()}
        flags_text = " ".join(f"--{k}={v}" for k, v in sorted(flags.items()) if v is not None)
        created_by = f"/bin/sh -c #(nop) {kind} {label}:{sources_hash[:64]} in {shown_dest} "
        key = cachemod.step_key(stage.image.id, f"{kind} {flags_text} {json.dumps([*srcs, *inline, dest])} {workdir}",
                                {}, sources_hash)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        job = CopyJob(kind=kind, srcs=local, dest=dest, workdir=workdir, chown=s.chown, chmod=chmod,
                      context=None if source_from else self.context, rules=self.rules,
                      from_lowers=lowers_from, extract_archives=isinstance(s, Add) and s.unpack is not False,
                      inline=inline, inline_mtime_ns=time.time_ns(), remote=remote,
                      extract_remote=isinstance(s, Add) and s.unpack is True)
        layer = self._copy_layer(stage.image, job)
        config = self._next_config(stage, created_by, empty=False)
        return self._commit(stage, key, config, [*stage.image.layers, layer])

    def _copy_layer(self, image: Image, job: Any) -> StoredLayer:
        from ..image.local import stage_dir
        from .copying import run_copy

        where = stage_dir(self.store, "build-")
        try:
            lowers = tuple(os.fsencode(str(self.store.layer_path(layer.diff_id))) for layer in reversed(image.layers))
            tar = where / "layer.tar"
            run_copy(job, where, lowers, tar, self.ids)
            return self._ingest(tar)
        finally:
            shutil.rmtree(where, ignore_errors=True)


def _tag_shown(tag: str) -> str:
    from ..image import reference

    try:
        ref = reference.parse(tag)
    except RootlessError:
        return tag
    return tag if reference.names_tag(tag) or ref.digest else f"{tag}:latest"
