-- Helpers for the hostile-client specs (limits_spec, smuggling_spec,
-- proxy_spec, churn_spec): what /proc says about the server process, bounded
-- waits that poll a condition, and a raw client for what the client in
-- smtpd.testing does not do (bind a source address, send without blocking,
-- reset a connection with SO_LINGER 0, read without a greeting).
--
-- Every wait has a deadline and polls a condition; none sleeps as a way to
-- synchronise. The 20 ms between polls is the polling interval, not a wait
-- for something to have happened.
local socket = require "socket"

local M = {}

--- Seconds a `wait_until` waits by default.
M.wait_timeout = 10

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

--- Whole contents of a file, or nil.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

--- Writes `data` to `path` (replacing it).
function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

--- Output of a shell command (stdout and stderr), bounded by `timeout(1)`.
function M.sh(cmd, secs)
  local p = assert(io.popen("timeout " .. tostring(secs or 30) .. " sh -c " .. shell_quote(cmd) ..
    " </dev/null 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

--- A new temporary directory; `rmdir` removes it.
function M.tempdir()
  local tmp = os.getenv("TMPDIR")
  if not tmp or tmp == "" then tmp = "/tmp" end
  local dir = M.sh("mktemp -d " .. shell_quote(tmp .. "/luasmtpd-hostile.XXXXXX")):match("^(%S+)\n$")
  assert(dir, "mktemp -d failed")
  return dir
end

function M.rmdir(dir)
  if dir and dir:match("^/.+/luasmtpd%-hostile%.") then os.execute("rm -rf " .. shell_quote(dir)) end
end

--- The absolute path of the luasmtpd binary the specs run.
function M.binary()
  local bin = os.getenv("LUASMTPD_BIN")
  if not bin or bin == "" then bin = "build/luasmtpd" end
  if bin:sub(1, 1) ~= "/" then
    local cwd = M.sh("pwd"):match("^(.-)\n$")
    bin = cwd .. "/" .. bin
  end
  return bin
end

-- ---------------------------------------------------------------------------
-- /proc

--- VmRSS of a process in KiB (nil if it is gone).
function M.rss_kib(pid)
  local s = M.read_file("/proc/" .. pid .. "/status")
  return s and tonumber(s:match("VmRSS:%s*(%d+)"))
end

--- True if the process runs under AddressSanitizer (its runtime is mapped,
-- as with gcc's -fsanitize=address). ASan keeps freed memory in quarantine
-- (256 MiB by default) and adds shadow memory, so RSS bounds say nothing
-- about leaks there; its leak checker at exit does.
function M.sanitized(pid)
  local maps = M.read_file("/proc/" .. pid .. "/maps") or ""
  return maps:find("libasan", 1, true) ~= nil or maps:find("libclang_rt.asan", 1, true) ~= nil
end

--- Number of open descriptors of a process (nil if it is gone).
function M.fd_count(pid)
  local out = M.sh("ls -1 /proc/" .. tostring(pid) .. "/fd 2>/dev/null | wc -l; test -d /proc/" ..
    tostring(pid) .. "/fd && echo alive", 10)
  if not out:find("alive") then return nil end
  return tonumber(out:match("^%s*(%d+)"))
end

--- User plus system CPU time of a process, in clock ticks (usually 1/100 s).
function M.cpu_ticks(pid)
  local s = M.read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local fields = {}
  for f in s:gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = f end
  -- After "pid (comm) ": state is field 1, utime field 12, stime field 13.
  return tonumber(fields[12]) + tonumber(fields[13])
end

--- The send and receive queues (bytes) of the IPv4 TCP socket whose local
-- port is `lport` and remote port `rport`, from /proc/net/tcp: for the
-- server's side of a connection pass the server's port and the client's.
-- @return tx_queue, rx_queue; nil if there is no such socket
function M.tcp_queues(lport, rport)
  local text = M.read_file("/proc/net/tcp") or ""
  for l, r, tx, rx in text:gmatch("\n%s*%d+: %x+:(%x+) %x+:(%x+) %x+ (%x+):(%x+)") do
    if tonumber(l, 16) == lport and tonumber(r, 16) == rport then
      return tonumber(tx, 16), tonumber(rx, 16)
    end
  end
  return nil
end

-- ---------------------------------------------------------------------------
-- Waiting

--- Polls `cond` (every 20 ms) until it returns a true value or `secs` pass.
-- Returns what `cond` returned; on timeout raises an error naming `what`
-- (`detail`, a function, adds text to the error, e.g. the server's log).
function M.wait_until(cond, secs, what, detail)
  local deadline = socket.gettime() + (secs or M.wait_timeout)
  while true do
    local v = cond()
    if v then return v end
    if socket.gettime() >= deadline then
      error(("timed out after %s s waiting for %s%s"):format(tostring(secs or M.wait_timeout), what,
        detail and ("\n" .. detail()) or ""), 2)
    end
    socket.select(nil, nil, 0.02)
  end
end

--- Number of (plain, non-overlapping) occurrences of `s` in `text`.
function M.count(text, s)
  local n, i = 0, 1
  while true do
    local a, b = text:find(s, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

--- A function giving the end of the server's log, for error messages.
function M.log_tail(srv, n)
  return function()
    return "--- server stderr (last " .. (n or 4000) .. " octets) ---\n" .. srv:stderr():sub(-(n or 4000))
  end
end

--- Waits until the server's log holds `n` (default 1) occurrences of the
-- plain string `s`; returns the log.
function M.wait_log(srv, s, n, secs)
  n = n or 1
  return M.wait_until(function()
    local text = srv:stderr()
    return M.count(text, s) >= n and text
  end, secs, ("%d occurrence(s) of %q in the server's log"):format(n, s), M.log_tail(srv))
end

-- ---------------------------------------------------------------------------
-- A raw client

local Raw = {}
Raw.__index = Raw

local function is_timeout(err)
  return err == "timeout" or err == "wantread" or err == "wantwrite"
end

--- Connects a raw TCP client (IPv4). Reads nothing.
-- @tparam table opts `bind` (source address, e.g. "127.0.0.2"),
--   `timeout` (seconds for each operation, default 5),
--   `rcvbuf` (SO_RCVBUF in bytes, set before connecting)
-- @return a client, or nil and an error
function M.connect(host, port, opts)
  opts = opts or {}
  local sock = socket.tcp4()
  local timeout = opts.timeout or 5
  sock:settimeout(timeout)
  if opts.rcvbuf then
    local ok, err = sock:setoption("recv-buffer-size", opts.rcvbuf)
    if not ok then sock:close(); return nil, "recv-buffer-size: " .. tostring(err) end
  end
  if opts.bind then
    local ok, err = sock:bind(opts.bind, 0)
    if not ok then sock:close(); return nil, "bind " .. opts.bind .. ": " .. tostring(err) end
  end
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, "connect " .. host .. ":" .. tostring(port) .. ": " .. tostring(err)
  end
  return setmetatable({ sock = sock, timeout = timeout, pending = "", closed = false }, Raw)
end

--- The client's own address and port.
function Raw:local_addr()
  local host, port = self.sock:getsockname()
  return host, tonumber(port)
end

--- Sends all of `data` within the client's timeout.
-- @return true, or nil and an error
function Raw:send(data)
  if not self.sock then return nil, "closed" end
  local deadline = socket.gettime() + self.timeout
  local i = 1
  while i <= #data do
    self.sock:settimeout(math.max(0, deadline - socket.gettime()))
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    else
      if partial and partial >= i then i = partial + 1 end
      if not is_timeout(err) or socket.gettime() >= deadline then return nil, err end
    end
  end
  return true
end

--- Sends what the socket takes now without blocking, from position `i` of
-- `data`. Returns the position of the first byte not yet sent (and an
-- error other than a timeout, if there was one).
function Raw:send_some(data, i)
  self.sock:settimeout(0)
  local last, err, partial = self.sock:send(data, i)
  if last then return last + 1 end
  if partial and partial >= i then i = partial + 1 end
  if is_timeout(err) then return i end
  return i, err
end

--- Reads whatever has arrived within `timeout` seconds (at most `max`
-- bytes): returns the bytes ("" if none) and "closed" once the server has
-- closed the connection.
function Raw:read_some(timeout, max)
  if self.pending ~= "" then
    local s = self.pending
    self.pending = ""
    return s
  end
  if not self.sock then return "", "closed" end
  if timeout and timeout > 0 then socket.select({ self.sock }, nil, timeout) end
  self.sock:settimeout(0)
  local s, err, partial = self.sock:receive(max or 1048576)
  s = s or partial or ""
  if err and not is_timeout(err) then
    self.closed = true
    return s, "closed"
  end
  return s
end

-- One line (without CR LF) by `deadline`, or nil and "timeout"/"closed".
function Raw:line(deadline)
  while true do
    local lf = self.pending:find("\n", 1, true)
    if lf then
      local line = self.pending:sub(1, lf - 1):gsub("\r$", "")
      self.pending = self.pending:sub(lf + 1)
      return line
    end
    if not self.sock or self.closed then return nil, "closed" end
    local left = deadline - socket.gettime()
    if left <= 0 then return nil, "timeout" end
    -- receive(n) waits for all n bytes: wait for readability, then take
    -- what is there.
    socket.select({ self.sock }, nil, left)
    self.sock:settimeout(0)
    local s, err, partial = self.sock:receive(65536)
    s = s or partial
    if s and s ~= "" then self.pending = self.pending .. s end
    if err and not is_timeout(err) then self.closed = true end
  end
end

--- Reads one reply within `timeout` (default: the client's timeout).
-- @return code, the texts joined by "\n", the raw lines; or nil, "timeout"
--   or "closed", and the lines read so far
function Raw:reply(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local lines, texts = {}, {}
  while true do
    local line, err = self:line(deadline)
    if not line then return nil, err, lines end
    lines[#lines + 1] = line
    local code, sep, text = line:match("^(%d%d%d)([ %-]?)(.*)$")
    if not code then return nil, "malformed reply: " .. ("%q"):format(line), lines end
    texts[#texts + 1] = text
    if sep ~= "-" then return tonumber(code), table.concat(texts, "\n"), lines end
  end
end

--- Sends a line (CRLF added) and reads its reply.
function Raw:cmd(line)
  local ok, err = self:send(line .. "\r\n")
  if not ok then return nil, err, {} end
  return self:reply()
end

--- True once the server has closed the connection (EOF or reset) within
-- `timeout` seconds; bytes that arrive meanwhile are kept for `reply`.
-- Returns false if bytes arrived or the connection stayed open.
function Raw:is_closed(timeout)
  if self.closed or not self.sock then return true end
  if self.pending ~= "" then return false end
  self.sock:settimeout(timeout or self.timeout)
  local s, err, partial = self.sock:receive(1)
  s = s or partial
  if s and s ~= "" then
    self.pending = self.pending .. s
    return false
  end
  if is_timeout(err) then return false end
  self.closed = true
  return true
end

--- Closes the connection with a TCP reset (SO_LINGER on, timeout 0).
function Raw:reset()
  if self.sock then
    self.sock:setoption("linger", { on = true, timeout = 0 })
    self.sock:close()
    self.sock = nil
  end
end

--- Closes the connection normally. Idempotent.
function Raw:close()
  if self.sock then
    self.sock:close()
    self.sock = nil
  end
end

--- Connects and reads the greeting; returns the client and the greeting
-- line, or nil and an error.
function M.connect_greeted(host, port, opts)
  local c, err = M.connect(host, port, opts)
  if not c then return nil, err end
  local code, text, lines = c:reply()
  if not code then
    c:close()
    return nil, "no greeting: " .. tostring(text)
  end
  return c, lines[1]
end

--- Connects (retrying within `secs`) until the server greets with 220:
-- for after a limit was hit and a slot freed, which the server notices
-- asynchronously. Returns the client (greeted) or raises.
function M.connect_until_greeted(host, port, opts, secs, detail)
  local c
  M.wait_until(function()
    local got, line = M.connect_greeted(host, port, opts)
    if got and line:match("^220 ") then
      c = got
      return true
    end
    if got then got:close() end
    return false
  end, secs or M.wait_timeout, "a 220 greeting after a slot was freed", detail)
  return c
end

--- A free TCP port on 127.0.0.1 (bound and released: another process
-- could take it before the caller binds it; good enough on a test host).
function M.free_port()
  local s = socket.tcp4()
  assert(s:setoption("reuseaddr", true))
  assert(s:bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- Runs fn(srv) against a fresh server started with `opts` (as for
-- `testing.start`); stops it whatever happens and adds the end of its log to
-- a failure. Returns the stopped server.
function M.with_server(opts, fn)
  local testing = require "smtpd.testing"
  local srv = testing.start(opts)
  local ok, err = pcall(fn, srv)
  srv:stop()
  if not ok then
    error(tostring(err) .. "\n--- server stderr (last 3000 octets) ---\n" .. srv:stderr():sub(-3000), 0)
  end
  return srv
end

--- EHLO, MAIL, RCPT and DATA on a testing client, checking each reply's
-- code (raises naming the command otherwise): the client then sends
-- message text.
function M.open_data(c, name)
  local steps = { { "EHLO " .. name .. ".test", 250 }, { "MAIL FROM:<a@example.org>", 250 },
    { "RCPT TO:<b@example.org>", 250 }, { "DATA", 354 } }
  for _, step in ipairs(steps) do
    local code, text = c:cmd(step[1])
    if code ~= step[2] then
      error(("%s: expected %d, got %s %s"):format(step[1], step[2], tostring(code), tostring(text)), 2)
    end
  end
end

return M
