-- publish(): copy a job's staged events (durability ``replicated``) from its pending stream
-- into its event stream, with the ids they were staged under, up to ``upto`` ('+': all), and
-- apply the text, status fields and end that came with them. Shared by publish.lua and
-- fail.lua. Only the entries of ``owner`` (the attempt holding the job) are copied: another
-- attempt's were never published, so nobody saw them. Idempotent: entries at or before the
-- stream's last id are skipped, so a publish lost in a failover is simply done again, and the
-- copies carry the same ids as the first time (staging was on a replica before any copy).
-- Returns the last id copied, or false when there was nothing to copy.
local function publish(kev, kjob, ktext, kpend, owner, upto, maxlen, safety_ttl)
  local last = redis.call('HGET', kjob, 'last_event_id') or '0-0'
  local entries = redis.call('XRANGE', kpend, '(' .. last, upto)
  local have = tonumber(redis.call('HGET', kjob, 'nevents') or '0')
  local text, id, added, final = {}, false, 0, 0
  for _, entry in ipairs(entries) do
    local f = {}
    for k = 1, #entry[2], 2 do f[entry[2][k]] = entry[2][k + 1] end
    if f.o == owner then
      id = redis.call('XADD', kev, 'MAXLEN', '~', maxlen, entry[1], 't', f.t, 'd', f.d)
      if #f.x > 0 then text[#text + 1] = f.x end
      if f.f then
        local fields = cjson.decode(f.f)
        for k = 1, #fields, 2 do redis.call('HSET', kjob, fields[k], fields[k + 1]) end
      end
      if f.e then final = tonumber(f.e) end
      added = added + 1
    end
  end
  if added == 0 then return false end
  local created_text = false
  if #text > 0 then
    local appended = table.concat(text)
    created_text = redis.call('APPEND', ktext, appended) == #appended
  end
  redis.call('HSET', kjob, 'nevents', have + added, 'last_event_id', id)
  -- The last copied entry stays: the next staged ids follow it (and so the stream's).
  redis.call('XTRIM', kpend, 'MINID', id)
  if final > 0 then
    redis.call('HSET', kjob, 'owner', owner .. ':done')
    for _, k in ipairs({kev, kjob, ktext, kpend}) do redis.call('EXPIRE', k, final) end
  elseif safety_ttl > 0 then
    if have == 0 then redis.call('EXPIRE', kev, safety_ttl) end
    if created_text then redis.call('EXPIRE', ktext, safety_ttl) end
  end
  return id
end
