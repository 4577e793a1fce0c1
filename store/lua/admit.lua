-- Admission: refuse, answer busy or miss, or hold the reservation on the
-- budget and on every limit that applies, atomically.
-- KEYS: budget:{client}, held:{client}, expiry, then one counter per limit;
--       on a Redis Cluster all in the client's hash slot (store/redis_keys.py),
--       as are the counters the other scripts read from held values
-- ARGV: now (epoch ms), request id, tokens, cost (nanos), expires (epoch ms),
--       holds and event (as held:{client} keeps them), expiry member
--       (client/request), TTL of held:{client} (s), then one string of the
--       limits (one argument, not six each: each costs the client an encoding),
--       per limit in KEYS order "limit amount rebuilt metric ttl name " with
--       rebuilt from the ledger when missing (1/0), metric (t tokens, c cost,
--       q requests, n in flight), how long its counter is kept (ms, 0: always)
local h = redis.call('HMGET', KEYS[1], 'nb', 'p', 'r', 'tl', 'cl', 'pal', 't', 'c', 'nr', 'rt', 'rc')
if not h[1] then return {'miss'} end
local budgeted = h[1] ~= '1'
if budgeted then
  local nr = tonumber(h[9])
  if nr > 0 and tonumber(ARGV[1]) >= nr then return {'miss'} end
  if h[2] == '1' then return {'refused', h[3]} end
  if h[6] == '1' then
    local tl, cl = tonumber(h[4]), tonumber(h[5])
    local t, c = tonumber(h[7]), tonumber(h[8])
    local rt, rc = tonumber(h[10] or '0'), tonumber(h[11] or '0')
    if tl >= 0 and t >= tl then return {'refused', 'token_limit'} end
    if cl >= 0 and c >= cl then return {'refused', 'cost_limit'} end
    if tl >= 0 and t + rt >= tl then return {'busy', 'token_limit'} end
    if cl >= 0 and c + rc >= cl then return {'busy', 'cost_limit'} end
  end
end
local specs = {}
for limit, amount, rebuilt, metric, ttl, name in string.gmatch(ARGV[9] or '', '(%d+) (%d+) (%d) (%a) (%d+) (%S+)') do
  specs[#specs + 1] = {tonumber(limit), amount, rebuilt, metric, ttl, 'limit:' .. name}
end
local n = #specs
local new = {}
for i = 1, n do
  local spec = specs[i]
  local counter = redis.call('HMGET', KEYS[3 + i], 'u', 'r')
  if not counter[1] then
    if spec[3] == '1' then return {'miss', 'limits'} end
    new[i] = true
  else
    local limit, metric, name = spec[1], spec[4], spec[6]
    local u, r = tonumber(counter[1]), tonumber(counter[2] or '0')
    if metric == 'n' then
      if r >= limit then return {'refused', name} end
    elseif metric == 'q' then
      if u + r >= limit then return {'refused', name} end
    else
      if u >= limit then return {'refused', name} end
      if u + r >= limit then return {'busy', name} end
    end
  end
end
if budgeted then
  redis.call('HINCRBY', KEYS[1], 'rt', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'rc', ARGV[4])
end
for i = 1, n do
  local spec = specs[i]
  redis.call('HINCRBY', KEYS[3 + i], 'r', spec[2])
  if new[i] then  -- a new window's counter: it starts at nothing used and ends with its window
    redis.call('HSET', KEYS[3 + i], 'u', 0)
    if spec[5] ~= '0' then redis.call('PEXPIRE', KEYS[3 + i], spec[5]) end
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[5] .. ':' .. ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
return {'ok'}
