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
import json
import os
import platform
import posixpath
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ImageNotFound, RootlessError
from ..image import manifest as mf
from ..image.local import StoredLayer, config_bytes
from . import cache as cachemod
from .instructions import BuildError, Step, load
from .instructions import triggers as load_triggers

if TYPE_CHECKING:
    from ..image.store import ImageRecord, Store
    from ..runtime.containers import Containers
    from ..runtime.idmap import IdMap

DEFAULT_SHELL = ["/bin/sh", "-c"]
#: docker's predefined build args: usable without an ARG line, never reported as unused
PREDEFINED_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                   "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
#: instructions whose arguments get $VARIABLES replaced by the builder (RUN, CMD and
#: ENTRYPOINT are left to the container's shell)
EXPANDED = ("ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "ARG")


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
        self.excluded: Callable[[str], bool] = lambda rel: False

    def say(self, text: str) -> None:
        if not self.options.quiet:
            self.out.write(text + "\n")
            self.out.flush()

    # -- the whole build -------------------------------------------------------------------------

    def build(self, dockerfile: str, context: Path, dockerfile_name: str = "Dockerfile") -> ImageRecord:
        """Build DOCKERFILE's text with CONTEXT (a directory) and store the result, tagged."""
        steps = load(dockerfile, dockerfile_name)
        self.context = context
        self.excluded = _ignore_matcher(context)
        with self.store.lease():
            image = self._run_steps(steps)
            return self._store_final(image)

    def _run_steps(self, steps: Sequence[Step]) -> Image:
        global_args = self.global_args
        first_from = next((i for i, s in enumerate(steps) if s.keyword == "FROM"), None)
        if first_from is None:
            raise BuildError("the Dockerfile has no FROM instruction", "start it with FROM IMAGE or FROM scratch")
        for s in steps[:first_from]:
            if s.keyword != "ARG":
                raise BuildError(f"Dockerfile line {s.line}: {s.keyword} before the first FROM",
                                 "only ARG may come before FROM")
        end = len(steps)
        if self.options.target:
            names = [(i, (s.words()[2] if len(s.words()) >= 3 and s.words()[1].upper() == "AS" else None))
                     for i, s in enumerate(steps) if s.keyword == "FROM"]
            hit = next((i for i, (_, n) in enumerate(names) if n and n.lower() == self.options.target.lower()), None)
            if hit is None:
                raise BuildError(f"failed to reach build target {self.options.target} in Dockerfile",
                                 "name a stage of the Dockerfile (FROM ... AS NAME)")
            end = names[hit + 1][0] if hit + 1 < len(names) else len(steps)
        steps = steps[:end]
        total = len(steps)
        stage: _Stage | None = None
        for number, s in enumerate(steps, 1):
            self.say(f"Step {number}/{total} : {s.original}")
            if stage is None and s.keyword == "ARG":
                for name, default in self._arg_pairs(s, {k: v for k, v in global_args.items() if v is not None}):
                    given = self.options.build_args.get(name)
                    global_args[name] = given if given is not None else default
                    if given is not None:
                        self.used_args.add(name)
                continue
            if s.keyword == "FROM":
                stage = self._from(s, {k: v for k, v in global_args.items() if v is not None}, global_args)
                self.stages.append(stage)
                continue
            assert stage is not None
            stage.image = self._step(stage, s)
            self.say(f" ---> {_short(stage.image.id)}")
        assert stage is not None
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

    def _from(self, s: Step, env: Mapping[str, str], global_args: Mapping[str, str | None]) -> _Stage:
        words = s.expand_words(env)
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
            raise BuildError(f"Dockerfile line {s.line}: FROM takes IMAGE [AS NAME]")
        name = words[2] if len(words) == 3 else None
        ref = words[0]
        for used in global_args:
            if f"${used}" in s.text or f"${{{used}" in s.text:
                self.used_args.add(used)
        earlier = next((st for st in self.stages if st.name and st.name.lower() == ref.lower()), None)
        if earlier is not None:
            image = Image(copymod.deepcopy(earlier.image.config), list(earlier.image.layers), earlier.image.id)
        elif ref.lower() == "scratch":
            image = Image({"architecture": _arch(), "os": "linux", "config": {},
                           "rootfs": {"type": "layers", "diff_ids": []}, "history": []}, [], "scratch")
        else:
            image = self._base_image(ref)
        if image.id != "scratch":
            self.say(f" ---> {_short(image.id)}")
        stage = _Stage(len(self.stages), name, image)
        triggers = list(image.cfg.get("OnBuild") or [])
        if triggers:
            image.cfg["OnBuild"] = None
            image = stage.image = Image(image.config, image.layers)
            self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}")
            for trigger in load_triggers([str(t) for t in triggers]):
                stage.image = self._step(stage, trigger)
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

    def _step(self, stage: _Stage, s: Step) -> Image:
        kind = s.keyword
        if kind == "ARG":
            return self._arg(stage, s)
        env = self._env(stage)
        if kind in EXPANDED:
            self._note_args(stage, s.text)
        if kind == "RUN":
            return self._run(stage, s)
        if kind in ("COPY", "ADD"):
            return self._copy(stage, s, env)
        return self._metadata(stage, s, env)

    def _note_args(self, stage: _Stage, text: str) -> None:
        for name in stage.args:
            if f"${name}" in text or f"${{{name}" in text:
                self.used_args.add(name)

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

    def _arg_pairs(self, s: Step, env: Mapping[str, str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for word in s.expand_words(env):
            name, sep, default = word.partition("=")
            if not name:
                raise BuildError(f"Dockerfile line {s.line}: ARG needs a name")
            out.append((name, default if sep else None))
        return out

    def _arg(self, stage: _Stage, s: Step) -> Image:
        env = self._env(stage)
        self._note_args(stage, s.text)
        for name, default in self._arg_pairs(s, env):
            given = self.options.build_args.get(name)
            if given is None and default is None:
                given = self._global_default(name)
            value = given if given is not None else default
            if name in self.options.build_args:
                self.used_args.add(name)
            if value is not None:
                stage.args[name] = value
            else:
                stage.args.pop(name, None)
        # docker records ARG as an empty-layer history row too; its cache key is the instruction
        key = cachemod.step_key(stage.image.id, "ARG " + s.text, stage.args)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        config = self._next_config(stage, f"/bin/sh -c #(nop)  ARG {s.text}", empty=True)
        return self._commit(stage, key, config, stage.image.layers)

    def _global_default(self, name: str) -> str | None:
        return self.global_args.get(name)

    # -- the config instructions -----------------------------------------------------------------

    def _metadata(self, stage: _Stage, s: Step, env: Mapping[str, str]) -> Image:
        kind = s.keyword
        base = stage.image.cfg
        cfg = copymod.deepcopy(base)
        shown = s.text
        author: str | None = None
        if kind == "ENV":
            pairs = s.pairs(env)
            entries = [e for e in cfg.get("Env") or []]
            for k, v in pairs:
                entries = [e for e in entries if str(e).partition("=")[0] != k]
                entries.append(f"{k}={v}")
            cfg["Env"] = entries
            shown = " ".join(f"{k}={v}" for k, v in pairs)
        elif kind == "LABEL":
            pairs = s.pairs(env)
            cfg["Labels"] = {**(cfg.get("Labels") or {}), **dict(pairs)}
            shown = " ".join(f"{k}={v}" for k, v in pairs)
        elif kind == "MAINTAINER":
            author = s.text.strip()
        elif kind == "WORKDIR":
            path = s.expand_one(env)
            cfg["WorkingDir"] = posixpath.normpath(posixpath.join(cfg.get("WorkingDir") or "/", path))
            shown = cfg["WorkingDir"]
        elif kind == "USER":
            cfg["User"] = s.expand_one(env)
            shown = cfg["User"]
        elif kind == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            words = s.expand_words(env)
            for word in words:
                port = word if "/" in word else word + "/tcp"
                ports[port.lower()] = {}
            cfg["ExposedPorts"] = ports
            shown = " ".join(words)
        elif kind == "VOLUME":
            paths = s.exec_form if s.exec_form is not None else s.expand_words(env)
            if not paths or any(not p.strip() for p in paths):
                raise BuildError(f"Dockerfile line {s.line}: VOLUME specified can not be an empty string")
            cfg["Volumes"] = {**(cfg.get("Volumes") or {}), **{p: {} for p in paths}}
            shown = json.dumps(paths) if s.exec_form is not None else " ".join(paths)
        elif kind in ("CMD", "ENTRYPOINT"):
            argv = s.exec_form if s.exec_form is not None else [*self._shell(stage), s.text]
            cfg["Cmd" if kind == "CMD" else "Entrypoint"] = argv
            if kind == "CMD":
                stage.cmd_set = True
            elif not stage.cmd_set:
                cfg.pop("Cmd", None)   # an ENTRYPOINT resets the CMD of the base image, as docker does
            shown = "[" + " ".join(json.dumps(a) for a in argv) + "]"
        elif kind == "SHELL":
            if s.exec_form is None:
                raise BuildError(f"Dockerfile line {s.line}: SHELL requires the arguments to be in JSON form",
                                 'write SHELL ["/bin/bash", "-c"]')
            cfg["Shell"] = s.exec_form
            shown = "[" + " ".join(json.dumps(a) for a in s.exec_form) + "]"
        elif kind == "STOPSIGNAL":
            cfg["StopSignal"] = s.expand_one(env)
            shown = cfg["StopSignal"]
        elif kind == "HEALTHCHECK":
            cfg["Healthcheck"] = _healthcheck(s)
        elif kind == "ONBUILD":
            trigger = s.text.strip()
            first = trigger.split(None, 1)[0].upper() if trigger else ""
            if first in ("ONBUILD", "FROM", "MAINTAINER"):
                raise BuildError(f"Dockerfile line {s.line}: {first} isn't allowed as an ONBUILD trigger")
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), trigger]
        else:
            raise BuildError(f"Dockerfile line {s.line}: unknown instruction: {kind}",
                             "see the Dockerfile reference for the instructions docker knows")
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
        return self._commit(stage, key, config, stage.image.layers)

    def _shell(self, stage: _Stage) -> list[str]:
        return list(stage.image.cfg.get("Shell") or DEFAULT_SHELL)

    # -- RUN -------------------------------------------------------------------------------------

    def _run(self, stage: _Stage, s: Step) -> Image:
        argv = list(s.exec_form) if s.exec_form is not None else [*self._shell(stage), s.text]
        cfg = stage.image.cfg
        env_keys = {str(e).partition("=")[0] for e in cfg.get("Env") or []}
        arg_env = {k: v for k, v in stage.args.items() if k not in env_keys}
        self.used_args.update(stage.args)
        prefix = f"|{len(arg_env)} " + " ".join(f"{k}={v}" for k, v in sorted(arg_env.items())) + " " if arg_env else ""
        created_by = prefix + " ".join(argv)
        key = cachemod.step_key(stage.image.id, "RUN " + json.dumps(argv), arg_env)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        env = [*(str(e) for e in cfg.get("Env") or []), *(f"{k}={v}" for k, v in arg_env.items())]
        if not any(e.startswith("PATH=") for e in env):
            from ..runtime.spec import DEFAULT_PATH

            env.insert(0, f"PATH={DEFAULT_PATH}")
        layer = self._run_container(stage.image, argv, env, str(cfg.get("WorkingDir") or "/"),
                                    str(cfg.get("User") or ""), " ".join(argv))
        config = self._next_config(stage, created_by, empty=False)
        return self._commit(stage, key, config, [*stage.image.layers, layer])

    def _run_container(self, image: Image, argv: list[str], env: list[str], cwd: str, user: str,
                       shown: str) -> StoredLayer:
        from ..image.local import stage_dir
        from ..runtime import launch, network
        from ..runtime.commit import changes, run_on_layers, write_layer
        from ..runtime.rootfs import ContainerFS
        from ..runtime.spec import ProcessSpec

        diff_ids = [layer.diff_id for layer in image.layers]
        container = self.containers.create(None, {
            "Image": image.id if image.id != "scratch" else "", "Path": argv[0], "Args": argv[1:],
            "Config": {"Image": _short(image.id), "Cmd": argv, "Env": env, "WorkingDir": cwd, "User": user},
            "HostConfig": {"NetworkMode": "host"},
            "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0,
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "Layers": diff_ids, "IdMap": {"Subids": self.options.use_subids}, "Builder": True})
        stage_path: Path | None = None
        try:
            self.say(f" ---> Running in {container.id[:12]}")
            hostname = container.id[:12]
            etc = {"/etc/hosts": network.hosts_text("host", hostname), "/etc/hostname": hostname + "\n"}
            resolv = network.resolv_text("host")
            if resolv is not None:
                etc["/etc/resolv.conf"] = resolv
            etc_files = {}
            for target, text in etc.items():
                path = container.dir / os.path.basename(target)
                path.write_text(text)
                etc_files[target] = str(path)
            job = launch.Launch(rootfs=str(container.rootfs),
                                lowers=[str(self.store.layer_path(d)) for d in reversed(diff_ids)],
                                upper=str(container.upper), work=str(container.work),
                                process=ProcessSpec(tuple(argv), tuple(env), cwd, user), ids=self.ids,
                                hostname=hostname, etc_files=etc_files, network="host",
                                fuse_log=str(container.dir / "fusefs.log"))
            code = self._start_and_wait(job)
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
            self.containers.remove(container)
        self.say(f"Removing intermediate container {container.id[:12]}")
        return layer

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

    def _copy(self, stage: _Stage, s: Step, env: Mapping[str, str]) -> Image:
        from .copying import CopyJob, context_sources

        kind = s.keyword
        allowed = {"chown", "chmod", "from"} if kind == "COPY" else {"chown", "chmod"}
        for flag in s.flags:
            if flag not in allowed:
                raise BuildError(f"Dockerfile line {s.line}: unknown flag: --{flag} for {kind}")
        words = s.exec_form if s.exec_form is not None else s.expand_words(env)
        if len(words) < 2:
            raise BuildError(f"{kind} requires at least two arguments, but only one was provided. "
                             "Destination could not be determined.")
        *srcs, dest = words
        chown = s.flag("chown", env)
        chmod_text = s.flag("chmod", env)
        chmod = None
        if chmod_text:
            try:
                chmod = int(chmod_text, 8)
            except ValueError:
                raise BuildError(f"invalid chmod parameter {chmod_text}", "give octal permission bits, e.g. 0755") from None
        source_from = s.flag("from", env)
        for src in srcs:
            if kind == "ADD" and src.startswith(("http://", "https://")):
                raise BuildError(f"ADD {src}: downloading URLs is not supported yet",
                                 "download the file into the build context and ADD or COPY it from there")
        workdir = str(stage.image.cfg.get("WorkingDir") or "/")
        lowers_from: tuple[bytes, ...] | None = None
        if source_from:
            other = next((st for st in self.stages if st is not stage and
                          (st.name or "").lower() == source_from.lower() or str(st.index) == source_from), None)
            if other is not None:
                src_image = other.image
            else:
                src_image = self._base_image(source_from)
            lowers_from = tuple(os.fsencode(str(self.store.layer_path(layer.diff_id)))
                                for layer in reversed(src_image.layers))
            sources_hash = cachemod.step_key(src_image.id, json.dumps(srcs), {})
            label = "multi" if len(srcs) > 1 else "dir"
        else:
            found = context_sources(self.context, srcs, self.excluded, kind)
            sources_hash = cachemod.hash_tree(found.tree, [rel for rel, _ in found.items],
                                              [rel for rel, _ in found.items])
            label = "multi" if len(found.items) > 1 else ("dir" if found.items and found.items[0][1].is_dir
                                                          else "file")
        shown_dest = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        flags_text = " ".join(f"--{k}={v}" for k, v in sorted(s.flags.items()))
        created_by = f"/bin/sh -c #(nop) {kind} {label}:{sources_hash[:64]} in {shown_dest} "
        key = cachemod.step_key(stage.image.id, f"{kind} {flags_text} {json.dumps(words)} {workdir}", {},
                                sources_hash)
        hit = self._cached(stage, key)
        if hit is not None:
            return hit
        job = CopyJob(kind=kind, srcs=list(srcs), dest=dest, workdir=workdir, chown=chown, chmod=chmod,
                      context=None if source_from else self.context, excluded=self.excluded,
                      from_lowers=lowers_from, extract_archives=kind == "ADD")
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


