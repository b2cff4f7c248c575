-- Append a batch of events to a job's stream, atomically with its text and status hash.
-- KEYS: events stream, status hash, text string
-- ARGV: owner, seq, maxlen, final_ttl (0 = not final), safety_ttl, nfields,
--       nfields x (field, value), then events as (type, data, text) triples.
-- seq is the number of events the job had before this batch: a batch retried after a lost
-- reply skips what was already applied, so appends are exactly-once. Replies {the last id,
-- whether a cancel was asked for, the first id and the count appended by this call} (a worker
-- that missed the cancel message learns it here; the ids let it restore events a failover lost).
local owner = redis.call('HGET', KEYS[2], 'owner')
local have = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
local seq = tonumber(ARGV[2])
local nf = tonumber(ARGV[6])
local ev0 = 7 + 2 * nf
local nev = (#ARGV - ev0 + 1) / 3
if owner ~= ARGV[1] then
  if owner == ARGV[1] .. ':done' and have >= seq + nev then
    return {redis.call('HGET', KEYS[2], 'last_event_id'), ''}
  end
  return redis.error_reply('FENCED the job is not owned by this attempt')
end
if have < seq then
  return redis.error_reply('GAP expected event ' .. have .. ' got ' .. seq)
end
local id = false
local first = false
local text = {}
local added = 0
local i = ev0 + 3 * (have - seq)
while i <= #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 't', ARGV[i], 'd', ARGV[i + 1])
  first = first or id
  if #ARGV[i + 2] > 0 then text[#text + 1] = ARGV[i + 2] end
  added = added + 1
  i = i + 3
end
local created_text = false
if #text > 0 then
  local appended = table.concat(text)
  created_text = redis.call('APPEND', KEYS[3], appended) == #appended
end
if added > 0 then
  redis.call('HSET', KEYS[2], 'nevents', have + added, 'last_event_id', id)
end
for f = 7, 6 + 2 * nf, 2 do
  redis.call('HSET', KEYS[2], ARGV[f], ARGV[f + 1])
end
local final_ttl = tonumber(ARGV[4])
if final_ttl > 0 then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1] .. ':done')
  for k = 1, 3 do redis.call('EXPIRE', KEYS[k], final_ttl) end
else
  -- Keys never live forever, even if their worker vanishes: the end batch shortens this.
  if have == 0 and added > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
  if created_text then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
end
return {id or redis.call('HGET', KEYS[2], 'last_event_id'),
  redis.call('HGET', KEYS[2], 'cancel_requested') or '', first or '', added}
