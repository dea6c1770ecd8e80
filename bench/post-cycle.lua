-- wrk script: POST the JSON body in $BODY_FILE with "@UNIQUE@" replaced by "k<i>", where i
-- cycles over 1..$KEYS_N (default 1000): hits over many distinct keys (all stored first by
-- the bench), so concurrent requests are mostly for different keys. Each thread starts at
-- its own offset. Bearer token from $AUTH. Prints the same RESULT line as post.lua.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local template = f:read("*a")
f:close()
local n = tonumber(os.getenv("KEYS_N") or "1000")
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
  counter = id * 7919
end

function request()
  counter = counter + 1
  local body = template:gsub("@UNIQUE@", "k" .. tostring(counter % n + 1))
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
