"""fusefs: a union filesystem in userspace for users without root.

Read-only layers stacked under one writable layer, copy-on-write, OCI whiteouts, and
ownership recorded without root.  Mount it with ``fusefs -o lowerdir=...`` (see
``fusefs.cli``) or use :class:`Overlay` from Python; :func:`list_changes` reads what a
mount changed, for a commit into an OCI layer.
"""

from .overlay import Overlay as Overlay
from .metadata import Owner as Owner
from .changes import Change as Change, list_changes as list_changes
