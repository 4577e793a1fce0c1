-- release(): drop a held reservation, its share of the reserved totals and
-- what it holds on its limits; the reservation's value, or false if it was
-- not held. A value is "tokens:cost:expires:" then the limit holds ("key
-- amount metric" each, space-separated), a newline and the event's JSON
-- (values written before limits have no holds and no newline).
-- Prepended to the scripts that call it (settle, release, claim_expired).
local function holds_of(v)
  return string.match(v, '^%d+:%d+:%d+:([^\n]*)\n') or ''
end
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
  for key, amount in string.gmatch(holds_of(v), '(%S+) (%d+) %a') do
    if amount ~= '0' and redis.call('EXISTS', key) == 1 then
      -- never below nothing: a counter lost and made again holds less than was released
      if redis.call('HINCRBY', key, 'r', '-' .. amount) < 0 then redis.call('HSET', key, 'r', 0) end
    end
  end
  return v
end
-- Add what a call used to each limit it held (only to counters still there:
-- one gone with its window, or lost, is counted again from the ledger); each
-- counter's key and what it has used now, flat.
local function count_holds(v, tokens, cost, estimated)
  local counted = {}
  for key, amount, metric in string.gmatch(holds_of(v), '(%S+) (%d+) (%a)') do
    local used = '0'
    if estimated then used = amount
    elseif metric == 't' then used = tokens
    elseif metric == 'c' then used = cost
    elseif metric == 'q' then used = '1' end
    if metric == 'n' then used = '0' end
    if redis.call('EXISTS', key) == 1 then
      counted[#counted + 1] = key
      counted[#counted + 1] = redis.call('HINCRBY', key, 'u', used)
    end
  end
  return counted
end
