"""fusefs: a union filesystem in userspace for users without root.

Read-only layers stacked under one writable layer, copy-on-write, OCI whiteouts, and
ownership recorded without root.  Mount it with ``fusefs -o lowerdir=...`` (see
``fusefs.cli``) or use :class:`Overlay` from Python; :func:`list_changes` reads what a
mount changed, for a commit into an OCI layer.  A lower layer may be a layer tar
served in place: :func:`build_index` indexes one while it is written to disk.
"""

from .overlay import Overlay as Overlay
from .tarindex import TarIndex as TarIndex, TarLayerError as TarLayerError, build_index as build_index
from .metadata import Owner as Owner
from .changes import Change as Change, list_changes as list_changes
