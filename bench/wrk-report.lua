-- wrk script: POST a Messages request (JSON or SSE, chosen by the BODY_FILE env var) with the
-- headers the official SDKs send, and print a JSON summary line the bench script parses.
local body_file = os.getenv("BODY_FILE")
local api_key = os.getenv("API_KEY") or "bench"
local f = assert(io.open(body_file, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.path = "/v1/messages"
wrk.body = body
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = api_key

-- No `response` callback: wrk would then hand every response's headers and body to Lua, a cost
-- on the shared CPUs for nothing; error statuses (>= 400) are counted by wrk itself
-- (summary.errors.status, part of "errors" below).

done = function(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
