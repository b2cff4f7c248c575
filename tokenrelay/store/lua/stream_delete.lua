-- Delete a Durable Stream owned by ARGV[1]: 1 if it was there, else 0.
-- KEYS: meta hash, entries stream, producers hash
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or owner ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
