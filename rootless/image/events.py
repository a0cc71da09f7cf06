"""Progress of a pull or push as values: what docker prints, one layer at a time (cheap to import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One line of pull or push output: ``id`` is a layer's short id, or None for the image as a whole."""

    id: str | None
    status: str
    current: int | None = None
    total: int | None = None


Report = Callable[[Event], None]


def short_id(digest: str) -> str:
    return digest.partition(":")[2][:12]
