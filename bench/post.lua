-- POST JSON bodies read from a file (one per line), rotating through them, and count every
-- answer that is not a 2xx. Used by bench/served.py:
--
--   wrk -t1 -c2 -d5s -s bench/post.lua http://127.0.0.1:PORT/api/learn/ -- BODIES.jsonl
--
-- At the end it prints one line, "RESULT {json}", with the totals and the latency percentiles
-- (from wrk's own latency distribution, in µs) that bench/served.py reads.

local threads = {}
local count = 0

function setup(thread)
   count = count + 1
   thread:set("id", count)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   bodies = {}
   for line in io.lines(path) do
      if #line > 0 then
         table.insert(bodies, line)
      end
   end
   if #bodies == 0 then
      error("no request bodies in " .. tostring(path))
   end
   -- Each thread starts at another place in the file.
   index = ((id - 1) * 97) % #bodies
   unexpected = 0
   first_unexpected = ""
end

function request()
   index = index % #bodies + 1
   local headers = { ["Content-Type"] = "application/json" }
   return wrk.format("POST", nil, headers, bodies[index])
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      unexpected = unexpected + 1
      if first_unexpected == "" then
         first_unexpected = status .. " " .. string.sub(body or "", 1, 300)
      end
   end
end

local function escape(text)
   return (string.gsub(text, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end))
end

function done(summary, latency, requests)
   local bad, first = 0, ""
   for _, thread in ipairs(threads) do
      bad = bad + thread:get("unexpected")
      if first == "" then
         first = thread:get("first_unexpected") or ""
      end
   end
   local e = summary.errors
   io.write(string.format(
      'RESULT {"requests": %d, "duration_us": %d, "latency_mean_us": %.1f, "latency_p50_us": %d, ' ..
      '"latency_p90_us": %d, "latency_p99_us": %d, "latency_max_us": %d, ' ..
      '"unexpected_status": %d, "first_unexpected": "%s", ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, summary.duration, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99),
      latency.max, bad, escape(first), e.connect, e.read, e.write, e.status, e.timeout))
end
