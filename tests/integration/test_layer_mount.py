"""A layer stored without root (as its tar and index), mounted by fusefs, shows the owners and modes its tar recorded."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mounts import REPO, subid_range
from rootless.image.store import Store

pytestmark = [pytest.mark.fuse, pytest.mark.userns]


def layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, uid: int, gid: int, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.uid, info.gid, info.mode, info.linkname = kind, uid, gid, mode, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("bin", tarfile.DIRTYPE, 0, 0, 0o755)
        add("bin/su", tarfile.REGTYPE, 0, 0, 0o4755, b"#!/bin/sh\n")
        add("home/user/secret", tarfile.REGTYPE, 1000, 1000, 0o640, b"s3cret\n")
        add("link", tarfile.SYMTYPE, 5, 5, 0o777, link="bin/su")
    return buf.getvalue()


STAT = (f"{sys.executable} -c 'import os,sys; [print(p.rsplit(\"/\",1)[-1], "
        "*(lambda s: (s.st_uid, s.st_gid, oct(s.st_mode & 0o7777)))(os.lstat(p))) for p in sys.argv[1:]]'")


def test_stored_layer_mounts_with_the_tars_owners_and_modes(tmp_path: Path) -> None:
    uids, gids = subid_range("/etc/subuid"), subid_range("/etc/subgid")
    if uids is None or gids is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the test user needs /etc/subuid and /etc/subgid ranges (.ci/run creates them)")
        pytest.skip("no /etc/subuid or /etc/subgid range for this user")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    store = Store.open_at(tmp_path / "store")
    layer = store.layer_path(store.add_layer(io.BytesIO(gzip.compress(layer_tar()))))
    assert layer.is_file() and os.stat(layer).st_uid == os.getuid()   # one file of the user's, whatever it holds

    script = f"""set -euo pipefail
        {sys.executable} -m fusefs -o lowerdir={layer} {mnt}
        {STAT} {mnt}/bin/su {mnt}/home/user/secret {mnt}/link {mnt}/home
        cat {mnt}/home/user/secret
        umount {mnt}
        for i in $(seq 100); do pgrep -f "fusefs .*{mnt}$" >/dev/null || break; sleep 0.05; done
    """
    cmd = ["unshare", "--user", "--map-root-user", f"--map-users={uids[0]},1,{uids[1]}",
           f"--map-groups={gids[0]},1,{gids[1]}", "--mount", "bash", "-c", script]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == [
        "su 0 0 0o4755",
        "secret 1000 1000 0o640",
        "link 5 5 0o777",
        "home 0 0 0o755",
        "s3cret",
    ]
