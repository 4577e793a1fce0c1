-- Settle a call: release its reservation, keep its event until recorded (with
-- ARGV[7]), add its usage (to its limits too) and pause at a limit; a copy past
-- its period is dropped. Answers each limit counter's key and use now, flat.
-- KEYS: budget:{client}, held:{client}, expiry, unrecorded, unrecorded:due
-- ARGV: now (epoch ms), request id, tokens, cost (nanos), member (client/request),
--       add it to the budget too (1/0: the budget's copy was read with it),
--       [event JSON, keep until (epoch ms)]
local v = release(KEYS[1], KEYS[2], KEYS[3], ARGV[2], ARGV[5])
local counted = {}
if v then counted = count_holds(v, ARGV[3], ARGV[4], false) end
if ARGV[7] then
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[7])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[5])
end
if ARGV[6] == '0' then return counted end
local h = redis.call('HMGET', KEYS[1], 'nb', 'nr')
if (not h[1]) or h[1] == '1' then return counted end
local nr = tonumber(h[2])
if nr > 0 and tonumber(ARGV[1]) >= nr then
  redis.call('DEL', KEYS[1])
  return counted
end
local t = redis.call('HINCRBY', KEYS[1], 't', ARGV[3])
local c = redis.call('HINCRBY', KEYS[1], 'c', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'v', 1)
local f = redis.call('HMGET', KEYS[1], 'p', 'pal', 'tl', 'cl')
if f[1] ~= '1' and f[2] == '1' then
  local tl, cl = tonumber(f[3]), tonumber(f[4])
  if tl >= 0 and t >= tl then
    redis.call('HSET', KEYS[1], 'p', '1', 'r', 'token_limit')
  elseif cl >= 0 and c >= cl then
    redis.call('HSET', KEYS[1], 'p', '1', 'r', 'cost_limit')
  end
end
return counted
