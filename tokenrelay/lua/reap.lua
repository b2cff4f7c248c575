-- End a running job whose worker stopped renewing its lease: error worker_lost, then end.
-- KEYS: events stream, status hash, text string
-- ARGV: now (RFC 3339), ttl, error data JSON, end data JSON, maxlen, error JSON for the hash
-- Replies 1 when it ended the job, 2 when the job is still queued (its worker died after
-- taking it from the queue but before starting it: nothing was published, so it may simply
-- run again), 0 when there is nothing to do (it ended, or expired).
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'queued' then return 2 end
if status ~= 'running' then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 't', 'error', 'd', ARGV[3])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 't', 'end', 'd', ARGV[4])
local have = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
-- The owner changes, so a worker that was only slow (not dead) is fenced off from now on.
redis.call('HSET', KEYS[2], 'status', 'failed', 'finish_reason', 'error', 'error', ARGV[6],
  'finished_at', ARGV[1], 'last_event_id', id, 'nevents', have + 2, 'owner', 'reaper:done')
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
return 1
