-- Create a Durable Stream, or confirm an existing one has the same configuration.
-- KEYS: meta hash, entries stream, producers hash, forks set
-- ARGV: owner, content type, normalized content type, ttl ('' none), expires-at as sent ('' none),
--       expires-at ms ('' none), closed ('1'/'0'), retention ms, then the initial messages
-- Returns {'created'|'exists'|'conflict', tail id, closed}
local meta = KEYS[1]
local owner, ct, ctn, ttl, exp, exp_ms, closed, retention =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local cur = redis.call('HMGET', meta, 'owner', 'ctn', 'ttl', 'exp', 'closed', 'tail', 'gone', 'fsrc')
if cur[1] then
  if not cur[7] and not cur[8] and cur[1] == owner and cur[2] == ctn and (cur[3] or '') == ttl and (cur[4] or '') == exp
      and (cur[5] or '0') == closed then
    return {'exists', cur[6], cur[5] or '0'}
  end
  return {'conflict', cur[6], cur[5] or '0'}
end
local tail = '0-0'
for i = 9, #ARGV do
  tail = redis.call('XADD', KEYS[2], '*', 't', i == 9 and 'm' or 'n', 'd', ARGV[i])
end
redis.call('HSET', meta, 'owner', owner, 'ct', ct, 'ctn', ctn, 'closed', closed, 'tail', tail)
if ttl ~= '' then redis.call('HSET', meta, 'ttl', ttl) end
if exp ~= '' then redis.call('HSET', meta, 'exp', exp, 'exp_ms', exp_ms) end
stream_expiry(meta, KEYS, retention)
return {'created', tail, closed}
