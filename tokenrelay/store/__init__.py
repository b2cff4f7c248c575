"""The doors to Redis: job records (jobs), events (events), the queue on arq (queue), leases
and the reaper (leases), idempotency keys, and the connections they share."""
