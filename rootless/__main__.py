"""``python -m rootless``: the same as the ``rootless`` command."""

from .cli import main

main(prog_name="rootless")
