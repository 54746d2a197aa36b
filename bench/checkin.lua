-- wrk plays the real check-in, like loadgen.py, at a fraction of its CPU (bench/run.py uses both).
--
--   wrk -t20 -c20 -d10s --latency -s bench/checkin.lua URL/api/messages -- TEACHERS PREFIX TOKEN RUN THREADS
--
-- One connection per thread (-t equal to -c), so each thread's requests and responses alternate
-- and a thread can keep state: it steps its own teachers round-robin through
-- 家访 → 1 → answers → 提交, choosing each next message from the reply (question N gets answer
-- N), with a unique message_id per message. A reply that is not the expected step (an apology,
-- "unavailable", anything else) is counted and that teacher starts over with 家访.
-- done() prints one JSON line for bench/run.py.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

local ANSWERS = {"3", "1", "1", "2", "1", "1", "1", "1", "1", "无"}
-- 家访 and 提交 have one expected answer; any other message (the pick or an answer) leads to a
-- question or, for a resumed draft that was complete, to the summary
local EXPECT = {["家访"] = "回复序号", ["提交"] = "已提交"}

local function has(s, x)
  return string.find(s, x, 1, true) ~= nil
end

-- the teacher's next message given the reply to `sent`, or nil if the reply is unexpected
local function next_text(sent, reply)
  local expect = EXPECT[sent]
  if expect == nil and not (has(reply, "【第") or has(reply, "请核对")) then return nil end
  if expect ~= nil and not has(reply, expect) then return nil end
  if has(reply, "已提交") then return "家访" end
  if has(reply, "请核对") then return "提交" end
  local n = string.match(reply, "【第(%d+)题")
  if n then return ANSWERS[tonumber(n)] end
  if has(reply, "回复序号") then return "1" end
  return nil
end

function init(args)
  local total, prefix, token, run, nthreads = tonumber(args[1]), args[2], args[3], args[4], tonumber(args[5])
  teachers = {}
  for n = id, total, nthreads do
    table.insert(teachers, {no = string.format("%s%05d", prefix, n), text = "家访", sent = 0})
  end
  run_id = run .. "-" .. id
  turn = 0
  current = nil
  http_errors, unexpected, checkins, example = 0, 0, 0, ""
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  turn = turn % #teachers + 1
  current = teachers[turn]
  current.sent = current.sent + 1
  local body = string.format('{"user":"%s","text":"%s","message_id":"%s-%s-%d"}',
    current.no, current.text, run_id, current.no, current.sent)
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local t = current
  local nxt = nil
  if status == 200 then
    nxt = next_text(t.text, body)
  else
    http_errors = http_errors + 1
  end
  if nxt == nil then
    if status == 200 then unexpected = unexpected + 1 end
    if example == "" then example = string.sub(body or "", 1, 300) end
    t.text = "家访"
    return
  end
  if t.text == "提交" then checkins = checkins + 1 end
  t.text = nxt
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(ch)
    if ch == "\n" then return "\\n" end
    if ch == '"' or ch == "\\" then return "\\" .. ch end
    return " "
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local e, u, c, ex = 0, 0, 0, ""
  for _, t in ipairs(threads) do
    e = e + t:get("http_errors")
    u = u + t:get("unexpected")
    c = c + t:get("checkins")
    if ex == "" then ex = t:get("example") end
  end
  local errs = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"http_errors":%d,"unexpected":%d,'
      .. '"socket_errors":%d,"checkins":%d,"example":%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e, u,
    errs.connect + errs.read + errs.write + errs.timeout, c, json_string(ex)))
end
