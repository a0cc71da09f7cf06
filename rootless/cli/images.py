"""The image verbs: pull, push, images, tag, rmi, image prune/inspect, history, login, logout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import AmbiguousImageId, ImageNotFound, InvalidReference, RootlessError, StoreError
from ..image import manifest as mf
from ..image import reference
from ..image.auth import CredentialStore, normalize_host
from ._app import App, each, main, pass_app
from ._format import Template, ago, human_size, table
from ._progress import ProgressDisplay

if TYPE_CHECKING:
    from ..image.pull import PullResult
    from ..image.registry import RegistryClient
    from ..image.store import ImageRecord

# trio, httpx and the store load inside the commands that use them: `rootless run` and
# `rootless images` should not pay for the registry client's imports.
T = TypeVar("T")

tls_option = click.option("--tls-verify", type=click.BOOL, default=True, show_default=True, metavar="BOOL",
                          help="Verify the registry's TLS certificate (--tls-verify=false to skip; "
                               "loopback and insecure-registries fall back to HTTP anyway).")
cert_dir_option = click.option("--cert-dir", type=click.Path(file_okay=False, exists=True),
                               help="A directory of *.crt CA files and *.cert/*.key client pairs.")


def _client(app: App, tls_verify: bool, cert_dir: str | None) -> RegistryClient:
    from ..image.registry import RegistryClient

    return RegistryClient(app.config, CredentialStore.from_config(app.config), tls_verify=tls_verify,
                          cert_dir=cert_dir)


def _run(fn: Callable[[], Any]) -> Any:
    """FN under trio.  What a nursery's task raises comes out wrapped in an ExceptionGroup;
    a user's error in there (push's blob uploads refused without a login) is raised as
    itself, so that it is printed as ``Error: ...``, not as a traceback."""
    import trio

    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            mine = error.subgroup(lambda e: isinstance(e, RootlessError))
            if mine is None:
                raise
            error = mine.exceptions[0]
        raise error from None


# -- pull / push ----------------------------------------------------------------------------------

@main.command()
@click.option("--platform", help="Pull this platform of a multi-platform image (os/arch[/variant]).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image name.")
@tls_option
@cert_dir_option
@click.argument("name")
@pass_app
def pull(app: App, name: str, platform: str | None, quiet: bool, tls_verify: bool, cert_dir: str | None) -> None:
    """Pull an image from a registry."""
    do_pull(app, name, platform=platform, quiet=quiet, tls_verify=tls_verify, cert_dir=cert_dir)


def do_pull(app: App, name: str, *, platform: str | None = None, quiet: bool = False, tls_verify: bool = True,
            cert_dir: str | None = None, out: Any = None) -> ImageRecord:
    """Pull NAME as ``rootless pull`` does, output included (``run`` uses it for a missing image)."""
    from ..image import pull as pulling

    out = out or sys.stdout
    ref = reference.parse(name)
    wanted = mf.Platform.parse(platform) if platform else None
    display = ProgressDisplay(out, tty=out.isatty()) if not quiet else (lambda event: None)
    if not quiet:
        if not reference.names_tag(name):
            out.write("Using default tag: latest\n")
        out.write(f"{ref.digest or ref.tag}: Pulling from {ref.path}\n")
    store = app.store

    async def go() -> PullResult:
        async with _client(app, tls_verify, cert_dir) as client:
            return await pulling.pull(store, client, ref, platform=wanted, report=display)

    result: PullResult = _run(go)
    shown = f"{ref.familiar}:{ref.tag}" if ref.tag else f"{ref.familiar}@{ref.digest}"
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    if not quiet:
        out.write(f"Digest: {result.digest}\n")
        state = "Downloaded newer image for" if result.downloaded else "Image is up to date for"
        out.write(f"Status: {state} {shown}\n")
    out.write(f"{ref}\n")
    out.flush()
    return result.image


@main.command()
@click.option("-q", "--quiet", is_flag=True, help="Print only the digest line.")
@tls_option
@cert_dir_option
@click.argument("name")
@pass_app
def push(app: App, name: str, quiet: bool, tls_verify: bool, cert_dir: str | None) -> None:
    """Push an image to a registry."""
    from ..image import push as pushing

    ref = reference.parse(name)
    if ref.digest is not None:
        raise InvalidReference(f"cannot push {name}: push takes a name and tag, not a digest")
    if not reference.names_tag(name):
        click.echo("Using default tag: latest")
    store = app.store
    try:
        image = store.resolve(str(ref))
    except ImageNotFound:
        raise ImageNotFound(f"An image does not exist locally with the tag: {ref.familiar}",
                            f"tag one first: rootless tag IMAGE {ref.familiar}:{ref.tag}") from None
    display = ProgressDisplay(sys.stdout, tty=sys.stdout.isatty()) if not quiet else (lambda event: None)
    if not quiet:
        click.echo(f"The push refers to repository [{ref.familiar}]")

    async def go() -> tuple[str, int]:
        async with _client(app, tls_verify, cert_dir) as client:
            return await pushing.push(store, client, image, ref, report=display)

    digest, size = _run(go)
    click.echo(f"{ref.tag}: digest: {digest} size: {size}")


# -- listing and naming --------------------------------------------------------------------------

_IMAGE_COLUMNS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
                  "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE"}


def _image_rows(app: App, images: Sequence[ImageRecord], no_trunc: bool) -> list[dict[str, str]]:
    rows = []
    for image in images:
        size = human_size(_inspect().image_size(app.store, image))
        short = image.id if no_trunc else image.id.partition(":")[2][:12]
        created = ago(image.created)
        names: list[reference.Reference | None] = [reference.parse(t) for t in image.repo_tags] or [None]
        for ref in names:
            repo = ref.familiar if ref else "<none>"
            digest = next((d.rsplit("@", 1)[1] for d in image.repo_digests
                           if ref is not None and d.rsplit("@", 1)[0] == ref.repository), "<none>")
            rows.append({"Containers": "N/A", "CreatedAt": image.created or "N/A", "CreatedSince": created,
                         "Digest": digest, "ID": short, "Repository": repo, "SharedSize": "N/A", "Size": size,
                         "Tag": (ref.tag or "<none>") if ref else "<none>", "UniqueSize": "N/A",
                         "VirtualSize": size})
    rows.sort(key=lambda r: (r["Repository"] == "<none>", r["CreatedAt"]), reverse=False)
    rows.sort(key=lambda r: r["CreatedAt"], reverse=True)
    return rows


@main.command("images")
@click.option("-a", "--all", "all_", is_flag=True, help="Show all images (there are no hidden intermediate ones).")
@click.option("-q", "--quiet", is_flag=True, help="Only the image ids.")
@click.option("--digests", is_flag=True, help="Show the repository digests.")
@click.option("--no-trunc", is_flag=True, help="Show full image ids.")
@click.option("--format", "fmt", help="'json', or a template such as '{{.Repository}}:{{.Tag}}'.")
@click.argument("repository", required=False)
@pass_app
def images_cmd(app: App, all_: bool, quiet: bool, digests: bool, no_trunc: bool, fmt: str | None,
               repository: str | None) -> None:
    """List images."""
    records = app.store.images()
    rows = _image_rows(app, records, no_trunc)
    if repository:
        wanted = reference.parse(repository)
        any_tag = not reference.names_tag(repository)
        rows = [r for r in rows if r["Repository"] != "<none>" and reference.parse(r["Repository"]).repository
                == wanted.repository and (any_tag or r["Tag"] == wanted.tag)]
    if quiet:
        for image_id in dict.fromkeys(r["ID"] for r in rows):
            click.echo(image_id)
        return
    if fmt:
        template = Template(fmt)
        if template.is_table:
            click.echo(template.header(_IMAGE_COLUMNS))
        for r in rows:
            click.echo(template.render(r))
        return
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    click.echo(table(headers, ([r["Repository"], r["Tag"]] + ([r["Digest"]] if digests else [])
                               + [r["ID"], r["CreatedSince"], r["Size"]] for r in rows)))


@main.command()
@click.argument("source")
@click.argument("target")
@pass_app
def tag(app: App, source: str, target: str) -> None:
    """Create a tag TARGET that refers to the image SOURCE."""
    reference.parse(target)
    image = app.store.resolve(source)
    app.store.tag(target, image.id)


@main.command()
@click.option("-f", "--force", is_flag=True, help="Remove an image with several names, or one a container uses.")
@click.argument("images", nargs=-1, required=True)
@pass_app
def rmi(app: App, images: tuple[str, ...], force: bool) -> None:
    """Remove one or more images."""

    def one(name: str) -> None:
        for line in remove_image(app, name, force):
            click.echo(line)

    each(images, one)


def _inspect() -> Any:
    from ..image import inspect

    return inspect


def _container_records(app: App) -> list[dict[str, Any]]:
    from ..runtime.containers import Containers

    return [c.record for c in Containers(app.config).all()]


def images_in_use(app: App) -> set[str]:
    """Ids of the images that containers were made from."""
    return {str(r["Image"]) for r in _container_records(app) if isinstance(r.get("Image"), str)}


def remove_image(app: App, name: str, force: bool) -> list[str]:
    """docker's rmi: a name untags (and deletes the image when it was its last name); an id deletes."""
    store = app.store
    image = store.resolve(name)
    by_name = not _looks_like_id(name, image)
    lines: list[str] = []
    if by_name:
        ref = reference.parse(name)
        others = [t for t in image.repo_tags if t != f"{ref.repository}:{ref.tag}"] if ref.tag else []
        shown = f"{ref.familiar}:{ref.tag}" if ref.tag else f"{ref.familiar}@{ref.digest}"
        if others or (ref.digest is None and len(image.repo_tags) > 1):
            store.untag(str(ref))
            return [f"Untagged: {shown}"]
    elif len({t.rsplit(":", 1)[0] for t in image.repo_tags}) > 1 and not force:
        raise StoreError(f"conflict: unable to delete {image.id.partition(':')[2][:12]} (must be forced) - "
                         "image is referenced in multiple repositories", "remove it by name, or use -f")
    if image.id in images_in_use(app) and not force:
        raise StoreError(f"conflict: unable to remove repository reference {name!r} (must force) - "
                         f"container is using its referenced image {image.id.partition(':')[2][:12]}",
                         "remove the container first, or use -f")
    for t in image.repo_tags:
        lines.append(f"Untagged: {_inspect().familiar_tag(t)}")
    for d in image.repo_digests:
        lines.append(f"Untagged: {_inspect().familiar_tag(d)}")
    store.remove_image(image.id)
    lines.append(f"Deleted: {image.id}")
    store.gc(keep_layers=_layers_in_use(app))
    return lines


