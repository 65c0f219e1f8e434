-- DATA memory is bounded for the whole process (data_memory_limit), and a
-- slow sender cannot hold its buffer: data_rate_min is judged per window of
-- data_rate_grace seconds, not on the average since DATA began.
--
-- Before the fix, 20 unfinished 30 MB transfers from one address took the
-- server from 3 MB to about 600 MB of RSS, and a burst followed by a trickle
-- kept its session for hours.
local testing = require "smtpd.testing"
local hu = require "spec.functional.hostile_util"
local socket = require "socket"

local NO_STORAGE = "452 4.3.1 Error: insufficient system storage"
local TIMEOUT = "421 4.4.2 mx.test Error: timeout exceeded"

local with_server = hu.with_server

local open_data = hu.open_data

-- 1 MB of 100-octet lines.
local MEGABYTE = (("m"):rep(98) .. "\r\n"):rep(10000)

describe("data_memory_limit", function()
  it("bounds what 20 unfinished 30 MB transfers hold; those past it get 452 and go on", function()
    with_server({ options = { data_memory_limit = "64m", timeout = 60, data_rate_min = 0 } },
      function(srv)
        local conns = {}
        for i = 1, 20 do
          local c = srv:connect({ timeout = 30 })
          open_data(c, "big" .. i)
          for _ = 1, 30 do assert(c:send(MEGABYTE)) end
          conns[i] = c
        end
        local ok, refused = 0, 0
        for i = 1, 20 do
          local c = conns[i]
          assert(c:send(".\r\n"))
          local code, _, lines = c:reply()
          if code == 250 then ok = ok + 1
          else
            assert.are.same({ NO_STORAGE }, lines)
            refused = refused + 1
          end
          -- The session goes on: a small message right after is accepted.
          assert.are.equal(250, (c:cmd("MAIL FROM:<a@example.org>")))
          assert.are.equal(250, (c:cmd("RCPT TO:<b@example.org>")))
          assert.are.equal(250, (c:data("Subject: small " .. i .. "\n\nhello\n")))
          c:close()
        end
        -- The peak while all 20 were open (VmHWM), against 64 MiB of message
        -- text plus a generous margin for everything else.
        local status = hu.read_file("/proc/" .. srv.pid .. "/status")
        local hwm = tonumber(status:match("VmHWM:%s*(%d+)"))
        if not hu.sanitized(srv.pid) then
          assert(hwm < (64 + 48) * 1024,
            ("VmHWM %d KiB: more than data_memory_limit allows"):format(hwm))
        end
        print(("\n  20 unfinished 30 MB transfers, data_memory_limit 64m: VmHWM %d KiB, %d accepted, %d refused")
          :format(hwm, ok, refused))
        assert(ok >= 1, "no transfer fitted into 64 MiB")
        assert(refused >= 15, ("only %d of 20 transfers were refused"):format(refused))
        -- Everything was given back: the whole budget is free again.
        local c = srv:connect({ timeout = 30 })
        open_data(c, "after")
        for _ = 1, 30 do assert(c:send(MEGABYTE)) end
        assert(c:send(".\r\n"))
        assert.are.equal(250, (c:reply()))
        c:close()
      end)
  end)

  it("accepts sizes with k/m/g and refuses nonsense with a clear error", function()
    local status, out = testing.check{ source = "options = { data_memory_limit = '12x' }\n" }
    assert.are_not.equal(0, status)
    assert.truthy(out:find("data_memory_limit", 1, true), out)
    assert.truthy(out:find("a size in bytes", 1, true), out)
    status, out = testing.check{ source = "options = { data_memory_limit = '1g' }\n" }
    assert.are.equal(0, status, out)
  end)
end)

describe("data_rate_min over a sliding window", function()
  it("cuts a burst followed by a trickle with 421 4.4.2 within about two windows", function()
    with_server({ options = { data_rate_min = 10000, data_rate_grace = 1, timeout = 60 } },
      function(srv)
        local c = srv:connect()
        open_data(c, "burst")
        -- The burst: far more than the whole transfer would need on average.
        for _ = 1, 8 do assert(c:send(MEGABYTE)) end
        local start = socket.gettime()
        local code, lines
        -- Then one short line every 0.2 s (5 octets/s); bounded by 10 s.
        while socket.gettime() - start < 10 do
          assert(c:send("x\r\n"))
          local _
          code, _, lines = c:reply(0.2)
          if code then break end
        end
        assert.are.equal(421, code, "the trickle after a burst was not cut within 10 s")
        assert.are.same({ TIMEOUT }, lines)
        assert(c:is_closed(5), "the server did not close the trickling sender")
      end)
  end)
end)
