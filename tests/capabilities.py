"""Host capabilities the tests need (FUSE, user namespaces, a registry) and the skip-or-fail policy."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal


def probe_fuse() -> str | None:
    """Return why FUSE mounts are impossible here, or None if they are possible."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module, or pass --device /dev/fuse to the container)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return f"/dev/fuse is not readable and writable by uid {os.getuid()} (as root: chmod 0666 /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not on PATH (as root: apt-get install fuse3)"
    return None


def probe_userns() -> str | None:
    """Return why unprivileged user namespaces are unavailable, or None if they work."""
    if shutil.which("unshare") is None:
        return "unshare is not on PATH (as root: apt-get install util-linux)"
    try:
        result = subprocess.run(
            ["unshare", "--user", "--map-root-user", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "unshare --user --map-root-user true did not finish within 30 s"
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        return (
            f"unshare --user --map-root-user true failed: {detail} "
            "(check sysctls kernel.unprivileged_userns_clone and user.max_user_namespaces)"
        )
    return None


def probe_registry() -> str | None:
    """Return why a local registry cannot be started, or None if it can."""
    if not os.access("/usr/bin/docker-registry", os.X_OK):
        return "/usr/bin/docker-registry is missing (as root: apt-get install docker-registry)"
    return None


def probe_proot() -> str | None:
    """Return why proot cannot run a traced command here, or None if it can."""
    if shutil.which("proot") is None:
        return "proot is not on PATH (as root: apt-get install proot)"
    try:
        result = subprocess.run(["proot", "-v", "-1", "-r", "/", "true"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=30, cwd="/")
    except subprocess.TimeoutExpired:
        return "proot -r / true did not finish within 30 s"
    if result.returncode != 0:
        return f"proot -r / true failed: {result.stderr.strip() or result.returncode} (is ptrace forbidden?)"
    return None


def probe_net() -> str | None:
    """Return why no private container network (pasta or slirp4netns, and /dev/net/tun) is usable, or None."""
    from rootless.runtime.network import available_backends

    backends = available_backends()
    if any(b.usable for b in backends):
        return None
    return "; ".join(f"{b.name}: {b.detail} ({b.hint})" if b.hint else f"{b.name}: {b.detail}" for b in backends)


# Marker name -> probe. The markers themselves are declared in setup.cfg.
PROBES: Mapping[str, Callable[[], str | None]] = {
    "fuse": probe_fuse,
    "userns": probe_userns,
    "registry": probe_registry,
    "net": probe_net,
    "proot": probe_proot,
}


def is_strict(environ: Mapping[str, str]) -> bool:
    """CI must never skip silently: there a missing capability is a failure, not a skip."""
    return environ.get("CI", "").lower() == "true" or environ.get("ROOTLESS_TEST_STRICT") == "1"


@dataclass(frozen=True)
class Verdict:
    action: Literal["skip", "fail"]
    message: str


def verdict(capability: str, problem: str | None, environ: Mapping[str, str]) -> Verdict | None:
    """Decide what happens to a test that needs `capability`; None means it runs."""
    if problem is None:
        return None
    if is_strict(environ):
        return Verdict(
            "fail",
            f"needs {capability}, which this host lacks: {problem} "
            "[missing capabilities fail instead of skipping because CI=true or ROOTLESS_TEST_STRICT=1]",
        )
    return Verdict("skip", f"needs {capability}: {problem}")

