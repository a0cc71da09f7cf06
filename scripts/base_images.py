"""Build the project's base images as OCI layouts, reproducibly, and push them to a registry.

Started by scripts/base-images; tests/integration/test_base_images.py and
scripts/bench_pull.py import it.  Standard library only (plus the skopeo and mmdebstrap
commands where an image or a push needs them), so that it runs before scripts/setup.

Images:

* ``busybox:latest``: Debian's static busybox at /bin/busybox with a symlink per applet,
  /etc/passwd and /etc/group with root and nobody, /tmp with mode 1777; Cmd ["sh"].
* ``debian:bookworm``: ``mmdebstrap --variant=minbase`` as one layer; Cmd ["bash"].
  As root it runs in mmdebstrap's root mode; otherwise in unshare mode, which needs
  unprivileged user namespaces and a subordinate id range in /etc/subuid and /etc/subgid.
* ``smallfiles:latest``: 50,000 small files in a three-level tree, content derived from
  their names; the pull benchmark's metadata-heavy case.

Every member has a fixed mtime, owner 0:0 and no user or group name, and gzip gets
mtime 0 and no file name, so the same inputs give the same digests.  Built layouts are
cached under ``$XDG_CACHE_HOME/rootless-base-images/`` keyed by a hash of their inputs
(the busybox binary's digest, the mmdebstrap suite, variant, mirror and version, the
smallfiles count, this builder's version).  The debian key cannot see the mirror move on:
``--rebuild`` makes a fresh one.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import pwd
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: Bumped whenever a change here changes what gets built, so that old cache entries miss.
BUILDER_VERSION = 1
#: Every file's mtime, the config's "created" and mmdebstrap's SOURCE_DATE_EPOCH.
EPOCH = 1_700_000_000
GZIP_LEVEL = 6
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGES = ("busybox", "debian", "smallfiles")
SMALLFILES_COUNT = 50_000

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 1 << 20


class BuildError(Exception):
    """Something the user can fix kept an image from being built or pushed; the message says what."""


# -- values ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One member of a generated layer: a directory, a regular file or a symlink, owned by 0:0."""

    path: str                  # relative, no leading "/" or "./"
    kind: str                  # "dir", "file" or "symlink"
    mode: int = 0o755
    data: bytes = b""
    target: str = ""


@dataclass(frozen=True)
class LayerInfo:
    digest: str                # of the gzip blob
    size: int                  # of the gzip blob
    diff_id: str               # of the uncompressed tar
    tar_size: int
    members: int


@dataclass(frozen=True)
class Layout:
    """A built image: an OCI layout holding one manifest, tagged ``tag`` in its index.json."""

    name: str                  # "debian"
    tag: str                   # "bookworm"
    path: Path                 # the layout directory (oci-layout, index.json, blobs/)
    manifest_digest: str
    layers: tuple[LayerInfo, ...]
    cached: bool = False       # found in the cache rather than built by this call

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def oci(self) -> str:
        """The reference skopeo takes: ``oci:PATH:TAG``."""
        return f"oci:{self.path}:{self.tag}"


@dataclass(frozen=True)
class ImageSpec:
    """What the config says beside the layers."""

    cmd: tuple[str, ...] | None
    env: tuple[str, ...] = (PATH_ENV,)
    created_by: str = "scripts/base-images"


# -- hashing writers -------------------------------------------------------------------------

class _Hashing:
    """A write-only file that hashes and counts what passes through it on its way to ``out``."""

    def __init__(self, out: IO[bytes] | None) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.out is not None:
            self.out.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _created() -> str:
    return datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


# -- layers ----------------------------------------------------------------------------------

