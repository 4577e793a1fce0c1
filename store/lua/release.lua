-- Drop a reservation without charging it.
-- KEYS: budget:{client}, held:{client}, expiry
-- ARGV: request id, expiry member (client/request)
return release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2])
