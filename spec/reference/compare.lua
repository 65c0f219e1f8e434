--- Differential runner: the same raw SMTP dialogues against aiosmtpd (the
-- reference, Debian's python3-aiosmtpd under /usr/bin/python3) and
-- luasmtpd, compared reply line by reply line.
--
-- Owns: starting and stopping both servers (one per handler + options, reused
-- across cases), driving a dialogue, normalising, diffing. Must not know any
-- case: those are data in spec/reference/dialogues.lua, with every accepted
-- difference named there.
--
-- Every wait is bounded: a reply by `M.reply_timeout`, a server's start by
-- `M.ready_timeout`, its stop by `M.stop_timeout`.
--
-- @usage
-- luajit spec/reference/compare.lua                 # every case, differences only
-- luajit spec/reference/compare.lua '^auth_plain'   # cases whose name matches
-- luajit spec/reference/compare.lua --show rcpt     # full side-by-side transcripts
-- luajit spec/reference/compare.lua --ref-only      # aiosmtpd alone, twice: stability
local ffi = require "ffi"
local socket = require "socket"

local M = {}

M.python = os.getenv("REF_PYTHON") or "/usr/bin/python3"
M.hostname = "mx.test"
M.reply_timeout = 2
M.ready_timeout = 20
M.stop_timeout = 5

-- Directory of this file, and the repository root two levels up.
local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
local function absolute(path)
  if path:sub(1, 1) == "/" then
    return path
  end
  local cwd = os.getenv("PWD") or "."
  return cwd .. "/" .. path
end
here = absolute(here):gsub("/%./", "/"):gsub("/%.$", "")
M.dir = here
M.root = here:gsub("/spec/reference$", "")
if M.root == here then
  M.root = here .. "/../.."
end

local function bin_path()
  local bin = os.getenv("LUASMTPD_BIN") or "build/luasmtpd"
  if bin:sub(1, 1) ~= "/" then
    bin = M.root .. "/" .. bin
  end
  return bin
end
M.bin_path = bin_path

-- region: small POSIX pieces (FIFO for the readiness line) -------------------

-- Each declaration on its own, so that one already made by another module
-- (with the same meaning) does not stop the others.
for _, decl in ipairs {
  "int open(const char *path, int flags, ...);",
  "int close(int fd);",
  "long read(int fd, void *buf, unsigned long count);",
  "int mkfifo(const char *path, unsigned int mode);",
  "int unlink(const char *path);",
  "int getpid(void);",
} do
  pcall(ffi.cdef, decl)
end
local C = ffi.C
local O_RDONLY, O_NONBLOCK = 0, 0x800 -- Linux

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then
    return ""
  end
  local data = f:read("*a")
  f:close()
  return data
end

local function process_alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat == "" then
    return false
  end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= "Z" and state ~= "X"
end

local tmp_counter = 0
local function tmp_base(kind)
  local dir = M.root .. "/spec/.tmp/reference"
  os.execute("mkdir -p " .. shell_quote(dir))
  tmp_counter = tmp_counter + 1
  return string.format("%s/%s-%d-%d", dir, kind, C.getpid(), tmp_counter)
end

-- Wait for one line on a non-blocking FIFO read end. Returns the line, or
-- nil and "eof" / "timeout".
local function read_ready_line(fd, timeout)
  local deadline = socket.gettime() + timeout
  local fdobj = {
    getfd = function()
      return fd
    end,
    dirty = function()
      return false
    end,
  }
  local buf = ffi.new("char[512]")
  local acc = ""
  while true do
    local remaining = deadline - socket.gettime()
    if remaining <= 0 then
      return nil, "timeout"
    end
    local readable = socket.select({ fdobj }, nil, remaining)
    if readable and readable[1] then
      local n = tonumber(C.read(fd, buf, 512))
      if n > 0 then
        acc = acc .. ffi.string(buf, n)
        local line = acc:match("^([^\n]*)\n")
        if line then
          return line
        end
      elseif n == 0 then
        return nil, "eof"
      end
      -- n < 0: EAGAIN after a spurious wake-up; select again
    end
  end
end

-- endregion

-- region: servers ---------------------------------------------------------------

local Server = {}
Server.__index = Server

--- Command-line arguments shared by both servers for one configuration.
local function common_args(config)
  local args = { "--hostname", M.hostname }
  local options = { auth_require_tls = false }
  for name, value in pairs(config.options or {}) do
    options[name] = value
  end
  local names = {}
  for name in pairs(options) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    args[#args + 1] = "-o"
    args[#args + 1] = name .. "=" .. tostring(options[name])
  end
  if config.size then
    args[#args + 1] = "-s"
    args[#args + 1] = tostring(config.size)
  end
  return args
end

--- A key naming one server configuration (handler + options + size).
function M.config_key(config)
  return (config.handler or "plain") .. " " .. table.concat(common_args(config), " ")
end

--- Start one server. `kind` is "aiosmtpd" or "luasmtpd".
-- @return a Server, or nil and an error message (with the server's output).
function M.start_server(kind, config)
  local handler = config.handler or "plain"
  local base = tmp_base(kind)
  local fifo, pidfile, logfile = base .. ".ready", base .. ".pid", base .. ".log"
  C.unlink(fifo)
  if C.mkfifo(fifo, tonumber("600", 8)) ~= 0 then
    return nil, "mkfifo failed: " .. fifo
  end
  -- Open our end first (non-blocking), so the server's open for writing
  -- never blocks.
  local fd = C.open(fifo, bit.bor(O_RDONLY, O_NONBLOCK))
  if fd < 0 then
    C.unlink(fifo)
    return nil, "cannot open " .. fifo
  end

  local argv
  local redirect
  if kind == "aiosmtpd" then
    argv = { M.python, M.dir .. "/ref_server.py", "--handler", handler }
    redirect = " >" .. shell_quote(fifo) .. " 2>" .. shell_quote(logfile)
  else
    local bin = bin_path()
    -- auth_fail_penalty off: aiosmtpd has none, and the comparison is of
    -- replies (the penalty only delays them).
    argv = { bin, "--handler", M.dir .. "/handlers/" .. handler .. ".lua",
             "-l", "127.0.0.1:0", "--ready-fd", "3", "-o", "auth_fail_penalty=false" }
    redirect = " 3>" .. shell_quote(fifo) .. " >" .. shell_quote(logfile) .. " 2>&1"
  end
  for _, a in ipairs(common_args(config)) do
    argv[#argv + 1] = a
  end
  local quoted = {}
  for i, a in ipairs(argv) do
    quoted[i] = shell_quote(a)
  end
  local command_line = table.concat(argv, " ")
  local cmd = "echo $$ >" .. shell_quote(pidfile) .. "; exec " .. table.concat(quoted, " ") .. redirect
  -- The pipe is the server's stdin: aiosmtpd's twin exits when it closes.
  local stdin = io.popen(cmd, "w")

  local line, err = read_ready_line(fd, M.ready_timeout)
  C.close(fd)
  C.unlink(fifo)
  local pid = tonumber(read_file(pidfile):match("%d+"))
  os.remove(pidfile)
  local self = setmetatable({ kind = kind, key = M.config_key(config), pid = pid, stdin = stdin,
                              log = logfile, command_line = command_line }, Server)
  local host, port
  if line then
    host, port = line:match("^ready ([%d%.]+):(%d+)")
  end
  if not port then
    local output = read_file(logfile)
    self:stop() -- also removes the log
    local why = line and ("unexpected readiness line " .. string.format("%q", line))
      or (err == "eof" and "exited or closed its ready fd before listening"
          or "no readiness line within " .. M.ready_timeout .. " s")
    return nil, string.format("%s did not start: %s\n  command: %s\n  output:\n%s", kind, why,
                              command_line, output)
  end
  self.host, self.port = host, tonumber(port)
  return self
end

function Server:alive()
  return self.pid ~= nil and process_alive(self.pid)
end

function Server:log_text()
  return read_file(self.log)
end

--- Stop the server: SIGTERM (and stdin EOF), SIGKILL after M.stop_timeout.
function Server:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  if self.pid then
    os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
    local deadline = socket.gettime() + M.stop_timeout
    -- Teardown only: bounded wait for the process to go.
    while process_alive(self.pid) and socket.gettime() < deadline do
      socket.select(nil, nil, 0.02)
    end
    if process_alive(self.pid) then
      os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
    end
  end
  if self.stdin then
    self.stdin:close() -- reaps the child
    self.stdin = nil
  end
  os.remove(self.log)
end

local servers = {} -- key -> Server, or { failed = message }

--- A running server for this kind and configuration, started on first use.
function M.server_for(kind, config)
  local key = kind .. " " .. M.config_key(config)
  local s = servers[key]
  if s and s.failed then
    return nil, s.failed
  end
  if s and not s:alive() then
    s:stop()
    s = nil
  end
  if not s then
    local err
    s, err = M.start_server(kind, config)
    if not s then
      servers[key] = { failed = err }
      return nil, err
    end
    servers[key] = s
  end
  return s
end

--- Stop every server this module started.
function M.stop_all()
  for key, s in pairs(servers) do
    if s.stop then
      s:stop()
    end
    servers[key] = nil
  end
end

-- endregion

-- region: driving a dialogue ----------------------------------------------------

local Reader = {}
Reader.__index = Reader

local function new_reader(sock)
  return setmetatable({ sock = sock, buf = "", closed = false }, Reader)
end

-- One raw reply line (with its line ending) or nil and "timeout" / "closed".
function Reader:line(deadline)
  while true do
    local nl = self.buf:find("\n", 1, true)
    if nl then
      local line = self.buf:sub(1, nl)
      self.buf = self.buf:sub(nl + 1)
      return line
    end
    if self.closed then
      if self.buf ~= "" then
        local rest = self.buf
        self.buf = ""
        return rest
      end
      return nil, "closed"
    end
    local remaining = deadline - socket.gettime()
    if remaining <= 0 then
      return nil, "timeout"
    end
    -- Wait until readable, then take whatever is there (receive(n) alone
    -- would wait for all n bytes).
    socket.select({ self.sock }, nil, remaining)
    self.sock:settimeout(0)
    local data, err, partial = self.sock:receive(8192)
    data = data or partial
    if data and data ~= "" then
      self.buf = self.buf .. data
    end
    if err == "closed" or (err and err ~= "timeout") then
      self.closed = true
    end
  end
end

-- How a raw reply line is shown: CRLF removed; anything else marked.
local function reply_text(raw)
  if raw:sub(-2) == "\r\n" then
    return raw:sub(1, -3)
  elseif raw:sub(-1) == "\n" then
    return raw:sub(1, -2) .. " <LF without CR>"
  end
  return raw .. " <no line end>"
end

--- Drive one dialogue against one server.
-- Each complete client line gets one reply (a multi-line reply counts once),
-- except message lines after a 354, which get none until the lone dot.
-- Command and AUTH-response lines end at LF, message lines at CRLF, as in
-- aiosmtpd. A reply that does not come within M.reply_timeout is recorded
-- as "<no reply>". When the dialogue leaves the connection open in command
-- state, an epilogue QUIT catches any stray reply.
-- @return list of { send = chunk index (0 = greeting, #sends+1 = epilogue), text = line }
function M.run_dialogue(server, sends)
  local lines = {}
  local function record(send, text)
    lines[#lines + 1] = { send = send, text = text }
  end

  local sock = socket.tcp()
  sock:settimeout(M.reply_timeout)
  local ok, err = sock:connect(server.host, server.port)
  if not ok then
    sock:close()
    return nil, string.format("cannot connect to %s at %s:%d: %s", server.kind, server.host,
                              server.port, tostring(err))
  end
  local reader = new_reader(sock)

  -- One reply unit; returns its final line's text, or nil.
  local function reply(send)
    local deadline = socket.gettime() + M.reply_timeout
    while true do
      local raw, why = reader:line(deadline)
      if not raw then
        if why == "closed" then
          record(send, "<closed>")
        else
          record(send, "<no reply>")
        end
        return nil, why
      end
      local text = reply_text(raw)
      record(send, text)
      if text:sub(4, 4) ~= "-" then
        return text
      end
    end
  end

  local mode = "command" -- or "message" (after 354), "response" (after 334)
  local pending = ""
  local closed = false

  local function take_line()
    local stop
    if mode == "message" then
      local at = pending:find("\r\n", 1, true)
      stop = at and at + 1
    else
      stop = pending:find("\n", 1, true)
    end
    if not stop then
      return nil
    end
    local line = pending:sub(1, stop)
    pending = pending:sub(stop + 1)
    return line
  end

  -- After 221 or 421 the server must close: wait for that (bounded),
  -- recording anything it still sends.
  local function await_close(send)
    local deadline = socket.gettime() + M.reply_timeout
    while true do
      local raw, why = reader:line(deadline)
      if not raw then
        record(send, why == "closed" and "<closed>" or "<open>")
        return why == "closed"
      end
      record(send, reply_text(raw))
    end
  end

  local function exchange(send, chunk)
    sock:settimeout(M.reply_timeout)
    local sent, serr, last_sent = sock:send(chunk)
    if not sent then
      record(send, string.format("<send failed after %d of %d octets: %s>", last_sent or 0, #chunk,
                                 tostring(serr)))
      closed = true
      return
    end
    pending = pending .. chunk
    while not closed do
      local line = take_line()
      if not line then
        break
      end
      if mode == "message" and line ~= ".\r\n" then -- luacheck: ignore 542
        -- a message line: no reply
      else
        local text, why = reply(send)
        if why == "closed" then
          closed = true
        end
        local code = text and text:sub(1, 3)
        if code == "221" or code == "421" then
          closed = await_close(send)
        end
        if code == "354" then
          mode = "message"
        elseif text and text:sub(1, 3) == "334" then
          mode = "response"
        else
          mode = "command"
        end
      end
    end
  end

  local text, why = reply(0)
  if why == "closed" then
    closed = true
  elseif text and text:sub(1, 3) == "421" then
    closed = await_close(0)
  end
  for i, chunk in ipairs(sends) do
    if closed then
      break
    end
    exchange(i, chunk)
  end
  if not closed then
    if mode == "command" then
      exchange(#sends + 1, "QUIT\r\n")
    else
      record(#sends, "<open>")
    end
  end
  sock:close()
  return lines
end

-- endregion

-- region: normalising and diffing -------------------------------------------------

local function texts(lines)
  local out = {}
  for i, l in ipairs(lines) do
    out[i] = l.text
  end
  return out
end

--- The normalisations applied to every case (documented in dialogues.lua
-- under `global`): the greeting's ident, luasmtpd's PIPELINING line.
-- @return normalised texts, list of problems found while normalising
function M.normalise(lines, side)
  local out, problems = {}, {}
  local host = M.hostname:gsub("%p", "%%%0")
  local ehlo_replies, pipelining = 0, 0
  for i, l in ipairs(lines) do
    local text = l.text
    if i == 1 and l.send == 0 then
      text = text:gsub("^(220 " .. host .. ") .*$", "%1 <ident>")
    end
    if text == "250-" .. M.hostname then
      ehlo_replies = ehlo_replies + 1
    end
    if side == "luasmtpd" and text == "250-PIPELINING" then
      pipelining = pipelining + 1
    else
      out[#out + 1] = text
    end
  end
  if side == "luasmtpd" and pipelining ~= ehlo_replies then
    problems[#problems + 1] = string.format(
      "luasmtpd advertised PIPELINING %d times in %d EHLO replies (auth-api.md 4.1 wants it in each)",
      pipelining, ehlo_replies)
  end
  return out, problems
end

local function expectation_range(e)
  local at = e[1]
  if type(at) == "table" then
    local to = at[2]
    if to == nil or to < 0 then
      to = math.huge
    end
    return at[1], to
  end
  return at, at
end

--- Compare two transcripts for one case.
-- @param case the case (for expect_diff and normalise)
-- @param deviations table of known deviation keys -> description
-- @return result table: diffs, unexpected (list of strings), expected count
function M.diff(case, ref_lines, lua_lines, deviations)
  local ref, p1 = M.normalise(ref_lines, "aiosmtpd")
  local lua, p2 = M.normalise(lua_lines, "luasmtpd")
  if case.normalise then
    ref = case.normalise(ref, "aiosmtpd") or ref
    lua = case.normalise(lua, "luasmtpd") or lua
  end
  local result = { diffs = {}, unexpected = {}, expected = 0, ref = ref, lua = lua }
  for _, p in ipairs(p1) do
    result.unexpected[#result.unexpected + 1] = p
  end
  for _, p in ipairs(p2) do
    result.unexpected[#result.unexpected + 1] = p
  end

  local expects = case.expect_diff or {}
  local used = {}
  for _, e in ipairs(expects) do
    if not (deviations and deviations[e[2]]) then
      result.unexpected[#result.unexpected + 1] = "expect_diff names an undocumented deviation: "
        .. tostring(e[2])
    end
  end

  local n = math.max(#ref, #lua)
  for i = 1, n do
    local a, b = ref[i], lua[i]
    if a ~= b then
      local key, want
      for j, e in ipairs(expects) do
        local from, to = expectation_range(e)
        if i >= from and i <= to then
          key, want = e[2], e[3]
          used[j] = true
          break
        end
      end
      result.diffs[#result.diffs + 1] = { index = i, ref = a or "<none>", lua = b or "<none>",
                                          expected = key }
      if key and want and b ~= want then
        local df = result.diffs[#result.diffs]
        df.expected, df.note = nil, "UNEXPECTED: " .. key .. " documents " .. want
        result.unexpected[#result.unexpected + 1] = string.format(
          "line %d: luasmtpd %q, but the documented deviation %s says %q", i, b or "<none>", key, want)
      elseif key then
        result.expected = result.expected + 1
      else
        result.unexpected[#result.unexpected + 1] = string.format(
          "line %d: aiosmtpd %q, luasmtpd %q", i, a or "<none>", b or "<none>")
      end
    end
  end
  for j, e in ipairs(expects) do
    if not used[j] then
      local from, to = expectation_range(e)
      result.unexpected[#result.unexpected + 1] = string.format(
        "expected difference (%s) at line %s did not occur", tostring(e[2]),
        from == to and tostring(from) or (from .. "-" .. (to == math.huge and "end" or to)))
    end
  end
  return result
end

--- Run one case against both servers.
-- @return result (see M.diff, plus ref_lines, lua_lines), or nil and error
function M.run_case(case, deviations)
  local ref_server, err = M.server_for("aiosmtpd", case)
  if not ref_server then
    return nil, err
  end
  local ref_lines, rerr = M.run_dialogue(ref_server, case.send)
  if not ref_lines then
    return nil, rerr
  end
  local lua_server, lerr = M.server_for("luasmtpd", case)
  if not lua_server then
    return nil, lerr
  end
  local lua_lines, lerr2 = M.run_dialogue(lua_server, case.send)
  if not lua_lines then
    if not lua_server:alive() then
      lerr2 = lerr2 .. "\n  luasmtpd exited; output:\n" .. lua_server:log_text()
    end
    return nil, lerr2
  end
  local result = M.diff(case, ref_lines, lua_lines, deviations)
  result.ref_lines, result.lua_lines = ref_lines, lua_lines
  if not lua_server:alive() then
    result.unexpected[#result.unexpected + 1] = "luasmtpd exited during the case; output:\n"
      .. lua_server:log_text()
  end
  return result
end

--- The cases and deviations, validated.
function M.load_dialogues()
  local d = dofile(M.dir .. "/dialogues.lua")
  local seen = {}
  for i, case in ipairs(d.cases) do
    assert(type(case.name) == "string", "case " .. i .. " has no name")
    assert(not seen[case.name], "duplicate case name " .. case.name)
    seen[case.name] = true
    assert(type(case.send) == "table" and #case.send > 0, case.name .. ": no sends")
    for _, e in ipairs(case.expect_diff or {}) do
      assert(d.deviations[e[2]], case.name .. ": unknown deviation " .. tostring(e[2]))
    end
  end
  return d
end

-- endregion

-- region: command line -----------------------------------------------------------

-- Make bytes visible: CR LF as \r\n, other controls and non-ASCII as \xHH.
local function visible(s)
  return (s:gsub("[%c\128-\255\\]", function(c)
    if c == "\r" then
      return "\\r"
    elseif c == "\n" then
      return "\\n"
    elseif c == "\\" then
      return "\\\\"
    end
    return string.format("\\x%02X", c:byte())
  end))
end
M.visible = visible

local function wrap(s, width)
  local out = {}
  if s == "" then
    return { "" }
  end
  local i = 1
  while i <= #s do
    out[#out + 1] = s:sub(i, i + width - 1)
    i = i + width
  end
  return out
end

local function shorten(s, width)
  if #s > width then
    return s:sub(1, width - 3) .. "..."
  end
  return s
end

-- Which send a normalised line index came from (best effort: the raw
-- aiosmtpd transcript, else luasmtpd's).
local function send_label(case, result, index)
  local raw = result.ref_lines[index] or result.lua_lines[index]
  if not raw then
    return ""
  end
  if raw.send == 0 then
    return "(connect)"
  end
  local chunk = case.send[raw.send]
  if not chunk then
    return "(epilogue QUIT)"
  end
  return visible(chunk)
end

local COL = 52
local function print_rows(case, result, rows, width_sent)
  local fmt = "  %4s  %-" .. width_sent .. "s  %-" .. COL .. "s  %-" .. COL .. "s  %s"
  print(string.format(fmt, "line", "sent", "aiosmtpd", "luasmtpd", ""))
  for _, row in ipairs(rows) do
    local a, b = wrap(visible(row.ref), COL), wrap(visible(row.lua), COL)
    local note = row.same and "" or row.note or (row.expected and ("expected: " .. row.expected) or "UNEXPECTED")
    local sent = shorten(send_label(case, result, row.index), width_sent)
    for k = 1, math.max(#a, #b) do
      print(string.format(fmt, k == 1 and tostring(row.index) or "", k == 1 and sent or "",
                          a[k] or "", b[k] or "", k == 1 and note or ""))
    end
  end
end

local function usage()
  io.stderr:write([[
usage: luajit spec/reference/compare.lua [options] [case-name-pattern]
  Runs the dialogues of spec/reference/dialogues.lua against aiosmtpd and
  luasmtpd and prints every line where they differ.
  case-name-pattern   a Lua pattern matched against case names
  --show              print the whole side-by-side transcript of each case
  --ref-only          run aiosmtpd only, twice, print its transcripts and
                      report any case whose output differs between the runs
  --list              list case names
  env LUASMTPD_BIN (default build/luasmtpd), REF_PYTHON (default /usr/bin/python3)
]])
end

local function main_ref_only(selected, show)
  local runs = {}
  for round = 1, 2 do
    runs[round] = {}
    for _, case in ipairs(selected) do
      local server, err = M.server_for("aiosmtpd", case)
      local lines
      if server then
        lines, err = M.run_dialogue(server, case.send)
      end
      runs[round][case.name] = lines and table.concat(texts(lines), "\n") or ("ERROR " .. err)
    end
    M.stop_all() -- fresh servers for the second round
  end
  local unstable = 0
  for _, case in ipairs(selected) do
    local a, b = runs[1][case.name], runs[2][case.name]
    if show or a ~= b then
      print(string.format("== %s (%s)%s", case.name, case.handler or "plain",
                          a ~= b and "  UNSTABLE" or ""))
      for line in (a .. "\n"):gmatch("([^\n]*)\n") do
        print("   " .. visible(line))
      end
      if a ~= b then
        unstable = unstable + 1
        print("  -- second run:")
        for line in (b .. "\n"):gmatch("([^\n]*)\n") do
          print("   " .. visible(line))
        end
      end
    end
  end
  print(string.format("%d cases run twice against aiosmtpd: %d unstable", #selected, unstable))
  return unstable == 0 and 0 or 1
end

--- Command-line entry point. @return exit status
function M.main(argv)
  local pattern, show, ref_only, list
  for _, a in ipairs(argv) do
    if a == "--show" then
      show = true
    elseif a == "--ref-only" then
      ref_only = true
    elseif a == "--list" then
      list = true
    elseif a == "-h" or a == "--help" then
      usage()
      return 0
    elseif a:sub(1, 2) == "--" then
      usage()
      return 2
    else
      pattern = a
    end
  end
  local d = M.load_dialogues()
  local selected = {}
  for _, case in ipairs(d.cases) do
    if not pattern or case.name:match(pattern) then
      selected[#selected + 1] = case
    end
  end
  if list then
    for _, case in ipairs(selected) do
      print(case.name)
    end
    return 0
  end
  if ref_only then
    return main_ref_only(selected, show)
  end
  local f = io.open(bin_path(), "rb")
  if not f then
    io.stderr:write("luasmtpd binary not found: " .. bin_path() .. " (set LUASMTPD_BIN)\n")
    return 2
  end
  f:close()

  local counts = { same = 0, expected = 0, unexpected = 0, error = 0 }
  local unexpected_list = {}
  for _, case in ipairs(selected) do
    local result, err = M.run_case(case, d.deviations)
    if not result then
      counts.error = counts.error + 1
      print(string.format("== %s (%s): ERROR\n%s", case.name, case.handler or "plain", err))
      unexpected_list[#unexpected_list + 1] = case.name .. ": ERROR " .. err:match("^[^\n]*")
    else
      local status
      if #result.unexpected > 0 then
        status = "UNEXPECTED"
        counts.unexpected = counts.unexpected + 1
        for _, u in ipairs(result.unexpected) do
          unexpected_list[#unexpected_list + 1] = case.name .. ": " .. u
        end
      elseif #result.diffs > 0 then
        status = "expected differences only"
        counts.expected = counts.expected + 1
      else
        status = "identical"
        counts.same = counts.same + 1
      end
      if show or #result.diffs > 0 or #result.unexpected > 0 then
        print(string.format("== %s (%s): %s", case.name, case.handler or "plain", status))
        local rows = {}
        if show then
          local by_index = {}
          for _, df in ipairs(result.diffs) do
            by_index[df.index] = df
          end
          for i = 1, math.max(#result.ref, #result.lua) do
            rows[#rows + 1] = by_index[i] or { index = i, ref = result.ref[i], lua = result.lua[i],
                                                same = true }
          end
        else
          rows = result.diffs
        end
        if #rows > 0 then
          print_rows(case, result, rows, 30)
        end
        for _, u in ipairs(result.unexpected) do
          if not u:match("^line %d+:") then
            print("  ! " .. u)
          end
        end
        local explained = {}
        for _, df in ipairs(result.diffs) do
          if df.expected and not explained[df.expected] then
            explained[df.expected] = true
            print("  (" .. df.expected .. ": " .. d.deviations[df.expected] .. ")")
          end
        end
      end
    end
  end
  M.stop_all()
  print(string.format(
    "\n%d cases: %d identical, %d with expected differences only, %d with unexpected differences, %d errors",
    #selected, counts.same, counts.expected, counts.unexpected, counts.error))
  if #unexpected_list > 0 then
    print("unexpected:")
    for _, u in ipairs(unexpected_list) do
      print("  " .. u)
    end
  end
  return (counts.unexpected + counts.error) == 0 and 0 or 1
end

-- endregion

if ... ~= "spec.reference.compare" and arg and arg[0] and arg[0]:match("compare%.lua$") then
  local ok, status = xpcall(M.main, debug.traceback, arg)
  M.stop_all()
  if not ok then
    io.stderr:write(status, "\n")
    os.exit(3)
  end
  os.exit(status)
end

return M
