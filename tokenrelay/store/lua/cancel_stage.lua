-- Durability ``replicated``: finish_queued.lua in two steps. Stages the end of a job no worker
-- has taken (cancel before start) in its pending stream and marks it (owner ``api:ending``: no
-- worker can claim it now; one that takes it off the queue finishes the cancel instead); the
-- caller waits for a replica, then publishes it (end_staged.lua).
-- KEYS: events stream, status hash, text string, pending stream
-- ARGV: now (RFC 3339), ttl, end data JSON
-- Replies 3 when the end is staged (now or before), 1 when the job had ended, both after a
-- write (``writes``) so the WAIT that follows covers what they rest on; 0, writing nothing,
-- when a worker owns the job (or it is gone).
local status = redis.call('HGET', KEYS[2], 'status')
if not status or status == 'running' then return 0 end
redis.call('HINCRBY', KEYS[2], 'writes', 1)
if redis.call('HGET', KEYS[2], 'owner') == 'api:ending' then return 3 end
if status ~= 'queued' then return 1 end
redis.call('DEL', KEYS[4])  -- no attempt ran: nothing staged was ever published
local n = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
local fields = cjson.encode({'status', 'cancelled', 'finish_reason', 'cancelled',
  'finished_at', ARGV[1]})
redis.call('XADD', KEYS[4], next_staged_id(KEYS[2], false), 'o', 'api', 'n', n, 't', 'end',
  'd', ARGV[3], 'x', '', 'f', fields, 'e', ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[2])
redis.call('HSET', KEYS[2], 'owner', 'api:ending')
return 3