class _LayerWriter:
    """Gzips an uncompressed tar stream into a blob file, hashing both sides in one pass."""

    def __init__(self, blob: IO[bytes]) -> None:
        self.compressed = _Hashing(blob)
        self.gz = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=self.compressed,
                                mtime=0)
        self.tar = _Hashing(self.gz)  # type: ignore[arg-type]
        self.members = 0

    def finish(self) -> LayerInfo:
        self.gz.close()  # writes the gzip trailer; leaves the blob file open
        return LayerInfo(self.compressed.digest, self.compressed.size, self.tar.digest, self.tar.size, self.members)


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mtime = EPOCH
    info.mode = entry.mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
    elif entry.kind == "file":
        info.type = tarfile.REGTYPE
        info.size = len(entry.data)
    else:
        raise ValueError(f"unknown entry kind {entry.kind!r}")
    return info


def write_entries_layer(entries: Iterable[Entry], blob: IO[bytes]) -> LayerInfo:
    """Write ENTRIES, in the order given (parents first), as a gzipped tar to BLOB."""
    writer = _LayerWriter(blob)
    with tarfile.open(fileobj=writer.tar, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for entry in entries:
            tar.addfile(_tarinfo(entry), io.BytesIO(entry.data) if entry.kind == "file" else None)
            writer.members += 1
    return writer.finish()


def write_tar_layer(tar_path: Path, blob: IO[bytes]) -> LayerInfo:
    """Gzip an existing tar file, unchanged, into BLOB; its members are counted for the record."""
    writer = _LayerWriter(blob)
    with open(tar_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            writer.tar.write(chunk)
    with tarfile.open(tar_path, "r:") as tar:
        writer.members = sum(1 for _ in tar)
    return writer.finish()


# -- layouts ---------------------------------------------------------------------------------

def _put_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).write_bytes(data)
    return digest, len(data)


def write_layout(layout: Path, tag: str, write_layer: Callable[[IO[bytes]], LayerInfo],
                 spec: ImageSpec) -> tuple[str, LayerInfo]:
    """Make an OCI layout in the empty or missing directory LAYOUT: one layer, its config, a manifest, index.json.

    WRITE_LAYER writes the gzipped layer to the file it is given and says what it wrote.
    Returns the manifest's digest and the layer's record.
    """
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    staging = blobs / ".layer.partial"
    with open(staging, "wb") as f:
        layer = write_layer(f)
    staging.rename(blobs / layer.digest.split(":", 1)[1])

    config: dict[str, Any] = {"Env": list(spec.env)}
    if spec.cmd is not None:
        config["Cmd"] = list(spec.cmd)
    created = _created()
    image_config = {
        "created": created, "architecture": oci_arch(), "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": created, "created_by": spec.created_by}],
    }
    config_digest, config_size = _put_blob(layout, _canonical(image_config))
    manifest = {
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": MT_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }
    manifest_digest, manifest_size = _put_blob(layout, _canonical(manifest))
    index = {
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": manifest_size,
                       "platform": {"architecture": oci_arch(), "os": "linux"},
                       "annotations": {REF_NAME: tag}}],
    }
    (layout / "index.json").write_bytes(_canonical(index))
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest, layer


def _blob(layout: Path, descriptor: dict[str, Any], what: str, problems: list[str]) -> bytes | None:
    """The blob DESCRIPTOR names, if it exists with the size and digest the descriptor says."""
    digest = str(descriptor.get("digest", ""))
    algo, _, hexa = digest.partition(":")
    if algo != "sha256" or len(hexa) != 64:
        problems.append(f"{what}: unsupported digest {digest!r}")
        return None
    path = layout / "blobs" / "sha256" / hexa
    try:
        data = path.read_bytes()
    except OSError as e:
        problems.append(f"{what} {digest}: {e.strerror}")
        return None
    if len(data) != descriptor.get("size"):
        problems.append(f"{what} {digest}: size {len(data)}, descriptor says {descriptor.get('size')}")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        problems.append(f"{what} {digest}: content hashes to {actual}")
    return data


