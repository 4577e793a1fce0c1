-- Hand out an unrecorded event whose time is up, keeping it for another lease.
-- KEYS: unrecorded, unrecorded:due
-- ARGV: member (client/request), now (epoch ms), kept until (epoch ms)
local due = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not due) or tonumber(due) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return redis.call('HGET', KEYS[1], ARGV[1])
