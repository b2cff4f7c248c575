-- Hand a job back to the queue after its taker died (or stalled) before claiming it: only if
-- its lease still lapsed and it is still that taker's, so a live worker's take is untouched.
-- KEYS: arq in-progress key, leases
-- ARGV: job id, now (ms), the taker seen (owner token, '' = none)
-- Replies 1 when handed back (the caller wakes the workers), 0 otherwise.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
