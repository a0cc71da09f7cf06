"""What `rootless info` says about a host, from made-up readings: sysctls, setuid bits, files, filesystems."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from rootless.runtime import host
from rootless.runtime.host import Check, UsernsTrial


def sysctls(**values: str) -> object:
    table = {k.replace("__", "."): v for k, v in values.items()}
    return lambda name: table.get(name)


# -- user namespaces --------------------------------------------------------------------------------

def test_a_working_trial_is_yes() -> None:
    assert host.explain_userns(UsernsTrial(None), sysctls(), "0") == Check(True, "yes")


@pytest.mark.parametrize(("trial", "readings", "seccomp", "names", "hint"), [
    (UsernsTrial("unshare", errno.ENOSPC), {"user__max_user_namespaces": "0"}, "0",
     "user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces="),
    (UsernsTrial("unshare", errno.EPERM), {"kernel__unprivileged_userns_clone": "0",
                                           "user__max_user_namespaces": "63000"}, "0",
     "kernel.unprivileged_userns_clone is 0", "sysctl -w kernel.unprivileged_userns_clone=1"),
    (UsernsTrial("unshare", errno.EPERM), {"user__max_user_namespaces": "63000"}, "2",
     "seccomp filter", "allow unshare/clone with CLONE_NEWUSER"),
    (UsernsTrial("uid_map", errno.EPERM), {"kernel__apparmor_restrict_unprivileged_userns": "1"}, "0",
     "AppArmor restricts unprivileged user namespaces", "apparmor_restrict_unprivileged_userns=0"),
    (UsernsTrial("mount namespace", errno.EPERM), {"kernel__apparmor_restrict_unprivileged_userns": "1"}, "0",
     "making a mount namespace in it fails", "'userns,' rule"),
    (UsernsTrial("uid_map", errno.EPERM), {}, "2", "a seccomp filter is active", "outside that sandbox"),
])
def test_each_refusal_is_named_with_what_to_do(trial: UsernsTrial, readings: dict[str, str], seccomp: str,
                                               names: str, hint: str) -> None:
    check = host.explain_userns(trial, sysctls(**readings), seccomp)
    assert not check.ok
    assert check.detail.startswith("no: ")
    assert names in check.detail
    assert hint in check.hint


def test_an_unexplained_refusal_still_says_the_errno() -> None:
    check = host.explain_userns(UsernsTrial("unshare", errno.EINVAL), sysctls(), "0")
    assert not check.ok and "Invalid argument" in check.detail and "CONFIG_USER_NS" in check.hint


def test_the_real_trial_answers_without_raising() -> None:
    trial = host.try_userns()
    assert trial.ok or trial.step in ("fork", "unshare", "uid_map", "mount namespace")


def test_the_runtime_can_be_forced() -> None:
    assert host.runtime_mode({"ROOTLESS_RUNTIME": "proot"}) == "proot"
    assert host.runtime_mode({"ROOTLESS_RUNTIME": "userns"}) == "userns"
    assert host.runtime_mode({"ROOTLESS_RUNTIME": "auto"}) in ("userns", "proot")


# -- subordinate ids and setuid helpers -------------------------------------------------------------

def test_subordinate_ranges_by_name_or_uid(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:100000:65536\n1234:300000:1000\nbob:0:0\n")
    assert host.subids(str(subuid), "alice", 1234) == Check(True, "300000-300999 (1000)")
    missing = host.subids(str(subuid), "bob", 99)
    assert not missing.ok and "no range for bob" in missing.detail and "usermod --add-subuids" in missing.hint
    absent = host.subids(str(tmp_path / "subgid"), "bob", 99)
    assert not absent.ok and "no such file" in absent.detail and "--add-subgids" in absent.hint


def fake_stat(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 100, 0, 0, 0))


@pytest.mark.parametrize(("mode", "uid", "caps", "nnp", "ok", "says"), [
    (stat.S_IFREG | stat.S_ISUID | 0o755, 0, False, "0", True, "setuid root"),
    (stat.S_IFREG | 0o755, 0, True, "0", True, "file capabilities"),
    (stat.S_IFREG | 0o755, 0, False, "0", False, "neither setuid root nor file capabilities"),
    (stat.S_IFREG | stat.S_ISUID | 0o755, 1000, False, "0", False, "owned by uid 1000"),
    (stat.S_IFREG | stat.S_ISUID | 0o755, 0, False, "1", False, "no_new_privs"),
])
def test_setuid_helpers(mode: int, uid: int, caps: bool, nnp: str, ok: bool, says: str) -> None:
    check = host.setid_helper("newuidmap", which=lambda n: f"/usr/bin/{n}", stat_path=lambda p: fake_stat(mode, uid),
                              file_caps=lambda p: caps, no_new_privs=nnp)
    assert check.ok is ok
    assert says in check.detail
    assert "/usr/bin/newuidmap" in check.detail
    assert ok or check.hint


def test_a_setuid_helper_seen_from_a_nested_user_namespace() -> None:
    check = host.setid_helper("newuidmap", which=lambda n: f"/usr/bin/{n}",
                              stat_path=lambda p: fake_stat(stat.S_IFREG | stat.S_ISUID | 0o755, host.overflow_uid()),
                              file_caps=lambda p: False)
    assert not check.ok and "not mapped in this user namespace" in check.detail
    assert "host's user namespace" in check.hint


def test_a_missing_helper_names_its_package() -> None:
    check = host.setid_helper("newgidmap", which=lambda n: None)
    assert check == Check(False, "not found", "as root: apt-get install uidmap")
    fuse = host.fusermount(which=lambda n: None, euid=1000)
    assert not fuse.ok and "fuse3" in fuse.hint


def test_root_needs_no_setuid_fusermount() -> None:
    check = host.fusermount(euid=0, which=lambda n: f"/usr/bin/{n}",
                            stat_path=lambda p: fake_stat(stat.S_IFREG | 0o755))
    assert check.ok and "libfuse mounts directly" in check.detail


# -- FUSE files -----------------------------------------------------------------------------------------

def test_dev_fuse_must_be_a_usable_character_device(tmp_path: Path) -> None:
    assert "does not exist" in host.dev_fuse(str(tmp_path / "fuse")).detail
    plain = tmp_path / "plain"
    plain.write_text("")
    check = host.dev_fuse(str(plain))
    assert not check.ok and "not a character device" in check.detail


def test_user_allow_other(tmp_path: Path) -> None:
    conf = tmp_path / "fuse.conf"
    conf.write_text("# user_allow_other\nmount_max = 1000\n")
    check = host.fuse_conf(str(conf))
    assert not check.ok and "add user_allow_other" in check.hint
    conf.write_text("#user_allow_other\nuser_allow_other\n")
    assert host.fuse_conf(str(conf)).ok
    assert not host.fuse_conf(str(tmp_path / "none")).ok


# -- the store's filesystem --------------------------------------------------------------------------

@pytest.mark.parametrize(("magic", "fstype", "ok", "shown"), [
    (0xEF53, "ext4", True, "ext4"),
    (0x58465342, None, True, "xfs"),
    (0x6969, "nfs4", False, "nfs4 (a network or cluster filesystem"),
    (0x0BD00BD0, "lustre", False, "network or cluster"),
    (0x47504653, "gpfs", False, "network or cluster"),
    (0x794C7630, "overlay", False, "stacked filesystem"),
    (0x65735546, "fuse.sshfs", False, "fuse.sshfs (a stacked"),
    (None, "nfs4", False, "network or cluster"),
    (None, "cifs", False, "network or cluster"),
    (0x12345678, None, True, "unknown"),
])
def test_filesystems_that_trouble_a_store_are_warned_about(magic: int | None, fstype: str | None, ok: bool,
                                                           shown: str) -> None:
    check = host.classify_fs(magic, fstype)
    assert check.ok is ok
    assert shown in check.detail
    assert ok or "--root" in check.hint


def test_statfs_and_mountinfo_read_the_real_filesystem(tmp_path: Path) -> None:
    assert host.statfs_type(str(tmp_path)) != 0
    assert host.mount_fstype(str(tmp_path))
    with pytest.raises(OSError):
        host.statfs_type(str(tmp_path / "missing"))
    assert host.existing_ancestor(str(tmp_path / "a" / "b")) == str(tmp_path)


def test_xattr_and_lock_probe_leave_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "not" / "yet"
    xattrs, locks = host.store_xattrs_and_locks(str(store))
    assert list(tmp_path.iterdir()) == []
    try:
        os.setxattr(tmp_path, "user.test", b"1")
        supported = True
    except OSError:
        supported = False
    assert xattrs.ok is supported
    assert locks.ok


def test_xattr_probe_in_an_unwritable_place(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        xattrs, locks = host.store_xattrs_and_locks(str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
    assert not xattrs.ok and "cannot create a file" in xattrs.detail


# -- the mode ---------------------------------------------------------------------------------------

def checks(**bad: str) -> dict[str, Check]:
    keys = ("userns", "subuid", "subgid", "newuidmap", "newgidmap", "dev_fuse", "fusermount3", "proot")
    return {k: Check(False, bad[k]) if k in bad else Check(True, "yes") for k in keys}


@pytest.mark.parametrize(("bad", "forced", "mode", "reason"), [
    ({}, "", "userns", ""),
    ({"subuid": "none"}, "", "userns (single uid)", "no an /etc/subuid range"),
    ({"newgidmap": "not found", "subgid": "none"}, "", "userns (single uid)", "a usable newgidmap"),
    ({"userns": "no: max is 0"}, "", "proot", "user namespaces are unavailable: max is 0"),
    ({}, "proot", "proot", "forced by ROOTLESS_RUNTIME"),
    ({"userns": "no: x", "proot": "not found"}, "", "unusable", "proot (not found)"),
    ({"userns": "no: x", "fusermount3": "not found"}, "", "unusable", "fusermount3 (not found)"),
    ({"dev_fuse": "/dev/fuse does not exist"}, "", "unusable", "/dev/fuse is not usable"),
    ({"userns": "no: x"}, "userns", "unusable", "ROOTLESS_RUNTIME=userns"),
])
def test_the_mode_follows_from_the_checks(bad: dict[str, str], forced: str, mode: str, reason: str) -> None:
    chosen = host.choose_mode(checks(**bad), forced)
    assert chosen.name == mode
    assert reason in chosen.reason


def test_network_tools_are_network_pys_verdicts(tmp_path: Path) -> None:
    from rootless.runtime.network import Backend

    found = host.network_tools([Backend("pasta", None, False, "not found", "as root: apt-get install passt"),
                                Backend("slirp4netns", "/bin/true", True, "/bin/true")], tun=str(tmp_path / "tun"))
    assert found["pasta"] == Check(False, "not found", "as root: apt-get install passt")
    assert found["slirp4netns"].ok and found["slirp4netns"].detail.startswith("/bin/true")
    assert not found["tun"].ok and "modprobe tun" in found["tun"].hint
