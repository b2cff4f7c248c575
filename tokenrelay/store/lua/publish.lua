
-- Publish what this attempt staged, up to an id (durability ``replicated``; see publish()).
-- KEYS: events stream, status hash, text string, pending stream
-- ARGV: owner, upto id, maxlen, safety_ttl
-- Replies {the last id, whether a cancel was asked for}, as append.lua does.
local owner = redis.call('HGET', KEYS[2], 'owner')
if owner ~= ARGV[1] then
  if owner == ARGV[1] .. ':done' then
    redis.call('HINCRBY', KEYS[2], 'writes', 1)  -- so the WAIT after it covers the end
    return {redis.call('HGET', KEYS[2], 'last_event_id'), ''}
  end
  return redis.error_reply('FENCED the job is not owned by this attempt')
end
local id = publish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3],
  tonumber(ARGV[4]))
return {id or redis.call('HGET', KEYS[2], 'last_event_id') or '',
  redis.call('HGET', KEYS[2], 'cancel_requested') or ''}
