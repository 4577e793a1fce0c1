-- Admission: refuse, answer busy or miss, or hold the reservation, atomically.
-- KEYS: budget:{client}, held:{client}, expiry
-- ARGV: now (epoch ms), request id, tokens, cost (nanos), expires (epoch ms),
--       event JSON, expiry member (client/request), TTL of held:{client} (s)
local h = redis.call('HMGET', KEYS[1], 'nb', 'p', 'r', 'tl', 'cl', 'pal', 't', 'c', 'nr', 'rt', 'rc')
if not h[1] then return {'miss'} end
if h[1] ~= '1' then
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
  redis.call('HINCRBY', KEYS[1], 'rt', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'rc', ARGV[4])
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[5] .. ':' .. ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
return {'ok'}
