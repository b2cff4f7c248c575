-- Claim an Idempotency-Key for a submit in progress, or say who holds it.
-- KEYS: the idempotency key
-- ARGV: the pending value ("pending <job_id> <body hash>"), its expiry in ms
-- Replies nil when it claimed the key, else the value already there.
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