def _layers_in_use(app: App) -> set[str]:
    """Every container's layers, from its own record: they outlive an image removed with -f."""
    return {str(d) for r in _container_records(app) for d in r.get("Layers") or []}


def _looks_like_id(name: str, image: ImageRecord) -> bool:
    bare = name.removeprefix("sha256:")
    return image.id.partition(":")[2].startswith(bare) and all(c in "0123456789abcdef" for c in bare)


# -- inspect / history ------------------------------------------------------------------------------

def _inspect_images(app: App, names: Sequence[str], fmt: str | None, kinds: Sequence[str] = ("image",)) -> None:
    docs = []
    missing = []
    for name in names:
        try:
            docs.append(_inspect_one(app, name, kinds))
        except (ImageNotFound, AmbiguousImageId) as e:
            missing.append(e)
    if fmt:
        template = Template(fmt)
        for doc in docs:
            click.echo(template.render(doc))
    else:
        click.echo(json.dumps(docs, indent=4))
    if missing:
        for problem in missing:
            click.echo(f"Error: {problem.message}", err=True)
        sys.exit(missing[-1].exit_code)


def _inspect_one(app: App, name: str, kinds: Sequence[str]) -> dict[str, Any]:
    """docker's order: a container of that name or id first, then an image."""
    if "container" in kinds:
        from ..runtime.containers import ContainerNotFound, Containers, inspect_doc

        try:
            return inspect_doc(Containers(app.config).get(name))
        except ContainerNotFound:
            if kinds == ("container",):
                raise ImageNotFound(f"no such container: {name}", "list them with rootless ps -a") from None
    try:
        return _inspect().inspect(app.store, app.store.resolve(name))  # type: ignore[no-any-return]
    except ImageNotFound:
        raise ImageNotFound(f"no such object: {name}" if "container" in kinds else f"no such image: {name}",
                            "list them with rootless ps -a and rootless images") from None


