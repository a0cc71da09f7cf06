"""The command group, its global options and the one place where errors become exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from ..config import Config
from ..errors import RootlessError

if TYPE_CHECKING:
    from ..image.store import Store


class RootlessGroup(click.Group):
    """Prints a RootlessError as docker does (``Error: ...``, hint on its own line) and exits 125,
    as docker also does for a command's unknown flag or missing argument (click's usage errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            e.exit_code = 125
            raise
        except RootlessError as e:
            click.echo(f"Error: {e.message}", err=True)
            if e.hint:
                click.echo(f"Hint: {e.hint}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # `rootless images | head`: the reader left; say nothing more.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (silences the flush at exit)
            except OSError:
                pass
            ctx.exit(141)


@dataclass
class App:
    """What every command gets: the settings, and the store opened on first use."""

    config: Config
    _store: Store | None = field(default=None, repr=False)

    @property
    def store(self) -> Store:
        if self._store is None:
            from ..image.store import Store  # imported here: commands that need no store start faster

            self._store = Store.open(self.config)
        return self._store

    @property
    def use_subids(self) -> bool:
        """The config file's "subordinate-ids": false gives containers the user's own ids only."""
        value = self.config.extra.get("subordinate-ids", True)
        if not isinstance(value, bool):
            raise RootlessError('config file: "subordinate-ids" must be true or false')
        return value


pass_app = click.make_pass_decorator(App)


def each(names: Iterable[str], action: Callable[[str], None]) -> None:
    """docker's way with several names: each is tried, a failure printed as it comes and the
    rest still done; the exit code is the last failure's."""
    failed: RootlessError | None = None
    for name in names:
        try:
            action(name)
        except RootlessError as e:
            click.echo(f"Error: {e.message}", err=True)
            failed = e
    if failed is not None:
        sys.exit(failed.exit_code)


@click.group(cls=RootlessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rootless")
@click.option("--root", type=click.Path(file_okay=False), envvar="ROOTLESS_ROOT",
              help="Where images and containers are stored (default $XDG_DATA_HOME/rootless).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), envvar="ROOTLESS_CONFIG",
              help="The config file (default $XDG_CONFIG_HOME/rootless/config.json).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, help="How much the engine logs to stderr.")
@click.pass_context
def main(ctx: click.Context, root: str | None, config_file: str | None, log_level: str) -> None:
    """A container engine for users without root."""
    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(levelname)s: %(message)s")
    try:
        config = Config.load(root=Path(root).absolute() if root else None, config_file=config_file)
    except RootlessError as e:
        raise click.ClickException(str(e)) from None
    ctx.obj = App(config)
