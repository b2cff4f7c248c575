"""Stop sequences applied across delta boundaries with a hold-back buffer."""

from __future__ import annotations

from collections.abc import Sequence


class StopFilter:
    """Feed it deltas; it returns only text that can never turn out to belong to a stop sequence.

    The text published is exactly ``text[:p]`` where ``p`` is the earliest position at which
    any stop sequence occurs in the whole text, however the text was split into deltas. Text
    that could still be the start of a stop sequence is held back until the next delta proves
    it is not (then it is released) or completes the match (then it is dropped, with everything
    after it). No part of a stop sequence is ever returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to publish now.

        Sets ``stopped`` on the very call whose delta makes the cut certain: a stop occurs and
        no earlier position can still begin one (a longer stop sharing the match's start, such
        as ``"00"`` beside ``"0"``, cannot cut earlier, so it does not hold the cut back).
        """
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buffer = self._held + text
        match = self._first_match(buffer)
        pending = self._first_partial(buffer)
        if match is not None and (pending is None or pending >= match):
            # Nothing that starts earlier can still complete, and a longer stop starting at the
            # match itself would cut at the same place: the cut is final.
            self._held = ""
            self.stopped = True
            return buffer[:match]
        keep = len(buffer) if pending is None else pending
        self._held = buffer[keep:]
        return buffer[:keep]

    def flush(self) -> str:
        """At the end of the stream: what was held back, up to a match inside it if any."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        match = self._first_match(held)
        if match is not None:
            self.stopped = True
            return held[:match]
        return held

    def _first_match(self, buffer: str) -> int | None:
        found = [i for i in (buffer.find(stop) for stop in self.stops) if i >= 0]
        return min(found) if found else None

    def _first_partial(self, buffer: str) -> int | None:
        """The earliest start of a suffix of ``buffer`` that is a proper prefix of a stop."""
        longest = max(len(stop) for stop in self.stops)
        for start in range(max(0, len(buffer) - longest + 1), len(buffer)):
            tail = buffer[start:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self.stops):
                return start
        return None
