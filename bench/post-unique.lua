-- wrk script: POST the JSON body in $BODY_FILE with every request made distinct (each
-- occurrence of "@UNIQUE@" is replaced by "<run>-<thread>-<counter>"), so every request is a
-- cache miss; bearer token from $AUTH. Prints the same RESULT line as post.lua.
-- With $CYCLE_KEYS = N, "@UNIQUE@" is "k<i>" instead, i cycling over 1..N from an offset of
-- each thread's own: hits over N distinct keys (stored first by the bench), concurrent
-- requests mostly for different keys.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local template = f:read("*a")
f:close()
local run = tostring(os.time()) .. tostring(math.random(1, 1e9))
local cycle = tonumber(os.getenv("CYCLE_KEYS") or "")
local threads = {}
local counter = 0
local id = 0

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local auth = os.getenv("AUTH")
  if auth and auth ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. auth
  end
end

function request()
  counter = counter + 1
  local unique
  if cycle then
    unique = "k" .. tostring((id * 7919 + counter) % cycle + 1)
  else
    unique = run .. "-" .. id .. "-" .. counter
  end
  local body = template:gsub("@UNIQUE@", unique)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f requests=%d p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f non2xx=%d sock_errors=%d\n",
    summary.requests / secs, summary.requests,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
