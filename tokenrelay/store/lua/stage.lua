-- Stage a batch of a job's events (durability ``replicated``): appended to the job's pending
-- stream, which no reader follows, to be published (publish.lua) once a replica holds them.
-- KEYS: events stream, status hash, text string, pending stream
-- ARGV: as append.lua's: owner, seq, maxlen, final_ttl (0 = not final), safety_ttl, nfields,
--       nfields x (field, value), then events as (type, data, text) triples.
-- Exactly once by sequence number, as append.lua: each entry carries its owner (o) and event
-- number (n); the batch's last entry carries its status fields (f, JSON) and final ttl (e).
-- Replies {the id of the batch's last staged entry}.
local owner = redis.call('HGET', KEYS[2], 'owner')
local seq = tonumber(ARGV[2])
local nf = tonumber(ARGV[6])
local ev0 = 7 + 2 * nf
local nev = (#ARGV - ev0 + 1) / 3
local published = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
if owner ~= ARGV[1] then
  if owner == ARGV[1] .. ':done' and published >= seq + nev then
    -- A write, so the WAIT after it covers the end whoever published it (a lost ack).
    redis.call('HINCRBY', KEYS[2], 'writes', 1)
    return {redis.call('HGET', KEYS[2], 'last_event_id')}
  end
  return redis.error_reply('FENCED the job is not owned by this attempt')
end
local have, last_id = published, false
local newest = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if #newest > 0 then
  local f = {}
  for k = 1, #newest[1][2], 2 do f[newest[1][2][k]] = newest[1][2][k + 1] end
  if f.o == ARGV[1] then
    have = math.max(have, tonumber(f.n) + 1)
    last_id = newest[1][1]
  else
    redis.call('DEL', KEYS[4])  -- an earlier attempt's, never published
  end
end
if have < seq then
  return redis.error_reply('GAP expected event ' .. have .. ' got ' .. seq)
end
-- Staged ids must follow the stream's: with the pending stream new, start after its last id.
local next_id = '*'
if not last_id then
  local ms, sq = string.match(redis.call('HGET', KEYS[2], 'last_event_id') or '0-0',
    '^(%d+)-(%d+)$')
  local now = redis.call('TIME')
  if tonumber(ms) >= tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    next_id = ms .. '-' .. (tonumber(sq) + 1)
  end
end
local fields = {}
for f = 7, 6 + 2 * nf do fields[#fields + 1] = ARGV[f] end
local i = ev0 + 3 * (have - seq)
local n = have
while i <= #ARGV do
  local entry = {'o', ARGV[1], 'n', n, 't', ARGV[i], 'd', ARGV[i + 1], 'x', ARGV[i + 2]}
  if i + 3 > #ARGV then
    if nf > 0 then
      entry[#entry + 1] = 'f'
      entry[#entry + 1] = cjson.encode(fields)
    end
    if tonumber(ARGV[4]) > 0 then
      entry[#entry + 1] = 'e'
      entry[#entry + 1] = ARGV[4]
    end
  end
  last_id = redis.call('XADD', KEYS[4], next_id, unpack(entry))
  next_id = '*'
  n = n + 1
  i = i + 3
end
redis.call('EXPIRE', KEYS[4], ARGV[5])
return {last_id or redis.call('HGET', KEYS[2], 'last_event_id')}
