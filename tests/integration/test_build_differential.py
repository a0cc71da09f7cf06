"""`rootless build` against `buildah bud`: the same Dockerfile and context must give the same config and files.

Each case is built by both, as the test user, from the same busybox image in the module's
registry; buildah runs rootless with its own vfs storage, chroot isolation and docker's
image format (the OCI format has no OnBuild, Shell or Healthcheck).  Both images are
exported as docker-archives and read here, layers applied in order with their whiteouts,
into a map path -> (type, mode, uid, gid, size, sha256, link); the config fields a
Dockerfile sets are compared, and the whole tree.  Times are not compared (they differ
by nature), nor the history (buildah without ``--layers`` makes one layer per stage).

Docker's documented behaviour is the reference.  Where buildah 1.28 (Debian 12's) does
something else, the case names the path or field, what docker does (rootless must do that)
and why; the test also checks that buildah still differs there, so that an allowance
cannot outlive its reason unnoticed.  Buildah leaves a RUN's mount points (/dev, /proc,
/sys, /run, empty /etc/hosts, hostname, resolv.conf) in the image; it runs the shell form
of CMD and ENTRYPOINT with /bin/sh -c whatever SHELL says; ADD gives the destination the
metadata of a tar's "." member, and keeps the tar's owners under --chown.  Where docker's
two builders disagree, BuildKit (``docker build`` since 23.0) is the reference: COPY
--from keeps the stage's owners, WORKDIR makes its directory the USER's (buildah agrees),
ADD --chown applies to what it unpacks (buildah does not).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from peers import Peer, peer
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry, pytest.mark.slow]

# -- reading an image ----------------------------------------------------------------------------

#: what a path holds: type, permission bits, uid, gid, size, sha256 of the content, link target
#: (a symlink's target; for names of one hard-linked file, all its names)
Entry = tuple[str, int, int, int, int, str, str]

_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.FIFOTYPE: "fifo", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block"}


@dataclass
class Built:
    config: dict[str, Any]          # the image's whole config document
    files: dict[str, Entry]


def _norm(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


def read_docker_archive(path: Path) -> Built:
    """The one image in a docker-archive: its config, and its layers flattened."""
    with tarfile.open(path) as outer:
        def member(name: str) -> IO[bytes]:
            f = outer.extractfile(name)
            assert f is not None, name
            return f

        [entry] = json.load(member("manifest.json"))
        config = json.load(member(entry["Config"]))
        files: dict[str, tuple[str, int, int, int, int, str, str, int]] = {}
        inodes = iter(range(1, 1 << 30))
        for layer in entry["Layers"]:
            with tarfile.open(fileobj=member(layer), mode="r:*") as tar:
                _apply_layer(files, tar, inodes)
    groups: dict[int, list[str]] = {}
    for name, (*_, inode) in files.items():
        groups.setdefault(inode, []).append(name)
    flat: dict[str, Entry] = {}
    for name, (kind, mode, uid, gid, size, digest, link, inode) in files.items():
        names = groups[inode]
        if len(names) > 1:
            link = "hardlinks:" + ",".join(sorted(names))
        flat[name] = (kind, mode, uid, gid, size, digest, link)
    return Built(config, flat)


def _apply_layer(files: dict[str, tuple[str, int, int, int, int, str, str, int]], tar: tarfile.TarFile,
                 inodes: Iterator[int]) -> None:
    """One layer over FILES: its whiteouts hide what the layers below hold, then its entries land."""
    opaque: list[str] = []
    hidden: list[str] = []
    new: dict[str, tuple[str, int, int, int, int, str, str, int]] = {}
    for m in tar:
        path = _norm(m.name)
        if not path:
            continue   # the root itself
        parent, _, base = path.rpartition("/")
        if base == ".wh..wh..opq":
            opaque.append(parent)
            continue
        if base.startswith(".wh."):
            hidden.append(f"{parent}/{base[4:]}".lstrip("/"))
            continue
        if m.islnk():
            target = _norm(m.linkname)
            source = new.get(target) or files[target]
            new[path] = (*source[:6], "", source[7])
            continue
        kind = _KINDS[m.type]
        digest, size = "", 0
        if kind == "file":
            f = tar.extractfile(m)
            assert f is not None
            data = f.read()
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
        link = m.linkname if kind == "symlink" else ""
        new[path] = (kind, m.mode & 0o7777, m.uid, m.gid, size, digest, link, next(inodes))
    for gone in opaque:
        for path in [p for p in files if p.startswith(gone + "/") or not gone]:
            del files[path]
    for gone in hidden:
        for path in [p for p in files if p == gone or p.startswith(gone + "/")]:
            del files[path]
    for path, entry in new.items():
        if entry[0] != "dir":   # a file over a directory takes its contents with it
            for below in [p for p in files if p.startswith(path + "/")]:
                del files[below]
        files[path] = entry
        parent = path.rpartition("/")[0]
        while parent and parent not in files:   # a parent the layer left out exists all the same
            files[parent] = ("implied-dir", 0, 0, 0, 0, "", "", next(inodes))
            parent = parent.rpartition("/")[0]


#: the config fields a Dockerfile sets; an absent field, null and an empty value read alike
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels",
                 "StopSignal", "OnBuild", "Shell", "Healthcheck")


def config_view(built: Built) -> dict[str, Any]:
    cfg = built.config.get("config") or {}
    view = {name: cfg.get(name) or None for name in CONFIG_FIELDS}
    view["author"] = built.config.get("author") or None
    return view


# -- the builders --------------------------------------------------------------------------------

def build_buildah(buildah: Peer, context: Path, tag: str, args: list[str], out: Path) -> Built:
    # --pull=false: the module pulled the base once; buildah would otherwise ask the registry each build
    buildah("bud", "--isolation", "chroot", "--format", "docker", "--identity-label=false", "--pull=false",
            "--tls-verify=false", "-t", tag, *args, str(context))
    buildah("push", "--quiet", tag, f"docker-archive:{out}:{tag}")
    return read_docker_archive(out)


def build_rootless(cli: Cli, context: Path, tag: str, args: list[str], out: Path) -> Built:
    done = cli.proc("build", "-q", "-t", tag, *args, str(context), timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    cli("save", "-o", str(out), tag)
    return read_docker_archive(out)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def busybox(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox with users root, app (1000:1000) and nobody; groups root, app, staff (50); a few
    files to remove (/etc/motd, /usr/share/doc), an empty /srv and /web, a symlink to it."""
    rootfs = busybox_rootfs()
    rootfs.update({"etc/motd": b"welcome\n", "usr": None, "usr/share": None, "usr/share/doc": None,
                   "usr/share/doc/README": b"read me\n", "usr/share/doc/more": b"more\n", "srv": None,
                   "web": "srv"})
    image = make_image([rootfs], {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]})
    return push_all(reg.host, {"busybox": image}, tmp_path_factory.mktemp("busybox"))["busybox"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Cli:
    return Cli.with_images(tmp_path_factory.mktemp("rootless"), busybox)


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory, busybox: str) -> Iterator[Peer]:
    with peer("buildah", tmp_path_factory.mktemp("buildah")) as b:
        b("pull", "--quiet", "--tls-verify=false", busybox)
        yield b


