"""``build``: docker's classic ``docker build`` flags and output; the work is ``rootless.build.builder``'s."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from ..errors import RootlessError
from ._app import App, main, pass_app


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    import os

    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not key:
            raise RootlessError(f"invalid {what}: {item}", f"write {what} KEY=VALUE")
        if not sep:
            if what == "--build-arg" and key in os.environ:
                value = os.environ[key]   # docker takes a bare name's value from the environment
            elif what == "--build-arg":
                continue
        out[key] = value
    return out


@main.command()
@click.option("-f", "--file", "dockerfile", help="The Dockerfile (default: CONTEXT/Dockerfile; - reads stdin).")
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image NAME[:TAG]; may be repeated.")
@click.option("--build-arg", "build_args", multiple=True, help="Set a build-time variable: KEY=VALUE.")
@click.option("--target", help="Build up to this stage (FROM ... AS NAME).")
@click.option("--no-cache", is_flag=True, help="Run every step; reuse nothing from earlier builds.")
@click.option("--label", "labels", multiple=True, help="Set a label on the image: KEY=VALUE.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.argument("context")
@pass_app
def build(app: App, context: str, dockerfile: str | None, tags: tuple[str, ...], build_args: tuple[str, ...],
          target: str | None, no_cache: bool, labels: tuple[str, ...], quiet: bool) -> None:
    """Build an image from a Dockerfile and a context (a directory, or - for a tar on stdin)."""
    from ..build.builder import Builder, Options, RunFailed
    from ..image.local import check_tag, stage_dir
    from ..runtime.containers import Containers
    from ..runtime.idmap import detect
    from .images import do_pull

    for tag in tags:
        check_tag(tag)
    if dockerfile == "-" and context == "-":
        raise RootlessError("the Dockerfile and the context cannot both come from stdin",
                            "give the context as a directory, or the Dockerfile with -f FILE")
    store = app.store
    unpacked: Path | None = None
    try:
        if context == "-":
            unpacked = stage_dir(store, "context-")
            _unpack_context(unpacked)
            root = unpacked
        else:
            root = Path(context)
            if not root.is_dir():
                raise RootlessError(f"unable to prepare context: path {context!r} not found",
                                    "give the build context as a directory")
        if dockerfile == "-":
            text, name, path = sys.stdin.read(), "Dockerfile", None
        else:
            path = Path(dockerfile) if dockerfile else root / "Dockerfile"
            if dockerfile and context == "-" and not path.is_absolute():
                path = root / dockerfile
            try:
                text, name = path.read_text(), path.name
            except OSError as e:
                raise RootlessError(f"unable to prepare context: unable to evaluate symlinks in Dockerfile path: "
                                    f"lstat {path}: {(e.strerror or str(e)).lower()}",
                                    "give the Dockerfile with -f, or put one in the context") from None
        use_subids = app.use_subids
        options = Options(tags=tags, build_args=_pairs(build_args, "--build-arg"), target=target,
                          no_cache=no_cache, labels=_pairs(labels, "--label"), quiet=quiet, use_subids=use_subids,
                          storage_driver=str(app.config.extra.get("storage-driver", "auto")),
                          runtime_dir=app.config.runtime_dir)
        builder = Builder(store, Containers(app.config), options=options, out=sys.stdout,
                          pull=lambda ref: do_pull(app, ref, out=sys.stdout if not quiet else _Null()),
                          ids=detect(use_subids))
        if not quiet:
            click.echo("Sending build context to Docker daemon  " + _size(root))
        try:
            record = builder.build(text, root, name, path)
        except RunFailed as e:   # docker prints the daemon's message as it is, and exits 1
            click.echo(e.message, err=True)
            sys.exit(e.exit_code)
    finally:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
    if quiet:
        click.echo(record.id)


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _size(root: Path) -> str:
    from ._format import human_size

    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            pass
    return human_size(total) + "\n"


def _unpack_context(dest: Path) -> None:
    """The context tar on stdin (plain or compressed) into DEST."""
    from ..image import compression
    from ..runtime.tree import DiskTree, Extract, extract

    _, stream = compression.open_stream(sys.stdin.buffer)
    extract(stream, DiskTree(bytes(dest)), Extract(b"", None))
