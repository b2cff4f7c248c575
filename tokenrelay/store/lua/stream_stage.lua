-- Durability ``replicated`` for Durable Streams (prepended to the write scripts): a write's
-- messages and close marker go to the stream's pending stream (no reader follows it), each
-- with the request's token (``k``), to be published (stream_publish.lua) once a replica
-- holds them, with the ids they were staged under. Writers' checks see what is staged
-- (``stail``: the last message; ``sclosed``; ``slast``: the last entry of any kind); readers
-- see only what is published (``tail``, ``closed``).

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
local function stage_entry(kpend, last, kind, data, token)
  local ms, sq = string.match(last, '^(%d+)-(%d+)$')
  local now = redis.call('TIME')
  local id = '*'
  if tonumber(ms) >= tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
    id = ms .. '-' .. (tonumber(sq) + 1)
  end
  return redis.call('XADD', kpend, id, 't', kind, 'd', data, 'k', token)
end

-- Write a request's messages (ARGV[first] on): to the entries, or, with a token, staged
-- after the newest entry. 'm' starts them, 'n' goes on with them (a JSON batch). Returns the
-- new tail (``tail`` when there are none) and the last staged id (false when not staged).
local function write_messages(kentries, kpend, first, token, tail)
  local last = token ~= '' and stage_last(kentries, kpend)
  for i = first, #ARGV do
    local kind = i == first and 'm' or 'n'
    if token ~= '' then
      last = stage_entry(kpend, last, kind, ARGV[i], token)
      tail = last
    else
      tail = redis.call('XADD', kentries, '*', 't', kind, 'd', ARGV[i])
    end
  end
  return tail, last
end

-- A staged write's reply: ``head`` (the script's own three values), then the last staged id,
-- whether this call staged anything, and whether anything waits to be published. Writes
-- (``w``), so the WAIT after it covers every earlier staging of the stream, whoever made it.
local function stage_reply(meta, kpend, head, mine)
  redis.call('HINCRBY', meta, 'w', 1)
  head[4] = redis.call('HGET', meta, 'slast') or ''
  head[5] = mine and '1' or '0'
  head[6] = redis.call('XLEN', kpend) > 0 and '1' or '0'
  return head
end
