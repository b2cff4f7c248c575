-- Delete a Durable Stream owned by ARGV[1]. One with forks left (their topics in its forks
-- set) is only marked gone: its URL answers 410 and cannot be created again until the last
-- fork is deleted (stream_release.lua). Returns {status, source topic}: 0 missing, -1 already
-- gone, 2 marked gone, 1 deleted (then its own source, '' if none, is to be released).
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
local cur = redis.call('HMGET', KEYS[1], 'owner', 'gone', 'src')
if not cur[1] or cur[1] ~= ARGV[1] then return {0, ''} end
if cur[2] then return {-1, ''} end
if redis.call('SCARD', KEYS[4]) > 0 then
  redis.call('HSET', KEYS[1], 'gone', '1')
  return {2, ''}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
return {1, cur[3] or ''}
