"""Root's work in a real Debian build: useradd, chown, dpkg and apt, with and without subordinate ids.

With a subuid range the container has 65537 ids and every owner holds.  Without one
("subordinate-ids": false) it has only 0: files are written and the owners already in
the image are kept, but no process can give a file to another id — the kernel refuses
chown to an id the namespace lacks (EINVAL), and apt cannot drop to _apt.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from baseimages import push_debian, require
from registry import Registry
from runcli import Cli
from rootless.runtime.idmap import detect

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry, pytest.mark.slow]

APP = (1000, 1000)   # what useradd gives the first user in Debian
SHADOW = 42          # Debian's group shadow (/etc/shadow, /etc/gshadow)

#: Both packages hold a setuid file, a 0750 directory and a 0600 file; owned-probe's postinst
#: gives files to app, once through dpkg-statoverride and once through install -o.
POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    dpkg-statoverride --update --add app app 0640 /opt/owned-probe/owned
    install -d -o app -g app -m 0700 /var/lib/owned-probe
fi
"""


def make_deb(out: Path, name: str, postinst: str | None = None) -> None:
    root = out / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                                         f"Maintainer: Tests <tests@example.invalid>\nDescription: {name}\n")
    if postinst is not None:
        (root / "DEBIAN/postinst").write_text(postinst)
        (root / "DEBIAN/postinst").chmod(0o755)
    pkg = root / "opt" / name
    (pkg / "private").mkdir(parents=True)
    for rel, mode in (("tool", 0o4755), ("owned", 0o644), ("private/secret", 0o600)):
        (pkg / rel).write_text(rel + "\n")
        (pkg / rel).chmod(mode)
    (pkg / "private").chmod(0o750)
    done = subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(out / f"{name}.deb")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def debian(reg: Registry) -> str:
    return push_debian(reg.host)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("debs")
    make_deb(out, "plain-probe")
    make_deb(out, "owned-probe", POSTINST)
    return out


def store(tmp: Path, debian: str, **config: object) -> Cli:
    cli = Cli(tmp)
    conf = cli.home / ".config" / "rootless"
    conf.mkdir(parents=True)
    (conf / "config.json").write_text(json.dumps(config))
    cli("pull", "-q", debian)
    cli("tag", debian, "debian:bookworm")
    return cli


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, debian: str) -> Cli:
    ids = detect()
    require("a subordinate id range in /etc/subuid and /etc/subgid, and newuidmap",
            None if ids.full else "this user has none (as root: usermod --add-subuids 100000-165535 "
                                  "--add-subgids 100000-165535 USER; apt-get install uidmap)")
    return store(tmp_path_factory.mktemp("full"), debian)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, debian: str) -> Cli:
    return store(tmp_path_factory.mktemp("single"), debian, **{"subordinate-ids": False})