def _gunzip_digest(data: bytes) -> str:
    sha = hashlib.sha256()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
        while chunk := gz.read(_CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def verify_layout(layout: Path) -> list[str]:
    """What is wrong with the OCI layout at LAYOUT (empty if nothing): blob digests and sizes,
    the config's diff_ids against the decompressed layers, the layout marker."""
    problems: list[str] = []
    try:
        marker = json.loads((layout / "oci-layout").read_bytes())
        index = json.loads((layout / "index.json").read_bytes())
    except (OSError, ValueError) as e:
        return [f"{layout}: not an OCI layout ({e})"]
    if marker.get("imageLayoutVersion") != "1.0.0":
        problems.append(f"oci-layout: imageLayoutVersion {marker.get('imageLayoutVersion')!r}, expected '1.0.0'")
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        return problems + ["index.json lists no manifests"]
    for n, descriptor in enumerate(manifests):
        raw = _blob(layout, descriptor, f"manifest {n}", problems)
        if raw is None:
            continue
        manifest = json.loads(raw)
        if manifest.get("mediaType", descriptor.get("mediaType")) != MT_MANIFEST:
            problems.append(f"manifest {n}: media type {manifest.get('mediaType')!r}, expected {MT_MANIFEST}")
        raw_config = _blob(layout, manifest.get("config", {}), f"manifest {n} config", problems)
        diff_ids = json.loads(raw_config)["rootfs"]["diff_ids"] if raw_config is not None else None
        layers = manifest.get("layers", [])
        if diff_ids is not None and len(diff_ids) != len(layers):
            problems.append(f"manifest {n}: {len(layers)} layers but {len(diff_ids)} diff_ids in the config")
            diff_ids = None
        for i, layer_descriptor in enumerate(layers):
            data = _blob(layout, layer_descriptor, f"manifest {n} layer {i}", problems)
            if data is None or diff_ids is None:
                continue
            if layer_descriptor.get("mediaType") != MT_LAYER_GZIP:
                problems.append(f"manifest {n} layer {i}: media type {layer_descriptor.get('mediaType')!r}")
                continue
            try:
                diff_id = _gunzip_digest(data)
            except (OSError, EOFError) as e:
                problems.append(f"manifest {n} layer {i}: cannot gunzip: {e}")
                continue
            if diff_id != diff_ids[i]:
                problems.append(f"manifest {n} layer {i}: uncompressed it hashes to {diff_id}, "
                                f"the config's diff_id is {diff_ids[i]}")
    return problems


# -- the cache -------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rootless-base-images"


def _cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({"builder": BUILDER_VERSION, **inputs})).hexdigest()[:16]


def _load_cached(entry: Path, name: str, tag: str) -> Layout | None:
    try:
        meta = json.loads((entry / "meta.json").read_bytes())
    except (OSError, ValueError):
        return None
    layout = entry / "layout"
    if verify_layout(layout):
        return None  # damaged: rebuilt over
    layers = tuple(LayerInfo(**layer) for layer in meta["layers"])
    return Layout(name, tag, layout, meta["manifest_digest"], layers, cached=True)


def cached_build(cache_dir: Path, name: str, tag: str, inputs: dict[str, Any],
                 build: Callable[[Path, Path], tuple[str, LayerInfo]], rebuild: bool = False) -> Layout:
    """The layout for NAME:TAG from CACHE_DIR if INPUTS were built before, else BUILD(layout, scratch).

    A build happens in a temporary directory renamed into place when complete, so an
    interrupted build leaves no entry, and two concurrent builds cannot mix their files.
    """
    entry = cache_dir / f"{name}-{tag}-{_cache_key(inputs)}"
    if not rebuild:
        found = _load_cached(entry, name, tag)
        if found is not None:
            return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        scratch = tmp / "scratch"
        scratch.mkdir()
        manifest_digest, layer = build(tmp / "layout", scratch)
        shutil.rmtree(scratch)
        meta = {"name": name, "tag": tag, "inputs": inputs, "builder": BUILDER_VERSION,
                "manifest_digest": manifest_digest, "layers": [vars(layer)]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if entry.exists():
            _remove_tree(entry)
        try:
            tmp.rename(entry)
        except OSError:
            pass  # another build of the same inputs finished first: same content, keep theirs
    finally:
        if tmp.exists():
            _remove_tree(tmp, strict=False)  # a failed build's error matters more than its leftovers
    return Layout(name, tag, entry / "layout", manifest_digest, (layer,))


def _remove_tree(path: Path, strict: bool = True) -> None:
    # A layout copied from elsewhere may hold read-only directories.
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=not strict)


