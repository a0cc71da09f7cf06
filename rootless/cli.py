"""The ``rootless`` command line; thin: parsing and exit codes only.

The engine's verbs (pull, run, build, ...) land here as the image store, runtime and
builder are written; until then the command says so instead of pretending.
"""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rootless")
def main() -> None:
    """A container engine for users without root."""


if __name__ == "__main__":
    main()
