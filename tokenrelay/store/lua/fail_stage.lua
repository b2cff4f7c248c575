-- Durability ``replicated``: fail.lua in two steps. This one stages the error and the end in the
-- job's pending stream (no reader follows it) and fences the attempt off (its owner becomes
-- ``<owner>:ending``); the caller then waits for a replica (WAIT 1) and only then publishes
-- them (end_staged.lua). A listener so never sees an end a failover can lose, and a lost
-- publish is done again by whoever fails the job next (the worker retrying, or a reaper).
-- KEYS: events stream, status hash, text string, pending stream
-- ARGV: owner ('' = any), now (RFC 3339), ttl, error data JSON, end data JSON, maxlen,
--       voided owner ('' = none), job id
-- Replies as fail.lua (1 ended, 2 still queued, 0 nothing to do), or 3: staged (now or
-- before), to be published once a replica holds it. Whatever it replies about a job that
-- exists, it writes (``writes``): the WAIT that follows on this connection then covers what
-- the reply rests on, whichever connection wrote it (an end published by another caller).
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return 0 end
redis.call('HINCRBY', KEYS[2], 'writes', 1)
if status == 'queued' then
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'void:' .. ARGV[7], '1') end
  return 2
end
local owner = redis.call('HGET', KEYS[2], 'owner') or ''
if ARGV[1] ~= '' and owner == ARGV[1] .. ':done' then return 1 end
if string.sub(owner, -7) == ':ending' and (ARGV[1] == '' or owner == ARGV[1] .. ':ending') then
  return 3
end
if status ~= 'running' or (ARGV[1] ~= '' and owner ~= ARGV[1]) then return 0 end
-- What the attempt staged itself stays and is published first: listeners may have seen it.
local n = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
local last = false
local newest = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if #newest > 0 then
  local f = {}
  for k = 1, #newest[1][2], 2 do f[newest[1][2][k]] = newest[1][2][k + 1] end
  if f.o == owner then
    if f.e then
      -- Its own end is staged already: that one ends the job, as its worker's.
      redis.call('HSET', KEYS[2], 'owner', owner .. ':ending')
      return 3
    end
    n = math.max(n, tonumber(f.n) + 1)
    last = newest[1][1]
  else
    redis.call('DEL', KEYS[4])  -- an earlier attempt's, never published
  end
end
local by = ARGV[1] ~= '' and ARGV[1] or 'reaper'
redis.call('HSET', KEYS[2], 'owner', owner .. ':ending', 'ending_by', by)
local id = next_staged_id(KEYS[2], last)
if n == 0 then
  -- Its worker died right after claiming it: the stream still reads start ... end.
  local f = redis.call('HMGET', KEYS[2], 'upstream', 'model', 'attempt')
  local model = f[2]
  if not model or model == '' then model = cjson.null end
  local start = cjson.encode({job_id = ARGV[8], upstream = f[1], model = model,
    attempt = tonumber(f[3] or '1')})
  redis.call('XADD', KEYS[4], id, 'o', owner, 'n', n, 't', 'start', 'd', start, 'x', '')
  id, n = '*', n + 1
end
redis.call('XADD', KEYS[4], id, 'o', owner, 'n', n, 't', 'error', 'd', ARGV[4], 'x', '')
local fields = cjson.encode({'status', 'failed', 'finish_reason', 'error', 'error', ARGV[4],
  'finished_at', ARGV[2]})
redis.call('XADD', KEYS[4], '*', 'o', owner, 'n', n + 1, 't', 'end', 'd', ARGV[5], 'x', '',
  'f', fields, 'e', ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[3])
return 3
