-- Find jobs marked in progress that hold no lease, and give each a lapsed one, so the reaper
-- looks at them next. Walks arq's queue a page a call, from a cursor (a rank).
-- KEYS: arq queue, leases.  ARGV: cursor, page size, now (ms), arq's in-progress key prefix.
-- Replies {found, next cursor} (0 after the last page).
local ids = redis.call('ZRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1)
local found = 0
for _, id in ipairs(ids) do
  if redis.call('EXISTS', ARGV[4] .. id) == 1 and not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    found = found + 1
  end
end
local nxt = 0
if #ids == tonumber(ARGV[2]) then nxt = tonumber(ARGV[1]) + #ids end
return {found, nxt}
