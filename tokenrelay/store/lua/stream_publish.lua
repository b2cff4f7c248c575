-- Publish a Durable Stream's staged entries (durability ``replicated``) once a replica holds
-- them: copied into its entries with the ids they were staged under, ``tail`` and ``closed``
-- moved on, the pending stream emptied. Idempotent: entries at or before the entries' newest
-- are skipped, so a publish lost in a failover is done again with the same ids and data.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
-- ARGV: the id the caller staged up to ('' none), retention ms, whether it closed ('1'/'0')
-- Returns {'ok', tail} or {'lost', tail}: what the caller staged is no longer there (a
-- failover lost it before a replica held it). Always writes (stream_touch.lua's write), so the
-- WAIT after it covers the publish, whoever made it.
local function id_of(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(sq)
end
local function before(a, b)
  local ams, asq = id_of(a)
  local bms, bsq = id_of(b)
  return ams < bms or (ams == bms and asq < bsq)
end
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 0 then return {'lost', ''} end
redis.call('HINCRBY', meta, 'w', 1)
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last = #newest > 0 and newest[1][1] or '0-0'
local tail, closed = nil, false
for _, entry in ipairs(redis.call('XRANGE', KEYS[5], '(' .. last, '+')) do
  local f = {}
  for k = 1, #entry[2], 2 do f[entry[2][k]] = entry[2][k + 1] end
  redis.call('XADD', KEYS[2], entry[1], 't', f.t, 'd', f.d)
  last = entry[1]
  if f.t == 'c' then closed = true else tail = entry[1] end
end
redis.call('DEL', KEYS[5])
if tail then redis.call('HSET', meta, 'tail', tail) end
if closed then redis.call('HSET', meta, 'closed', '1') end
stream_expiry(meta, KEYS, tonumber(ARGV[2]))
local staged = redis.call('HGET', meta, 'stail') or redis.call('HGET', meta, 'tail')
if (ARGV[1] ~= '' and before(staged, ARGV[1]))
    or (ARGV[3] == '1' and redis.call('HGET', meta, 'closed') ~= '1') then
  return {'lost', redis.call('HGET', meta, 'tail')}
end
return {'ok', redis.call('HGET', meta, 'tail')}
