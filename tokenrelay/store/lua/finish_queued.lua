-- End a job that no worker has taken yet (cancel before start): one end event, atomically.
-- KEYS: events stream, status hash, text string
-- ARGV: now (RFC 3339), ttl, end data JSON, maxlen
-- Replies 1 when it ended the job, 0 when the job was not queued (a worker owns it).
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then return 0 end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 't', 'end', 'd', ARGV[3])
local have = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
redis.call('HSET', KEYS[2], 'status', 'cancelled', 'finish_reason', 'cancelled',
  'finished_at', ARGV[1], 'last_event_id', id, 'nevents', have + 1, 'owner', 'api:done')
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[2]) end
return 1
