"""Pull and push progress as docker shows it: one live line per layer on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from ..image.events import Event
from ._format import human_size

BAR_WIDTH = 50
#: Byte counts redraw at most this often; a change of status always shows at once.
REDRAW_SECONDS = 0.1


class ProgressDisplay:
    """Feed it ``Event``s.  On a TTY each layer keeps one line, rewritten in place with a bar;
    otherwise each milestone of a layer prints one line and progress prints nothing, as
    ``docker pull | cat`` does."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._order: list[str] = []
        self._lines: dict[str, str] = {}
        self._status: dict[str, str] = {}
        self._last_draw = 0.0

    def __call__(self, event: Event) -> None:
        if event.id is None:
            self.message(event.status)
            return
        changed = self._status.get(event.id) != event.status
        self._status[event.id] = event.status
        if not self.tty:
            # Byte counts and extraction are for the eye only: a log gets the milestones.
            if changed and event.current is None and event.status != "Extracting":
                self.out.write(f"{event.id}: {event.status}\n")
                self.out.flush()
            return
        line = f"{event.id}: {event.status}"
        if event.current is not None and event.total:
            line = f"{event.id}: {event.status:<11} {_bar(event.current, event.total)}"
        if event.id not in self._lines:
            self._order.append(event.id)
            self._lines[event.id] = line
            self.out.write(line + "\n")
            self.out.flush()
            return
        self._lines[event.id] = line
        now = time.monotonic()
        if changed or now - self._last_draw >= REDRAW_SECONDS:
            self._last_draw = now
            self._redraw(event.id)

    def message(self, text: str) -> None:
        """A line about the whole image, printed below the layers' lines."""
        self.out.write(text + "\n")
        self.out.flush()
        if self.tty:
            # Lines above a message are final: later redraws must not climb over it.
            self._order.clear()
            self._lines.clear()

    def _redraw(self, layer_id: str) -> None:
        if layer_id not in self._order:
            return
        up = len(self._order) - self._order.index(layer_id)
        self.out.write(f"\x1b[{up}A\r\x1b[2K{self._lines[layer_id]}\x1b[{up}B\r")
        self.out.flush()


def _bar(current: int, total: int) -> str:
    filled = min(BAR_WIDTH, BAR_WIDTH * current // total) if total else 0
    arrow = ">" if filled < BAR_WIDTH else ""
    bar = ("=" * max(0, filled - (1 if arrow else 0)) + arrow).ljust(BAR_WIDTH)
    return f"[{bar}]  {human_size(current)}/{human_size(total)}"
