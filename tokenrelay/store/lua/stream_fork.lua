-- Create a fork: a stream holding a copy of its source's messages up to the fork point, with
-- their ids (so offsets are the source's), then its own; or confirm an existing one has the
-- same configuration.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream (all the fork's)
-- ARGV: owner, content type, normalized, ttl, expires-at, expires-at ms, closed, retention ms,
--       source topic, Stream-Forked-From, fork offset ('' when defaulted), resolved fork offset,
--       sub-offset, tail, copied count n, token (durability ``replicated``: the fork's own
--       messages and close are staged under it, see stream_stage.lua; the copies are the
--       source's, already published; '' not), then n triples (id, type, data), then initial
--       messages
-- Returns {'created'|'exists'|'conflict', tail id, closed}; staged: the staged tail and
-- closure, and the reply goes on as stage_reply's.
local meta = KEYS[1]
local owner, ct, ctn, ttl, exp, exp_ms, closed, retention =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local src, fsrc, foff, resolved, fsub, tail, n, token =
  ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], tonumber(ARGV[15]), ARGV[16]
local stage = token ~= ''
local cur = redis.call('HMGET', meta, 'owner', 'ctn', 'ttl', 'exp', 'closed', 'tail', 'gone',
  'fsrc', 'foff', 'fsub', 'sclosed', 'stail')
if cur[1] then
  local status = 'conflict'
  if stage then
    cur[5] = cur[11] or cur[5]
    cur[6] = cur[12] or cur[6]
  end
  if not cur[7] and cur[1] == owner and cur[2] == ctn and (cur[3] or '') == ttl
      and (cur[4] or '') == exp and (cur[5] or '0') == closed and cur[8] == fsrc
      and (foff == '' or cur[9] == foff) and cur[10] == fsub then
    status = 'exists'
  end
  if stage then return stage_reply(meta, KEYS[5], {status, cur[6], cur[5] or '0'}, false) end
  return {status, cur[6], cur[5] or '0'}
end
for i = 0, n - 1 do
  local at = 17 + 3 * i
  redis.call('XADD', KEYS[2], ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2])
end
local published, last = tail, nil
local mine = closed == '1' or #ARGV >= 17 + 3 * n
tail, last = write_messages(KEYS[2], KEYS[5], 17 + 3 * n, token, tail)
redis.call('HSET', meta, 'owner', owner, 'ct', ct, 'ctn', ctn, 'closed', closed, 'tail', tail,
  'src', src, 'fsrc', fsrc, 'foff', resolved, 'fsub', fsub)
if stage then
  if closed == '1' then last = stage_entry(KEYS[5], last, 'c', '', token) end
  redis.call('HSET', meta, 'closed', '0', 'tail', published, 'sclosed', closed, 'stail', tail,
    'slast', last)
end
if ttl ~= '' then redis.call('HSET', meta, 'ttl', ttl) end
if exp ~= '' then redis.call('HSET', meta, 'exp', exp, 'exp_ms', exp_ms) end
stream_expiry(meta, KEYS, retention)
if stage then return stage_reply(meta, KEYS[5], {'created', tail, closed}, mine) end
return {'created', tail, closed}
