"""``"storage-driver": "overlay"``: containers of an image share one read-only fusefs mount of its
layers under a kernel overlayfs each, and behave as fusefs containers do."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mounts import subid_range
from registry import Registry
from runcli import Cli
from testimages import busybox_rootfs, make_image, push_all

pytestmark = [pytest.mark.fuse, pytest.mark.userns, pytest.mark.registry]


@pytest.fixture(scope="module")
def image(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    rootfs = busybox_rootfs()
    rootfs.update({"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
                   "etc/group": b"root:x:0:\napp:x:1000:\n", "usr/share/doc/README": b"read me\n"})
    made = {"ovl": make_image([rootfs, {"srv/kept": b"from the image\n"}], {"Env": ["PATH=/bin"], "Cmd": ["sh"]})}
    return push_all(reg.host, made, tmp_path_factory.mktemp("images"))["ovl"]


@pytest.fixture(scope="module")
def cli(image: str, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    if subid_range("/etc/subuid") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test user needs an /etc/subuid range (.ci/run makes one)")
        pytest.skip("overlay storage needs a subordinate id range")
    c = Cli.with_images(tmp_path_factory.mktemp("overlay"), image)
    config = c.home / ".config" / "rootless"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.json").write_text(json.dumps({"storage-driver": "overlay"}))
    c("tag", image, "ovl")
    return c


def ok(cli: Cli, *args: str) -> str:
    done = cli.proc(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def shared_mounts(cli: Cli) -> list[Path]:
    """The image mounts made for this store (with --root, its runtime dir is ROOT/run)."""
    lowers = cli.root / "run" / "lowers"
    return [d / "mnt" for d in lowers.iterdir() if os.path.ismount(d / "mnt")] if lowers.is_dir() else []


def test_a_container_runs_on_the_image_mount_with_the_images_owners(cli: Cli) -> None:
    out = ok(cli, "run", "--rm", "--network", "none", "ovl", "sh", "-c",
             "grep ' / ' /proc/mounts | cut -d' ' -f3; stat -c '%u:%g %a' /srv/kept /srv; "
             "echo new > /srv/new; rm /usr/share/doc/README; cat /srv/new; ls /usr/share/doc | wc -l")
    assert out.splitlines() == ["overlay", "0:0 644", "0:0 755", "new", "0"]


def test_containers_of_an_image_share_one_mount_and_it_goes_when_they_do(cli: Cli) -> None:
    for name in ("share-a", "share-b"):
        ok(cli, "run", "-d", "--name", name, "--network", "none", "ovl", "sleep", "60")
    try:
        mounts = shared_mounts(cli)
        assert len(mounts) == 1
        assert (mounts[0] / "srv" / "kept").read_text() == "from the image\n"
        inode = {ok(cli, "exec", name, "stat", "-c", "%i", "/srv/kept") for name in ("share-a", "share-b")}
        assert len(inode) == 1            # one file, one page cache
    finally:
        ok(cli, "rm", "-f", "share-a", "share-b")
    deadline = time.monotonic() + 40      # the watcher looks every 10 s
    while shared_mounts(cli) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert shared_mounts(cli) == []


def test_owners_set_inside_diff_and_commit_as_with_fusefs(cli: Cli) -> None:
    ok(cli, "run", "-d", "--name", "changer", "--network", "none", "ovl", "sleep", "60")
    try:
        ok(cli, "exec", "changer", "sh", "-c",
           "mkdir -p /home/app && echo hi > /home/app/f && chown -R 1000:1000 /home/app && "
           "rm -rf /usr/share/doc && rm /srv/kept")
        diff = ok(cli, "diff", "changer").splitlines()
        assert {"A /home/app", "A /home/app/f", "D /usr/share/doc", "D /srv/kept"} <= set(diff)
        ok(cli, "commit", "changer", "committed:1")
    finally:
        ok(cli, "rm", "-f", "changer")
    out = ok(cli, "run", "--rm", "--network", "none", "committed:1", "sh", "-c",
             "stat -c '%u:%g' /home/app /home/app/f; cat /home/app/f; ls /usr/share/doc /srv/kept 2>&1 | wc -l")
    assert out.splitlines() == ["1000:1000", "1000:1000", "hi", "2"]
    assert [p.name for p in (cli.root / "containers").iterdir() if not p.name.startswith((".", "lock"))] == []


def test_without_subordinate_ids_fusefs_is_used_with_a_warning(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"storage-driver": "overlay", "subordinate-ids": False}))
    done = cli.proc("--config", str(config), "run", "--rm", "--network", "none", "ovl", "sh", "-c",
                    "grep ' / ' /proc/mounts | cut -d' ' -f3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("fuse")
    assert 'WARNING: "storage-driver": "overlay" needs a subordinate id range' in done.stderr


def test_an_unknown_driver_is_refused(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"storage-driver": "zfs"}))
    done = cli.proc("--config", str(config), "run", "--rm", "ovl", "true")
    assert done.returncode == 125 and 'unknown "storage-driver"' in done.stderr


def root_fs_type(cli: Cli, config: Path | None) -> str:
    args = ("--config", str(config)) if config else ()
    done = cli.proc(*args, "run", "--rm", "--network", "none", "ovl", "sh", "-c", "grep ' / ' /proc/mounts | cut -d' ' -f3")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_auto_takes_overlay_where_it_works_and_fusefs_is_still_there(cli: Cli, tmp_path: Path) -> None:
    auto = tmp_path / "auto.json"
    auto.write_text("{}")
    fusefs = tmp_path / "fusefs.json"
    fusefs.write_text(json.dumps({"storage-driver": "fusefs"}))
    assert root_fs_type(cli, auto) == "overlay"          # this kernel and store take it (probed)
    assert root_fs_type(cli, fusefs).startswith("fuse")


def info_storage(cli: Cli, config: Path) -> tuple[str, dict[str, str], list[str]]:
    done = cli.proc("--config", str(config), "info", "-f", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    return doc["Driver"], dict(doc["DriverStatus"]), doc["Warnings"]


def test_info_says_which_storage_the_next_container_gets_and_why(cli: Cli, tmp_path: Path) -> None:
    configs = {"auto": {}, "fusefs": {"storage-driver": "fusefs"},
               "noids": {"storage-driver": "overlay", "subordinate-ids": False}}
    for name, settings in configs.items():
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(settings))
        driver, status, _ = info_storage(cli, config)
        fs_type = root_fs_type(cli, config)
        assert driver == ("overlay" if fs_type == "overlay" else "fusefs"), (name, fs_type)
        assert status["Configured"] == settings.get("storage-driver", "auto")
    assert "in the config file" in info_storage(cli, tmp_path / "fusefs.json")[1]["Why"]
    assert "subordinate id range" in info_storage(cli, tmp_path / "noids.json")[1]["Why"]
    # the image mounts there are now (one at least while a container of the image runs; earlier
    # tests' may not have gone yet)
    cid = ok(cli, "run", "-d", "--network", "none", "ovl", "sleep", "60").strip()
    try:
        shown = info_storage(cli, tmp_path / "auto.json")[1]["Image mounts"]
        assert shown == str(len(shared_mounts(cli))) and int(shown) >= 1
    finally:
        ok(cli, "rm", "-f", cid)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"storage-driver": "zfs"}))
    driver, _, warnings = info_storage(cli, bad)
    assert driver == "none" and any('unknown "storage-driver" \'zfs\'' in w for w in warnings)


def test_the_overlay_probe_is_kept_per_kernel_and_file_system(tmp_path: Path) -> None:
    from rootless.runtime import shared

    store = tmp_path / "store"
    assert shared.overlay_usable(store) is True
    stamp = json.loads((store / shared.PROBE_FILE).read_text())
    assert stamp == {"kernel": os.uname().release, "dev": os.stat(store).st_dev, "ok": True}
    (store / shared.PROBE_FILE).write_text(json.dumps({**stamp, "ok": False}))
    assert shared.overlay_usable(store) is False          # kept, not probed again
    (store / shared.PROBE_FILE).write_text(json.dumps({**stamp, "kernel": "0.0", "ok": False}))
    assert shared.overlay_usable(store) is True           # another kernel: probed again
    assert [p.name for p in store.iterdir()] == [shared.PROBE_FILE]   # the scratch is gone
