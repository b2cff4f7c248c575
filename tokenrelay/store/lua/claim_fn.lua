-- claim(): take a queued job for one owner: queued -> running. Shared by claim.lua's caller
-- (split queue and streams) and take.lua (one Redis: dequeue, lease and claim in one call).
-- Idempotent for the same owner (a retry after a lost reply gets the same answer); refuses an
-- owner whose take a reaper voided (it stalled past its lease and the job was handed back).
-- Replies {attempt, nevents, request, upstream, model, cancel_requested} when the owner holds
-- the job, or {0, status} when it is not to be run ('missing', 'void', 'cancelling', or the
-- status).
local function claim(kev, kjob, ktext, owner, now, safety_ttl)
  local status = redis.call('HGET', kjob, 'status')
  if not status then return {0, 'missing'} end
  if status == 'running' and redis.call('HGET', kjob, 'owner') == owner then
    -- the same claim again: its first reply was lost
  elseif status ~= 'queued' then
    return {0, status}
  elseif redis.call('HEXISTS', kjob, 'void:' .. owner) == 1 then
    return {0, 'void'}
  elseif redis.call('HGET', kjob, 'owner') == 'api:ending' then
    -- cancelled while queued, its end staged (durability ``replicated``): the taker
    -- publishes it (cancel_stage.lua) instead of running the job
    return {0, 'cancelling'}
  else
    redis.call('HINCRBY', kjob, 'attempt', 1)
    redis.call('HSET', kjob, 'status', 'running', 'owner', owner)
    redis.call('HSETNX', kjob, 'started_at', now)
    redis.call('EXPIRE', kev, safety_ttl)
    redis.call('EXPIRE', kjob, safety_ttl)
    redis.call('EXPIRE', ktext, safety_ttl)
  end
  local f = redis.call('HMGET', kjob, 'attempt', 'nevents', 'request', 'upstream', 'model',
    'cancel_requested')
  return {tonumber(f[1]), tonumber(f[2] or '0'), f[3], f[4], f[5] or '', f[6] or ''}
end
