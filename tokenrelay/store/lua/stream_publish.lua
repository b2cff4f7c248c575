-- Publish a Durable Stream's staged entries (durability ``replicated``) up to ``upto``, once a
-- replica holds them: copied into its entries with the ids they were staged under, ``tail``
-- and ``closed`` moved on, taken out of the pending stream. Only up to ``upto``: what was
-- staged after it may not be on a replica yet. Idempotent: entries at or before the entries'
-- newest are skipped, so a publish lost in a failover is done again with the same ids and data.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
-- ARGV: upto (the newest id to publish), retention ms, then what the caller's write must show
--       to count as kept: closed ('1': the stream is closed), token (the entry at ``upto`` was
--       staged under it; '' no check), producer id, epoch, seq (its state is at least that;
--       '' no check)
-- Returns {'ok', tail} or {'lost', tail}: the caller's write is no longer there (a failover
-- lost it before a replica held it). Always writes, so the WAIT after it covers the publish.
local meta = KEYS[1]
local upto, retention, closed, token, pid, epoch, pseq =
  ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if redis.call('EXISTS', meta) == 0 then return {'lost', ''} end
redis.call('HINCRBY', meta, 'w', 1)
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last = #newest > 0 and newest[1][1] or '0-0'
local tail, closing, copied = nil, false, {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[5], '(' .. last, upto)) do
  local f = {}
  for k = 1, #entry[2], 2 do f[entry[2][k]] = entry[2][k + 1] end
  redis.call('XADD', KEYS[2], entry[1], 't', f.t, 'd', f.d, 'k', f.k or '')
  copied[#copied + 1] = entry[1]
  if f.t == 'c' then closing = true else tail = entry[1] end
end
-- What the entries hold is out of the pending stream (copied now, or before a failover).
redis.call('XTRIM', KEYS[5], 'MINID', last)
if #copied > 0 then redis.call('XDEL', KEYS[5], unpack(copied)) end
if #newest > 0 then redis.call('XDEL', KEYS[5], last) end
if tail then redis.call('HSET', meta, 'tail', tail) end
if closing then redis.call('HSET', meta, 'closed', '1') end
stream_expiry(meta, KEYS, retention)
local kept = true
if token ~= '' then
  local at = redis.call('XRANGE', KEYS[2], upto, upto)
  kept = #at == 1 and at[1][2][6] == token
end
if kept and pid ~= '' then
  local raw = redis.call('HGET', KEYS[3], pid)
  if not raw then
    kept = false
  else
    local sep = string.find(raw, ' ', 1, true)
    local se, ss = tonumber(string.sub(raw, 1, sep - 1)), tonumber(string.sub(raw, sep + 1))
    local e, s = tonumber(epoch), tonumber(pseq)
    kept = se > e or (se == e and ss >= s)
  end
end
if kept and closed == '1' then kept = redis.call('HGET', meta, 'closed') == '1' end
return {kept and 'ok' or 'lost', redis.call('HGET', meta, 'tail')}
