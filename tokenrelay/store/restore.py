"""Durability ``local``: events a failover lost are written again by the worker that has them.

Redis replicates asynchronously, so a promoted replica may lack the last events its primary
acknowledged, which listeners may already have shown. ``LocalWriter`` keeps each running
job's recent events (``KEEP_EVENTS``) with the ids Redis gave them. When a write finds the job
holding fewer events than it wrote (``GAP``: the new primary lost some), it appends the lost
ones again with the same ids and data (``lua/restore.lua``) and goes on: the stream is then
what every listener saw. When it cannot (it keeps fewer than were lost, or the ids of some are
unknown because a reply was lost), the job ends with a retryable ``store_unavailable``, and a
listener may have shown events its replay lacks: ``replicated`` is the setting that rules
this out (``tokenrelay.store.durability``).
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any

import structlog
from redis.exceptions import RedisError, ResponseError

from tokenrelay.keys import job_keys
from tokenrelay.store.connections import Streams, script
from tokenrelay.store.events import EventWriter, _Batch

log = structlog.get_logger("tokenrelay.events")

RESTORE_LUA = (resources.files("tokenrelay.store") / "lua" / "restore.lua").read_text()
KEEP_EVENTS = 1024
"""Events kept per running job: a failover loses what was written in the moments before it."""
_GAP = re.compile(r"GAP expected event (\d+) got (\d+)")


@dataclass(frozen=True, slots=True)
class _Kept:
    seq: int
    id: bytes
    type: bytes
    data: bytes
    text: bytes
    fields: tuple[tuple[str, str], ...]  # the batch's status fields, on its last event


class LocalWriter(EventWriter):
    """An ``EventWriter`` that restores the events a failover lost (see the module)."""

    def __init__(self, redis: Streams, *, keep: int = KEEP_EVENTS, **options: Any) -> None:
        super().__init__(redis, **options)
        self.keep = keep
        self._kept: dict[str, deque[_Kept]] = {}
        self._unsure: set[str] = set()  # jobs with a write whose reply never came
        self._restore = script(redis, RESTORE_LUA)
        self.restored = 0

    def forget(self, job_id: str) -> None:
        super().forget(job_id)
        self._kept.pop(job_id, None)
        self._unsure.discard(job_id)

    async def _execute(self, batches: list[_Batch]) -> list[Any]:
        results = await super()._execute(batches)
        self._note(batches, results)
        lost = [i for i, result in enumerate(results) if _gap(result) is not None]
        if not lost:
            return results
        healed = await self._heal([batches[i] for i in lost], [results[i] for i in lost])
        again = [i for i in lost if batches[i].job_id in healed]
        if again:
            retried = await super()._execute([batches[i] for i in again])
            self._note([batches[i] for i in again], retried)
            for i, result in zip(again, retried, strict=True):
                results[i] = result
        return results

    def _note(self, batches: list[_Batch], results: list[Any]) -> None:
        """Keep the events just written, with their ids: one Lua call appends a batch's events
        with consecutive ids, which its reply's first and last id and count confirm."""
        for batch, result in zip(batches, results, strict=True):
            job_id = batch.job_id
            if isinstance(result, BaseException):
                self._unsure.add(job_id)
                continue
            if self.keep == 0:
                continue
            kept = self._kept.setdefault(job_id, deque(maxlen=self.keep))
            ids = _ids(result, len(batch.events))
            if ids is None or job_id in self._unsure:
                # Some events' ids are unknown (a reply was lost, or a retry wrote part of
                # the batch): nothing before this point can be restored.
                kept.clear()
                self._unsure.discard(job_id)
                continue
            last = len(batch.events) - 1
            for k, (kind, data, text) in enumerate(batch.events):
                fields = tuple(batch.fields.items()) if k == last else ()
                kept.append(_Kept(batch.seq + k, ids[k], kind, data, text, fields))

    async def _heal(self, batches: list[_Batch], errors: list[Any]) -> set[str]:
        """Restore, per job, the events between what Redis has and what its first lost batch
        follows; the jobs healed."""
        healed: set[str] = set()
        seen: set[str] = set()
        for batch, error in zip(batches, errors, strict=True):
            if batch.job_id in seen:
                continue
            seen.add(batch.job_id)
            gap = _gap(error)
            assert gap is not None
            have, _ = gap
            missing = self._missing(batch.job_id, have, batch.seq)
            if missing is None:
                log.error("events_lost", job_id=batch.job_id, have=have, wrote=batch.seq)
                continue
            fields: dict[str, str] = {}
            argv: list[Any] = []
            for kept in missing:
                fields.update(kept.fields)
                argv += (kept.id, kept.type, kept.data, kept.text)
            head: list[Any] = [batch.owner, have, self.maxlen, self.safety_ttl_s, len(fields)]
            for name, value in fields.items():
                head += (name, value)
            try:
                await self._restore(keys=list(job_keys(batch.job_id)), args=head + argv)
            except (RedisError, OSError) as exc:
                log.warning("events_restore_failed", job_id=batch.job_id, error=str(exc)[:80])
                continue
            self.restored += len(missing)
            log.warning("events_restored", job_id=batch.job_id, count=len(missing))
            healed.add(batch.job_id)
        return healed

    def _missing(self, job_id: str, have: int, upto: int) -> list[_Kept] | None:
        """The kept events ``have`` .. ``upto - 1``, or None unless every one is kept."""
        kept = self._kept.get(job_id)
        if not kept or have >= upto:
            return None
        wanted = [k for k in kept if have <= k.seq < upto]
        if [k.seq for k in wanted] != list(range(have, upto)):
            return None
        return wanted


def _gap(result: Any) -> tuple[int, int] | None:
    """(events the job has, the batch's first event number) of a GAP error, else None."""
    if isinstance(result, ResponseError):
        found = _GAP.search(str(result))
        if found is not None:
            return int(found.group(1)), int(found.group(2))
    return None


def _ids(reply: Any, count: int) -> list[bytes] | None:
    """The ids of the ``count`` events one append wrote, from its reply, or None when the
    reply does not show them all written in one call with consecutive ids."""
    if not isinstance(reply, list) or len(reply) < 4 or int(reply[3]) != count or count == 0:
        return None
    first, last = bytes(reply[2]), bytes(reply[0])
    first_ms, _, first_seq = first.partition(b"-")
    last_ms, _, last_seq = last.partition(b"-")
    if first_ms != last_ms or int(last_seq) - int(first_seq) != count - 1:
        return None
    return [b"%s-%d" % (first_ms, int(first_seq) + k) for k in range(count)]
