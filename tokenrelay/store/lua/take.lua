-- Take one job off arq's queue for an owner: mark it in progress and lease it, atomically, so
-- there is no instant where a job is neither queued nor leased. With the streams on the same
-- Redis (KEYS 4-6 given), claim it in the same call: one round trip from queue to running.
-- KEYS: arq queue, arq in-progress key, leases [, events stream, status hash, text string]
-- ARGV: job id, due by (ms: now, plus the clock skew allowed), lease deadline (ms),
--       in-progress ttl (ms), owner
--       [, now (RFC 3339), safety ttl (s)]
-- Idempotent for the same owner. Replies {0, why} when not taken ('taken', 'gone',
-- 'deferred'); else {1} (take only) or what claim() replies.
local current = redis.call('GET', KEYS[2])
if current ~= ARGV[5] then
  if current then return {0, 'taken'} end
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score then return {0, 'gone'} end
  if tonumber(score) > tonumber(ARGV[2]) then return {0, 'deferred'} end
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
if #KEYS == 3 then return {1} end
return claim(KEYS[4], KEYS[5], KEYS[6], ARGV[5], ARGV[6], ARGV[7])
