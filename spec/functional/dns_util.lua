-- What the DNS specs share: dnsmasq on a free loopback port, authoritative
-- for example.test and the DNSBL zone zen.test (so it answers NXDOMAIN,
-- real TTLs and PTRs), stopped by its PID; and a UDP port that never
-- answers (timeouts).
local socket = require "socket"
local u = require "spec.functional.reload_util"

local M = {}

-- ---------------------------------------------------------------------------
-- dnsmasq

local ZONE_ARGS = {
  -- 127.0.0.20 is excluded from the zone's A records but keeps its PTR: a
  -- name that does not confirm forward
  "--auth-zone=example.test,127.0.0.0/24,::/64,exclude:127.0.0.20/32", "--auth-zone=zen.test",
  "--auth-server=ns.example.test,127.0.0.1",
  "--auth-ttl=300", "--local-ttl=300", "--auth-soa=1,hostmaster.example.test,1200,180,1209600,300",
  "--host-record=mail.example.test,127.0.0.10,::10",
  "--host-record=mx2.example.test,127.0.0.11",
  "--host-record=fake.example.test,127.0.0.20",
  "--mx-host=example.test,mail.example.test,10", "--mx-host=example.test,mx2.example.test,20",
  "--txt-record=example.test,v=spf1 -all",
  "--txt-record=multi.example.test,part one,part two",
  "--srv-host=_submission._tcp.example.test,mail.example.test,587,1,5",
  "--cname=alias.example.test,mail.example.test",
  -- DNSBL: 127.0.0.2 and ::1 are listed, with a reason in TXT.
  "--host-record=2.0.0.127.zen.test,127.0.0.2",
  "--txt-record=2.0.0.127.zen.test,listed: see https://zen.test/127.0.0.2",
  "--host-record=1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.zen.test,127.0.0.4",
}

-- A port below the kernel's ephemeral range (32768-60999: no outgoing
-- connection of another test holds it) free for both UDP and TCP.
local function free_port()
  math.randomseed(os.time() + math.floor(socket.gettime() * 1000) % 100000)
  for _ = 1, 100 do
    local port = math.random(20000, 31999)
    local udp, tcp = assert(socket.udp()), assert(socket.tcp())
    local ok = udp:setsockname("127.0.0.1", port) and tcp:bind("127.0.0.1", port)
    udp:close()
    tcp:close()
    if ok then return port end
  end
  error("no free port for dnsmasq", 2)
end

-- A DNS query for `name` A (RFC 1035 4.1), for the readiness probe.
local function dns_probe_packet(name)
  local q = { "\18\52\1\0\0\1\0\0\0\0\0\0" }
  for label in name:gmatch("[^.]+") do q[#q + 1] = string.char(#label) .. label end
  q[#q + 1] = "\0\0\1\0\1"
  return table.concat(q)
end

-- Starts dnsmasq on a free port; returns { pid, port, log, stop }. Ready
-- once it answers a probe over UDP (bounded).
function M.start_dnsmasq(extra)
  local dir = u.tempdir()
  local log = dir .. "/dnsmasq.log"
  for _ = 1, 5 do
    local port = free_port()
    local args = { "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
      "--port=" .. port, "--listen-address=127.0.0.1", "--bind-interfaces",
      "--conf-file=/dev/null", "--user=root", "--group=root", "--pid-file=" .. dir .. "/pid",
      "--log-facility=-" }
    for _, a in ipairs(ZONE_ARGS) do args[#args + 1] = a end
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    local quoted = {}
    for i, a in ipairs(args) do quoted[i] = u.shell_quote(a) end
    local p = assert(io.popen(table.concat(quoted, " ") .. " >" .. u.shell_quote(log) ..
      " 2>&1 </dev/null & echo $!"))
    local pid = tonumber(p:read("*l"))
    p:close()
    -- kill() of a pid <= 0 would signal a whole process group or everything
    assert(pid and pid > 1, "dnsmasq did not start")
    local probe = assert(socket.udp())
    probe:settimeout(0.1)
    assert(probe:setpeername("127.0.0.1", port))
    local ready = false
    local deadline = socket.gettime() + 10
    while socket.gettime() < deadline and u.alive(pid) do
      probe:send(dns_probe_packet("mail.example.test"))
      if probe:receive() then
        ready = true
        break
      end
    end
    probe:close()
    if ready then
      local d = { pid = pid, port = port, dir = dir, log = log }
      function d.stop()
        if d.pid and d.pid > 1 and u.alive(d.pid) then
          u.kill(d.pid, 15)
          u.wait_until(function() return not u.alive(d.pid) end, 10, "dnsmasq to stop")
        end
        d.pid = nil
      end
      function d.close()
        d.stop()
        u.rmdir(d.dir)
      end
      return d
    end
    if u.alive(pid) then u.kill(pid, 9) end
  end
  local f = io.open(log)
  local text = f and f:read("*a") or ""
  if f then f:close() end
  u.rmdir(dir)
  error("dnsmasq did not start:\n" .. text, 2)
end

-- A UDP port that takes queries and never answers.
function M.silent_server()
  local s = assert(socket.udp())
  assert(s:setsockname("127.0.0.1", 0))
  local _, port = s:getsockname()
  return s, tonumber(port)
end

return M
