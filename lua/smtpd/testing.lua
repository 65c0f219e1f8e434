--- Test a luasmtpd handler script against the real server.
--
-- Starts `luasmtpd` on 127.0.0.1 with a free port, talks SMTP to it over
-- LuaSocket and stops it again. Meant for busted specs (run them with
-- `lua = "luajit"` in `.busted`), but works in any LuaJIT program.
--
-- Readiness comes from the server's `--ready-fd`: the helper reads the
-- `ready HOST:PORT` line from a FIFO, so no test sleeps or polls a port.
-- Every wait is bounded: socket operations time out (5 s by default), start
-- and stop give up after a few seconds. Waiting on the FIFOs uses LuaJIT's
-- built-in FFI (`poll(2)`), so the helper runs on Linux under LuaJIT only.
--
-- Failed AUTHs: `start` passes `-o auth_fail_penalty=false` (every client
-- of a test is 127.0.0.1, and the penalty would make each failure wait
-- seconds) unless `options.auth_fail_penalty` is given; the command line
-- wins over a script's `options`, so turn it on with
-- `start{ options = { auth_fail_penalty = true } }`.
--
-- TLS: `start{ tls = "starttls" | "implicit" | "both" }` gives the server a
-- throw-away certificate (made with the `openssl` command at test time, or
-- your own with `cert = { cert = PATH, key = PATH }`); the client speaks TLS
-- through LuaSec (`require "ssl"`, Debian's `lua-sec`) with `c:starttls()`,
-- `srv:connect{ tls = true }` or `srv:connect_tls()`, after which `cmd`,
-- `reply`, `send`, `data` and `auth_*` work as before. The client never
-- verifies the server's certificate (it is a test certificate).
--
-- @module smtpd.testing
-- @usage
-- local testing = require "smtpd.testing"
-- describe("my handler", function()
--   local srv
--   setup(function() srv = testing.start{ handler = "scripts/my_handler.lua" } end)
--   teardown(function() if srv then srv:stop() end end)
--   it("accepts mail", function()
--     local c = srv:connect()
--     assert.equal(250, (c:cmd("EHLO client.test")))
--     c:close()
--   end)
-- end)
-- @usage
-- -- AUTH over STARTTLS, with the default auth_require_tls = true:
-- local srv = testing.start{ handler = "policy.lua", tls = "starttls" }
-- local c = srv:connect()
-- c:cmd("EHLO client.test")
-- assert(c:starttls())
-- c:cmd("EHLO client.test")
-- assert(c:auth_plain("alice", "s3cret") == 235)
-- c:close()
-- srv:stop()
local socket = require "socket"
local mime = require "mime"
local ffi = require "ffi"

local M = {}

--- Seconds a socket operation waits by default.
M.timeout = 5
--- Seconds `start` waits for the server's ready line.
M.start_timeout = 10
--- Seconds `stop` waits after SIGTERM before it sends SIGKILL.
M.stop_timeout = 5
--- Seconds an `openssl` command (making certificates) may run.
M.openssl_timeout = 60

-- FFI declarations; pcall because another module may have declared them.
for _, decl in ipairs{
  "struct pollfd { int fd; short events; short revents; };",
  "int poll(struct pollfd *fds, unsigned long nfds, int timeout);",
  "int open(const char *path, int flags, ...);",
  "int close(int fd);",
  "long read(int fd, void *buf, unsigned long n);",
  "int kill(int pid, int sig);",
  "int access(const char *path, int mode);",
} do
  pcall(ffi.cdef, decl)
end
local C = ffi.C

-- Linux values (x86, ARM, RISC-V).
local O_RDONLY, O_NONBLOCK, O_CLOEXEC = 0, 0x800, 0x80000
local POLLIN = 0x1
local EINTR, EAGAIN = 4, 11
local SIGTERM, SIGKILL = 15, 9
local SIGNALS = { HUP = 1, INT = 2, KILL = 9, USR1 = 10, USR2 = 12, TERM = 15, STOP = 19, CONT = 18 }

-- LuaSec reports a timeout inside TLS as "wantread"/"wantwrite".
local function is_timeout(err)
  return err == "timeout" or err == "wantread" or err == "wantwrite"
end

-- LuaSec, loaded on first use so that plain-text tests do not need it.
local function ssl_module()
  local ok, ssl = pcall(require, "ssl")
  if not ok then
    error("smtpd.testing: TLS needs LuaSec (require \"ssl\"; Debian: lua-sec): " .. tostring(ssl), 3)
  end
  return ssl
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a") or ""
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

local function make_tempdir()
  local tmp = os.getenv("TMPDIR")
  if not tmp or tmp == "" then tmp = "/tmp" end
  local p = assert(io.popen("mktemp -d " .. shell_quote(tmp .. "/luasmtpd-test.XXXXXX")))
  local dir = p:read("*l")
  p:close()
  if not dir or dir == "" then error("smtpd.testing: mktemp -d failed", 3) end
  return dir
end

local function mkfifo(path)
  local p = assert(io.popen("mkfifo " .. shell_quote(path) .. " 2>&1 && echo ok"))
  local out = p:read("*a")
  p:close()
  if not out:find("ok\n$") then error("smtpd.testing: mkfifo failed: " .. out, 3) end
end

-- Reads a file descriptor until EOF or `deadline` (socket.gettime() value).
-- Returns the bytes read and true on EOF, false on timeout.
local function read_fd_until_eof(fd, deadline, stop_at_newline)
  local chunks = {}
  local buf = ffi.new("char[512]")
  local pfd = ffi.new("struct pollfd[1]")
  while true do
    -- Poll at least once, even when the deadline has passed.
    local ms = math.max(0, math.floor((deadline - socket.gettime()) * 1000))
    pfd[0].fd, pfd[0].events, pfd[0].revents = fd, POLLIN, 0
    local r = C.poll(pfd, 1, ms)
    if r == 0 or (r < 0 and ffi.errno() ~= EINTR) then
      return table.concat(chunks), false
    elseif r > 0 then
      local n = tonumber(C.read(fd, buf, 512))
      if n > 0 then
        chunks[#chunks + 1] = ffi.string(buf, n)
        if stop_at_newline and chunks[#chunks]:find("\n") then
          return table.concat(chunks), true
        end
      elseif n == 0 then
        return table.concat(chunks), true
      elseif ffi.errno() ~= EAGAIN and ffi.errno() ~= EINTR then
        return table.concat(chunks), true
      end
    end
  end
end

local function option_value(name, v)
  local t = type(v)
  if t == "boolean" then
    return v and "true" or "false"
  elseif t == "number" then
    return v == math.floor(v) and string.format("%d", v) or tostring(v)
  elseif t == "string" then
    return v
  elseif t == "table" and #v > 0 then
    local parts = {}
    for i, x in ipairs(v) do parts[i] = tostring(x) end
    return table.concat(parts, ",")
  end
  error("smtpd.testing: option " .. name .. " cannot be given on the command line; " ..
    "set it in the script's options table", 3)
end

-- ---------------------------------------------------------------------------
-- Certificates

-- Runs a shell command with a bounded time; raises with its output if it fails.
local function run_bounded(cmd, what)
  local p = assert(io.popen("timeout " .. string.format("%d", M.openssl_timeout) .. " sh -c " ..
    shell_quote(cmd) .. " </dev/null 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local body, status = out:match("^(.*)exit=(%d+)\n$")
  if status ~= "0" then
    error(("smtpd.testing: %s failed (status %s):\n%s"):format(what, tostring(status), body or out), 0)
  end
  return body
end

local serial = 0

--- Makes a throw-away certificate and key with the `openssl` command.
-- RSA 2048 (or ECDSA P-256), valid for two days. Self-signed unless `ca` is
-- given.
-- @tparam[opt] table opts
--   `cn` (common name, default "localhost"),
--   `dir` (directory for the files; default: a new temporary directory,
--   which the caller removes),
--   `name` (file name stem, default "cert": writes NAME.pem and NAME.key),
--   `ca` (a table from an earlier `make_cert{ is_ca = true }`: sign with it),
--   `is_ca` (true: a CA certificate that can sign others),
--   `client` (true: extendedKeyUsage clientAuth, for client certificates),
--   `alg` ("rsa", the default, or "ec" for an ECDSA P-256 key; faster).
-- @treturn table `{ cert = PATH, key = PATH, dir = DIR, cn = CN }`; raises
--   with openssl's output on failure.
-- @usage
-- local ca = testing.make_cert{ cn = "Test CA", is_ca = true }
-- local client = testing.make_cert{ cn = "client", ca = ca, dir = ca.dir, name = "client", client = true }
function M.make_cert(opts)
  opts = opts or {}
  local dir = opts.dir or make_tempdir()
  local name = opts.name or "cert"
  local cn = opts.cn or "localhost"
  local cert, key = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".key"
  local subj = shell_quote("/CN=" .. cn)
  local newkey = "-newkey rsa:2048"
  if opts.alg == "ec" then
    newkey = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
  elseif opts.alg ~= nil and opts.alg ~= "rsa" then
    error("smtpd.testing: make_cert: alg must be \"rsa\" or \"ec\"", 2)
  end
  if not opts.ca then
    local ext = ""
    if opts.is_ca then
      ext = " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    end
    run_bounded("openssl req -x509 " .. newkey .. " -nodes -subj " .. subj .. " -days 2" .. ext ..
      " -keyout " .. shell_quote(key) .. " -out " .. shell_quote(cert), "openssl req -x509")
  else
    local csr, extfile = dir .. "/" .. name .. ".csr", dir .. "/" .. name .. ".ext"
    local ext = { "basicConstraints=CA:FALSE",
      opts.alg == "ec" and "keyUsage=digitalSignature" or "keyUsage=digitalSignature,keyEncipherment",
      opts.client and "extendedKeyUsage=clientAuth" or "extendedKeyUsage=serverAuth" }
    write_file(extfile, table.concat(ext, "\n") .. "\n")
    serial = serial + 1
    run_bounded("openssl req -new " .. newkey .. " -nodes -subj " .. subj .. " -keyout " ..
      shell_quote(key) .. " -out " .. shell_quote(csr) .. " && openssl x509 -req -in " ..
      shell_quote(csr) .. " -CA " .. shell_quote(opts.ca.cert) .. " -CAkey " ..
      shell_quote(opts.ca.key) .. " -set_serial " .. string.format("%d", os.time() * 1000 + serial) ..
      " -days 2 -extfile " .. shell_quote(extfile) .. " -out " .. shell_quote(cert), "openssl x509 -req")
    os.remove(csr)
    os.remove(extfile)
  end
  return { cert = cert, key = key, dir = dir, cn = cn }
end

-- The default server certificate: made once per process (RSA key generation
-- can take a second), kept in memory, and written into each server's own
-- directory, so that a spec may replace a server's files freely.
local default_pem, default_key

local function default_cert(dir)
  if not default_pem then
    local made = M.make_cert{ name = "server" }
    default_pem, default_key = read_file(made.cert), read_file(made.key)
    os.execute("rm -rf " .. shell_quote(made.dir))
    if default_pem == "" or default_key == "" then
      default_pem, default_key = nil, nil
      error("smtpd.testing: could not read the certificate just made", 0)
    end
  end
  local pair = { cert = dir .. "/server.pem", key = dir .. "/server.key" }
  write_file(pair.cert, default_pem)
  write_file(pair.key, default_key)
  return pair
end

-- ---------------------------------------------------------------------------
-- Client

local Client = {}
Client.__index = Client

local function b64(s)
  if s == "" then return "" end
  return (mime.b64(s))
end
M.b64 = b64

--- Connects to an SMTP server and reads its greeting.
-- Works against any server, not only one started by `start`.
-- @tparam string host
-- @tparam number port
-- @tparam[opt] table opts `timeout` (seconds, default `testing.timeout`),
--   `greeting` (false: do not read the greeting),
--   `tls` (true, or a table of `tls_handshake` options: implicit TLS, the
--   handshake comes before the greeting),
--   `sockopts` (LuaSocket `setoption` names and values applied before
--   connecting, e.g. `{ ["recv-buffer-size"] = 4096 }`),
--   `unix` (true: `host` is a UNIX-domain socket's path and `port` is
--   ignored)
-- @return a client, or nil and an error message
-- @usage local c = assert(testing.connect("127.0.0.1", 2525))
-- @usage local c = assert(testing.connect("127.0.0.1", 4650, { tls = true }))
function M.connect(host, port, opts)
  opts = opts or {}
  local sock
  if opts.unix then
    -- host is a UNIX-domain socket's path ("unix:" prefix optional).
    host = host:gsub("^unix:", "")
    port = nil
    sock = require("socket.unix").stream()
  elseif opts.sockopts then
    -- socket.tcp() makes its descriptor only on connect; options need one now.
    sock = host:find(":", 1, true) and socket.tcp6() or socket.tcp4()
  else
    sock = socket.tcp()
  end
  local timeout = opts.timeout or M.timeout
  sock:settimeout(timeout)
  for name, value in pairs(opts.sockopts or {}) do
    local set, serr = sock:setoption(name, value)
    if not set then
      sock:close()
      return nil, "setoption " .. name .. ": " .. tostring(serr)
    end
  end
  local ok, err = sock:connect(host, port)
  if not ok then
    sock:close()
    return nil, "connect " .. host .. (port and ":" .. tostring(port) or "") .. ": " .. tostring(err)
  end
  local c = setmetatable({ sock = sock, timeout = timeout, pending = "",
    closed = false, transcript = {} }, Client)
  if opts.tls then
    local hs_ok, hs_err = c:tls_handshake(type(opts.tls) == "table" and opts.tls or nil)
    if not hs_ok then
      c:close()
      return nil, "TLS handshake with " .. host .. ":" .. tostring(port) .. ": " .. tostring(hs_err)
    end
  end
  if opts.greeting ~= false then
    local code, text, lines = c:reply()
    if not code then
      c:close()
      return nil, "no greeting: " .. tostring(text)
    end
    c.greeting_code, c.greeting_text, c.greeting = code, text, lines[1]
  end
  return c
end

local function log(c, dir, s)
  local t = c.transcript
  if #t < 400 then
    if #s > 300 then s = s:sub(1, 300) .. "... (" .. #s .. " octets)" end
    t[#t + 1] = dir .. " " .. s
  end
end

--- Sends bytes as they are (no CRLF is added).
-- @tparam string data
-- @return true, or nil and an error message
function Client:send(data)
  if self.sock == nil then return nil, "closed" end
  -- Escape only what the transcript keeps: a large message is cut anyway.
  local shown = #data > 300 and data:sub(1, 300) or data
  shown = shown:gsub("\r\n", "\\r\\n"):gsub("\n", "\\n"):gsub("\r", "\\r")
  if #data > 300 then shown = shown .. "... (" .. #data .. " octets)" end
  log(self, "C:", shown)
  local deadline = socket.gettime() + self.timeout
  local i = 1
  while i <= #data do
    self.sock:settimeout(math.max(0, deadline - socket.gettime()))
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    else
      if partial and partial >= i then i = partial + 1 end
      if not is_timeout(err) or socket.gettime() >= deadline then
        return nil, err
      end
    end
  end
  return true
end

-- Reads one line (with its line ending). Returns the line, or nil and
-- "closed" / "timeout"; a partial line before EOF is returned with "closed".
function Client:_line(deadline, max)
  max = max or 1048576
  local got = { self.pending }
  self.pending = ""
  local n = #got[1]
  if got[1]:find("\n") then
    local s = got[1]
    local e = s:find("\n")
    self.pending = s:sub(e + 1)
    return s:sub(1, e)
  end
  while true do
    if self.sock == nil then return nil, "closed", table.concat(got) end
    local left = deadline - socket.gettime()
    if left <= 0 then
      self.pending = table.concat(got)
      return nil, "timeout"
    end
    self.sock:settimeout(left)
    local b, err = self.sock:receive(1)
    if b then
      got[#got + 1] = b
      n = n + 1
      if b == "\n" then return table.concat(got) end
      if n > max then return nil, "line too long", table.concat(got) end
    elseif is_timeout(err) then
      self.pending = table.concat(got)
      return nil, "timeout"
    else
      self.closed = true
      return nil, "closed", table.concat(got)
    end
  end
end

--- Reads one reply, possibly multi-line.
-- @tparam[opt] number timeout seconds (default: the client's timeout)
-- @treturn number code
-- @treturn string the texts of all lines without their codes, joined by "\n"
-- @treturn table the raw lines, without CRLF
-- @return or nil, "closed" (EOF) / "timeout" / "malformed reply: ...", and the
--   lines read so far
function Client:reply(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  local lines, texts, code = {}, {}, nil
  while true do
    local line, err, partial = self:_line(deadline)
    if not line then
      if partial and partial ~= "" then log(self, "S:", partial .. " (then " .. err .. ")") end
      return nil, err, lines
    end
    if line:sub(-2) ~= "\r\n" then
      log(self, "S:", line)
      return nil, "malformed reply: line not ended by CRLF: " .. ("%q"):format(line), lines
    end
    line = line:sub(1, -3)
    log(self, "S:", line)
    lines[#lines + 1] = line
    local c, sep, text = line:match("^(%d%d%d)([ %-]?)(.*)$")
    if not c or (sep == "" and text ~= "") then
      return nil, "malformed reply: " .. ("%q"):format(line), lines
    end
    if code and tonumber(c) ~= code then
      return nil, "malformed reply: code changed within a reply: " .. ("%q"):format(line), lines
    end
    code = tonumber(c)
    texts[#texts + 1] = text
    if sep ~= "-" then
      return code, table.concat(texts, "\n"), lines
    end
  end
end

--- Sends a command line (CRLF added) and reads its reply.
-- @tparam string line
-- @return as `reply`
-- @usage local code, text, lines = c:cmd("EHLO client.test")
function Client:cmd(line)
  local ok, err = self:send(line .. "\r\n")
  if not ok then return nil, err, {} end
  return self:reply()
end

--- AUTH PLAIN with an initial response.
-- @tparam string user
-- @tparam string pass
-- @tparam[opt] string authzid
-- @return code, text (as `reply`)
function Client:auth_plain(user, pass, authzid)
  return self:cmd("AUTH PLAIN " .. b64((authzid or "") .. "\0" .. user .. "\0" .. pass))
end

--- AUTH LOGIN in three steps (login and password answer 334 challenges).
-- Returns the first reply that is not a 334 challenge.
-- @tparam string user
-- @tparam string pass
-- @return code, text (as `reply`)
function Client:auth_login(user, pass)
  local code, text, lines = self:cmd("AUTH LOGIN")
  if code ~= 334 then return code, text, lines end
  code, text, lines = self:cmd(b64(user))
  if code ~= 334 then return code, text, lines end
  return self:cmd(b64(pass))
end

--- Sends a message with DATA.
-- Lines may end in LF or CRLF (they are sent as CRLF); lines starting with a
-- dot are dot-stuffed; the final `.` line is added.
-- @tparam string message
-- @return the final code, text and lines (or the reply to DATA if it was not 354)
function Client:data(message)
  local code, text, lines = self:cmd("DATA")
  if code ~= 354 then return code, text, lines end
  local body = message:gsub("\r?\n", "\r\n")
  if body ~= "" and body:sub(-2) ~= "\r\n" then body = body .. "\r\n" end
  body = body:gsub("^%.", ".."):gsub("\r\n%.", "\r\n..")
  local ok, err = self:send(body .. ".\r\n")
  if not ok then return nil, err, {} end
  return self:reply()
end

--- True if the server has closed the connection: reading gives EOF.
-- Waits up to `timeout` seconds (default: the client's timeout) for the EOF;
-- bytes that arrive meanwhile are kept for `reply`.
-- @tparam[opt] number timeout
-- @treturn boolean
function Client:is_closed(timeout)
  if self.closed then return true end
  if self.sock == nil then return true end
  if self.pending ~= "" then return false end
  self.sock:settimeout(timeout or self.timeout)
  local b, err = self.sock:receive(1)
  if b then
    self.pending = self.pending .. b
    return false
  elseif is_timeout(err) then
    return false
  end
  self.closed = true
  return true
end

--- Runs a client TLS handshake on the connection as it is now.
-- `starttls` and `connect{ tls = true }` call it; call it yourself after
-- sending STARTTLS by hand. The server's certificate is not verified.
-- Bytes already received in clear text and not yet read are an error
-- (a server must send nothing after `220 Ready to start TLS`).
-- @tparam[opt] table opts
--   `certificate`, `key` (paths: present a client certificate),
--   `protocol` (LuaSec protocol, default "any"; e.g. "tlsv1_1" to offer
--   only TLS 1.1), `ciphers` (OpenSSL cipher string),
--   `servername` (SNI), `timeout` (seconds, default: the client's timeout).
-- @return true, or nil and an error message ("timeout" if the handshake
--   did not finish in time)
function Client:tls_handshake(opts)
  opts = opts or {}
  if self.sock == nil then return nil, "closed" end
  if self.tls then return nil, "TLS already active on this client" end
  if self.pending ~= "" then
    return nil, ("clear text from the server before the handshake: %q"):format(self.pending)
  end
  local ssl = ssl_module()
  local params = { mode = "client", protocol = opts.protocol or "any", verify = "none",
    options = { "all" }, certificate = opts.certificate, key = opts.key, ciphers = opts.ciphers }
  local conn, err = ssl.wrap(self.sock, params)
  if not conn then return nil, "ssl.wrap: " .. tostring(err) end
  if opts.servername then conn:sni(opts.servername) end
  log(self, "C:", "(TLS handshake)")
  local deadline = socket.gettime() + (opts.timeout or self.timeout)
  while true do
    conn:settimeout(math.max(0, deadline - socket.gettime()))
    local ok, herr = conn:dohandshake()
    if ok then break end
    if not is_timeout(herr) then
      conn:close()
      self.sock, self.closed = nil, true
      log(self, "S:", "(TLS handshake failed: " .. tostring(herr) .. ")")
      return nil, tostring(herr)
    end
    if socket.gettime() >= deadline then
      conn:close()
      self.sock, self.closed = nil, true
      log(self, "S:", "(TLS handshake timed out)")
      return nil, "timeout"
    end
  end
  self.sock, self.tls = conn, true
  local info = conn:info() or {}
  log(self, "S:", ("(TLS established: %s %s)"):format(tostring(info.protocol), tostring(info.cipher)))
  return true
end

--- STARTTLS: sends the command, expects `220`, then runs `tls_handshake`.
-- The session starts over afterwards: send EHLO again.
-- @tparam[opt] table opts as for `tls_handshake`
-- @return 220, text and lines on success; the reply (code, text, lines) if
--   it was not 220; nil and an error message if the handshake failed
-- @usage assert.equal(220, (c:starttls()))
function Client:starttls(opts)
  local code, text, lines = self:cmd("STARTTLS")
  if code ~= 220 then return code, text, lines end
  local ok, err = self:tls_handshake(opts)
  if not ok then return nil, "TLS handshake: " .. tostring(err), lines end
  return code, text, lines
end

--- True once the connection speaks TLS.
-- @treturn boolean
function Client:is_tls()
  return self.tls == true
end

--- What LuaSec says about the TLS connection (`conn:info()`).
-- @treturn table with at least `protocol` (e.g. "TLSv1.2") and `cipher`
--   (OpenSSL's name), plus `bits`, `algbits` and the like; nil before TLS
-- @usage assert.matches("^TLSv1%.[23]$", c:ssl_info().protocol)
function Client:ssl_info()
  if not self.tls or self.sock == nil then return nil end
  return self.sock:info()
end

--- The server's certificate (a LuaSec X509 object: `:subject()`,
-- `:pem()`, ...), or nil before TLS.
function Client:peer_certificate()
  if not self.tls or self.sock == nil then return nil end
  return self.sock:getpeercertificate()
end

--- The common name (CN) in the server certificate's subject, or nil.
-- @treturn string
function Client:peer_cn()
  local cert = self:peer_certificate()
  if not cert then return nil end
  for _, entry in ipairs(cert:subject()) do
    if entry.short_name == "CN" or entry.name == "commonName" then return entry.value end
  end
  return nil
end

--- Closes the client side of the connection. Idempotent.
function Client:close()
  if self.sock then
    self.sock:close()
    self.sock = nil
  end
end

--- The exchange so far, one line per send or reply line (for error messages).
-- @treturn string
function Client:transcript_text()
  return table.concat(self.transcript, "\n")
end

-- ---------------------------------------------------------------------------
-- Server

local Server = {}
Server.__index = Server

local function build_args(opts, dir)
  local args = {}
  local handler = opts.handler
  if opts.source then
    handler = dir .. "/handler.lua"
    write_file(handler, opts.source)
  end
  if handler then
    args[#args + 1] = "--handler"
    args[#args + 1] = handler
  end
  args[#args + 1] = "-l"
  args[#args + 1] = opts.listen or "127.0.0.1:0"
  -- Started as root, the server drops to nobody unless told -n; tests keep
  -- root (their temporary files are root's) unless they ask for the drop.
  if opts.user then
    args[#args + 1] = "--user"
    args[#args + 1] = opts.user
  elseif not opts.setuid then
    args[#args + 1] = "-n"
  end
  if opts.tls then
    local cert, key = opts.cert.cert, opts.cert.key
    if opts.tls == "implicit" then
      for _, a in ipairs{ "--smtpscert", cert, "--smtpskey", key } do args[#args + 1] = a end
    else
      for _, a in ipairs{ "--tlscert", cert, "--tlskey", key } do args[#args + 1] = a end
    end
    if opts.tls == "both" then
      args[#args + 1] = "--listen-smtps"
      args[#args + 1] = opts.listen_smtps or "127.0.0.1:0"
    end
  end
  if opts.client_ca then
    args[#args + 1] = "--tls-client-ca"
    args[#args + 1] = opts.client_ca
  end
  if opts.hostname ~= false then
    args[#args + 1] = "--hostname"
    args[#args + 1] = opts.hostname or "mx.test"
  end
  -- auth_fail_penalty would make a test's failed AUTHs wait seconds each
  -- (all clients are 127.0.0.1): off, unless the test gives the option.
  -- Given first, so `options` or `args` naming it win.
  if not (opts.options and opts.options.auth_fail_penalty ~= nil) then
    args[#args + 1] = "-o"
    args[#args + 1] = "auth_fail_penalty=false"
  end
  local names = {}
  for name in pairs(opts.options or {}) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    args[#args + 1] = "-o"
    args[#args + 1] = name .. "=" .. option_value(name, opts.options[name])
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  return args
end

local X_OK = 1

local function executable(path)
  return C.access(path, X_OK) == 0
end

--- The server binary `start` and `check` run: `opts.binary`, else
-- `$LUASMTPD_BIN`, else the first `luasmtpd` on `PATH` (an installed copy),
-- else `build/luasmtpd` (a checkout).
-- @tparam[opt] table opts
-- @treturn string
function M.binary_path(opts)
  local bin = opts and opts.binary
  if bin and bin ~= "" then return bin end
  bin = os.getenv("LUASMTPD_BIN")
  if bin and bin ~= "" then return bin end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    local candidate = dir .. "/luasmtpd"
    if executable(candidate) then return candidate end
  end
  return "build/luasmtpd"
end

local binary_of = M.binary_path

-- `env = { NAME = "value" }` as shell assignments put before the command.
local function env_prefix(env)
  if env == nil then return "" end
  if type(env) ~= "table" then error("smtpd.testing: env must be a table of NAME = value", 3) end
  local names = {}
  for name in pairs(env) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      error("smtpd.testing: env has a bad variable name: " .. tostring(name), 3)
    end
    names[#names + 1] = name
  end
  table.sort(names)
  local parts = {}
  for _, name in ipairs(names) do parts[#parts + 1] = name .. "=" .. shell_quote(env[name]) .. " " end
  return table.concat(parts)
end

-- `script_args = { ... }`: after `--`, the handler's `...`.
local function script_args_suffix(list)
  if list == nil then return "" end
  if type(list) ~= "table" then error("smtpd.testing: script_args must be an array of strings", 3) end
  local parts = { " --" }
  for _, a in ipairs(list) do parts[#parts + 1] = " " .. shell_quote(a) end
  return table.concat(parts)
end

--- Starts luasmtpd and waits until it listens.
-- @tparam table opts
--   `handler` (path of a handler script) or `source` (handler code, written
--   to a temporary file); neither: the built-in default handler.
--   `options` (table: each entry becomes `-o name=value`; arrays become
--   comma lists), `args` (array of extra command-line arguments),
--   `script_args` (array: passed after `--`, the handler script's `...`),
--   `env` (table `NAME = value`: environment variables for the server,
--   added to the caller's),
--   `hostname` (default "mx.test"; false: the server's own default),
--   `listen` (default "127.0.0.1:0"),
--   `setuid` (true: do not pass `-n`, so a server started as root drops to
--   nobody), `user` ("USER[:GROUP]": `--user`, and no `-n`),
--   `binary` (default: see `binary_path`: `$LUASMTPD_BIN`, `luasmtpd` on
--   `PATH`, "build/luasmtpd"),
--   `timeout` (seconds for the ready line, default `testing.start_timeout`).
--
--   TLS: `tls` is one of
--
--   - `"starttls"`: `--tlscert/--tlskey`; `port` is a plain listener that
--     offers STARTTLS;
--   - `"implicit"`: `--smtpscert/--smtpskey`; the listener speaks TLS from
--     the first byte; `port` and `smtps_port` are that listener, and
--     `connect()` does the TLS handshake by itself;
--   - `"both"`: `--tlscert/--tlskey` plus `--listen-smtps` (`listen_smtps`,
--     default "127.0.0.1:0"); `port` is plain with STARTTLS, `smtps_port`
--     speaks implicit TLS (`connect{ tls = true }` or `connect_tls()`).
--
--   `cert` (`{ cert = PATH, key = PATH }`; default: a self-signed
--   certificate for CN=localhost, made with `make_cert` on first use and
--   reused for the rest of the process, copied into the server's temporary
--   directory, which `stop` removes), `client_ca` (path:
--   `--tls-client-ca`, so clients may present certificates).
-- @return a server object with fields `host`, `port`, `pid`, `listeners`
--   (array of "HOST:PORT"), and with `tls`: `tls` (the mode),
--   `smtps_host`/`smtps_port` (the first implicit-TLS listener, or nil) and `cert`
--   (the `{ cert, key }` paths in use; replace those files and send
--   `signal("HUP")` to test a certificate reload). Raises an error holding
--   the server's stderr if it does not start.
-- @usage local srv = testing.start{ source = "function handle_NOOP() return '250 hi' end" }
-- @usage local srv = testing.start{ handler = "policy.lua", tls = "both" }
-- local c = srv:connect_tls()   -- implicit TLS on srv.smtps_port
function M.start(opts)
  opts = opts or {}
  if opts.tls ~= nil and opts.tls ~= "starttls" and opts.tls ~= "implicit" and opts.tls ~= "both" then
    error("smtpd.testing: tls must be \"starttls\", \"implicit\" or \"both\", got " ..
      tostring(opts.tls), 2)
  end
  if opts.cert ~= nil and (type(opts.cert) ~= "table" or not opts.cert.cert or not opts.cert.key) then
    error("smtpd.testing: cert must be { cert = PATH, key = PATH }", 2)
  end
  local dir = make_tempdir()
  local self = setmetatable({ dir = dir, stopped = false }, Server)
  -- Best-effort cleanup if the object is collected without stop().
  self._gc = newproxy(true)
  getmetatable(self._gc).__gc = function() pcall(Server._kill_and_forget, self) end

  local ok, err = pcall(function()
    local ready_path, exit_path = dir .. "/ready", dir .. "/exit"
    self.out_path, self.err_path = dir .. "/stdout", dir .. "/stderr"
    if opts.tls then
      local cert = opts.cert or default_cert(dir)
      opts = setmetatable({ cert = { cert = cert.cert, key = cert.key } }, { __index = opts })
      self.tls, self.cert = opts.tls, opts.cert
    end
    mkfifo(ready_path)
    mkfifo(exit_path)
    -- Open both FIFOs for reading first (non-blocking), so the writers'
    -- open() never blocks and our poll() has a deadline.
    self.ready_fd = C.open(ready_path, O_RDONLY + O_NONBLOCK + O_CLOEXEC)
    self.exit_fd = C.open(exit_path, O_RDONLY + O_NONBLOCK + O_CLOEXEC)
    if self.ready_fd < 0 or self.exit_fd < 0 then
      error("cannot open FIFOs in " .. dir .. " (errno " .. ffi.errno() .. ")", 0)
    end
    -- --ready-fd first: `args` may end with `-c NAME ARGS...`, which takes
    -- every word after it.
    local argv = { shell_quote(binary_of(opts)), "--ready-fd 3" }
    for _, a in ipairs(build_args(opts, dir)) do argv[#argv + 1] = shell_quote(a) end
    self.command = env_prefix(opts.env) .. table.concat(argv, " ") .. script_args_suffix(opts.script_args)
    -- A watcher subshell starts the server, prints its pid, then waits for
    -- it and writes its exit status to the exit FIFO.
    local script = table.concat({
      "(",
      "exec 4>" .. shell_quote(exit_path),
      self.command .. " 3>" .. shell_quote(ready_path) .. " 4>&- </dev/null >" ..
        shell_quote(self.out_path) .. " 2>" .. shell_quote(self.err_path) .. " &",
      "echo $!",
      "exec >/dev/null 2>&1",
      "wait $!",
      "echo $? >&4",
      ") &",
    }, "\n")
    local p = assert(io.popen(script, "r"))
    local pid = p:read("*l")
    p:close()
    self.pid = tonumber(pid)
    if not self.pid then error("could not launch: " .. self.command, 0) end

    local line, eof = read_fd_until_eof(self.ready_fd,
      socket.gettime() + (opts.timeout or M.start_timeout), true)
    C.close(self.ready_fd)
    self.ready_fd = nil
    line = line:match("^[^\n]*")
    if not line:match("^ready ") then
      if not eof then
        self:stop()
        error("no ready line within " .. (opts.timeout or M.start_timeout) .. " s", 0)
      end
      local status = self:_wait_exit(2)
      self:stop()
      error(("exited (status %s) without becoming ready"):format(tostring(status)), 0)
    end
    self.listeners = {}
    for hp in line:sub(7):gmatch("%S+") do self.listeners[#self.listeners + 1] = hp end
    local host, port = (self.listeners[1] or ""):match("^%[?(.-)%]?:(%d+)$")
    if not host then
      self:stop()
      error("bad ready line: " .. ("%q"):format(line), 0)
    end
    self.host, self.port = host, tonumber(port)
    -- The ready line lists the --listen sockets, then the --listen-smtps ones.
    local smtps = opts.tls == "implicit" and 1 or opts.tls == "both" and 2 or nil
    if smtps then
      local shost, sport = (self.listeners[smtps] or ""):match("^%[?(.-)%]?:(%d+)$")
      if not shost then
        self:stop()
        error("no implicit TLS listener in the ready line: " .. ("%q"):format(line), 0)
      end
      self.smtps_host, self.smtps_port = shost, tonumber(sport)
    end
  end)
  if not ok then
    self:stop()
    error(("smtpd.testing: luasmtpd did not start: %s\ncommand: %s\nstderr:\n%s")
      :format(tostring(err), tostring(self.command), self:stderr()), 2)
  end
  return self
end

-- Reads the exit FIFO until the watcher reports the status (or `secs` pass).
function Server:_wait_exit(secs)
  if self.status ~= nil or self.exit_fd == nil then return self.status end
  local data, eof = read_fd_until_eof(self.exit_fd, socket.gettime() + secs)
  self.exit_data = (self.exit_data or "") .. data
  if eof then
    C.close(self.exit_fd)
    self.exit_fd = nil
    self.status = tonumber(self.exit_data:match("%d+")) or false
  end
  return self.status
end

function Server:_kill_and_forget()
  if not self.stopped and self.pid and self.status == nil then
    C.kill(self.pid, SIGKILL)
  end
end

--- True while the server process runs.
-- @treturn boolean
function Server:running()
  if self.stopped or not self.pid then return false end
  return self:_wait_exit(0) == nil
end

--- Everything the server wrote to stderr so far.
-- @treturn string
function Server:stderr()
  if self.stderr_text then return self.stderr_text end
  return self.err_path and read_file(self.err_path) or ""
end

--- Everything the server wrote to stdout so far.
-- @treturn string
function Server:stdout()
  if self.stdout_text then return self.stdout_text end
  return self.out_path and read_file(self.out_path) or ""
end

--- Sends a signal to the server.
-- @param[opt] sig a number or a name ("HUP", "SIGHUP", "TERM", ...);
--   default SIGTERM (15)
-- @usage srv:signal("HUP")   -- reload the handler script and certificates
function Server:signal(sig)
  if type(sig) == "string" then
    local n = SIGNALS[sig:upper():gsub("^SIG", "")]
    if not n then error("smtpd.testing: unknown signal " .. sig, 2) end
    sig = n
  end
  if self.pid and self:running() then C.kill(self.pid, sig or SIGTERM) end
end

--- Stops the server: SIGTERM, a bounded wait, then SIGKILL.
-- Idempotent and safe on a server that failed to start. Temporary files are
-- removed; `stderr()`/`stdout()` keep returning what was captured.
-- @return the exit status (as a shell reports it: 128+N after signal N), or
--   nil if unknown
function Server:stop()
  if self.stopped then return self.status or nil end
  self.stopped = true
  if self.ready_fd then C.close(self.ready_fd); self.ready_fd = nil end
  if self.pid and self.exit_fd then
    if self:_wait_exit(0) == nil then
      C.kill(self.pid, SIGTERM)
      if self:_wait_exit(M.stop_timeout) == nil then
        C.kill(self.pid, SIGKILL)
        self:_wait_exit(2)
      end
    end
  end
  if self.exit_fd then C.close(self.exit_fd); self.exit_fd = nil end
  self.stderr_text = self.err_path and read_file(self.err_path) or ""
  self.stdout_text = self.out_path and read_file(self.out_path) or ""
  if self.dir then
    os.execute("rm -rf " .. shell_quote(self.dir))
    self.dir = nil
  end
  return self.status or nil
end

--- Connects to the server and reads the greeting.
-- Without `tls`, connects to the first listener (`port`); on a server
-- started with `tls = "implicit"` that listener speaks TLS, so the
-- handshake is done by default. With `tls` (true, or a table of
-- `tls_handshake` options), connects to `smtps_port` and does the TLS
-- handshake before reading the greeting. `tls = false` connects in clear
-- text to `port` whatever the mode.
-- @tparam[opt] table opts as for `testing.connect`
-- @return a client; raises an error if the connection fails
-- @usage local c = srv:connect{ tls = { certificate = "client.pem", key = "client.key" } }
function Server:connect(opts)
  opts = opts or {}
  local host, port = self.host, self.port
  local tls = opts.tls
  if tls == nil and self.tls == "implicit" then tls = true end
  if tls then
    if not self.smtps_port then
      error("smtpd.testing: this server has no implicit TLS listener (start it with " ..
        "tls = \"implicit\" or \"both\")", 2)
    end
    host, port = self.smtps_host, self.smtps_port
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.tls = tls or nil
  local c, err = M.connect(host, port, o)
  if not c then error("smtpd.testing: " .. err .. "\nstderr:\n" .. self:stderr(), 2) end
  return c
end

--- Connects to a UNIX-domain listener (`-l unix:PATH`) and reads the
-- greeting.
-- @tparam string path the socket's path ("unix:" prefix optional)
-- @tparam[opt] table opts as for `testing.connect` (`timeout`, `greeting`)
-- @return a client; raises an error if the connection fails
-- @usage local srv = testing.start{ args = { "-l", "unix:" .. dir .. "/s.sock" } }
-- local c = srv:connect_unix(dir .. "/s.sock")
function Server:connect_unix(path, opts)
  local o = { unix = true }
  for k, v in pairs(opts or {}) do o[k] = v end
  local c, err = M.connect(path, nil, o)
  if not c then error("smtpd.testing: " .. err .. "\nstderr:\n" .. self:stderr(), 2) end
  return c
end

--- Connects to the implicit TLS listener (`smtps_port`): TLS handshake,
-- then the greeting. Same as `connect{ tls = opts or true }`.
-- @tparam[opt] table opts `tls_handshake` options, plus `timeout` and
--   `greeting` as for `testing.connect`
-- @return a client; raises an error if the connection or handshake fails
function Server:connect_tls(opts)
  opts = opts or {}
  if not self.smtps_port then
    error("smtpd.testing: this server has no implicit TLS listener (start it with " ..
      "tls = \"implicit\" or \"both\")", 2)
  end
  local c, err = M.connect(self.smtps_host, self.smtps_port,
    { tls = opts, timeout = opts.timeout, greeting = opts.greeting })
  if not c then error("smtpd.testing: " .. err .. "\nstderr:\n" .. self:stderr(), 2) end
  return c
end

--- Validates a handler script with `luasmtpd --check`.
-- @tparam table opts `handler` (path) or `source` (code), `binary`,
--   `flag` (default "--check"; "-t" is the short form), and as for `start`:
--   `args`, `script_args`, `env`
-- @treturn number the exit status (0: valid)
-- @treturn string what the server printed (stdout and stderr)
-- @treturn string the path the script was checked under (for `source`, a
--   temporary file that no longer exists)
function M.check(opts)
  local dir = make_tempdir()
  local path = opts.handler
  if opts.source then
    path = dir .. "/handler.lua"
    write_file(path, opts.source)
  end
  local extra = {}
  for _, a in ipairs(opts.args or {}) do extra[#extra + 1] = " " .. shell_quote(a) end
  local p = assert(io.popen(env_prefix(opts.env) .. shell_quote(binary_of(opts)) .. " " ..
    (opts.flag or "--check") .. " --handler " .. shell_quote(path) .. table.concat(extra) ..
    script_args_suffix(opts.script_args) .. " </dev/null 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  os.execute("rm -rf " .. shell_quote(dir))
  local body, status = out:match("^(.*)exit=(%d+)\n$")
  return tonumber(status), body or out, path
end

-- ---------------------------------------------------------------------------
-- Protocol cases as data

local function expected_lines(e)
  if type(e) == "table" then return e end
  local t = {}
  for l in (e .. "\n"):gmatch("(.-)\n") do t[#t + 1] = l end
  return t
end

local function show(lines)
  if type(lines) ~= "table" then return tostring(lines) end
  local t = {}
  for i, l in ipairs(lines) do t[i] = ("%q"):format(l) end
  return "{" .. table.concat(t, ", ") .. "}"
end

--- Runs one dialogue step list over a server's connections.
--
-- Each step is a table:
--
-- - `{ "LINE", "REPLY" }`: send LINE plus CRLF, read one reply and compare
--   its raw lines (without CRLF) byte for byte. A multi-line REPLY is given as
--   an array of lines or as one string with "\n" between lines.
-- - `{ "LINE", match = "pattern" }`: the reply's lines joined by "\n" must
--   match the Lua pattern; `code = 250` compares the code only.
-- - `{ send = "bytes" }`: send bytes as they are, read nothing.
-- - `{ expect = "REPLY" }` (or `match`/`code` without a line): read a reply.
-- - `closed = true` on any step: after it, the server must close the
--   connection; `{ closed = true }` alone checks only that.
-- - `{ close = true }`: close the client side.
-- - `conn = "b"`: the connection the step uses (default "a"); a connection
--   opens, and its greeting is read, on first use.
-- - `greeting = "220 ..."`: the greeting the connection must send.
-- - `tls = true` (or a table of `tls_handshake` options) on a connection's
--   first step: open it on the implicit TLS listener (`smtps_port`). On a
--   server started with `tls = "implicit"` every connection does so.
-- - `{ starttls = true }` (or a table of `tls_handshake` options): send
--   STARTTLS, expect 220 and do the TLS handshake; the step may also send a
--   line and read its reply, after the handshake.
-- - `check = function(srv, conns) end`: arbitrary assertions.
--
-- On a mismatch every connection is closed and an error is raised that
-- names the step and holds each connection's transcript and the end of the
-- server's stderr.
-- @param srv a server from `start`
-- @tparam table steps
-- @treturn table the connections, by name (still open)
function M.dialogue(srv, steps)
  local conns = {}
  local function fail(i, step, msg)
    local where = ("step %d (%s)"):format(i, step[1] and ("%q"):format(step[1])
      or step.send and ("send %q"):format(step.send) or step.starttls and "STARTTLS" or "read")
    local t = {}
    for name, cc in pairs(conns) do
      t[#t + 1] = ("--- connection %s ---\n%s"):format(name, cc:transcript_text())
      cc:close()
    end
    error(("%s: %s\n%s\n--- server stderr (last 3000 octets) ---\n%s"):format(
      where, msg, table.concat(t, "\n"), srv:stderr():sub(-3000)), 0)
  end
  for i, step in ipairs(steps) do
    local name = step.conn or "a"
    local c = conns[name]
    if not c and not step.close then
      local err
      local tls = step.tls
      if tls == nil and srv.tls == "implicit" then tls = true end
      if tls then
        c, err = M.connect(srv.smtps_host or srv.host, srv.smtps_port or srv.port, { tls = tls })
      else
        c, err = M.connect(srv.host, srv.port)
      end
      if not c then fail(i, step, tostring(err)) end
      conns[name] = c
      if step.greeting and c.greeting ~= step.greeting then
        fail(i, step, ("greeting: expected %q, got %q"):format(step.greeting, c.greeting))
      elseif c.greeting_code ~= 220 then
        fail(i, step, ("greeting: expected 220, got %q"):format(tostring(c.greeting)))
      end
    end
    if step.close then
      if c then c:close() end
    else
      if step.starttls then
        local code, err, lines = c:starttls(type(step.starttls) == "table" and step.starttls or nil)
        if code ~= 220 then
          fail(i, step, "STARTTLS: " .. (code and ("expected 220, got " .. show(lines)) or tostring(err)))
        end
      end
      if step.send then
        local ok, err = c:send(step.send)
        if not ok then fail(i, step, "send failed: " .. tostring(err)) end
      end
      local reads = step[1] ~= nil or step[2] ~= nil or step.expect ~= nil or
        step.match ~= nil or step.code ~= nil
      if step[1] then
        local ok, err = c:send(step[1] .. "\r\n")
        if not ok then fail(i, step, "send failed: " .. tostring(err)) end
      end
      if reads then
        local code, text, lines = c:reply()
        if not code then
          fail(i, step, ("expected a reply, got %s after %s"):format(tostring(text), show(lines)))
        end
        local want = step[2] or step.expect
        if want ~= nil then
          local w = expected_lines(want)
          local same = #w == #lines
          for k = 1, #w do same = same and w[k] == lines[k] end
          if not same then
            fail(i, step, ("expected %s\n        got %s"):format(show(w), show(lines)))
          end
        end
        if step.match and not table.concat(lines, "\n"):find(step.match) then
          fail(i, step, ("expected a reply matching %q, got %s"):format(step.match, show(lines)))
        end
        if step.code and step.code ~= code then
          fail(i, step, ("expected code %d, got %s"):format(step.code, show(lines)))
        end
      end
      if step.closed and not c:is_closed() then
        local code, _, lines = c:reply(0.2)
        fail(i, step, "expected the server to close the connection" ..
          (code and (", got " .. show(lines)) or ""), c)
      end
    end
    if step.check then step.check(srv, conns) end
  end
  return conns
end

local function check_output(case, what, text)
  for _, s in ipairs(case[what .. "_has"] or {}) do
    if not text:find(s, 1, true) then
      error(("%s: %s does not contain %q\n--- %s ---\n%s"):format(case.name or "case", what, s,
        what, text:sub(-3000)), 0)
    end
  end
  for _, s in ipairs(case[what .. "_lacks"] or {}) do
    if text:find(s, 1, true) then
      error(("%s: %s contains %q\n--- %s ---\n%s"):format(case.name or "case", what, s,
        what, text:sub(-3000)), 0)
    end
  end
  for _, p in ipairs(case[what .. "_matches"] or {}) do
    if not text:find(p) then
      error(("%s: %s does not match %q\n--- %s ---\n%s"):format(case.name or "case", what, p,
        what, text:sub(-3000)), 0)
    end
  end
end

--- Runs a protocol case: starts a server, runs its dialogue, stops the
-- server, then checks what it logged and printed.
--
-- A case is a table: `name`, `source` or `handler` (as for `start`),
-- `options`, `args`, `script_args`, `env`, `hostname`, `tls`, `cert`, `client_ca` (as for
-- `start`), `dialogue` (steps, see `dialogue`) or
-- `dialogues` (several step lists, run one after the other on the same
-- server), `stderr_has` / `stderr_lacks` / `stdout_has` / `stdout_lacks`
-- (arrays of plain strings), `stderr_matches` / `stdout_matches` (patterns),
-- `after = function(srv)` (runs after the server stopped).
-- @tparam table case
-- @usage
-- for _, case in ipairs(cases) do
--   it(case.name, function() testing.run_case(case) end)
-- end
function M.run_case(case)
  local srv = M.start{ source = case.source, handler = case.handler, options = case.options,
    args = case.args, script_args = case.script_args, env = case.env,
    hostname = case.hostname, binary = case.binary, tls = case.tls,
    cert = case.cert, client_ca = case.client_ca }
  local ok, err = pcall(function()
    local lists = case.dialogues or { case.dialogue or {} }
    for _, steps in ipairs(lists) do
      local conns = M.dialogue(srv, steps)
      for _, c in pairs(conns) do c:close() end
    end
  end)
  srv:stop()
  if not ok then error(err, 0) end
  check_output(case, "stderr", srv:stderr())
  check_output(case, "stdout", srv:stdout())
  if case.after then case.after(srv) end
  return srv
end

return M
