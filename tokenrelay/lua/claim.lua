-- Take a job for one attempt: queued -> running (or take over a running job on a retry).
-- KEYS: events stream, status hash, text string
-- ARGV: owner, now (RFC 3339), takeover ('1' lets a retry take a running job), safety_ttl
-- Replies {attempt, nevents, request, upstream, model, cancel_requested} when claimed,
-- or {0, status} when the job is not to be run. One round trip for everything a job needs.
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return {0, 'missing'} end
if status ~= 'queued' and not (status == 'running' and ARGV[3] == '1') then
  return {0, status}
end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
redis.call('HSET', KEYS[2], 'status', 'running', 'owner', ARGV[1])
redis.call('HSETNX', KEYS[2], 'started_at', ARGV[2])
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[4]) end
local f = redis.call('HMGET', KEYS[2], 'nevents', 'request', 'upstream', 'model', 'cancel_requested')
return {attempt, tonumber(f[1] or '0'), f[2], f[3], f[4] or '', f[5] or ''}
