-- wrk script for bench/bench_webhook.py: cycles through pre-signed Twilio webhook requests.
-- $SMS311_REQUESTS names a file of lines "<path>\t<X-Twilio-Signature>\t<form body>", each
-- with its own MessageSid, after the first $SMS311_SKIP lines; the run must stay shorter than the file (the bench checks that
-- every 200 left its rows in the database). done() prints one line "WRKJSON {...}".
local requests = {}
local counter = 0

function init(args)
  local file = os.getenv("SMS311_REQUESTS")
  local skip = tonumber(os.getenv("SMS311_SKIP") or "0")
  local seen = 0
  for line in io.lines(file) do
    seen = seen + 1
    if seen > skip then
    local target, signature, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", target, {
      ["Content-Type"] = "application/x-www-form-urlencoded",
      ["X-Twilio-Signature"] = signature,
      ["User-Agent"] = "TwilioProxy/1.1",
    }, body)
    end
  end
end

function request()
  counter = counter + 1
  if counter > #requests then counter = 1 end
  return requests[counter]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
