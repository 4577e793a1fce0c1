-- Hold a reservation again after the gate lost it (ARGV as in admit.lua,
-- without the check); one still held is not counted twice.
-- KEYS: budget:{client}, held:{client}, expiry
local payload = ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[5] .. ':' .. ARGV[6]
if redis.call('HSETNX', KEYS[2], ARGV[2], payload) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[7])
for key, amount in string.gmatch(string.match(ARGV[6], '^([^\n]*)\n') or '', '(%S+) (%d+) %a') do
  if redis.call('EXISTS', key) == 1 then redis.call('HINCRBY', key, 'r', amount) end
end
if redis.call('HGET', KEYS[1], 'nb') == '0' then
  redis.call('HINCRBY', KEYS[1], 'rt', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'rc', ARGV[4])
end
return 1
