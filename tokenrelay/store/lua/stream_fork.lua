-- Create a fork: a stream holding a copy of its source's messages up to the fork point, with
-- their ids (so offsets are the source's), then its own; or confirm an existing one has the
-- same configuration.
-- KEYS: meta hash, entries stream, producers hash, forks set (all the fork's)
-- ARGV: owner, content type, normalized, ttl, expires-at, expires-at ms, closed, retention ms,
--       source topic, Stream-Forked-From, fork offset ('' when defaulted), resolved fork offset,
--       sub-offset, tail, copied count n, then n triples (id, type, data), then initial messages
-- Returns {'created'|'exists'|'conflict', tail id, closed}
local meta = KEYS[1]
local owner, ct, ctn, ttl, exp, exp_ms, closed, retention =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local src, fsrc, foff, resolved, fsub, tail, n =
  ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], tonumber(ARGV[15])
local cur = redis.call('HMGET', meta, 'owner', 'ctn', 'ttl', 'exp', 'closed', 'tail', 'gone',
  'fsrc', 'foff', 'fsub')
if cur[1] then
  if not cur[7] and cur[1] == owner and cur[2] == ctn and (cur[3] or '') == ttl
      and (cur[4] or '') == exp and (cur[5] or '0') == closed and cur[8] == fsrc
      and (foff == '' or cur[9] == foff) and cur[10] == fsub then
    return {'exists', cur[6], cur[5] or '0'}
  end
  return {'conflict', cur[6], cur[5] or '0'}
end
for i = 0, n - 1 do
  local at = 16 + 3 * i
  redis.call('XADD', KEYS[2], ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2])
end
for i = 16 + 3 * n, #ARGV do
  tail = redis.call('XADD', KEYS[2], '*', 't', i == 16 + 3 * n and 'm' or 'n', 'd', ARGV[i])
end
redis.call('HSET', meta, 'owner', owner, 'ct', ct, 'ctn', ctn, 'closed', closed, 'tail', tail,
  'src', src, 'fsrc', fsrc, 'foff', resolved, 'fsub', fsub)
if ttl ~= '' then redis.call('HSET', meta, 'ttl', ttl) end
if exp ~= '' then redis.call('HSET', meta, 'exp', exp, 'exp_ms', exp_ms) end
stream_expiry(meta, KEYS, retention)
return {'created', tail, closed}
