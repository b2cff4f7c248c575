-- Write again events a failover lost (durability ``local``): the new primary lacks the last
-- events its old one acknowledged, and the worker still holds them, with their ids. They are
-- appended with those same ids, so the stream equals what any listener saw before.
-- KEYS: events stream, status hash, text string
-- ARGV: owner, have (the events the job has now), maxlen, safety_ttl, nfields,
--       nfields x (field, value), then events as (id, type, data, text) quads.
-- Replies the last id written, or an error: FENCED (not this attempt's job), GAP (the job
-- holds another count of events than ``have``: nothing written).
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then
  return redis.error_reply('FENCED the job is not owned by this attempt')
end
local have = tonumber(redis.call('HGET', KEYS[2], 'nevents') or '0')
if have ~= tonumber(ARGV[2]) then
  return redis.error_reply('GAP expected event ' .. have .. ' got ' .. ARGV[2])
end
local nf = tonumber(ARGV[5])
local id = false
local text = {}
local added = 0
for i = 6 + 2 * nf, #ARGV, 4 do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], ARGV[i], 't', ARGV[i + 1],
    'd', ARGV[i + 2])
  if #ARGV[i + 3] > 0 then text[#text + 1] = ARGV[i + 3] end
  added = added + 1
end
if #text > 0 then
  local appended = table.concat(text)
  if redis.call('APPEND', KEYS[3], appended) == #appended then
    redis.call('EXPIRE', KEYS[3], ARGV[4])
  end
end
if have == 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
redis.call('HSET', KEYS[2], 'nevents', have + added, 'last_event_id', id)
for f = 6, 5 + 2 * nf, 2 do
  redis.call('HSET', KEYS[2], ARGV[f], ARGV[f + 1])
end
return id
