-- wrk script: POST the body in BENCH_BODY, each call with a key picked at
-- random from the file BENCH_KEYS (one per line); at the end, bench.lua's
-- line of JSON that the benchmark reads.
dofile(os.getenv("BENCH_DIR") .. "/bench.lua")
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS")) do
  if line ~= "" then keys[#keys + 1] = "Bearer " .. line end
end
local body = os.getenv("BENCH_BODY")
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

init = function(args)
  math.randomseed(os.time() * 1000 + id)  -- each thread its own sequence of keys
end

request = function()
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = keys[math.random(#keys)]}
  return wrk.format("POST", nil, headers, body)
end
