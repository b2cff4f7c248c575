-- A fork of this stream is gone (ARGV[1], its topic): forget it; if this stream was deleted
-- and that was its last fork, delete it now. Returns the topic to release next (its own
-- source) or ''.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
redis.call('SREM', KEYS[4], ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'gone', 'src')
if cur[1] and redis.call('SCARD', KEYS[4]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  return cur[2] or ''
end
return ''
