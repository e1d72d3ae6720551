-- wrk script: post.lua's request, each with its own x-request-id, and every answer's latency written to a file.
--
-- wrk's own percentiles are "corrected" for coordinated omission before they are printed (stats_correct in
-- wrk 4.x): each answer slower than twice the mean cycle adds samples at every multiple of the cycle below it,
-- as if a client had been kept from sending. In a closed loop nothing was kept waiting, so a few slow first
-- answers become hundreds of samples in the tail. This script records each request once: its number (in the
-- order wrk sent them, per thread), the time it was written and the time its answer ended (CLOCK_MONOTONIC,
-- microseconds), paired by the x-request-id that the server echoes. Lines go to BENCH_RAW_OUT; the C library
-- flushes the file when wrk exits.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- The request itself is post.lua's, from beside this file.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "post.lua")

local out = nil
local n = 0
local sent = {}

function init(args)
  out = io.open(os.getenv("BENCH_RAW_OUT"), "a")
end

function request()
  n = n + 1
  local id = "bench" .. n
  wrk.headers["x-request-id"] = id
  sent[id] = now()
  return wrk.format()
end

function response(status, headers, body)
  local id = headers["x-request-id"]
  local t0 = id and sent[id]
  if t0 then
    sent[id] = nil
    out:write(string.sub(id, 6), " ", string.format("%.0f %.0f %d", t0, now(), status), "\n")
  end
end
