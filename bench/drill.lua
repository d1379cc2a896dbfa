-- wrk script for bench/drill.sh: POST a Messages request and count answers per wall-clock second
-- (epoch seconds), split into 200s and everything else, so the drill can say which errors came
-- before and which after the breaker opened.
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

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per thread: ok[second], bad[second].
ok = {}
bad = {}

function response(status, headers, body)
  local s = os.time()
  if status == 200 then
    ok[s] = (ok[s] or 0) + 1
  else
    bad[s] = (bad[s] or 0) + 1
  end
end

function done(summary, latency, requests)
  local seconds = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("ok")) do
      seconds[s] = seconds[s] or { 0, 0 }
      seconds[s][1] = seconds[s][1] + n
    end
    for s, n in pairs(t:get("bad")) do
      seconds[s] = seconds[s] or { 0, 0 }
      seconds[s][2] = seconds[s][2] + n
    end
  end
  for s, v in pairs(seconds) do
    io.write(string.format("DRILL_SECOND %d %d %d\n", s, v[1], v[2]))
  end
  local e = summary.errors
  io.write(string.format(
    "DRILL_TOTAL %d %d %d %d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
end