# -- busybox ---------------------------------------------------------------------------------

def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header (no dynamic loader)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            return False
        is64, endian = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if is64:
            phoff, = struct.unpack_from(endian + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
        else:
            phoff, = struct.unpack_from(endian + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from(endian + "I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox_entries(busybox: Path) -> list[Entry]:
    """The busybox image's tree: the binary, a symlink per applet, passwd, group and /tmp."""
    if not busybox.is_file():
        raise BuildError(f"{busybox} does not exist; install Debian's busybox-static (as root: apt-get install "
                         "busybox-static) or pass --busybox PATH")
    if not _is_static_elf(busybox):
        raise BuildError(f"{busybox} is not a statically linked executable; the image has no libc for it. "
                         "Install busybox-static (not busybox) or pass --busybox PATH")
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True)
    if listed.returncode:
        raise BuildError(f"{busybox} --list failed: {listed.stderr.strip()}")
    applets = sorted({a for a in listed.stdout.split() if a and "/" not in a and a != "busybox"})
    entries = [Entry(d, "dir", 0o755) for d in ("bin", "dev", "etc", "proc", "sys")]
    entries.append(Entry("bin/busybox", "file", 0o755, busybox.read_bytes()))
    entries += [Entry(f"bin/{a}", "symlink", 0o777, target="busybox") for a in applets]
    entries += [
        Entry("etc/group", "file", 0o644, b"root:x:0:\nnobody:x:65534:\n"),
        Entry("etc/passwd", "file", 0o644,
              b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        Entry("root", "dir", 0o700),
        Entry("tmp", "dir", 0o1777),
    ]
    return entries


def build_busybox(cache_dir: Path, busybox: Path = Path("/bin/busybox"), rebuild: bool = False) -> Layout:
    entries = busybox_entries(busybox)  # checks the binary before anything is cached
    binary = next(e.data for e in entries if e.path == "bin/busybox")
    inputs = {"image": "busybox", "busybox_sha256": hashlib.sha256(binary).hexdigest(), "arch": oci_arch()}
    spec = ImageSpec(cmd=("sh",), created_by="scripts/base-images: Debian busybox-static and its applet links")

    def build(layout: Path, scratch: Path) -> tuple[str, LayerInfo]:
        return write_layout(layout, "latest", lambda blob: write_entries_layer(entries, blob), spec)

    return cached_build(cache_dir, "busybox", "latest", inputs, build, rebuild)


# -- smallfiles ------------------------------------------------------------------------------

def smallfiles_entries(count: int = SMALLFILES_COUNT) -> Iterator[Entry]:
    """COUNT files of 32 B to 2 KiB, 50 to a directory, in a tree three directories deep.

    Each file's size and text come from a hash of its number, so the tree is the same on
    every host and Python version.
    """
    per_dir = 50
    leaves = max(1, -(-count // per_dir))
    fan = 1
    while fan ** 3 < leaves:
        fan += 1
    made: set[str] = set()
    for i in range(count):
        leaf = i // per_dir
        parts = (f"d{leaf // (fan * fan):02d}", f"d{leaf // fan % fan:02d}", f"d{leaf % fan:02d}")
        for depth in range(1, 4):
            d = "/".join(parts[:depth])
            if d not in made:
                made.add(d)
                yield Entry(d, "dir", 0o755)
        seed = b"smallfiles %d" % i
        size = 32 + int.from_bytes(hashlib.sha256(seed).digest()[:4], "big") % 2017
        # Hex text: about 2:1 under gzip, so the download is not negligible beside the unpacking.
        data = hashlib.shake_128(seed).hexdigest(size // 2 + 1).encode()[:size]
        yield Entry(f"{'/'.join(parts)}/f{i:06d}.txt", "file", 0o644, data)


def build_smallfiles(cache_dir: Path, count: int = SMALLFILES_COUNT, rebuild: bool = False) -> Layout:
    inputs = {"image": "smallfiles", "count": count, "arch": oci_arch()}
    spec = ImageSpec(cmd=None, created_by=f"scripts/base-images: {count} generated small files")

    def build(layout: Path, scratch: Path) -> tuple[str, LayerInfo]:
        return write_layout(layout, "latest", lambda blob: write_entries_layer(smallfiles_entries(count), blob), spec)

    return cached_build(cache_dir, "smallfiles", "latest", inputs, build, rebuild)


# -- debian ----------------------------------------------------------------------------------

def _has_subids(user: str, uid: int) -> bool:
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return False
        if not any(line.split(":", 1)[0] in (user, str(uid)) for line in lines if ":" in line):
            return False
    return True


def mmdebstrap_problem() -> str | None:
    """Why mmdebstrap cannot build the debian image for this user, or None."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (as root: apt-get install mmdebstrap)"
    if os.geteuid() == 0:
        return None
    user = pwd.getpwuid(os.getuid()).pw_name
    if not _has_subids(user, os.getuid()):
        return (f"as an unprivileged user mmdebstrap needs --mode=unshare, and that needs a subordinate id range "
                f"for {user} in /etc/subuid and /etc/subgid (as root: usermod --add-subuids 100000-165535 "
                f"--add-subgids 100000-165535 {user}), or run base-images as root")
    if shutil.which("newuidmap") is None:
        return "mmdebstrap --mode=unshare needs newuidmap and newgidmap (as root: apt-get install uidmap)"
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
    if probe.returncode:
        return (f"mmdebstrap --mode=unshare needs unprivileged user namespaces, and unshare --user failed here: "
                f"{probe.stderr.strip()}; run base-images as root instead")
    return None


def _mmdebstrap_version() -> str:
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def build_debian(cache_dir: Path, suite: str = "bookworm", variant: str = "minbase", mirror: str | None = None,
                 rebuild: bool = False, log: Callable[[str], None] | None = None) -> Layout:
    problem = mmdebstrap_problem()
    if problem:
        raise BuildError(f"debian:{suite}: {problem}")
    inputs = {"image": "debian", "suite": suite, "variant": variant, "mirror": mirror or "",
              "mmdebstrap": _mmdebstrap_version(), "arch": oci_arch(), "epoch": EPOCH,
              "mode": "root" if os.geteuid() == 0 else "unshare"}
    spec = ImageSpec(cmd=("bash",), created_by=f"mmdebstrap --variant={variant} {suite}")

    def build(layout: Path, scratch: Path) -> tuple[str, LayerInfo]:
        tar_path = scratch / "rootfs.tar"
        mode = inputs["mode"]
        # /dev is left out: device nodes cannot be made without root when the layer is
        # unpacked, and every runtime mounts its own /dev.
        cmd = ["mmdebstrap", f"--mode={mode}", f"--variant={variant}", "--skip=output/dev", suite, str(tar_path)]
        if mirror:
            cmd.append(mirror)
        # TMPDIR stays as it is: in unshare mode the chroot is made there by the subordinate
        # root, who cannot enter the private directories a cache entry is built in.
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        if log:
            log(f"debian:{suite}: {' '.join(cmd)} (about half a minute)")
        logfile = scratch / "mmdebstrap.log"
        with open(logfile, "wb") as out:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        if done.returncode:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-8:]
            raise BuildError(f"mmdebstrap exited {done.returncode}:\n  " + "\n  ".join(tail))
        return write_layout(layout, suite, lambda blob: write_tar_layer(tar_path, blob), spec)

    return cached_build(cache_dir, "debian", suite, inputs, build, rebuild)


# -- pushing and copying ---------------------------------------------------------------------

def push(layout: Layout, registry: str, tls_verify: bool = False, name: str | None = None) -> str:
    """Copy LAYOUT to REGISTRY (host:port) as NAME:TAG with skopeo, digests unchanged; returns the reference."""
    if shutil.which("skopeo") is None:
        raise BuildError("skopeo is not installed (as root: apt-get install skopeo)")
    ref = f"{registry}/{name or layout.name}:{layout.tag}"
    cmd = ["skopeo", "copy", "--quiet", "--preserve-digests", f"--dest-tls-verify={str(tls_verify).lower()}",
           layout.oci, f"docker://{ref}"]
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode:
        raise BuildError(f"pushing {layout.ref} to {registry} failed: {' '.join(cmd)}: {done.stderr.strip()}")
    return ref


def copy_layout(layout: Layout, dest: Path) -> Path:
    """Put a copy of LAYOUT at DEST, replacing an earlier layout there (never anything else)."""
    if dest.exists() or dest.is_symlink():
        if not (dest / "oci-layout").is_file():
            raise BuildError(f"{dest} exists and is not an OCI layout; remove it or pick another --out")
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(layout.path, tmp / "layout")
        (tmp / "layout").rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- command line ----------------------------------------------------------------------------

def build(name: str, cache_dir: Path, a: argparse.Namespace | None = None,
          log: Callable[[str], None] | None = None) -> Layout:
    """Build (or find in the cache) one of IMAGES, with the command line's options if given."""
    rebuild = bool(a and a.rebuild)
    if name == "busybox":
        return build_busybox(cache_dir, Path(a.busybox) if a else Path("/bin/busybox"), rebuild)
    if name == "debian":
        return build_debian(cache_dir, mirror=a.mirror if a else None, rebuild=rebuild, log=log)
    if name == "smallfiles":
        return build_smallfiles(cache_dir, a.smallfiles if a else SMALLFILES_COUNT, rebuild)
    raise ValueError(f"unknown image {name!r}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(prog="base-images", description=doc[0],
                                epilog="\n\n".join(doc[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", metavar="HOST:PORT", help="push the images here over plain HTTP (skopeo copy)")
    p.add_argument("--out", metavar="DIR", help="write each image as an OCI layout to DIR/NAME")
    p.add_argument("--images", default=",".join(IMAGES), help=f"which images (default {','.join(IMAGES)})")
    p.add_argument("--cache-dir", metavar="DIR", help=f"cache of built layouts (default {default_cache_dir()})")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache (e.g. for a fresh debian from the mirror)")
    p.add_argument("--busybox", default="/bin/busybox", help="the static busybox to use (default /bin/busybox)")
    p.add_argument("--mirror", help="Debian mirror for mmdebstrap (default: mmdebstrap's)")
    p.add_argument("--smallfiles", type=int, default=SMALLFILES_COUNT, metavar="N",
                   help=f"files in smallfiles:latest (default {SMALLFILES_COUNT})")
    a = p.parse_args(argv)
    a.images = [i.strip() for i in a.images.split(",") if i.strip()]
    unknown = sorted(set(a.images) - set(IMAGES))
    if unknown:
        p.error(f"unknown images: {', '.join(unknown)} (known: {', '.join(IMAGES)})")
    if a.smallfiles < 1:
        p.error("--smallfiles must be at least 1")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    cache_dir = Path(a.cache_dir) if a.cache_dir else default_cache_dir()

    def log(msg: str) -> None:
        print(f"base-images: {msg}", file=sys.stderr, flush=True)

    try:
        for name in a.images:
            t0 = time.monotonic()
            layout = build(name, cache_dir, a, log)
            layer = layout.layers[0]
            how = "cached" if layout.cached else f"built in {time.monotonic() - t0:.1f} s"
            print(f"{layout.ref:<18} {layout.manifest_digest}  {layer.members} entries, {_human(layer.tar_size)} tar, "
                  f"{_human(layer.size)} gzip  ({how})", flush=True)
            if a.out:
                print(f"  -> oci:{copy_layout(layout, Path(a.out) / name)}:{layout.tag}", flush=True)
            if a.registry:
                print(f"  -> {push(layout, a.registry)}", flush=True)
    except BuildError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
