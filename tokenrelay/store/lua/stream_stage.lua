-- Durability ``replicated`` for Durable Streams (prepended to the write scripts): a write's
-- messages and close marker go to the stream's pending stream (no reader follows it), to be
-- published (stream_publish.lua) once a replica holds them, with the ids they were staged
-- under. Writers' checks see what is staged (``stail``, ``sclosed``); readers see only what
-- is published (``tail``, ``closed``).

-- The id after which the next entry is staged: the newest of the pending and the entries.
local function stage_last(kentries, kpend)
  local newest = redis.call('XREVRANGE', kpend, '+', '-', 'COUNT', 1)
  if #newest > 0 then return newest[1][1] end
  newest = redis.call('XREVRANGE', kentries, '+', '-', 'COUNT', 1)
  if #newest > 0 then return newest[1][1] end
  return '0-0'
end

-- Stage one entry after ``last``; returns its id. Ids follow the entries' even when the
-- clock is behind their newest (a promoted replica's clock, a pending stream just emptied).
local function stage_entry(kpend, last, kind, data)
  local ms, sq = string.match(last, '^(%d+)-(%d+)$')
  local now = redis.call('TIME')
  local id = '*'
  if tonumber(ms) >= tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    id = ms .. '-' .. (tonumber(sq) + 1)
  end
  return redis.call('XADD', kpend, id, 't', kind, 'd', data)
end
