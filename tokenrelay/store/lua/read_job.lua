-- A job's status hash and text, read at one instant (so the text matches last_event_id).
-- KEYS: status hash, text string
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
