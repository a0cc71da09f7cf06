"""The verbs on what a container holds: diff, commit, export and cp."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import RootlessError
from ._app import App, main, pass_app

if TYPE_CHECKING:
    from ..runtime.containers import Container


def _container(app: App, name: str) -> Container:
    from ..runtime.containers import Containers

    return Containers(app.config).get(name)


@main.command()
@click.argument("name", metavar="CONTAINER")
@pass_app
def diff(app: App, name: str) -> None:
    """Show what a container changed in its file system (A added, C changed, D deleted)."""
    from ..runtime.commit import diff as changes

    for line in changes(_container(app, name), app.store):
        click.echo(line)


@main.command()
@click.option("-a", "--author", help='Author, e.g. "Jane Doe <jane@example.com>".')
@click.option("-m", "--message", help="The commit message (the history row's comment).")
@click.option("-c", "--change", "changes", multiple=True, metavar="INSTRUCTION",
              help="Apply a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, VOLUME, WORKDIR).")
@click.option("-p", "--pause", type=click.BOOL, default=True, is_flag=False, flag_value=True, show_default=True,
              help="Accepted as docker has it; a running container is read as it runs, not paused.")
@click.argument("name", metavar="CONTAINER")
@click.argument("repository", metavar="[REPOSITORY[:TAG]]", required=False)
@pass_app
def commit(app: App, name: str, repository: str | None, author: str | None, message: str | None,
           changes: tuple[str, ...], pause: bool) -> None:
    """Make a new image of a container's changes."""
    from ..runtime.commit import commit as make

    record = make(_container(app, name), app.store, ref=repository, author=author, message=message,
                  instructions=changes)
    click.echo(record.id)


@main.command()
@click.option("-o", "--output", metavar="FILE", help="Write to FILE, not to standard output.")
@click.argument("name", metavar="CONTAINER")
@pass_app
def export(app: App, name: str, output: str | None) -> None:
    """Write a container's whole file system as a tar archive."""
    from ..runtime.commit import export as write

    container = _container(app, name)
    if output is None or output == "-":
        stdout = sys.stdout.buffer
        if stdout.isatty():
            raise RootlessError("Cowardly refusing to save to a terminal. Use the -o flag or redirect")
        write(container, app.store, stdout)
        stdout.flush()
        return
    from .archive import _write_file

    _write_file(Path(output), lambda out: write(container, app.store, out))


@main.command("cp")
@click.option("-a", "--archive", is_flag=True, help="Keep the owners (uid:gid) the files have.")
@click.option("-L", "--follow-link", "follow", is_flag=True, help="Follow a symlink named as the source.")
@click.option("-q", "--quiet", is_flag=True, help="Say nothing when done.")
@click.argument("source", metavar="SRC")
@click.argument("destination", metavar="DEST")
@pass_app
def cp(app: App, source: str, destination: str, archive: bool, follow: bool, quiet: bool) -> None:
    """Copy files between a container and the host.

    CONTAINER:SRC DEST|- or SRC|- CONTAINER:DEST; - is a tar stream on stdout or stdin.
    A directory is copied whole; with SRC ending in /. only what it holds."""
    from ..runtime import copy

    src_container, src = copy.split_arg(source)
    dest_container, dest = copy.split_arg(destination)
    if src_container is not None and dest_container is not None:
        raise RootlessError("copying between containers is not supported", "copy to the host, then into the other")
    if src_container is None and dest_container is None:
        raise RootlessError("must specify at least one container source", "write CONTAINER:PATH for one of them")
    if src_container is not None:
        result = copy.copy_out(_container(app, src_container), app.store, src_container, src or "/", dest,
                               follow=follow, archive=archive, stdout=sys.stdout.buffer)
        where = dest
    else:
        assert dest_container is not None
        result = copy.copy_in(_container(app, dest_container), app.store, dest_container, src, dest or "/",
                              follow=follow, archive=archive, stdin=sys.stdin.buffer)
        where = destination
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    if not quiet and where != "-" and sys.stderr.isatty():
        from ._format import human_size

        click.echo(f"Successfully copied {human_size(result.data_bytes)} to {where}", err=True)
