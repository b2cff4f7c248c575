-- The jobs of arq's queue that may run now and that no worker has taken, oldest first.
-- KEYS: arq queue.  ARGV: due by (ms), limit, arq's in-progress key prefix.
-- (The in-progress keys are built here: the queue is always one Redis node, never a cluster.)
local out = {}
local offset = 0
local page = math.max(tonumber(ARGV[2]), 100)
-- Bounded: at most ten pages of the queue a call, however many jobs are running.
for _ = 1, 10 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', offset, page)
  for _, id in ipairs(ids) do
    if redis.call('EXISTS', ARGV[3] .. id) == 0 then
      out[#out + 1] = id
      if #out >= tonumber(ARGV[2]) then return out end
    end
  end
  if #ids < page then break end
  offset = offset + page
end
return out