@main.command("inspect")
@click.option("-f", "--format", "fmt", help="A template such as '{{.Config.Cmd}}', or 'json'.")
@click.option("--type", "kind", type=click.Choice(["container", "image"]), help="What the names refer to.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def inspect_cmd(app: App, names: tuple[str, ...], fmt: str | None, kind: str | None) -> None:
    """Show low-level information about containers or images, as JSON."""
    _inspect_images(app, names, fmt, (kind,) if kind else ("container", "image"))


@main.command()
@click.option("-H", "--human", type=click.BOOL, default=True, metavar="BOOL", help="Human-readable sizes and times.")
@click.option("--no-trunc", is_flag=True, help="Don't truncate the output.")
@click.option("-q", "--quiet", is_flag=True, help="Only the image ids.")
@click.option("--format", "fmt", help="'json', or a template such as '{{.CreatedBy}}'.")
@click.argument("name")
@pass_app
def history(app: App, name: str, human: bool, no_trunc: bool, quiet: bool, fmt: str | None) -> None:
    """Show the history of an image."""
    image = app.store.resolve(name)
    rows = _inspect().history(app.store, image)
    if quiet:
        for r in rows:
            click.echo(r.image if no_trunc or r.image == "<missing>" else r.image.partition(":")[2][:12])
        return
    shaped = []
    for r in rows:
        created_by = r.created_by if no_trunc or len(r.created_by) <= 45 else r.created_by[:44] + "…"
        shaped.append({
            "ID": r.image if no_trunc or r.image == "<missing>" else r.image.partition(":")[2][:12],
            "CreatedSince": ago(r.created) if human else r.created,
            "CreatedAt": r.created, "CreatedBy": created_by,
            "Size": human_size(r.size) if human else str(r.size), "Comment": r.comment,
        })
    if fmt:
        template = Template(fmt)
        for s in shaped:
            click.echo(template.render(s))
        return
    click.echo(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
                     ([s["ID"], s["CreatedSince"], s["CreatedBy"], s["Size"], s["Comment"]] for s in shaped)))


