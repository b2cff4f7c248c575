-- Take (or renew) one of an upstream's concurrency slots, shared by every worker process.
-- KEYS: the upstream's slot set (sorted set: member -> lease deadline, ms)
-- ARGV: member, now (ms), deadline (ms), limit
-- Replies 1 when the member holds a slot, 0 when all are taken. Slots of dead workers lapse.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3] - ARGV[2] + 60000)
  return 1
end
return 0
