-- wrk script for bench/bench_proxy.py: chat completions through the proxy (or straight to the
-- fake provider), each for a random seeded user, with a latency the fake provider waits for.
-- Reads BENCH_PATH, BENCH_TOKEN, BENCH_USERS, BENCH_LATENCY_MS; prints one JSON line at the end.
local users = tonumber(os.getenv("BENCH_USERS"))
local path = os.getenv("BENCH_PATH")
local body = '{"model":"bench-model","messages":[{"role":"user","content":"Say hello."}]}'
local headers = {
  ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
  ["Content-Type"] = "application/json",
  ["X-Bench-Latency-Ms"] = os.getenv("BENCH_LATENCY_MS"),
}

function init(args)
  math.randomseed(os.time())
end

function request()
  headers["X-Keyvault-User"] = string.format("bench-user-%05d", math.random(1, users))
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
