-- A Durable Stream's expiry, applied to all its keys (prepended to the write and read scripts).
-- meta: the stream's hash; keys: every key of the stream; retention_ms: for streams without one.
local function stream_expiry(meta, keys, retention_ms)
  local ttl = redis.call('HGET', meta, 'ttl')
  local exp_ms = redis.call('HGET', meta, 'exp_ms')
  for _, key in ipairs(keys) do
    if ttl then
      redis.call('PEXPIRE', key, tonumber(ttl) * 1000)
    elseif exp_ms then
      redis.call('PEXPIREAT', key, exp_ms)
    elseif retention_ms then
      redis.call('PEXPIRE', key, retention_ms)
    end
  end
end
