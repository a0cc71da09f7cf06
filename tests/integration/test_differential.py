"""fusefs against kernel overlayfs: the same layers and the same operations must give the same outcomes and trees.

Each example runs differential_driver.py as root of a fresh user+mount namespace, where
the unprivileged user may mount both a kernel overlay (``userxattr``) and fusefs.  The
driver builds two identical copies of the lower layers (kernel-form whiteouts: 0:0 char
devices and ``user.overlay.opaque=y``, which fusefs reads too), applies one operation
sequence to both unions in lockstep and snapshots both merged trees.  This module
generates the scenarios and judges the results.

Differences we accept, because kernel overlayfs behaves so only for lack of a feature
(redirect_dir and index are off with ``userxattr``) and fusefs deliberately does better:

* renaming a lower or merged directory: the kernel answers EXDEV (``mv`` then copies),
  fusefs moves it.  Such an operation is skipped on both sides.
* hard links of a lower file: the kernel breaks them on copy-up (the other names keep the
  old data, mode and xattrs), fusefs copies every name up as one inode.  Once the kernel
  has copied up a name of the lower hard-link pair, those names are compared by type only;
  a rename from one name of the pair to another (the kernel moves a file, fusefs keeps
  both names of one inode, as POSIX says) is skipped on both sides.
* st_nlink of a merged directory: the kernel reports 1 ("unknown", as find(1) understands
  it), fusefs counts 2 + its visible subdirectories.  Where the kernel says 1, fusefs is
  held to that count instead.
* a whiteout in a lower directory that exists in that layer only: the kernel does not
  merge such a directory, so readdir lists the 0:0 device while lstat says ENOENT;
  fusefs hides it.
* fstat on a descriptor of a removed directory that had a lower part: the kernel shows the
  lower directory's st_nlink (1 for a merged one), fusefs 0, as for any removed directory.

Besides the operations a shell would do, a scenario keeps one descriptor open (``hold``)
and uses it after its name has been changed or removed (``*_held``).  Times are compared
only right after an explicit utime; sizes of directories are not compared.  Neither union
may change a lower layer, whatever is done through it.

The random test needs a few examples to meet a discrepancy; each one found is also kept in
KNOWN_DISCREPANCIES as its smallest scenario, a regression test that does not depend on luck.
FUSEFS_DIFF_EXAMPLES sets the number of examples (default 50, about 30 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

pytestmark = [pytest.mark.fuse, pytest.mark.userns]

DRIVER = Path(__file__).with_name("differential_driver.py")
EXAMPLES = int(os.environ.get("FUSEFS_DIFF_EXAMPLES", "50"))
# Hypothesis keeps lists short unless told otherwise; a few operations more per example
# cost little next to the namespace and two mounts each example needs.
MIN_OPS, MAX_OPS = 4, 25
SCENARIO_TIMEOUT = 120

# Names the lower layers may hold, parents before children; operations use them and a few
# fresh names, so that most operations meet something.
LOWER_POOL = ["a", "b", "c", "d", "e", "d/a", "d/b", "d/c", "d/f", "d/f/a", "e/a", "e/b"]
PARENTS = {rel.rpartition("/")[0] for rel in LOWER_POOL} - {""}
# A hard-link pair in the bottom layer; the top layer may hide h2.
PAIR = ("h1", "h2")
OP_POOL = LOWER_POOL + list(PAIR) + ["n", "n/a", "d/n", "d/f/n", "e/n"]
# Relative targets only, none with "..": a symlink must never lead out of the union.
SYMLINK_TARGETS = ["a", "d", "d/a", "h1", "missing", "e/b"]
FILE_MODES = [0o644, 0o600, 0o755, 0o444, 0o000]
DIR_MODES = [0o755, 0o700, 0o555]
CHMOD_MODES = [0o644, 0o600, 0o755, 0o700, 0o000, 0o4755, 0o2750, 0o1777]

data = st.text(alphabet="abcxyz\n", max_size=12)
some_data = st.text(alphabet="abcxyz\n", min_size=1, max_size=12)
xattr_value = st.none() | st.text(alphabet="uvw", min_size=1, max_size=6)


# -- scenarios ----------------------------------------------------------------------------------

@st.composite
def layer_tree(draw: st.DrawFn, top: bool) -> dict[str, dict[str, Any]]:
    """One lower layer over LOWER_POOL; the top one may also white out and be opaque."""
    tree: dict[str, dict[str, Any]] = {}
    for rel in LOWER_POOL:
        parent = rel.rpartition("/")[0]
        if parent and tree.get(parent, {}).get("kind") != "dir":
            continue
        # Mostly directories where the pool has children, so that few operations end in ENOTDIR.
        kinds = ["dir"] * 4 + ["absent", "file", "symlink"] if rel in PARENTS else \
            ["absent", "absent", "file", "file", "dir", "symlink"]
        if top:
            kinds += ["whiteout", "opaque"]
        kind = draw(st.sampled_from(kinds))
        if kind == "file":
            tree[rel] = {"kind": "file", "data": draw(data), "mode": draw(st.sampled_from(FILE_MODES)),
                         "xattr": draw(xattr_value)}
        elif kind in ("dir", "opaque"):
            tree[rel] = {"kind": "dir", "mode": draw(st.sampled_from(DIR_MODES)), "opaque": kind == "opaque",
                         "xattr": draw(xattr_value)}
        elif kind == "symlink":
            tree[rel] = {"kind": "symlink", "target": draw(st.sampled_from(SYMLINK_TARGETS))}
        elif kind == "whiteout":
            tree[rel] = {"kind": "whiteout"}
    if top:
        h2 = draw(st.sampled_from(["absent", "absent", "absent", "whiteout", "file"]))
        if h2 == "whiteout":
            tree[PAIR[1]] = {"kind": "whiteout"}
        elif h2 == "file":
            tree[PAIR[1]] = {"kind": "file", "data": "top h2", "mode": 0o644, "xattr": None}
    else:
        tree[PAIR[0]] = {"kind": "file", "data": draw(data), "mode": draw(st.sampled_from(FILE_MODES)),
                         "xattr": draw(xattr_value)}
        tree[PAIR[1]] = {"kind": "link", "to": PAIR[0]}
    return tree


ns_time = st.builds(lambda s, ns: s * 1_000_000_000 + ns, st.integers(0, 2_000_000_000), st.integers(0, 999_999_999))

OP_KINDS = ("write", "overwrite", "append", "truncate", "read", "stat", "readdir", "create", "mkdir", "rmdir",
            "unlink", "rename", "symlink", "link", "chmod", "utime", "setxattr",
            "hold", "read_held", "fstat_held", "fchmod_held", "futime_held", "fsetxattr_held")


def operations(path: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    """One operation on names drawn from PATH."""
    return st.one_of(
        st.fixed_dictionaries({"op": st.just("write"), "path": path, "data": some_data,
                               "offset": st.integers(0, 16)}),
        st.fixed_dictionaries({"op": st.just("overwrite"), "path": path, "data": data}),
        st.fixed_dictionaries({"op": st.just("read"), "path": path}),
        st.fixed_dictionaries({"op": st.just("stat"), "path": path}),
        st.fixed_dictionaries({"op": st.just("readdir"), "path": path | st.just("")}),
        st.fixed_dictionaries({"op": st.just("hold"), "path": path}),
        st.fixed_dictionaries({"op": st.just("fstat_held")}),
        st.fixed_dictionaries({"op": st.just("read_held")}),
        st.fixed_dictionaries({"op": st.just("fchmod_held"), "mode": st.sampled_from(CHMOD_MODES)}),
        st.fixed_dictionaries({"op": st.just("futime_held"), "atime_ns": ns_time, "mtime_ns": ns_time}),
        st.fixed_dictionaries({"op": st.just("fsetxattr_held"), "value": st.text(alphabet="pqr", min_size=1, max_size=6)}),
        st.fixed_dictionaries({"op": st.just("append"), "path": path, "data": some_data}),
        st.fixed_dictionaries({"op": st.just("truncate"), "path": path, "size": st.integers(0, 20)}),
        st.fixed_dictionaries({"op": st.just("create"), "path": path, "data": data,
                               "mode": st.sampled_from(FILE_MODES)}),
        st.fixed_dictionaries({"op": st.just("mkdir"), "path": path, "mode": st.sampled_from(DIR_MODES)}),
        st.fixed_dictionaries({"op": st.just("rmdir"), "path": path}),
        st.fixed_dictionaries({"op": st.just("unlink"), "path": path}),
        st.fixed_dictionaries({"op": st.just("rename"), "path": path, "dst": path}),
        st.fixed_dictionaries({"op": st.just("symlink"), "path": path, "target": st.sampled_from(SYMLINK_TARGETS)}),
        st.fixed_dictionaries({"op": st.just("link"), "path": path, "dst": path}),
        st.fixed_dictionaries({"op": st.just("chmod"), "path": path, "mode": st.sampled_from(CHMOD_MODES)}),
        st.fixed_dictionaries({"op": st.just("utime"), "path": path, "atime_ns": ns_time, "mtime_ns": ns_time,
                               "follow": st.booleans()}),
        st.fixed_dictionaries({"op": st.just("setxattr"), "path": path,
                               "value": st.text(alphabet="pqr", min_size=1, max_size=6)}),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    top, bottom = draw(layer_tree(top=True)), draw(layer_tree(top=False))
    # The names through which the union shows the lower pair: the top layer may hide h2.
    pair = [rel for rel in PAIR if rel not in top]
    # A few names per example, so that operations keep meeting what earlier ones made,
    # moved, held open or removed.
    names = draw(st.lists(st.sampled_from(OP_POOL), min_size=1, max_size=6, unique=True))
    # Open one of them first: what a descriptor sees while its name is changed or removed
    # is where unions differ most, and a random hold comes too late too seldom.
    ops = [{"op": "hold", "path": draw(st.sampled_from(names))}]
    ops += draw(st.lists(operations(st.sampled_from(names)), min_size=MIN_OPS, max_size=MAX_OPS))
    return {"layers": [top, bottom], "ops": ops, "pair": pair}


# -- running one scenario -----------------------------------------------------------------------

def run_scenario(tmp: Path, scenario: dict[str, Any]) -> dict[str, Any]:
    """Run SCENARIO in a fresh namespace; the scenario file stays in TMP for a replay by hand."""
    scenario_file, result_file = tmp / "scenario.json", tmp / "result.json"
    scenario_file.write_text(json.dumps(scenario, indent=1))
    result_file.unlink(missing_ok=True)
    cmd = ["unshare", "--user", "--map-root-user", "--mount",
           sys.executable, str(DRIVER), str(scenario_file), str(result_file)]
    # Its own session: on a timeout the driver and its fusefs daemon die together, and
    # with them the namespace and both mounts.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=SCENARIO_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"scenario did not finish within {SCENARIO_TIMEOUT} s; replay: {replay_hint(scenario_file)}\n"
                    f"{out.decode(errors='replace')}")
    assert proc.returncode == 0, (f"driver failed (exit {proc.returncode}); replay: {replay_hint(scenario_file)}\n"
                                  f"{out.decode(errors='replace')}")
    return json.loads(result_file.read_text())


def replay_hint(scenario_file: Path) -> str:
    return (f"unshare --user --map-root-user --mount {sys.executable} {DRIVER} {scenario_file} "
            f"{scenario_file.with_name('replay.json')}")


# -- judging ------------------------------------------------------------------------------------

# The accepted differences of the module docstring, as they are reported.
EXDEV_RENAME = "kernel EXDEV on renaming a lower or merged directory: skipped on both"
PAIR_RENAME = "rename between two names of the lower hard-link pair: skipped on both"
PAIR_BROKEN = "lower hard link broken by the kernel's copy-up: names compared by type only"
MERGED_NLINK = "kernel reports st_nlink 1 for a merged directory"
UNMERGED_WHITEOUT = "kernel lists a whiteout in an unmerged lower directory (lstat: ENOENT)"
REMOVED_DIR_NLINK = "kernel fstat of a removed lower or merged directory: st_nlink not 0"
SKIPS = {"kernel EXDEV on rename": EXDEV_RENAME, "rename between two names of the lower hard-link pair": PAIR_RENAME}


def compare(scenario: dict[str, Any], result: dict[str, Any]) -> tuple[list[str], dict[str, list[str]]]:
    """Discrepancies between the kernel's union and fusefs', and where each accepted difference showed."""
    bad: list[str] = []
    accepted: dict[str, list[str]] = {}
    for side in ("kernel", "fusefs"):
        bad += [f"{side} wrote to a lower layer: {c}" for c in result["lowers_changed"][side]]
    for i, (op, step) in enumerate(zip(scenario["ops"], result["steps"])):
        if step.get("skipped"):
            accepted.setdefault(SKIPS[step["skipped"]], []).append(f"op {i} {op}")
        elif step["observes_broken_pair"]:
            if step["kernel"] != step["fusefs"]:
                accepted.setdefault(PAIR_BROKEN, []).append(f"op {i} {op}")
        elif is_removed_dir_nlink(op, step):
            accepted.setdefault(REMOVED_DIR_NLINK, []).append(f"op {i} {op}")
        elif step["kernel"] != step["fusefs"]:
            bad.append(f"op {i} {op}: kernel {step['kernel']}, fusefs {step['fusefs']}")
            return bad, accepted  # the driver stopped here; the trees are bound to differ
    for side in ("kernel", "fusefs"):
        bad += [f"{side}: {a}" for a in result[side]["anomalies"]]

    kern, fuse = result["kernel"]["entries"], result["fusefs"]["entries"]
    for rel in sorted(kern.keys() - fuse.keys()):
        if kern[rel] == {"type": "error", "error": "ENOENT"}:
            accepted.setdefault(UNMERGED_WHITEOUT, []).append(f"/{rel}")
        else:
            bad.append(f"/{rel}: only the kernel has it: {kern[rel]}")
    for rel in sorted(fuse.keys() - kern.keys()):
        bad.append(f"/{rel}: only fusefs has it: {fuse[rel]}")

    pair = set(result["pair"]) if result["pair_broken"] else set()
    for rel in sorted(kern.keys() & fuse.keys()):
        k, f = kern[rel], fuse[rel]
        where = f"/{rel}"
        if k["type"] != f["type"]:
            bad.append(f"{where}: type: kernel {k['type']}, fusefs {f['type']}")
            continue
        if rel in pair:
            accepted.setdefault(PAIR_BROKEN, []).append(where)
            continue
        for key in ("mode", "uid", "gid", "content", "size", "target", "xattrs"):
            if k.get(key) != f.get(key):
                shown = (oct(k[key]), oct(f[key])) if key == "mode" else (k.get(key), f.get(key))
                bad.append(f"{where}: {key}: kernel {shown[0]!r}, fusefs {shown[1]!r}")
        if k["type"] == "dir" and k["nlink"] == 1:
            accepted.setdefault(MERGED_NLINK, []).append(where)
            if f["nlink"] != 2 + f["subdirs"]:
                bad.append(f"{where}: nlink: fusefs {f['nlink']}, but it shows {f['subdirs']} subdirectories")
        elif k["nlink"] != f["nlink"]:
            bad.append(f"{where}: nlink: kernel {k['nlink']}, fusefs {f['nlink']}")
    bad += check_pair_in_fusefs(fuse, pair)
    return bad, accepted


def is_removed_dir_nlink(op: dict[str, Any], step: dict[str, Any]) -> bool:
    """fstat of a held directory that fusefs says is removed (st_nlink 0), the kernel not.

    The kernel's answer comes from the lower directory, which no rmdir through the union
    removes (for a merged one, its usual 1); fusefs answers as for any removed directory."""
    return (op["op"] == "fstat_held" and step["fusefs"] == step["kernel"][:3] + [0]
            and step["kernel"][:2] == ["ok", "dir"] and step["kernel"][3] is None)


def check_pair_in_fusefs(fuse: dict[str, Any], pair: set[str]) -> list[str]:
    """Where the kernel broke the pair, fusefs must show its names as one inode with that many links."""
    names = sorted(rel for rel in pair if rel in fuse)
    bad = []
    for rel in names:
        e, first = fuse[rel], fuse[names[0]]
        if e["nlink"] != len(names):
            bad.append(f"/{rel}: fusefs nlink {e['nlink']}, but the hard-linked names are {names}")
        for key in ("mode", "uid", "gid", "content", "size", "xattrs"):
            if e.get(key) != first.get(key):
                bad.append(f"/{rel}: {key} {e.get(key)!r} in fusefs, but {first.get(key)!r} at its hard link /{names[0]}")
    return bad


def check(tmp: Path, scenario: dict[str, Any]) -> dict[str, list[str]]:
    """Run and judge SCENARIO; fail with everything needed to reproduce it by hand."""
    result = run_scenario(tmp, scenario)
    bad, accepted = compare(scenario, result)
    if currently_in_test_context():
        for what in accepted:
            event(f"accepted: {what}")
        for op, step in zip(scenario["ops"], result["steps"]):
            outcome = step["kernel"] or ["skipped"]
            event(f"op {op['op']}: {outcome[0] if outcome[0] != 'err' else outcome[1]}")
        if bad:
            note(f"scenario: {json.dumps(scenario)}")
    if bad:
        pytest.fail("fusefs differs from kernel overlayfs:\n  " + "\n  ".join(bad)
                    + f"\nreplay: {replay_hint(tmp / 'scenario.json')}\nfusefs log: {result['fusefs_log'][-2000:]}",
                    pytrace=False)
    return accepted


@pytest.mark.slow
# No explain phase: it reruns the failing example hundreds of times (minutes here) to
# say which parts matter, which the shrunk example and the driver's replay already show.
@settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(scenario=scenarios())
def test_random_operations_match_kernel_overlayfs(tmp_path: Path, scenario: dict[str, Any]) -> None:
    check(tmp_path, scenario)


# -- a fixed replay: every operation kind once --------------------------------------------------

FIXED_SCENARIO: dict[str, Any] = {
    "layers": [
        {   # top lower layer: shadows, whiteouts, an opaque directory
            "a": {"kind": "file", "data": "top a", "mode": 0o644, "xattr": "ta"},
            "b": {"kind": "whiteout"},
            "d": {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None},
            "d/a": {"kind": "file", "data": "top d/a", "mode": 0o600, "xattr": None},
            "e": {"kind": "dir", "mode": 0o700, "opaque": True, "xattr": "te"},
            "e/a": {"kind": "symlink", "target": "b"},
            "g": {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None},
            "g/x": {"kind": "whiteout"},                                     # hides nothing: g is unmerged
        },
        {   # bottom lower layer
            "a": {"kind": "file", "data": "bottom a", "mode": 0o644, "xattr": None},
            "b": {"kind": "file", "data": "hidden", "mode": 0o644, "xattr": None},
            "c": {"kind": "symlink", "target": "a"},
            "d": {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None},
            "d/b": {"kind": "file", "data": "bottom d/b", "mode": 0o644, "xattr": "db"},
            "d/f": {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None},
            "d/f/a": {"kind": "file", "data": "deep", "mode": 0o644, "xattr": None},
            "e": {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None},
            "e/b": {"kind": "file", "data": "under opaque", "mode": 0o644, "xattr": None},
            "h1": {"kind": "file", "data": "pair", "mode": 0o644, "xattr": None},
            "h2": {"kind": "link", "to": "h1"},
        },
    ],
    "ops": [
        {"op": "read", "path": "a"},
        {"op": "write", "path": "a", "data": "TOP", "offset": 2},          # copy-up, then write inside
        {"op": "hold", "path": "d/b"},                                       # a lower file, open read-only
        {"op": "append", "path": "d/b", "data": "+more"},                    # copy-up under the open descriptor
        {"op": "read_held"},
        {"op": "fchmod_held", "mode": 0o640},
        {"op": "futime_held", "atime_ns": 3_000_000_003, "mtime_ns": 4_000_000_004},
        {"op": "fsetxattr_held", "value": "held"},
        {"op": "fstat_held"},
        {"op": "truncate", "path": "d/f/a", "size": 2},                      # copy-up of a whole parent chain
        {"op": "overwrite", "path": "h2", "data": "h2 new"},                 # breaks the pair on the kernel
        {"op": "stat", "path": "h1"},
        {"op": "create", "path": "b", "data": "new b", "mode": 0o600},       # create over a lower whiteout
        {"op": "mkdir", "path": "n", "mode": 0o755},
        {"op": "rmdir", "path": "d/f"},                                      # not empty: ENOTEMPTY
        {"op": "unlink", "path": "d/f/a"},
        {"op": "rmdir", "path": "d/f"},                                      # now empty: whiteout
        {"op": "readdir", "path": "d"},
        {"op": "rename", "path": "c", "dst": "n/c"},                         # a lower symlink moves
        {"op": "rename", "path": "d", "dst": "n/d"},                         # merged dir: kernel EXDEV, skipped
        {"op": "rename", "path": "n", "dst": "m"},                           # upper-only dir moves on both
        {"op": "symlink", "path": "d/n", "target": "a"},
        {"op": "link", "path": "h1", "dst": "e/n"},
        {"op": "rename", "path": "h1", "dst": "h2"},                         # within the pair: skipped
        {"op": "chmod", "path": "d/a", "mode": 0o4755},
        {"op": "utime", "path": "a", "atime_ns": 1_000_000_001, "mtime_ns": 2_000_000_002, "follow": True},
        {"op": "setxattr", "path": "e", "value": "set"},
        {"op": "unlink", "path": "a"},                                       # upper copy + lower: whiteout
        {"op": "create", "path": "a", "data": "again", "mode": 0o644},       # and back again
        {"op": "readdir", "path": ""},
    ],
    "pair": list(PAIR),
}


def test_fixed_operations_match_kernel_overlayfs(tmp_path: Path) -> None:
    assert {op["op"] for op in FIXED_SCENARIO["ops"]} == set(OP_KINDS), "the anchor must use every kind"
    accepted = check(tmp_path, FIXED_SCENARIO)
    # It must keep exercising the accepted differences too, or they would go unwatched.
    assert accepted.keys() == {EXDEV_RENAME, PAIR_RENAME, PAIR_BROKEN, MERGED_NLINK, UNMERGED_WHITEOUT}, accepted


# -- discrepancies found so far, each as its smallest scenario ----------------------------------

def _file(data: str) -> dict[str, Any]:
    return {"kind": "file", "data": data, "mode": 0o644, "xattr": None}


def _dir() -> dict[str, Any]:
    return {"kind": "dir", "mode": 0o755, "opaque": False, "xattr": None}


_REMOVED_DIR_HELD = [{"op": "mkdir", "path": "n", "mode": 0o755}, {"op": "hold", "path": "n"},
                     {"op": "rmdir", "path": "n"}]
_UNLINKED_LOWER_HELD = [{"op": "hold", "path": "a"}, {"op": "unlink", "path": "a"}]
_REMOVED_LOWER_DIR_HELD = [{"op": "hold", "path": "d"}, {"op": "rmdir", "path": "d"}]
KNOWN_LAYERS = [{"e": _dir()}, {"a": _file("lower a"), "d": _dir(), "e": _dir()}]
KNOWN_DISCREPANCIES = {
    # Fixed in 3c30c9a.  fstat(2) on a descriptor of a removed directory: st_nlink 0 (fusefs
    # said ENOENT); getdents(2): an empty list (ENOENT); fchmod(2): success (EIO, after a
    # StopIteration in Overlay.setattr).
    "removed-dir-fstat": _REMOVED_DIR_HELD + [{"op": "fstat_held"}],
    "removed-dir-readdir": _REMOVED_DIR_HELD + [{"op": "read_held"}],
    "removed-dir-fchmod": _REMOVED_DIR_HELD + [{"op": "fchmod_held", "mode": 0o700}],
    # Fixed in 3c30c9a.  fsetxattr(2) on a descriptor of an unlinked file: success (ENOENT).
    "unlinked-file-fsetxattr": [{"op": "create", "path": "n", "data": "n", "mode": 0o644},
                                {"op": "hold", "path": "n"}, {"op": "unlink", "path": "n"},
                                {"op": "fsetxattr_held", "value": "v"}],
    # Fixed in 3c30c9a.  fchmod(2) / futimens(2) on a read-only descriptor of an unlinked
    # lower file: the kernel refuses with EEXIST; fusefs changed the lower layer's file.
    "unlinked-lower-fchmod": _UNLINKED_LOWER_HELD + [{"op": "fchmod_held", "mode": 0o600}],
    "unlinked-lower-futime": _UNLINKED_LOWER_HELD + [{"op": "futime_held", "atime_ns": 5, "mtime_ns": 6}],
    # Fixed in 7ee71a3.  fsetxattr(2) there: the kernel EEXIST (fusefs said ENOENT).
    "unlinked-lower-fsetxattr": _UNLINKED_LOWER_HELD + [{"op": "fsetxattr_held", "value": "v"}],
    # Fixed in 7ee71a3.  fsetxattr(2) on a descriptor of a removed directory, upper-only or
    # copied up: success (fusefs said ENOENT).
    "removed-dir-fsetxattr": _REMOVED_DIR_HELD + [{"op": "fsetxattr_held", "value": "v"}],
    "removed-copied-up-dir-fsetxattr": [{"op": "hold", "path": "d"}, {"op": "chmod", "path": "d", "mode": 0o700},
                                        {"op": "rmdir", "path": "d"}, {"op": "fsetxattr_held", "value": "v"}],
    # Fixed in 7ee71a3.  fchmod(2) / futimens(2) / fsetxattr(2) on a descriptor of a removed
    # lower or merged directory: the kernel refuses with ENOTDIR, as it does (EEXIST) for an
    # unlinked lower file (fusefs succeeded, without touching the lower layer; fsetxattr: ENOENT).
    "removed-lower-dir-fchmod": _REMOVED_LOWER_DIR_HELD + [{"op": "fchmod_held", "mode": 0o700}],
    "removed-lower-dir-futime": _REMOVED_LOWER_DIR_HELD + [{"op": "futime_held", "atime_ns": 5, "mtime_ns": 6}],
    "removed-lower-dir-fsetxattr": _REMOVED_LOWER_DIR_HELD + [{"op": "fsetxattr_held", "value": "v"}],
    "removed-merged-dir-fchmod": [{"op": "hold", "path": "e"}, {"op": "rmdir", "path": "e"},
                                  {"op": "fchmod_held", "mode": 0o700}],
}


@pytest.mark.parametrize("name", sorted(KNOWN_DISCREPANCIES))
def test_known_discrepancy(tmp_path: Path, name: str) -> None:
    check(tmp_path, {"layers": KNOWN_LAYERS, "ops": KNOWN_DISCREPANCIES[name], "pair": []})
