-- Append to a Durable Stream and/or close it: every check, the append, the producer's and the
-- stream's state, the expiry and the readers' wake-up (a 'c' entry on close) in one call.
-- KEYS: meta hash, entries stream, producers hash, forks set, pending stream
-- ARGV: owner, normalized content type ('' when no body), close ('1'/'0'), Stream-Seq ('' none),
--       producer id ('' none), producer epoch, producer seq, retention ms, token (durability
--       ``replicated``: the write is staged under it, see stream_stage.lua; '' not), then the
--       messages
-- Returns {status, tail id, detail}: ok | missing | gone | closed | dup_closed | ct | seq |
--         stale (detail: current epoch) | epoch_seq | gap (detail: last seq, '' when new) | dup
-- Staged: the tail and closure are the staged ones, and the reply goes on as stage_reply's.
local meta = KEYS[1]
local owner, ctn, close, seq, pid, epoch, pseq, retention, token =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local stage = token ~= ''
local cur = redis.call('HMGET', meta, 'owner', 'ctn', 'closed', 'tail', 'seq', 'cb', 'gone',
  'stail', 'sclosed')
if not cur[1] or cur[1] ~= owner then return {'missing', '', ''} end
if cur[7] then return {'gone', '', ''} end
local tail = cur[4]
if stage then
  tail = cur[8] or tail
  if cur[9] then cur[3] = cur[9] end
end
local function reply(status, t, detail, mine)
  if stage then return stage_reply(meta, KEYS[5], {status, t, detail}, mine) end
  return {status, t, detail}
end
local n = #ARGV - 9
if cur[3] == '1' then
  if pid ~= '' and cur[6] == pid .. '\n' .. epoch .. '\n' .. pseq then
    return reply('dup_closed', tail, pseq)
  end
  if n == 0 and close == '1' and pid == '' then return reply('ok', tail, '') end
  return reply('closed', tail, '')
end
if n > 0 and ctn ~= cur[2] then return reply('ct', tail, '') end
local state = nil
if pid ~= '' then
  local raw = redis.call('HGET', KEYS[3], pid)
  local e, s = tonumber(epoch), tonumber(pseq)
  if not raw then
    if s ~= 0 then return reply('gap', tail, '') end
  else
    local sep = string.find(raw, ' ', 1, true)
    local st_epoch, st_seq = string.sub(raw, 1, sep - 1), string.sub(raw, sep + 1)
    local se, ss = tonumber(st_epoch), tonumber(st_seq)
    if e < se then return reply('stale', tail, st_epoch) end
    if e > se then
      if s ~= 0 then return reply('epoch_seq', tail, '') end
    elseif s <= ss then
      return reply('dup', tail, st_seq)
    elseif s ~= ss + 1 then
      return reply('gap', tail, st_seq)
    end
  end
  state = epoch .. ' ' .. pseq
end
if seq ~= '' and cur[5] and seq <= cur[5] then return reply('seq', tail, '') end
local last
tail, last = write_messages(KEYS[2], KEYS[5], 10, token, tail)
redis.call('HSET', meta, stage and 'stail' or 'tail', tail)
if seq ~= '' then redis.call('HSET', meta, 'seq', seq) end
if state then redis.call('HSET', KEYS[3], pid, state) end
if close == '1' then
  redis.call('HSET', meta, stage and 'sclosed' or 'closed', '1')
  if pid ~= '' then redis.call('HSET', meta, 'cb', pid .. '\n' .. epoch .. '\n' .. pseq) end
  if stage then
    last = stage_entry(KEYS[5], last, 'c', '', token)
  else
    redis.call('XADD', KEYS[2], '*', 't', 'c', 'd', '')
  end
end
if stage then redis.call('HSET', meta, 'slast', last) end
stream_expiry(meta, KEYS, retention)
return reply('ok', tail, '', stage)
