-- Create a Durable Stream, or confirm an existing one has the same configuration.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
-- ARGV: owner, content type, normalized content type, ttl ('' none), expires-at as sent ('' none),
--       expires-at ms ('' none), closed ('1'/'0'), retention ms, token (durability ``replicated``:
--       the messages and the close are staged under it, see stream_stage.lua; '' not), then the
--       initial messages
-- Returns {'created'|'exists'|'conflict', tail id, closed}; staged: the staged tail and
-- closure, and the reply goes on as stage_reply's.
local meta = KEYS[1]
local owner, ct, ctn, ttl, exp, exp_ms, closed, retention, token =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local stage = token ~= ''
local cur = redis.call('HMGET', meta, 'owner', 'ctn', 'ttl', 'exp', 'closed', 'tail', 'gone', 'fsrc',
  'sclosed', 'stail')
if cur[1] then
  local status = 'conflict'
  if stage then
    cur[5] = cur[9] or cur[5]
    cur[6] = cur[10] or cur[6]
  end
  if not cur[7] and not cur[8] and cur[1] == owner and cur[2] == ctn and (cur[3] or '') == ttl and (cur[4] or '') == exp
      and (cur[5] or '0') == closed then
    status = 'exists'
  end
  if stage then return stage_reply(meta, KEYS[5], {status, cur[6], cur[5] or '0'}, false) end
  return {status, cur[6], cur[5] or '0'}
end
local tail, last = write_messages(KEYS[2], KEYS[5], 10, token, '0-0')
if stage then
  if closed == '1' then last = stage_entry(KEYS[5], last, 'c', '', token) end
  redis.call('HSET', meta, 'owner', owner, 'ct', ct, 'ctn', ctn, 'closed', '0', 'tail', '0-0',
    'sclosed', closed, 'stail', tail, 'slast', last)
else
  redis.call('HSET', meta, 'owner', owner, 'ct', ct, 'ctn', ctn, 'closed', closed, 'tail', tail)
end
if ttl ~= '' then redis.call('HSET', meta, 'ttl', ttl) end
if exp ~= '' then redis.call('HSET', meta, 'exp', exp, 'exp_ms', exp_ms) end
stream_expiry(meta, KEYS, retention)
if stage then
  return stage_reply(meta, KEYS[5], {'created', tail, closed}, #ARGV >= 10 or closed == '1')
end
return {'created', tail, closed}
