"""podman and rootless read each other's archives: the same image id, diff_ids and config on both sides.

podman runs as the test user in a private HOME with its own root, a short runroot and
the vfs driver: ``load``, ``save``, ``import`` and ``inspect`` work so, while ``podman run``
would need cgroups this host does not give.  Without podman these tests skip, and fail
under CI=true (tests/capabilities.py).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peers import Peer, peer
from rootless.image import archive, local
from rootless.image.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    with peer("podman", tmp_path_factory.mktemp("podman")) as p:
        yield p


def inspect(podman: Peer, name: str) -> dict[str, Any]:
    [doc] = json.loads(podman("image", "inspect", name))
    return doc


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox and a few of its links: a root file system podman can import without a network."""
    path = tmp_path_factory.mktemp("rootfs") / "rootfs.tar"
    busybox = "/bin/busybox" if os.path.exists("/bin/busybox") else "/bin/true"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for name in ("sh", "ls", "cat"):
            info = tarfile.TarInfo(f"bin/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        data = b"root:x:0:0:root:/root:/bin/sh\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open_at(tmp_path / "store")


def config_of(store: Store, image_id: str) -> dict[str, Any]:
    return local.read_image(store, image_id).config


def podman_image(podman: Peer, rootfs: Path, name: str, *changes: str) -> dict[str, Any]:
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    podman(*args, str(rootfs), name)
    return inspect(podman, name)


# -- podman's archives load here -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_loads_here_with_the_same_id_layers_and_config(podman: Peer, rootfs: Path, store: Store,
                                                                   tmp_path: Path, fmt: str) -> None:
    name = f"localhost/from-podman-{fmt}:1"
    theirs = podman_image(podman, rootfs, name, 'CMD ["/bin/sh"]', "ENV GREETING=hello")
    saved = tmp_path / "podman.tar"
    podman("save", "--format", fmt, "-o", str(saved), name)
    with open(saved, "rb") as f:
        [loaded] = archive.load(store, f)
    assert loaded.id == "sha256:" + theirs["Id"] and loaded.tags == (name,)
    record = store.resolve(name)
    assert list(record.layers) == theirs["RootFS"]["Layers"]
    config = config_of(store, record.id)
    assert config["config"]["Cmd"] == theirs["Config"]["Cmd"] == ["/bin/sh"]
    assert config["config"]["Env"] == theirs["Config"]["Env"]


def test_podman_multi_image_docker_archive_loads_here(podman: Peer, rootfs: Path, store: Store,
                                                      tmp_path: Path) -> None:
    first = podman_image(podman, rootfs, "localhost/multi-a:1", 'CMD ["/bin/ls"]')
    second = podman_image(podman, rootfs, "localhost/multi-b:2", 'CMD ["/bin/cat"]')
    saved = tmp_path / "multi.tar.gz"
    podman("save", "--multi-image-archive", "-o", str(tmp_path / "multi.tar"), "localhost/multi-a:1",
           "localhost/multi-b:2")
    subprocess.run(["gzip", "-c", str(tmp_path / "multi.tar")], stdout=saved.open("wb"), check=True)
    with open(saved, "rb") as f:
        loaded = archive.load(store, f)
    assert sorted((x.id, x.tags) for x in loaded) == sorted([
        ("sha256:" + first["Id"], ("localhost/multi-a:1",)), ("sha256:" + second["Id"], ("localhost/multi-b:2",))])


# -- our archives load in podman -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", [archive.DOCKER_ARCHIVE, archive.OCI_ARCHIVE])
def test_our_save_loads_in_podman_with_the_same_layers_and_config(podman: Peer, rootfs: Path, store: Store,
                                                                  tmp_path: Path, fmt: str) -> None:
    name = f"localhost/from-rootless-{fmt}:1"
    with open(rootfs, "rb") as f:
        ours = archive.import_rootfs(store, f, name, ['CMD ["/bin/sh", "-c", "echo hi"]', "ENV A=1 B=two",
                                                      "WORKDIR /tmp"], "made by rootless")
    names = [name]
    if fmt == archive.DOCKER_ARCHIVE:  # several images, one with a docker.io name
        store.tag("busybox:rootless-test", ours.id)
        names.append("busybox:rootless-test")
    saved = tmp_path / "ours.tar"
    with open(saved, "wb") as out:
        archive.save(store, names, out, fmt)
    output = podman("load", "-i", str(saved))
    assert f"Loaded image: {name}" in output
    theirs = inspect(podman, name)
    assert "sha256:" + theirs["Id"] == ours.id
    assert theirs["RootFS"]["Layers"] == list(ours.layers)
    assert theirs["Config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert theirs["Config"]["Env"] == ["A=1", "B=two"]
    assert theirs["Config"]["WorkingDir"] == "/tmp"
    assert theirs["Comment"] == "made by rootless"
    if fmt == archive.DOCKER_ARCHIVE:
        assert inspect(podman, "docker.io/library/busybox:rootless-test")["Id"] == theirs["Id"]


def test_round_trip_through_podman_keeps_the_image(podman: Peer, rootfs: Path, store: Store,
                                                   tmp_path: Path) -> None:
    """Ours -> podman load -> podman save -> ours: the same image comes back."""
    with open(rootfs, "rb") as f:
        ours = archive.import_rootfs(store, f, "localhost/round:1", ["ENTRYPOINT [\"/bin/sh\"]"])
    first = tmp_path / "first.tar"
    with open(first, "wb") as out:
        archive.save(store, ["localhost/round:1"], out)
    podman("load", "-i", str(first))
    podman("save", "-o", str(tmp_path / "second.tar"), "localhost/round:1")
    fresh = Store.open_at(tmp_path / "fresh")
    with open(tmp_path / "second.tar", "rb") as f:
        [loaded] = archive.load(fresh, f)
    assert loaded.id == ours.id
    assert fresh.resolve("localhost/round:1").layers == ours.layers
