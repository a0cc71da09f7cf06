"""The ``rootless`` command line: parsing, printing and exit codes; the work happens in the library.

Each group of verbs lives in its own module (``images``, ``archive``, ...) and registers its
commands on ``main``.  Library code raises ``RootlessError``; ``RootlessGroup`` is the one
place that turns it into ``Error: ...`` on stderr and docker's exit code 125.
"""

from __future__ import annotations

from . import archive, build, changes, containers, images, info  # noqa: F401  (registers the commands)
from ._app import main

__all__ = ["main"]