# -- the cases -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Docker:
    """Where buildah is not docker: at PATH (a file) or FIELD (config), docker — and so rootless — has
    WANT (None: nothing there); buildah has something else, for REASON."""

    reason: str
    want: Any
    path: str | None = None
    field: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    dockerfile: str                                  # {busybox} is replaced by the base image's name
    context: Callable[[Path], None] = lambda ctx: None
    args: tuple[str, ...] = ()
    docker: tuple[Docker, ...] = ()


#: buildah leaves a RUN's mount points in the layer where the image lacks them; docker makes
#: them in the container's init layer, which a commit leaves out
RUN_MOUNT_POINTS = tuple(
    Docker("buildah leaves the mount points of a RUN's container in the image; docker does not", None, path=p)
    for p in ("dev", "proc", "sys", "run", "etc/hosts", "etc/hostname", "etc/resolv.conf"))


def write(ctx: Path, rel: str, data: str | bytes, mode: int = 0o644) -> None:
    path = ctx / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


TarMember = tuple[str, str, int, int, int, bytes | str]


def tar_bytes(members: list[TarMember]) -> bytes:
    """A tar of (name, "file"|"dir"|"symlink"|"hardlink", mode, uid, gid, content or target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, mode, uid, gid, data in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_700_000_000
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = str(data)
                t.addfile(info)
            else:
                content = data if isinstance(data, bytes) else data.encode()
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    return buf.getvalue()


CONFIG = Case("config", """\
ARG TAG=latest
FROM {busybox}:${TAG}
MAINTAINER Jane Doe <jane@example.com>
LABEL org.example.one="1" two=2 "three four"="five six"
LABEL two=2b
ENV A=1 B="two words"
ENV C $A-x
ARG GREETING=hello
ARG GIVEN
ARG UNSET
ENV FROM_ARG=$GREETING PATH=$PATH:/opt/bin
RUN echo "$A|$B|$C|$GREETING|$GIVEN|${UNSET:-none}|${TAG:-no tag here}" > /said
RUN ["/bin/sh", "-c", "echo exec $A $GIVEN > /exec"]
EXPOSE 80 53/udp 8080/tcp
EXPOSE 443 7000-7002/udp
VOLUME /data /more
VOLUME ["/logs"]
STOPSIGNAL SIGQUIT
ONBUILD RUN echo triggered
ONBUILD COPY . /app
HEALTHCHECK --interval=30s --timeout=5s --retries=2 CMD ["true"]
ENTRYPOINT ["/bin/echo"]
USER app:staff
""", args=("--build-arg", "GIVEN=given"), docker=RUN_MOUNT_POINTS)


SHELL = Case("shell", """\
FROM {busybox}
SHELL ["/bin/sh", "-ec"]
RUN echo "$0" > /shell-ec
SHELL ["/bin/busybox", "sh", "-c"]
RUN echo "$0 $1" > /shell-busybox
CMD echo from cmd
ENTRYPOINT echo from entrypoint
""", docker=(
    *RUN_MOUNT_POINTS,
    # The Dockerfile reference: SHELL applies to the shell form of RUN, CMD and ENTRYPOINT.
    Docker("buildah runs the shell form of CMD with /bin/sh -c whatever SHELL says",
           ["/bin/busybox", "sh", "-c", "echo from cmd"], field="Cmd"),
    Docker("buildah runs the shell form of ENTRYPOINT with /bin/sh -c whatever SHELL says",
           ["/bin/busybox", "sh", "-c", "echo from entrypoint"], field="Entrypoint"),
))


RUN_OWNERS = Case("run-owners", """\
FROM {busybox}
RUN mkdir -p /o/a/deep /o/b && echo data > /o/a/deep/f && chown -R 1000:50 /o/a && chmod 0700 /o/a \\
 && echo s > /o/b/setuid && chown app /o/b/setuid && chmod 4755 /o/b/setuid \\
 && mkdir /o/sticky && chmod 1777 /o/sticky && mkdir /o/sgid && chmod 2750 /o/sgid && chgrp staff /o/sgid \\
 && ln -s ../b/setuid /o/a/link && chown -h 1000:1000 /o/a/link \\
 && ln /o/b/setuid /o/b/hard && mkfifo -m 0600 /o/fifo && umask 077 && echo private > /o/private
