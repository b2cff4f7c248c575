-- A write to a Durable Stream's state that changes nothing readers see, so a WAIT after it
-- covers every earlier write to the stream (durability ``replicated``: a wait tried again on a
-- new connection, or a duplicate whose original was staged by another request).
-- KEYS: meta hash
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'w', 1) end
return 1
