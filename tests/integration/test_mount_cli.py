"""The fusefs command as users and podman call it: mount, unmount, errors before mounting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mounts import REPO, fusefs_cmd, is_mounted, wait_daemon_gone

pytestmark = pytest.mark.fuse


def layers(tmp_path):
    low, up, wk, mnt = (tmp_path / n for n in ("low", "up", "wk", "mnt"))
    for d in (low, up, wk, mnt):
        d.mkdir()
    (low / "hello").write_text("world")
    return low, up, wk, mnt


def run(*args, **kw):
    return subprocess.run(fusefs_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=60, **kw)


def test_mount_returns_when_ready_and_fusermount_unmounts(tmp_path):
    low, up, wk, mnt = layers(tmp_path)
    # Options podman passes to a mount_program are accepted.
    r = run("-o", f"lowerdir={low},upperdir={up},workdir={wk},fsync=0,userxattr,context=\"x\"", str(mnt))
    assert r.returncode == 0, r.stderr
    assert (mnt / "hello").read_text() == "world"
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    wait_daemon_gone(mnt)
    assert not is_mounted(mnt)


def test_console_script_and_sigterm(tmp_path):
    low, up, wk, mnt = layers(tmp_path)
    exe = os.path.join(os.path.dirname(sys.executable), "fusefs")
    proc = subprocess.Popen([exe, "-f", "-o", f"lowerdir={low},upperdir={up},workdir={wk}", str(mnt)])
    try:
        deadline = time.monotonic() + 20
        while not is_mounted(mnt):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        (mnt / "made").write_text("x")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not is_mounted(mnt)
    assert (up / "made").read_text() == "x"


@pytest.mark.parametrize("case", ["missing-lower", "other-fs-workdir", "busy-mountpoint", "no-lowerdir",
                                  "upper-without-work", "missing-mountpoint", "bad-uidmapping"])
def test_clear_error_before_mounting(tmp_path, case):
    low, up, wk, mnt = layers(tmp_path)
    opts = f"lowerdir={low},upperdir={up},workdir={wk}"
    target = str(mnt)
    busy = None
    if case == "missing-lower":
        opts = f"lowerdir={tmp_path}/nope:{low},upperdir={up},workdir={wk}"
        expect = "nope"
    elif case == "other-fs-workdir":
        other = "/dev/shm" if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(up).st_dev else None
        if other is None:
            pytest.skip("no second filesystem to put a workdir on")
        opts = f"lowerdir={low},upperdir={up},workdir={other}"
        expect = "same filesystem"
    elif case == "busy-mountpoint":
        busy = run("-o", opts, target)
        assert busy.returncode == 0
        expect = "already in use"
    elif case == "no-lowerdir":
        opts = f"upperdir={up},workdir={wk}"
        expect = "lowerdir"
    elif case == "upper-without-work":
        opts = f"lowerdir={low},upperdir={up}"
        expect = "workdir"
    elif case == "bad-uidmapping":
        opts += ",uidmapping=0:1000:1:0:100000:65536"
        expect = "uidmapping=0:1000:1:0:100000:65536: container ids 0-0 and 0-65535 overlap"
    else:
        target = str(tmp_path / "absent")
        expect = "mkdir"
    try:
        r = run("-o", opts, target)
        assert r.returncode != 0
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fusefs: ") and expect in lines[0], r.stderr
    finally:
        if busy is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
            wait_daemon_gone(mnt)


@pytest.mark.userns
def test_mount_inside_user_namespace_and_umount(tmp_path):
    low, up, wk, mnt = layers(tmp_path)
    script = f"""
