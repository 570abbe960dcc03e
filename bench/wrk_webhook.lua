-- wrk script for P1: POST one Halaxy notification per request, each with an event id of its
-- own (prefix-thread-counter), so the receiver's dedup never short-circuits. The body is
-- BENCH_BODY_HEAD .. id .. BENCH_BODY_TAIL; bench/loadgen.py sets the environment.
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  head = os.getenv("BENCH_BODY_HEAD") or ""
  tail = os.getenv("BENCH_BODY_TAIL") or ""
  prefix = os.getenv("BENCH_EVENT_PREFIX") or "bench"
  wrk.method = "POST"
  wrk.path = os.getenv("BENCH_PATH") or "/"
  wrk.headers["Content-Type"] = "application/json"
  local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
  if authorization ~= "" then
    wrk.headers["Authorization"] = authorization
  end
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. prefix .. "-" .. tid .. "-" .. counter .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
