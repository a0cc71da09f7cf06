"""``save``, ``load`` and ``import``: images to and from tar archives."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import click

from ..errors import RootlessError
from ._app import App, main, pass_app

# The archive code (tarfile, the store, compression) loads inside the commands: every
# other verb, run above all, would otherwise pay for it at start.
DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_DIR = "docker-archive", "oci-archive", "oci-dir"
FORMATS = (DOCKER_ARCHIVE, OCI_ARCHIVE, OCI_DIR)


@main.command()
@click.option("-o", "--output", metavar="FILE",
              help="Write to FILE (with --format oci-dir: to the new directory FILE), not to standard output.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=DOCKER_ARCHIVE, show_default=True,
              help="docker save's layout, or an OCI image layout in a tar or a directory.")
@click.argument("images", nargs=-1, required=True)
@pass_app
def save(app: App, output: str | None, fmt: str, images: tuple[str, ...]) -> None:
    """Save one or more images to a tar archive (standard output by default)."""
    from ..image import archive

    if fmt == OCI_DIR:
        if not output:
            raise RootlessError("the oci-dir format writes a directory", "name it with -o DIR")
        archive.save(app.store, images, output, fmt)
        return
    if output is None or output == "-":
        stdout = sys.stdout.buffer
        if stdout.isatty():
            raise RootlessError("Cowardly refusing to save to a terminal. Use the -o flag or redirect")
        archive.save(app.store, images, stdout, fmt)
        stdout.flush()
        return
    _write_file(Path(output), lambda out: archive.save(app.store, images, out, fmt))


def _write_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write PATH whole or not at all: into a temp file beside it, renamed over it when complete."""
    parent = path.absolute().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as e:
        raise RootlessError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.rename(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise RootlessError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@main.command()
@click.option("-i", "--input", "input_", metavar="FILE",
              help="Read from FILE (an archive, or an OCI layout directory), not from standard input.")
@click.option("-q", "--quiet", is_flag=True, help="Do not report each layer as it is stored.")
@pass_app
def load(app: App, input_: str | None, quiet: bool) -> None:
    """Load images from a tar archive made by save (docker-archive or OCI, maybe compressed)."""
    from ..image import archive
    from ..image.inspect import familiar_tag

    progress = None if quiet or not sys.stderr.isatty() else (lambda text: click.echo(text, err=True))
    if input_ is None or input_ == "-":
        stdin = sys.stdin.buffer
        if stdin.isatty():
            raise RootlessError("requested load from stdin, but stdin is a terminal",
                                "give an archive with -i FILE, or redirect it in")
        loaded = archive.load(app.store, stdin, progress)
    elif os.path.isdir(input_):
        loaded = archive.load_dir(app.store, input_, progress)
    else:
        with _open(input_) as f:
            loaded = archive.load(app.store, f, progress)
    for image in loaded:
        if image.tags:
            for tag in image.tags:
                click.echo(f"Loaded image: {familiar_tag(tag)}")
        else:
            click.echo(f"Loaded image ID: {image.id}")


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as e:
        raise RootlessError(f"cannot open {path}: {e.strerror or e}") from None


@main.command("import")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR).")
@click.option("-m", "--message", help="The comment of the image's history entry.")
@click.argument("source", metavar="FILE|-")
@click.argument("name", metavar="[REPOSITORY[:TAG]]", required=False)
@pass_app
def import_(app: App, changes: tuple[str, ...], message: str | None, source: str, name: str | None) -> None:
    """Make an image of a root file system tarball (plain or compressed; - reads standard input)."""
    from ..image import archive

    if "://" in source:
        raise RootlessError(f"cannot import {source}: importing from a URL is not supported",
                            "download the tarball first, then import the file")
    if source == "-":
        record = archive.import_rootfs(app.store, sys.stdin.buffer, name, changes, message)
    else:
        with _open(source) as f:
            record = archive.import_rootfs(app.store, f, name, changes, message, source=source)
    click.echo(record.id)
