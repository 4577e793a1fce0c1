-- Replace a budget copy; its reserved totals are recomputed from the held
-- reservations, so a copy rebuilt mid-flight still counts them.
-- KEYS: budget:{client}, held:{client}
-- ARGV: TTL of the copy (s), then its fields and values
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if redis.call('HGET', KEYS[1], 'nb') == '0' then
  local rt, rc = 0, 0
  for _, v in ipairs(redis.call('HVALS', KEYS[2])) do
    local et, ec = string.match(v, '^(%d+):(%d+):')
    rt = rt + tonumber(et)
    rc = rc + tonumber(ec)
  end
  redis.call('HSET', KEYS[1], 'rt', string.format('%d', rt), 'rc', string.format('%d', rc))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
