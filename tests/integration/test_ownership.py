"""Ownership without root: chown/chmod through the mount are recorded, shown and kept."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from mounts import in_full_userns

pytestmark = [pytest.mark.fuse, pytest.mark.userns]


STAT = f"{sys.executable} -c 'import os,sys; [print(p.rsplit(\"/\",1)[-1], *(lambda s: (s.st_uid, s.st_gid, oct(s.st_mode & 0o7777)))(os.lstat(p))) for p in sys.argv[1:]]'"


def test_chown_chmod_recorded_and_kept_across_remount(tmp_path):
    for d in ("low", "up", "wk", "mnt"):
        (tmp_path / d).mkdir()
    (tmp_path / "low" / "lowfile").write_text("x")
    os.symlink("lowfile", tmp_path / "low" / "lowlink")
    opts = f"lowerdir={tmp_path}/low,upperdir={tmp_path}/up,workdir={tmp_path}/wk"
    m = tmp_path / "mnt"
    script = textwrap.dedent(f"""
        mountit() {{ {sys.executable} -m fusefs -o {opts} {m}; }}
        mountit
        echo data > {m}/file; mkfifo {m}/fifo; ln -s file {m}/link; mkdir {m}/dir
        chown 1000:1001 {m}/file; chmod 4750 {m}/file
        chown 123:456 {m}/fifo
        chown -h 7:8 {m}/link
        chown 33:33 {m}/dir; chmod 1777 {m}/dir
        chown 5:6 {m}/lowfile
        chown -h 9:10 {m}/lowlink
        {STAT} {m}/file {m}/fifo {m}/link {m}/dir {m}/lowfile {m}/lowlink
        umount {m}
        for i in $(seq 100); do pgrep -f "fusefs .*{m}$" >/dev/null || break; sleep 0.05; done
        echo remount
        mountit
        {STAT} {m}/file {m}/fifo {m}/link {m}/dir {m}/lowfile {m}/lowlink
        touch {m}/dir/inherits
        {STAT} {m}/dir/inherits
        umount {m}
    """)
    r = in_full_userns(script)
    assert r.returncode == 0, r.stderr
    before, after = r.stdout.split("remount\n")
    expected = [
        "file 1000 1001 0o4750", "fifo 123 456 0o644", "link 7 8 0o777",
        "dir 33 33 0o1777", "lowfile 5 6 0o644", "lowlink 9 10 0o777",
    ]
    assert before.split("\n")[:6] == expected
    assert after.split("\n")[:6] == expected
    assert after.split("\n")[6] == "inherits 0 0 0o644"
    # On disk everything still belongs to the user, who can read and delete it.
    for name in ("file", "fifo", "link", "dir", "lowfile"):
        assert os.lstat(tmp_path / "up" / name).st_uid == os.getuid()


def test_lower_layer_carries_ownership_metadata(tmp_path):
    """A layer unpacked by an unprivileged user still shows its tar's owners and modes."""
    for d in ("low", "mnt"):
        (tmp_path / d).mkdir()
    low = tmp_path / "low"
    (low / "etc").mkdir()
    (low / "etc" / "shadow").write_text("secret")
    os.setxattr(low / "etc" / "shadow", "user.containers.override_stat", b"0:42:0640")
    os.setxattr(low / "etc", "user.containers.override_stat", b"0:0:0755")
    m = tmp_path / "mnt"
    r = in_full_userns(f"""
        {sys.executable} -m fusefs -o lowerdir={low} {m}
        {STAT} {m}/etc {m}/etc/shadow
        umount {m}
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["etc 0 0 0o755", "shadow 0 42 0o640"]


def test_list_changes_reports_added_changed_deleted_with_owners(tmp_path):
    from fusefs import list_changes

    for d in ("low", "up", "wk", "mnt"):
        (tmp_path / d).mkdir()
    low = tmp_path / "low"
    (low / "keep").write_text("k")
    (low / "gone").write_text("g")
    (low / "d").mkdir()
    (low / "d" / "old").write_text("o")
    m = tmp_path / "mnt"
    r = in_full_userns(f"""
        {sys.executable} -m fusefs -o lowerdir={low},upperdir={tmp_path}/up,workdir={tmp_path}/wk {m}
        echo more >> {m}/keep
        rm {m}/gone
        rm -r {m}/d && mkdir {m}/d && chown 1000:1000 {m}/d
        echo new > {m}/d/new && chown 1000:1000 {m}/d/new && chmod 0600 {m}/d/new
        ln -s keep {m}/sym && chown -h 2:3 {m}/sym
        umount {m}
    """)
    assert r.returncode == 0, r.stderr
    got = {(c.path, c.kind): c for c in list_changes(tmp_path / "up", [low])}
    assert set(got) == {(b"keep", "C"), (b"gone", "D"), (b"d", "C"), (b"d/new", "A"), (b"sym", "A")}
    assert got[(b"d", "C")].opaque and (got[(b"d", "C")].uid, got[(b"d", "C")].gid) == (1000, 1000)
    new = got[(b"d/new", "A")]
    assert (new.uid, new.gid, new.mode & 0o7777) == (1000, 1000, 0o600)
    assert (got[(b"sym", "A")].uid, got[(b"sym", "A")].gid) == (2, 3)
