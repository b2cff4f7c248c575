-- Read a Durable Stream after an entry id: its state and entries at one instant. A read resets
-- a sliding TTL (HEAD reads the hash directly and does not).
-- KEYS: meta hash, entries stream, producers hash, forks set
-- ARGV: owner, after id ('': none, only the state), count
-- Returns {} when missing, {'gone'} when deleted but kept for its forks, else
-- {ct, tail, closed, entries}
local cur = redis.call('HMGET', KEYS[1], 'owner', 'ct', 'tail', 'closed', 'ttl', 'gone')
if not cur[1] or cur[1] ~= ARGV[1] then return {} end
if cur[6] then return {'gone'} end
if cur[5] then stream_expiry(KEYS[1], KEYS, nil) end
local entries = {}
if ARGV[2] ~= '' then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
return {cur[2], cur[3], cur[4], entries}
