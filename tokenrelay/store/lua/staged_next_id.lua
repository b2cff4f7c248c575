-- next_staged_id(): the id to stage a job's next entry under, after its pending stream's
-- newest entry (``last``) or, with none, after the event stream's last id, so a staged entry is
-- always published behind every event already in the stream. Shared by fail_stage.lua and
-- cancel_stage.lua (stage.lua does the same for the worker's rounds).
local function next_staged_id(kjob, last)
  if last then return '*' end
  local ms, sq = string.match(redis.call('HGET', kjob, 'last_event_id') or '0-0',
    '^(%d+)-(%d+)$')
  local now = redis.call('TIME')
  if tonumber(ms) >= tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    return ms .. '-' .. (tonumber(sq) + 1)
  end
  return '*'
end
