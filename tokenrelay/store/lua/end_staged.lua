
-- Publish a staged end (fail_stage.lua, cancel_stage.lua) once a replica holds it: the
-- attempt's staged events, then its error and end, with the ids they were staged under.
-- KEYS: events stream, status hash, text string, pending stream
-- ARGV: maxlen
-- Replies 1 when the job is ended (now or before; either way after a write, so the WAIT that
-- follows covers the end, whoever published it), or an error: LOST when the staged end is
-- gone (its pending stream expired), STAGED when nothing was staged.
local owner = redis.call('HGET', KEYS[2], 'owner') or ''
redis.call('HINCRBY', KEYS[2], 'writes', 1)
if string.sub(owner, -5) == ':done' then return 1 end
if string.sub(owner, -7) ~= ':ending' then
  return redis.error_reply('STAGED no end is staged for this job')
end
local attempt = string.sub(owner, 1, -8)
publish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], attempt, '+', ARGV[1], 0)
if redis.call('HGET', KEYS[2], 'owner') ~= attempt .. ':done' then
  return redis.error_reply('LOST the staged end of this job is gone')
end
local by = redis.call('HGET', KEYS[2], 'ending_by')
if by then redis.call('HSET', KEYS[2], 'owner', by .. ':done') end
redis.call('HDEL', KEYS[2], 'ending_by')
return 1
