"""Fan-out of jobs' new events to the listeners of this process: the hub (who follows what,
from which cursor; gap fill) in ``hub``, fed by blocking XREAD readers (one per Redis node)
in ``readers``."""

from __future__ import annotations

from tokenrelay.fanout.hub import Batch, Hub, Subscription

__all__ = ["Batch", "Hub", "Subscription"]
