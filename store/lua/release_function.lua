-- release(): drop a held reservation and its share of the reserved totals;
-- the reservation's value, or false if it was not held. Prepended to the
-- scripts that call it (settle, release, claim_expired).
local function release(budget, held, expiry, request_id, member)
  local v = redis.call('HGET', held, request_id)
  if not v then return false end
  redis.call('HDEL', held, request_id)
  redis.call('ZREM', expiry, member)
  local et, ec = string.match(v, '^(%d+):(%d+):')
  if redis.call('HGET', budget, 'nb') == '0' then
    -- HINCRBY refuses "-0", the form both a string and a Lua number of zero would take
    if et ~= '0' then redis.call('HINCRBY', budget, 'rt', '-' .. et) end
    if ec ~= '0' then redis.call('HINCRBY', budget, 'rc', '-' .. ec) end
  end
  return v
end
