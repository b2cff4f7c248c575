"""Stop sequences applied across delta boundaries with a hold-back buffer."""

from __future__ import annotations

from collections.abc import Sequence


class StopFilter:
    """Feed it deltas; it returns only text that can never turn out to start a stop sequence.

    Text that could be the beginning of a stop sequence is held back until the next delta
    proves it is not (then it is released) or completes the match (then it is dropped, with
    everything after it). No part of a stop sequence is ever returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self._longest = max((len(stop) for stop in self.stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to publish now; sets ``stopped`` once a stop sequence matched."""
        if not self.stops:
            return text
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = min((i for i in (buffer.find(stop) for stop in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buffer[:cut]
        hold = self._partial_match(buffer)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """At the end of the stream: what was held back is text after all."""
        held, self._held = self._held, ""
        return held

    def _partial_match(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        for size in range(min(len(buffer), self._longest - 1), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self.stops):
                return size
        return 0