RUN chown app:staff /etc/passwd && chmod 0600 /etc/group && chmod 0700 /root && rm /etc/motd \\
 && rm -rf /usr/share/doc && mkdir /usr/share/doc && echo new > /usr/share/doc/new \\
 && ln /etc/group /etc/group-hard && rm -rf /home && rmdir /srv && echo now a file > /srv \\
 && mkdir -m 0710 /etc/motd
RUN rm -rf /tmp && mkdir -m 1777 /tmp && touch /tmp/left
""", docker=RUN_MOUNT_POINTS)


WORKDIR = Case("workdir", """\
FROM {busybox}
WORKDIR /srv/app
WORKDIR sub
RUN pwd > here
WORKDIR /made/by/workdir
WORKDIR ../sibling
RUN mkdir -m 1777 /shared
USER app
WORKDIR /as-user/deeper
RUN pwd && touch /shared/by-app
COPY --chown=app Dockerfile /srv/
CMD ['single', 'quotes']
""", docker=RUN_MOUNT_POINTS)


def copy_context(ctx: Path) -> None:
    write(ctx, "dir/a.txt", "a\n", 0o600)
    write(ctx, "dir/sub/b.sh", "#!/bin/sh\necho b\n", 0o755)
    (ctx / "dir/sub").chmod(0o700)
    (ctx / "dir/empty").mkdir()
    (ctx / "dir").chmod(0o750)
    os.symlink("a.txt", ctx / "dir/link")
    os.symlink("one.txt", ctx / "filelink")
    write(ctx, "one.txt", "one\n")
    write(ctx, "x1.conf", "1\n")
    write(ctx, "x2.conf", "2\n", 0o640)
    write(ctx, "y.conf", "y\n")
    write(ctx, "run.sh", "#!/bin/sh\necho run\n", 0o700)


COPY = Case("copy", """\
FROM {busybox}
WORKDIR /work
COPY dir /contents/
COPY dir /contents-no-slash
COPY dir/ /contents-trailing/
COPY one.txt rel/
COPY one.txt relfile
COPY one.txt /renamed
COPY one.txt /etc
COPY one.txt /srv/
COPY one.txt /web/
COPY dir /web/sub/
COPY one.txt .
COPY --chown=app dir /srv/
COPY x*.conf y.conf /confs/
COPY x?.conf /confs2/
COPY filelink /followed
COPY filelink one.txt /followed-into/
COPY dir/link /linkcopy
COPY --chown=app:staff one.txt /owned/deep/one.txt
COPY --chown=1234 dir /numeric
COPY --chown=1234:4321 one.txt /both/
COPY --chown=app dir/a.txt /appuser/
COPY --chmod=0751 run.sh /usr/local/bin/
COPY --chmod=0640 --chown=app:app dir /chmodded/
COPY . /all/
""", copy_context)


def add_context(ctx: Path) -> None:
    members: list[TarMember] = [
        ("top", "dir", 0o750, 1000, 1000, b""),
        ("top/f", "file", 0o640, 1000, 50, "in the tar\n"),
        ("top/private", "dir", 0o700, 4242, 4243, b""),
        ("top/private/x", "file", 0o600, 4242, 4243, "x\n"),
        ("top/link", "symlink", 0o777, 0, 0, "f"),
        ("top/hard", "hardlink", 0o640, 1000, 50, "top/f"),
        ("setuid", "file", 0o4755, 0, 0, "s\n"),
    ]
    raw = tar_bytes(members)
    write(ctx, "a.tar", raw)
    write(ctx, "a.tar.gz", gzip.compress(raw, mtime=0))
    write(ctx, "a.tar.bz2", bz2.compress(raw))
    write(ctx, "a.tar.xz", lzma.compress(raw))
    write(ctx, "plain.txt.gz", gzip.compress(b"not a tar\n", mtime=0))
    write(ctx, "notes.txt", "plain\n", 0o600)


ADD = Case("add", """\
FROM {busybox}
ADD a.tar /plain/
ADD a.tar.gz /gz
ADD a.tar.bz2 /bz2/
ADD a.tar.xz /xz
ADD a.tar.gz /etc/
ADD plain.txt.gz /compressed/
ADD notes.txt /notes
ADD --chown=app:staff notes.txt /owned-notes
""", add_context)


def stages_context(ctx: Path) -> None:
    write(ctx, "one.txt", "one\n")


STAGES = Case("stages", """\
ARG BASE={busybox}
ARG NAME=built
FROM $BASE AS builder
ARG NAME
RUN mkdir -p /out/sub && echo $NAME > /out/sub/artifact && chmod 0700 /out/sub && chown -R 1000:50 /out \\
 && echo root > /out/rootfile && ln -s sub/artifact /out/link
