-- wrk script for bench/bench.py: random seeded users, a bearer token, GET or PUT.
-- Reads BENCH_USERS, BENCH_TOKEN, BENCH_METHOD from the environment; prints one JSON line at the end.
local users = tonumber(os.getenv("BENCH_USERS"))
local token = os.getenv("BENCH_TOKEN")
local method = os.getenv("BENCH_METHOD") or "GET"
local headers = { ["Authorization"] = "Bearer " .. token }

function init(args)
  math.randomseed(os.time())
  if method == "PUT" then
    headers["Content-Type"] = "application/json"
  end
end

function request()
  local path = string.format("/users/bench-user-%05d/api-keys/openai", math.random(1, users))
  if method == "PUT" then
    local body = string.format('{"api_key":"sk-bench-%012d"}', math.random(0, 999999999))
    return wrk.format("PUT", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