# -- login / logout ------------------------------------------------------------------------------

@main.command()
@click.option("-u", "--username", help="Username.")
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Take the password from stdin.")
@tls_option
@cert_dir_option
@click.argument("server", required=False)
@pass_app
def login(app: App, server: str | None, username: str | None, password: str | None, password_stdin: bool,
          tls_verify: bool, cert_dir: str | None) -> None:
    """Log in to a registry (default: Docker Hub)."""
    host = normalize_host(server or "docker.io")
    if password is not None and password_stdin:
        raise RootlessError("--password and --password-stdin are mutually exclusive")
    if password is not None:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if password_stdin:
        if not username:
            raise RootlessError("Must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    interactive = sys.stdin.isatty()
    if not username:
        if not interactive:
            raise RootlessError("Cannot perform an interactive login from a non TTY device",
                                "give -u USER and --password-stdin")
        username = click.prompt("Username", prompt_suffix=": ").strip()
    if password is None:
        if not interactive:
            raise RootlessError("Cannot perform an interactive login from a non TTY device",
                                "give --password-stdin")
        password = click.prompt("Password", hide_input=True, prompt_suffix=": ")
    if not password:
        raise RootlessError("password is empty", "give the password, or a token, for the registry")
    user, secret = username, password

    async def check() -> None:
        from ..image.registry import RegistryClient

        client = RegistryClient(app.config, lambda domain: (user, secret), tls_verify=tls_verify, cert_dir=cert_dir)
        async with client:
            await client.check_login(host)

    _run(check)
    CredentialStore.from_config(app.config).login(host, username, password)
    click.echo("Login Succeeded")


@main.command()
@click.argument("server", required=False)
@pass_app
def logout(app: App, server: str | None) -> None:
    """Log out from a registry (default: Docker Hub)."""
    host = normalize_host(server or "docker.io")
    if CredentialStore.from_config(app.config).logout(host):
        click.echo(f"Removing login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")


# -- the `image` group: docker's long forms ----------------------------------------------------------

@main.group()
def image() -> None:
    """Manage images."""


@image.command("prune")
@click.option("-a", "--all", "all_", is_flag=True, help="Remove every image no container uses, not only untagged ones.")
@click.option("-f", "--force", is_flag=True, help="Don't ask for confirmation.")
@pass_app
def image_prune(app: App, all_: bool, force: bool) -> None:
    """Remove unused images (untagged ones, or with -a all unused)."""
    what = "all images without at least one container associated to them" if all_ else "all dangling images"
    if not force:
        if not sys.stdin.isatty():
            raise RootlessError(f"this will remove {what}, and stdin is not a terminal to confirm it",
                                "add -f to go ahead")
        if not click.confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue?",
                             default=False):
            return
    store = app.store
    used = images_in_use(app)
    deleted: list[str] = []
    for img in store.images():
        if img.id in used or (img.repo_tags and not all_):
            continue
        store.remove_image(img.id)
        deleted.extend(f"untagged: {_inspect().familiar_tag(t)}" for t in (*img.repo_tags, *img.repo_digests))
        deleted.append(f"deleted: {img.id}")
    freed = store.gc(keep_layers=_layers_in_use(app))
    if deleted:
        click.echo("Deleted Images:")
        for line in deleted:
            click.echo(line)
        click.echo("")
    click.echo(f"Total reclaimed space: {human_size(freed)}")


def _alias(group: click.Group, name: str, command: click.Command) -> None:
    group.add_command(command, name)


_alias(image, "ls", images_cmd)
_alias(image, "list", images_cmd)
_alias(image, "pull", pull)
_alias(image, "push", push)
_alias(image, "tag", tag)
_alias(image, "rm", rmi)
_alias(image, "history", history)


@image.command("inspect")
@click.option("-f", "--format", "fmt", help="A template such as '{{.Config.Cmd}}', or 'json'.")
@click.argument("names", nargs=-1, required=True)
@pass_app
def image_inspect_cmd(app: App, names: tuple[str, ...], fmt: str | None) -> None:
    """Show low-level information about images, as JSON."""
    _inspect_images(app, names, fmt)