set -e
{sys.executable} -m fusefs -o lowerdir={low},upperdir={up},workdir={wk} {mnt}
cat {mnt}/hello
echo new > {mnt}/new
chown 0:0 {mnt}/new
umount {mnt}
for i in $(seq 100); do pgrep -f "fusefs .*{mnt}$" >/dev/null || break; sleep 0.05; done
! pgrep -f "fusefs .*{mnt}$"
"""
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("world")
    assert (up / "new").read_text() == "new\n"


def test_kill_9_during_copy_up_leaves_no_partial_file(tmp_path):
    low, up, wk, mnt = layers(tmp_path)
    big = low / "big"
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(400):
            f.write(block)
    r = run("-o", f"lowerdir={low},upperdir={up},workdir={wk}", str(mnt))
    assert r.returncode == 0
    pid = int(subprocess.run(["pgrep", "-f", f"fusefs .*{mnt}$"], capture_output=True, text=True).stdout.split()[0])
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(mnt / 'big')!r}, 'ab').write(b'x')"],
                              stderr=subprocess.DEVNULL)
    time.sleep(0.15)
    os.kill(pid, signal.SIGKILL)
    writer.wait(timeout=30)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    if (up / "big").exists():  # the copy-up finished before the kill: then it is whole
        assert os.path.getsize(up / "big") in (400 << 20, (400 << 20) + 1)
    assert not [p for p in up.iterdir() if p.name != "big"]
    r = run("-o", f"lowerdir={low},upperdir={up},workdir={wk}", str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        assert os.listdir(wk / "fusefs-stage") == [], "staged leftovers are cleaned at mount"
        assert os.path.getsize(mnt / "big") in (400 << 20, (400 << 20) + 1)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        wait_daemon_gone(mnt)


@pytest.mark.userns
@pytest.mark.slow
def test_podman_uses_fusefs_as_its_mount_program(tmp_path):
    """podman's overlay driver with mount_program=fusefs: the container's root is our mount."""
    import shutil
    import tarfile

    if shutil.which("podman") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("podman is missing (scripts/setup installs it)")
        pytest.skip("podman is not installed")
    wrapper = tmp_path / "fusefs-wrap"
    log = tmp_path / "args.log"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {sys.executable} -m fusefs "$@"\n')
    wrapper.chmod(0o755)
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        tar.add("/bin/busybox" if os.path.exists("/bin/busybox") else sys.executable, "bin/busybox")
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_RUNTIME_DIR=str(tmp_path / "xdg"),
               XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    import tempfile
    runroot = tempfile.mkdtemp(prefix="fusefs-run.")  # podman wants a runroot under 50 characters
    podman = ["podman", "--root", str(tmp_path / "storage"), "--runroot", runroot,
              "--storage-driver", "overlay", "--storage-opt", f"overlay.mount_program={wrapper}",
              "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    p = " ".join(podman)
    r = subprocess.run(podman + ["import", str(rootfs), "localhost/fusefs-test"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    script = (f'id=$({p} create localhost/fusefs-test /bin/busybox) && m=$({p} mount "$id") && '
              f'ls "$m/bin" && echo written > "$m/newfile" && {p} umount "$id" >/dev/null && ls "$(dirname "$m")/diff"')
    try:
        r = subprocess.run(podman + ["unshare", "sh", "-c", script], env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["busybox", "newfile"]
        assert "lowerdir=" in log.read_text()
    finally:
        subprocess.run(podman + ["unshare", "rm", "-rf", str(tmp_path / "storage"), runroot],
                       env=env, capture_output=True, timeout=120)
        for pidfile in (tmp_path / "xdg").glob("**/pause.pid"):   # podman's pause process: nothing needs it now
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _owned_tar(path, members):
    """A layer tar whose members carry the owners an image would give them (container ids)."""
    import io
    import tarfile

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, owner in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.uid = info.gid = owner
            info.mtime = 1_700_000_000
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o1777
                tar.addfile(info)
            else:
                data = name.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.userns
def test_uidmapping_shows_host_ids_records_container_ids_and_fits_the_users_namespace(tmp_path):
    """podman's case: the layers keep the image's owners, the mount is made outside the container's
    namespace, and inside it a kernel overlay on top of the mount must show the image's owners."""
    from fusefs.changes import list_changes
    from mounts import in_full_userns, subid_range

    uids, gids = subid_range("/etc/subuid"), subid_range("/etc/subgid")
    if uids is None or gids is None:
        in_full_userns("true")  # fails in CI, skips elsewhere, saying which range is missing
        raise AssertionError("unreachable: in_full_userns fails or skips without subordinate ids")
    uid, gid = os.getuid(), os.getgid()
    size = min(uids[1], gids[1], 65536)
    lower = tmp_path / "layer.tar"
    _owned_tar(lower, [("rootfile", 0), ("userfile", 1000), ("tmp/", 0)])
    up, wk, mnt = (tmp_path / n for n in ("up", "wk", "mnt"))
    for d in (up, wk, mnt):
        d.mkdir()
    mapping = f"uidmapping=0:{uid}:1:1:{uids[0]}:{size},gidmapping=0:{gid}:1:1:{gids[0]}:{size}"
    r = run("-o", f"lowerdir={lower},upperdir={up},workdir={wk},{mapping}", str(mnt))
    assert r.returncode == 0, r.stderr
    try:
        def owner(p):
            st = os.stat(p)
            return st.st_uid, st.st_gid

        assert owner(mnt / "rootfile") == (uid, gid)
        assert owner(mnt / "userfile") == (uids[0] + 999, gids[0] + 999)
        assert {e: owner(mnt / e) for e in os.listdir(mnt)} == {
            "rootfile": (uid, gid), "userfile": (uids[0] + 999, gids[0] + 999), "tmp": (uid, gid)}, \
            "readdir agrees with lookup"
        (mnt / "tmp" / "made").write_text("mine")
        assert owner(mnt / "tmp" / "made") == (uid, gid)
        # Inside the user's namespace (uid -> 0, subordinate ids -> 1...), through a kernel overlay
        # whose lower is the mount, as a container's root would be.
        r = in_full_userns(f"""
cd {tmp_path}
mkdir -p ovl/up ovl/wk ovl/merged
mount -t overlay overlay -o userxattr,lowerdir={mnt},upperdir=ovl/up,workdir=ovl/wk ovl/merged
stat -c '%n %u:%g' {mnt}/rootfile ovl/merged/rootfile ovl/merged/userfile ovl/merged/tmp/made
""")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split("\n")[:4] == [f"{mnt}/rootfile 0:0", "ovl/merged/rootfile 0:0",
                                            "ovl/merged/userfile 1000:1000", "ovl/merged/tmp/made 0:0"], r.stdout
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        wait_daemon_gone(mnt)
    recorded = {c.path: (c.uid, c.gid) for c in list_changes(up, [lower])}
    assert recorded[b"tmp/made"] == (0, 0), "the creator is recorded as the container's root"