FROM builder AS second
RUN echo second > /second
FROM {busybox}
COPY --from=builder /out /copied/
COPY --from=builder /out/sub/artifact /single
COPY --from=0 /out/rootfile /by-index
COPY --from=second /second /out/link /both/
COPY --from=builder --chown=app:app /out /chowned
COPY one.txt /from-context
CMD ["cat", "/single"]
""", stages_context)


def scratch_context(ctx: Path) -> None:
    write(ctx, "files/bin/tool", "#!/bin/sh\n", 0o755)
    write(ctx, "files/etc/conf", "conf\n")
    write(ctx, "one.txt", "one\n")
    write(ctx, "root.tar.gz", gzip.compress(tar_bytes([("var", "dir", 0o755, 0, 0, b""),
                                                       ("var/lib", "dir", 0o700, 1000, 1000, b""),
                                                       ("var/lib/db", "file", 0o600, 1000, 1000, "db\n")]),
                                            mtime=0))


SCRATCH = Case("scratch", """\
FROM scratch
COPY files/ /
ADD root.tar.gz /
WORKDIR /app
COPY one.txt rel.txt
ENV PATH=/bin
CMD ["/bin/tool"]
""", scratch_context)


def ignore_context(ctx: Path) -> None:
    write(ctx, "keep.txt", "keep\n")
    write(ctx, "a.tmp", "tmp\n")
    write(ctx, "sub/b.tmp", "tmp\n")
    write(ctx, "sub/c.txt", "c\n")
    write(ctx, "logs/drop.txt", "drop\n")
    write(ctx, "logs/keep.txt", "kept\n")
    write(ctx, "deep/x/cache/junk", "junk\n")
    write(ctx, "deep/x/file", "file\n")
    write(ctx, ".dockerignore", "*.tmp\nlogs\n!logs/keep.txt\n**/cache\nDockerfile\n.dockerignore\n")


IGNORE = Case("dockerignore", """\
FROM {busybox}
COPY . /ctx/
COPY sub /sub
""", ignore_context)


def edges_context(ctx: Path) -> None:
    write(ctx, "dir/a.txt", "a\n")
    write(ctx, "dir/sub/b.txt", "b\n")
    write(ctx, "d2/c.txt", "c\n")
    write(ctx, "root.tar", tar_bytes([(".", "dir", 0o700, 1000, 1000, b""), ("./x", "file", 0o600, 1000, 1000, "x\n")]))
    write(ctx, "owned.tar", tar_bytes([("o", "dir", 0o750, 4242, 4242, b""), ("o/f", "file", 0o640, 4242, 4242, "f\n")]))


EDGES = Case("edges", """\
FROM {busybox}
RUN mkdir -m 1777 /shared
USER 1234
RUN touch /shared/by-1234
WORKDIR /w1234
USER app
RUN touch /shared/by-app
USER root
ENV X a b c
STOPSIGNAL 9
COPY d* /globbed/
COPY dir/ /dot/.
ADD root.tar /tarroot
ADD --chown=app:staff owned.tar /chowned-tar/
COPY --from={busybox} /etc/motd /from-image
""", edges_context, docker=(
    *RUN_MOUNT_POINTS,
    # moby's untar skips a "." member where the destination directory exists, and ADD makes it first
    Docker("buildah gives the destination the metadata of the tar's \".\" member",
           ("dir", 0o755, 0, 0, 0, "", ""), path="tarroot"),
    # BuildKit applies ADD --chown to what it unpacks since v0.23 (moby/buildkit#1547); the
    # classic builder, like buildah, kept the tar's owners
    Docker("buildah keeps the tar's owners under ADD --chown", ("dir", 0o750, 1000, 50, 0, "", ""),
           path="chowned-tar/o"),
    Docker("buildah keeps the tar's owners under ADD --chown",
           ("file", 0o640, 1000, 50, 2, hashlib.sha256(b"f\n").hexdigest(), ""), path="chowned-tar/o/f"),
))


CASES = [CONFIG, SHELL, RUN_OWNERS, WORKDIR, COPY, ADD, STAGES, SCRATCH, IGNORE, EDGES]


# -- the comparison ------------------------------------------------------------------------------

def _show(entry: Entry | None) -> str:
    if entry is None:
        return "(absent)"
    kind, mode, uid, gid, size, digest, link = entry
    text = f"{kind} {mode:04o} {uid}:{gid}"
    if kind == "file":
        text += f" {size}B {digest[:12]}"
    if link:
        text += f" -> {link}"
    return text


def differences(ours: Built, theirs: Built, case: Case) -> list[str]:
    """What rootless (OURS) does otherwise than buildah (THEIRS) with the case's allowances applied;
    an allowance buildah no longer needs is a difference too."""
    problems = []
    want_files = dict(theirs.files)
    want_config = config_view(theirs)
    for allowed in case.docker:
        if allowed.path is not None:
            if want_files.get(allowed.path) == allowed.want:
                problems.append(f"buildah now does as docker at /{allowed.path}: drop the allowance")
            if allowed.want is None:
                want_files.pop(allowed.path, None)
            else:
                want_files[allowed.path] = allowed.want
        else:
            assert allowed.field is not None
            if want_config.get(allowed.field) == allowed.want:
                problems.append(f"buildah now does as docker in {allowed.field}: drop the allowance")
            want_config[allowed.field] = allowed.want
    got_config = config_view(ours)
    for name in want_config:
        if got_config[name] != want_config[name]:
            problems.append(f"config {name}: rootless {got_config[name]!r}, buildah {want_config[name]!r}")
    for path in sorted(set(ours.files) | set(want_files)):
        got, want = ours.files.get(path), want_files.get(path)
        if got != want:
            problems.append(f"/{path}: rootless {_show(got)}, buildah {_show(want)}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_same_image_as_buildah(case: Case, cli: Cli, buildah: Peer, busybox: str, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    case.context(ctx)
    (ctx / "Dockerfile").write_text(case.dockerfile.replace("{busybox}", busybox))
    tag = f"diff-{case.name}"
    with ThreadPoolExecutor(1) as pool:   # the two builders side by side: each waits on its processes
        buildah_built = pool.submit(build_buildah, buildah, ctx, tag, list(case.args), tmp_path / "buildah.tar")
        ours = build_rootless(cli, ctx, tag, list(case.args), tmp_path / "rootless.tar")
        theirs = buildah_built.result()
    problems = differences(ours, theirs, case)
    assert not problems, "\n".join(problems)
