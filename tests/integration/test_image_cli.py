"""The image verbs as a user types them, against a real docker-registry: output shapes, names, auth, crashes, peers."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry import Registry, running_registry, token_auth_problem
from runcli import Cli
from testimages import Image, make_image, push, random_layer, sha256, write_oci_layout

pytestmark = pytest.mark.registry

BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module")
def app_image(reg: Registry, tmp_path_factory: pytest.TempPathFactory) -> Image:
    image = make_image(
        [{"bin/tool": b"#!/bin/sh\necho hi\n", "etc/os-release": b"ID=test\n"}, {"etc/motd": b"hello\n"}],
        config={"Env": ["PATH=/usr/bin:/bin", "LANG=C"], "Cmd": ["tool", "-v"], "WorkingDir": "/srv",
                "ExposedPorts": {"80/tcp": {}}, "Labels": {"a": "b"}, "User": "nobody"},
        history=[{"created": "2026-11-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:a in / "},
                 {"created": "2026-11-01T00:00:01Z", "created_by": "/bin/sh -c #(nop)  ENV LANG=C",
                  "empty_layer": True},
                 {"created": "2026-11-01T00:00:02Z", "created_by": "/bin/sh -c echo hello > /etc/motd",
                  "comment": "motd"},
                 {"created": "2026-11-01T00:00:03Z", "created_by": '/bin/sh -c #(nop)  CMD ["tool" "-v"]',
                  "empty_layer": True}])
    push(reg.host, "ns/app:v1", image, tmp_path_factory.mktemp("push"))
    return image


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def sid(digest: str) -> str:
    return digest[7:19]


def layer_digests(image: Image) -> list[str]:
    return [d["digest"] for d in json.loads(image.manifest)["layers"]]


# -- pull -----------------------------------------------------------------------------------------

def test_pull_prints_dockers_lines_and_stores_the_image(cli: Cli, reg: Registry, app_image: Image) -> None:
    name = f"{reg.host}/ns/app:v1"
    out = cli("pull", name).stdout.splitlines()
    layers = [sid(d) for d in layer_digests(app_image)]
    assert out[0] == "v1: Pulling from ns/app"
    for layer in layers:
        # Milestones only, in order; no progress lines when stdout is not a terminal.
        assert [line.split(": ", 1)[1] for line in out if line.startswith(layer + ":")] == \
            ["Pulling fs layer", "Verifying Checksum", "Download complete", "Pull complete"]
    assert out[-3:] == [f"Digest: {app_image.digest}", f"Status: Downloaded newer image for {name}", name]

    again = cli("pull", name).stdout.splitlines()
    assert [f"{layer}: Already exists" for layer in layers] == [line for line in again if ": Already" in line]
    assert again[-2] == f"Status: Image is up to date for {name}"

    doc = json.loads(cli("image", "inspect", name).stdout)[0]
    assert doc["Id"] == app_image.config_digest
    assert doc["RootFS"] == {"Type": "layers", "Layers": app_image.diff_ids}
    assert doc["RepoTags"] == [name]
    assert doc["RepoDigests"] == [f"{reg.host}/ns/app@{app_image.digest}"]
    assert (doc["Architecture"], doc["Os"], doc["Created"]) == ("amd64", "linux", "2026-11-01T00:00:00Z")
    config = doc["Config"]
    assert config["Env"] == ["PATH=/usr/bin:/bin", "LANG=C"] and config["Cmd"] == ["tool", "-v"]
    assert (config["WorkingDir"], config["User"], config["Entrypoint"]) == ("/srv", "nobody", None)
    assert config["ExposedPorts"] == {"80/tcp": {}} and config["Labels"] == {"a": "b"}
    assert config["Volumes"] is None and config["OnBuild"] is None
    assert doc["Size"] > 0


def test_pull_without_tag_uses_latest_and_by_digest(cli: Cli, reg: Registry, tmp_path: Path) -> None:
    image = make_image([random_layer(1000)])
    push(reg.host, "plain/img", image, tmp_path / "p")
    out = cli("pull", f"{reg.host}/plain/img").stdout.splitlines()
    assert out[:2] == ["Using default tag: latest", "latest: Pulling from plain/img"]
    assert out[-1] == f"{reg.host}/plain/img:latest"
    pinned = f"{reg.host}/plain/img@{image.digest}"
    out = cli("pull", pinned).stdout.splitlines()
    assert out[-1] == pinned
    assert cli("images", "-q").stdout.split() == [image.config_digest[7:19]]


def test_multi_platform_index_picks_the_host_or_the_asked_platform(cli: Cli, reg: Registry, tmp_path: Path) -> None:
    amd = make_image([{"arch": b"amd64\n"}])
    arm = make_image([{"arch": b"arm64\n"}])
    arm_cfg = json.loads(arm.config)
    arm_cfg["architecture"], arm_cfg["variant"] = "arm64", "v8"
    arm.blobs.pop(arm.config_digest)
    arm.config = json.dumps(arm_cfg).encode()
    arm.blobs[arm.config_digest] = arm.config
    doc = json.loads(arm.manifest)
    doc["config"].update(digest=arm.config_digest, size=len(arm.config))
    arm.manifest = json.dumps(doc).encode()
    push(reg.host, "multi/img:amd", amd, tmp_path / "a")
    push(reg.host, "multi/img:arm", arm, tmp_path / "b")
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": img.digest,
         "size": len(img.manifest), "platform": platform} for img, platform in
        [(arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
         (amd, {"os": "linux", "architecture": "amd64"})]]}).encode()
    request = urllib.request.Request(f"{reg.url}/v2/multi/img/manifests/both", data=index, method="PUT",
                                     headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
    out = cli("pull", f"{reg.host}/multi/img:both").stdout
    assert f"Digest: {sha256(index)}" in out
    assert json.loads(cli("image", "inspect", f"{reg.host}/multi/img:both").stdout)[0]["Id"] == amd.config_digest
    cli("pull", "--platform", "linux/arm64", f"{reg.host}/multi/img:both")
    doc = json.loads(cli("image", "inspect", f"{reg.host}/multi/img:both").stdout)[0]
    assert (doc["Id"], doc["Architecture"], doc["Variant"]) == (arm.config_digest, "arm64", "v8")
    bad = cli("pull", "--platform", "linux/s390x", f"{reg.host}/multi/img:both", code=125)
    assert "no matching manifest for linux/s390x" in bad.stderr


def test_registry_errors_read_as_docker_prints_them(cli: Cli, reg: Registry) -> None:
    missing = cli("pull", f"{reg.host}/no/such:tag", code=125)
    assert missing.stderr.splitlines()[0] == \
        f"Error: manifest for {reg.host}/no/such:tag not found: manifest unknown: manifest unknown"
    bad = cli("pull", "Busybox", code=125)
    assert "invalid reference format" in bad.stderr
    nobody = cli("pull", "127.0.0.1:1/x", code=125)
    assert "cannot reach registry 127.0.0.1:1" in nobody.stderr


# -- images, tag, rmi, prune, history --------------------------------------------------------------

def test_images_listing_shapes(cli: Cli, reg: Registry, app_image: Image) -> None:
    name = f"{reg.host}/ns/app:v1"
    cli("pull", name)
    cli("tag", name, "local/app:2")
    lines = cli("images").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    # docker's tabwriter: columns start where the header's do.
    assert lines[0].index("TAG") == lines[1].index("latest" if "latest" in lines[1] else lines[1].split()[1])
    rows = sorted(line.split()[:3] for line in lines[1:])
    short = app_image.config_digest[7:19]
    assert rows == sorted([[f"{reg.host}/ns/app", "v1", short], ["local/app", "2", short]])
    assert cli("images", "-q").stdout.split() == [short]
    digests = cli("images", "--digests").stdout.splitlines()
    assert "DIGEST" in digests[0] and any(app_image.digest in line for line in digests)
    as_json = [json.loads(line) for line in cli("images", "--format", "json").stdout.splitlines()]
    assert {(r["Repository"], r["Tag"], r["ID"]) for r in as_json} == \
        {(f"{reg.host}/ns/app", "v1", short), ("local/app", "2", short)}
    assert cli("images", "--format", "{{.Repository}}:{{.Tag}}", "local/app").stdout == "local/app:2\n"
    assert "can't evaluate field Nope" in cli("images", "--format", "{{.Nope}}", code=125).stderr
    no_trunc = cli("images", "-q", "--no-trunc").stdout.split()
    assert no_trunc == [app_image.config_digest]


def test_tag_and_rmi_untag_before_they_delete(cli: Cli, reg: Registry, app_image: Image) -> None:
    name = f"{reg.host}/ns/app:v1"
    cli("pull", name)
    cli("tag", name, "other/app:x")
    assert cli("rmi", "other/app:x").stdout == "Untagged: other/app:x\n"
    cli("tag", name, "other/app:x")
    short = app_image.config_digest[7:19]
    conflict = cli("rmi", short, code=125)
    assert "image is referenced in multiple repositories" in conflict.stderr
    out = cli("rmi", "-f", short).stdout.splitlines()
    assert out[-1] == f"Deleted: {app_image.config_digest}"
    assert f"Untagged: {name}" in out and "Untagged: other/app:x" in out
    assert cli("images", "-q").stdout == ""
    missing = cli("rmi", "nothere", code=125)
    assert missing.stderr.startswith("Error: no such image: nothere")
    # Nothing of the image is left in the store.
    assert not any((cli.root / "storage" / "layers").iterdir())
    blobs = {p.name for p in (cli.root / "storage" / "blobs" / "sha256").iterdir()}
    assert not blobs & {d[7:] for d in app_image.blobs}


def test_image_prune_removes_dangling_images(cli: Cli, reg: Registry, app_image: Image, tmp_path: Path) -> None:
    other = make_image([random_layer(50_000)])
    push(reg.host, "prune/me:1", other, tmp_path / "p")
    cli("pull", f"{reg.host}/prune/me:1")
    cli("pull", f"{reg.host}/ns/app:v1")
    assert "stdin is not a terminal" in cli("image", "prune", code=125).stderr
    nothing = cli("image", "prune", "-f").stdout
    assert nothing == "Total reclaimed space: 0B\n"
    cli("rmi", f"{reg.host}/prune/me:1")
    cli("pull", f"{reg.host}/prune/me:1")
    cli("tag", f"{reg.host}/ns/app:v1", f"{reg.host}/prune/me:1")   # the old image loses its tag: dangling
    out = cli("image", "prune", "-f").stdout.splitlines()
    assert f"deleted: {other.config_digest}" in out
    assert out[-1].startswith("Total reclaimed space: ") and out[-1] != "Total reclaimed space: 0B"
    assert cli("images", "-q").stdout.split() == [app_image.config_digest[7:19]]
    out = cli("image", "prune", "-a", "-f").stdout.splitlines()
    assert f"deleted: {app_image.config_digest}" in out
    assert cli("images", "-q").stdout == ""


def test_history_has_the_empty_layer_rows(cli: Cli, reg: Registry, app_image: Image) -> None:
    name = f"{reg.host}/ns/app:v1"
    cli("pull", name)
    lines = cli("history", name).stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert len(lines) == 5
    assert lines[1].startswith(app_image.config_digest[7:19])
    assert all(line.startswith("<missing>") for line in lines[2:])
    rows = [json.loads(line) for line in cli("history", "--format", "json", "--no-trunc", name).stdout.splitlines()]
    assert [r["CreatedBy"] for r in rows] == ['/bin/sh -c #(nop)  CMD ["tool" "-v"]',
                                              "/bin/sh -c echo hello > /etc/motd",
                                              "/bin/sh -c #(nop)  ENV LANG=C", "/bin/sh -c #(nop) ADD file:a in / "]
    assert [r["Size"] for r in rows][0] == "0B" and rows[2]["Size"] == "0B"
    assert rows[1]["Comment"] == "motd" and rows[1]["Size"] != "0B"
    assert cli("history", "-q", name).stdout.split()[0] == app_image.config_digest[7:19]


# -- push -------------------------------------------------------------------------------------------

def test_push_mounts_then_finds_layers_and_keeps_the_digest(cli: Cli, reg: Registry, app_image: Image) -> None:
    src = f"{reg.host}/ns/app:v1"
    cli("pull", src)
    dest = f"{reg.host}/copies/app:v1"
    missing = cli("push", dest, code=125)
    assert f"An image does not exist locally with the tag: {reg.host}/copies/app" in missing.stderr
    cli("tag", src, dest)
    out = cli("push", dest).stdout.splitlines()
    assert out[0] == f"The push refers to repository [{reg.host}/copies/app]"
    layers = [sid(d) for d in layer_digests(app_image)]
    for layer in layers:
        assert f"{layer}: Mounted from ns/app" in out
    assert out[-1] == f"v1: digest: {app_image.digest} size: {len(app_image.manifest)}"
    again = cli("push", dest).stdout.splitlines()
    assert sorted(f"{layer}: Layer already exists" for layer in layers) == \
        sorted(line for line in again if "already" in line)
    # What was pushed pulls into an empty store as the same image.
    fresh = Cli(cli.root.parent / "fresh")
    assert f"Digest: {app_image.digest}" in fresh("pull", dest).stdout
    assert json.loads(fresh("inspect", dest).stdout)[0]["RootFS"]["Layers"] == app_image.diff_ids


def test_push_uploads_to_a_registry_without_the_blobs(cli: Cli, reg: Registry, app_image: Image,
                                                      tmp_path: Path) -> None:
    cli("pull", f"{reg.host}/ns/app:v1")
    with running_registry(tmp_path / "second") as other:
        dest = f"{other.host}/elsewhere/app:v1"
        cli("tag", f"{reg.host}/ns/app:v1", dest)
        out = cli("push", dest).stdout.splitlines()
        assert sorted(f"{sid(d)}: Pushed" for d in layer_digests(app_image)) == \
            sorted(line for line in out if "Pushed" in line)
        assert out[-1] == f"v1: digest: {app_image.digest} size: {len(app_image.manifest)}"


# -- auth -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["basic", "token"])
def private(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if request.param == "token" and token_auth_problem() and os.environ.get("CI") != "true":
        pytest.skip(token_auth_problem() or "")
    with running_registry(tmp_path_factory.mktemp(f"reg-{request.param}"), auth=request.param) as r:
        yield r


def test_login_push_pull_logout(cli: Cli, private: Registry, tmp_path: Path) -> None:
    assert private.username and private.password
    image = make_image([random_layer(20_000)])
    name = f"{private.host}/team/app:1"
    push(private.host, "team/app:1", image, tmp_path / "p", creds=(private.username, private.password))

    denied = cli("pull", name, code=125)
    assert "unauthorized: authentication required" in denied.stderr
    wrong = cli("login", "-u", private.username, "--password-stdin", private.host, input="nope\n", code=125)
    assert "unauthorized: incorrect username or password" in wrong.stderr
    assert not (cli.home / ".config" / "rootless" / "auth.json").exists()
    assert "non TTY" in cli("login", private.host, code=125).stderr

    ok = cli("login", "-u", private.username, "--password-stdin", private.host, input=private.password + "\n")
    assert ok.stdout == "Login Succeeded\n"
    auth = cli.home / ".config" / "rootless" / "auth.json"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    assert private.host in json.loads(auth.read_text())["auths"]

    cli("pull", name)
    cli("tag", name, f"{private.host}/team/copy:2")
    assert "digest: " + image.digest in cli("push", f"{private.host}/team/copy:2").stdout

    assert cli("logout", private.host).stdout == f"Removing login credentials for {private.host}\n"
    assert cli("logout", private.host).stdout == f"Not logged in to {private.host}\n"
    cli("rmi", name)
    assert "unauthorized: authentication required" in cli("pull", name, code=125).stderr


def test_docker_config_json_is_read(cli: Cli, private: Registry, tmp_path: Path) -> None:
    assert private.username and private.password
    image = make_image([random_layer(1000)])
    push(private.host, "team/dock:1", image, tmp_path / "p", creds=(private.username, private.password))
    docker = cli.home / ".docker"
    docker.mkdir()
    token = base64.b64encode(f"{private.username}:{private.password}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{private.host}": {"auth": token}}}))
    cli("pull", f"{private.host}/team/dock:1")


# -- crashes and concurrency --------------------------------------------------------------------------

def _env(cli: Cli) -> dict[str, str]:
    return {**os.environ, **cli.env}


def test_two_concurrent_pulls_both_succeed_and_store_one_copy(cli: Cli, reg: Registry, tmp_path: Path) -> None:
    image = make_image([random_layer(3_000_000), random_layer(3_000_000), {"small": b"x"}])
    push(reg.host, "race/img:1", image, tmp_path / "p")
    cli("images")  # creates the store, so both processes open the same one
    procs = [subprocess.Popen(cli.argv("pull", f"{reg.host}/race/img:1"), env=_env(cli), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    blobs = sorted(p.name for p in (cli.root / "storage" / "blobs" / "sha256").iterdir())
    assert blobs == sorted({d[7:] for d in [*image.blobs, image.digest]})
    layers = sorted(p.name for p in (cli.root / "storage" / "layers").iterdir() if p.name.endswith(".tar"))
    assert layers == sorted(d[7:] + ".tar" for d in image.diff_ids)
    assert cli("images", "-q").stdout.split() == [image.config_digest[7:19]]


def test_kill_9_during_a_pull_leaves_no_image_and_the_next_pull_completes(cli: Cli, reg: Registry,
                                                                          tmp_path: Path) -> None:
    image = make_image([random_layer(60_000_000), {"small": b"x"}])
    push(reg.host, "killed/img:1", image, tmp_path / "p")
    cli("images")
    tmp = cli.root / "storage" / "tmp"
    proc = subprocess.Popen(cli.argv("pull", f"{reg.host}/killed/img:1"), env=_env(cli),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if _downloading(tmp):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert cli("images", "-q").stdout == ""
    out = cli("pull", f"{reg.host}/killed/img:1").stdout
    assert "Status: Downloaded newer image" in out
    assert cli("images", "-q").stdout.split() == [image.config_digest[7:19]]
    layer = cli.root / "storage" / "layers" / (image.diff_ids[0][7:] + ".tar")
    assert layer.exists()
    assert not [p for p in tmp.iterdir()]


def _downloading(tmp: Path) -> bool:
    """A blob is on its way into TMP: a .partial file with bytes in it (one that is renamed into
    the store between the listing and the stat, the small layer's, is not)."""
    for p in tmp.iterdir():
        try:
            if p.name.endswith(".partial") and p.stat().st_size > 0:
                return True
        except FileNotFoundError:
            continue
    return False


# -- peers ------------------------------------------------------------------------------------------

def _skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("skopeo is missing (scripts/setup installs it)")
        pytest.skip("skopeo is missing (apt-get install skopeo)")
    return path


def test_images_move_between_skopeo_and_rootless(cli: Cli, reg: Registry, tmp_path: Path) -> None:
    skopeo = _skopeo()
    image = make_image([{"bin/busybox": BUSYBOX.read_bytes(), "bin/sh": "busybox"}, {"etc/hostname": b"peer\n"}],
                       oci=True)
    layout = tmp_path / "layout"
    write_oci_layout(layout, image)
    subprocess.run([skopeo, "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest",
                    f"docker://{reg.host}/peer/from-skopeo:1"], check=True)
    cli("pull", f"{reg.host}/peer/from-skopeo:1")
    doc = json.loads(cli("image", "inspect", f"{reg.host}/peer/from-skopeo:1").stdout)[0]
    assert doc["RootFS"]["Layers"] == image.diff_ids
    assert doc["Id"] == image.config_digest

    dest = f"{reg.host}/peer/from-rootless:2"
    cli("tag", f"{reg.host}/peer/from-skopeo:1", dest)
    pushed = cli("push", dest).stdout.splitlines()[-1].split()[2]
    raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{dest}"], check=True,
                         capture_output=True).stdout
    assert sha256(raw) == pushed == image.digest
    out_dir = tmp_path / "copied"
    subprocess.run([skopeo, "copy", "-q", "--src-tls-verify=false", f"docker://{dest}", f"oci:{out_dir}:x"],
                   check=True)
    index = json.loads((out_dir / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    config = json.loads(subprocess.run([skopeo, "inspect", "--config", "--tls-verify=false", f"docker://{dest}"],
                                       check=True, capture_output=True).stdout)
    assert config["rootfs"]["diff_ids"] == image.diff_ids