def context(tmp: Path, debs: Path, dockerfile: str) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    for deb in debs.glob("*.deb"):
        (ctx / deb.name).write_bytes(deb.read_bytes())
    (ctx / "note").write_text("note\n")
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def build(cli: Cli, ctx: Path, tag: str, code: int = 0) -> str:
    done = cli.proc("build", "-t", tag, str(ctx), timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == code, out
    return out


def sh(cli: Cli, image: str, script: str) -> list[str]:
    done = cli.proc("run", "--rm", "--network", "none", "-u", "0", image, "sh", "-c", script)
    assert done.returncode == 0, (done.stdout, done.stderr)
    return done.stdout.splitlines()


def layers(cli: Cli, image: str, tmp: Path) -> list[dict[str, tarfile.TarInfo]]:
    """The image's layers bottom first, as `rootless save` writes them: path -> member."""
    saved = tmp / "saved.tar"
    cli("save", "-o", str(saved), image)
    out = []
    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        for name in manifest[0]["Layers"]:
            data = archive.extractfile(name).read()  # type: ignore[union-attr]
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as layer:
                out.append({m.name.removeprefix("./").rstrip("/"): m for m in layer.getmembers()})
    return out


def owners(layer: dict[str, tarfile.TarInfo]) -> dict[str, tuple[int, int, int]]:
    return {name: (m.uid, m.gid, m.mode) for name, m in layer.items()}


def given_to(layer: dict[str, tarfile.TarInfo], ids: tuple[int, int]) -> set[str]:
    return {name for name, m in layer.items() if (m.uid, m.gid) == ids}


STAT = "stat -c '%U:%G %a %n' "
USERADD = "RUN useradd --create-home app && chown app:app /srv && install -d -o app -g app -m 0750 /srv/data"
HOME = {"home/app", "home/app/.bashrc", "home/app/.profile", "home/app/.bash_logout"}


# -- with a subordinate id range ---------------------------------------------------------------

def test_useradd_chown_and_dpkg_give_files_to_app(full: Cli, debs: Path, tmp_path: Path) -> None:
    ctx = context(tmp_path, debs, f"""\
FROM debian:bookworm
{USERADD}
COPY *.deb /tmp/
RUN apt-get install -y /tmp/plain-probe.deb /tmp/owned-probe.deb && rm /tmp/*.deb
RUN chmod 0770 /srv/data && echo '# more' >> /home/app/.bashrc
USER app
RUN touch /srv/data/by-app && mkdir /home/app/made
""")
    out = build(full, ctx, "fakeroot-full")
    assert "unsandboxed" not in out and "setgroups" not in out   # apt's downloads as _apt worked
    lines = sh(full, "fakeroot-full",
               STAT + "/srv /srv/data /srv/data/by-app /home/app /home/app/.bashrc /home/app/made "
               "/opt/owned-probe/owned /var/lib/owned-probe /opt/owned-probe/tool /opt/plain-probe/private "
               "/opt/plain-probe/private/secret /etc/shadow; id app; "
               "for p in plain-probe owned-probe; do dpkg-query -W -f '${Package} ${Status}\\n' $p; done")
    assert lines == [
        "app:app 755 /srv", "app:app 770 /srv/data", "app:app 644 /srv/data/by-app", "app:app 755 /home/app",
        "app:app 644 /home/app/.bashrc", "app:app 755 /home/app/made",
        "app:app 640 /opt/owned-probe/owned", "app:app 700 /var/lib/owned-probe",
        "root:root 4755 /opt/owned-probe/tool", "root:root 750 /opt/plain-probe/private",
        "root:root 600 /opt/plain-probe/private/secret", "root:shadow 640 /etc/shadow",
        "uid=1000(app) gid=1000(app) groups=1000(app)",
        "plain-probe install ok installed", "owned-probe install ok installed",
    ]
    base, users, _copied, installed, changed, by_app = layers(full, "fakeroot-full", tmp_path)
    assert given_to(users, APP) == {"srv", "srv/data", *HOME}
    assert owners(users)["srv/data"] == (*APP, 0o750)
    assert owners(users)["etc/shadow"] == owners(base)["etc/shadow"] == (0, SHADOW, 0o640)
    assert all(m.uid == 0 for name, m in users.items() if name not in given_to(users, APP))
    assert given_to(installed, APP) == {"opt/owned-probe/owned", "var/lib/owned-probe"}
    assert owners(installed)["opt/owned-probe/owned"] == (*APP, 0o640)
    assert owners(installed)["opt/plain-probe/tool"] == (0, 0, 0o4755)
    assert owners(installed)["opt/plain-probe/private/secret"] == (0, 0, 0o600)
    # apt's own _apt (42) directories are the image's; nothing else leaves root
    assert {m.uid for name, m in installed.items() if name not in given_to(installed, APP)} <= {0, 42}
    assert owners(changed)["srv/data"] == (*APP, 0o770)          # a later chmod keeps the owner
    assert owners(changed)["home/app/.bashrc"][:2] == APP        # and so does a copy-up to append
    assert given_to(by_app, APP) >= {"srv/data/by-app", "home/app/made"}


def test_apt_get_update_and_install_from_the_debian_mirror(full: Cli, debs: Path, tmp_path: Path) -> None:
    """apt downloads as _apt (uid 42) into _apt's partial directories.

    RUN has the host's network, so no `net` marker (that is for pasta/slirp4netns). The
    base image already comes from this mirror on a cold cache; this adds one small
    package, index files without translations, retried, and removed before the commit.
    """
    try:
        socket.create_connection(("deb.debian.org", 80), timeout=10).close()
        problem = None
    except OSError as e:
        problem = f"deb.debian.org:80 cannot be reached from here ({e})"
    require("the Debian mirror", problem)
    ctx = context(tmp_path, debs, """\
FROM debian:bookworm
RUN apt-get -o Acquire::Languages=none -o Acquire::Retries=3 update \\
 && apt-get install -y --no-install-recommends netbase \\
 && rm -rf /var/lib/apt/lists/*
""")
    out = build(full, ctx, "fakeroot-apt")
    assert "unsandboxed" not in out and "setgroups" not in out
    assert sh(full, "fakeroot-apt", "dpkg-query -W -f '${Status}\\n' netbase; " + STAT + "/etc/services") == [
        "install ok installed", "root:root 644 /etc/services"]


# -- without subordinate ids: the container has uid 0 only -------------------------------------

def test_without_subids_files_are_written_and_recorded_owners_kept(single: Cli, debs: Path,
                                                                    tmp_path: Path) -> None:
    ctx = context(tmp_path, debs, """\
FROM debian:bookworm
RUN useradd --create-home app && id app
COPY --chown=app:app note /srv/note
RUN echo more >> /srv/note && chmod 0600 /srv/note
COPY *.deb /tmp/
RUN apt-get -o APT::Sandbox::User=root install -y /tmp/plain-probe.deb && rm /tmp/*.deb
""")
    build(single, ctx, "fakeroot-single")
    lines = sh(single, "fakeroot-single",
               "cat /proc/self/uid_map | tr -s ' '; " + STAT + "/etc/shadow /srv/note /home/app "
               "/opt/plain-probe/tool /opt/plain-probe/private/secret; cat /srv/note; "
               "dpkg-query -W -f '${Status}\\n' plain-probe")
    assert lines[0].split()[::2] == ["0", "1"]
    # Every owner shows as root, the only id here ...
    assert lines[1:] == ["root:root 640 /etc/shadow", "root:root 600 /srv/note", "root:root 755 /home/app",
                         "root:root 4755 /opt/plain-probe/tool", "root:root 600 /opt/plain-probe/private/secret",
                         "note", "more", "install ok installed"]
    base, users, copied, appended, _debs, installed = layers(single, "fakeroot-single", tmp_path)
    # ... but the layers keep what was recorded: the image's shadow group through useradd's rewrite,
    # COPY --chown's owner through a RUN that appended and chmodded.
    assert owners(users)["etc/shadow"] == owners(users)["etc/gshadow"] == (0, SHADOW, 0o640)
    assert owners(copied)["srv/note"] == (*APP, 0o644)
    assert owners(appended)["srv/note"] == (*APP, 0o600)
    assert owners(installed)["opt/plain-probe/tool"] == (0, 0, 0o4755)
    # useradd's chown of the new home is refused and useradd says nothing: the home stays root's.
    assert given_to(users, APP) == set() and owners(users)["home/app"][:2] == (0, 0)


@pytest.mark.parametrize("step, says", [
    ("RUN useradd app && chown app:app /srv",
     "chown: changing ownership of '/srv': Invalid argument"),
    ("RUN useradd app && install -d -o app /srv/data",
     "install: cannot change owner and permissions of '/srv/data': Invalid argument"),
    ("RUN apt-get install -y /tmp/plain-probe.deb",
     "E: seteuid 42 failed - seteuid (22: Invalid argument)"),
    ("RUN useradd app && apt-get -o APT::Sandbox::User=root install -y /tmp/owned-probe.deb",
     "dpkg-statoverride: error: error setting ownership of '/opt/owned-probe/owned': Invalid argument"),
], ids=["chown", "install-o", "apt-sandbox", "postinst-chown"])
def test_without_subids_giving_a_file_to_another_id_fails_loudly(single: Cli, debs: Path, tmp_path: Path,
                                                                step: str, says: str) -> None:
    ctx = context(tmp_path, debs, f"FROM debian:bookworm\nCOPY *.deb /tmp/\n{step}\n")
    out = build(single, ctx, "fakeroot-refused", code=1)
    assert says in out
    assert "returned a non-zero code" in out
