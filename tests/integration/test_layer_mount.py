"""A layer stored without root (as its tar and index), mounted by fusefs, shows the owners and modes its tar recorded."""

from __future__ import annotations

import gzip
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from mounts import in_full_userns
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
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    store = Store.open_at(tmp_path / "store")
    layer = store.layer_path(store.add_layer(io.BytesIO(gzip.compress(layer_tar()))))
    assert layer.is_file() and os.stat(layer).st_uid == os.getuid()   # one file of the user's, whatever it holds

    script = f"""
        {sys.executable} -m fusefs -o lowerdir={layer} {mnt}
        {STAT} {mnt}/bin/su {mnt}/home/user/secret {mnt}/link {mnt}/home
        cat {mnt}/home/user/secret
        umount {mnt}
        for i in $(seq 100); do pgrep -f "fusefs .*{mnt}$" >/dev/null || break; sleep 0.05; done
    """
    r = in_full_userns(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == [
        "su 0 0 0o4755",
        "secret 1000 1000 0o640",
        "link 5 5 0o777",
        "home 0 0 0o755",
        "s3cret",
    ]