def _healthcheck(s: Step) -> dict[str, Any]:
    words = s.text.split(None, 1)
    if words and words[0].upper() == "NONE":
        return {"Test": ["NONE"]}
    if not words or words[0].upper() != "CMD" or len(words) < 2:
        raise BuildError(f"Dockerfile line {s.line}: HEALTHCHECK takes NONE or [OPTIONS] CMD command")
    rest = words[1].strip()
    try:
        value = json.loads(rest) if rest.startswith("[") else None
    except ValueError:
        value = None
    test = ["CMD", *value] if isinstance(value, list) else ["CMD-SHELL", rest]
    out: dict[str, Any] = {"Test": test}
    for flag, field_name in (("interval", "Interval"), ("timeout", "Timeout"), ("start-period", "StartPeriod")):
        text = s.flags.get(flag)
        if text:
            out[field_name] = _duration_ns(text)
    if s.flags.get("retries"):
        out["Retries"] = int(s.flags["retries"])
    return out


def _duration_ns(text: str) -> int:
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[:-len(unit)]) * units[unit])
    raise BuildError(f"invalid duration {text!r}", "write e.g. 30s, 1m30s is not supported yet")


def _ignore_matcher(context: Path) -> Callable[[str], bool]:
    """Whether a context path (relative, / separated) is excluded by the context's .dockerignore."""
    path = context / ".dockerignore"
    try:
        text = path.read_text()
    except OSError:
        return lambda rel: False
    import importlib

    try:
        ignore = importlib.import_module(f"{__package__}.ignore")
    except ImportError:   # until ignore.py lands: plain patterns, no exceptions
        import fnmatch

        patterns = [posixpath.normpath(line.strip().lstrip("/")) for line in text.splitlines()
                    if line.strip() and not line.startswith("#")]
        return lambda rel: any(fnmatch.fnmatchcase(rel, p) or rel.startswith(p + "/") for p in patterns)
    return ignore.matcher(text)  # type: ignore[no-any-return]


