-- End a running job with an error and the one end event, atomically: the reaper's answer to a
-- lapsed lease (owner '': whoever holds it), or a worker's own after its writes failed.
-- KEYS: events stream, status hash, text string
-- ARGV: owner ('' = any), now (RFC 3339), ttl, error data JSON, end data JSON, maxlen,
--       voided owner ('' = none), job id
-- A stream with no event yet (its worker died right after claiming it) gets its start first,
-- so every stream still reads start ... end.
-- Replies 1 when the job is ended (now, or before by this owner), 2 when it is still queued
-- (its taker died or stalled before claiming it: the voided owner can no longer claim it, so
-- it may simply run again), 0 when there is nothing to do (another owner, ended, expired).
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'queued' then
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'void:' .. ARGV[7], '1') end
  return 2
end
local owner = redis.call('HGET', KEYS[2], 'owner')
if ARGV[1] ~= '' and owner == ARGV[1] .. ':done' then return 1 end
if status ~= 'running' or (ARGV[1] ~= '' and owner ~= ARGV[1]) then return 0 end
-- Durability ``replicated``: what the attempt staged is published first (a listener may have
-- seen it on a primary since lost), so the error follows every event it could have seen. The
-- pending stream shares the job's hash tag (so its slot); its end, if staged, ends the job.
local kpend = string.gsub(KEYS[1], ':events$', ':pending')
if redis.call('EXISTS', kpend) == 1 then
  publish(KEYS[1], KEYS[2], KEYS[3], kpend, owner, '+', ARGV[6], 0)
  if redis.call('HGET', KEYS[2], 'owner') == owner .. ':done' then return 1 end
end
local have = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
local added = 2
if have == 0 then
  local f = redis.call('HMGET', KEYS[2], 'upstream', 'model', 'attempt')
  local model = f[2]
  if not model or model == '' then model = cjson.null end
  local start = cjson.encode({job_id = ARGV[8], upstream = f[1], model = model,
    attempt = tonumber(f[3] or '1')})
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 't', 'start', 'd', start)
  added = 3
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 't', 'error', 'd', ARGV[4])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*', 't', 'end', 'd', ARGV[5])
-- The owner changes, so a worker that was only slow (not dead) is fenced off from now on.
local by = ARGV[1] ~= '' and ARGV[1] or 'reaper'
redis.call('HSET', KEYS[2], 'status', 'failed', 'finish_reason', 'error', 'error', ARGV[4],
  'finished_at', ARGV[2], 'last_event_id', id, 'nevents', have + added, 'owner', by .. ':done')
for k = 1, 3 do redis.call('EXPIRE', KEYS[k], ARGV[3]) end
return 1
