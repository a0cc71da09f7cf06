"""``python -m rootless``: the same as the ``rootless`` command, warm start included."""

from .warm import main

main()
