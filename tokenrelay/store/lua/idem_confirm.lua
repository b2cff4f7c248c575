-- Confirm a claimed Idempotency-Key: run inside the MULTI/EXEC that enqueues its job, so a
-- confirmed key always names a job that exists.
-- KEYS: the idempotency key
-- ARGV: our pending value, the confirmed value ("<job_id> <body hash>"), its expiry in s
-- Leaves alone a key another request holds (ours lapsed and was claimed again); replies 1 when
-- it confirmed the key.
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
