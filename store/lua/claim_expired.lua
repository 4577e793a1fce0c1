-- Take an expired reservation away from the gate, for exactly one caller.
-- KEYS: budget:{client}, held:{client}, expiry
-- ARGV: request id, expiry member (client/request)
if redis.call('ZSCORE', KEYS[3], ARGV[2]) == false then return false end
local v = release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
if v then count_holds(v, '0', '0', true) end  -- charged at its estimate, on its limits too
redis.call('ZREM', KEYS[3], ARGV[2])  -- even if its reservation was already gone
return v
