-- Delete an Idempotency-Key only if it still holds the given value (compare and delete).
-- KEYS: the idempotency key
-- ARGV: the value it must hold
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
