--- smtpd.client: an SMTP and LMTP client on cosockets (delivery.md 1).
-- `send{...}` delivers one message in one call (connect, greeting,
-- EHLO/LHLO, STARTTLS, AUTH, MAIL, RCPT, DATA); `connect{...}` gives the
-- steps one by one to scripts that need them. Every wait is a cosocket call
-- (`smtpd.socket.tcp()`), so timeouts, TLS, pooling and cancellation
-- (hook_timeout, a client that goes away) are the socket layer's.
--
-- Uses PIPELINING when the server offers it (MAIL, every RCPT and DATA in
-- one write, RFC 2920), checks SIZE before sending, asks for 8BITMIME and
-- SMTPUTF8 when the message needs them and refuses with a clear error when
-- the server lacks them. The message is dot-stuffed and CRLF-terminated
-- here (RFC 5321 4.5.2).
--
-- Must not block and must not log message content or credentials: the
-- password is sent once and never stored in the connection object; error
-- strings carry the server's reply text, never what was sent.
local smtpd = require "smtpd"

local find, sub, gsub, upper, format = string.find, string.sub, string.gsub, string.upper, string.format
local concat = table.concat
local type, tonumber, tostring, setmetatable, pairs, ipairs = type, tonumber, tostring, setmetatable,
  pairs, ipairs

local M = {}

--- Default timeouts in seconds: connect (also each TLS handshake), each
-- command's reply, and the final reply after the message (RFC 5321
-- 4.5.3.2 suggests 5 and 10 minutes; these are shorter because a hook is
-- bounded by hook_timeout anyway).
M.TIMEOUTS = { connect = 10, command = 60, data = 300 }

--- Longest reply the client reads (all lines of one multiline reply).
M.REPLY_MAX = 64 * 1024
--- Most lines of one multiline reply.
M.REPLY_LINES_MAX = 256

local STARTTLS_MODES = { required = true, opportunistic = true }

-- Capabilities of pooled connections, by pool name: a connection taken from
-- the pool skips the greeting and EHLO, so what EHLO said is kept here.
-- Per generation (this module is loaded into each generation's Lua state).
local pool_caps = {}
local secret_ids, n_secret_ids = {}, 0

-- A number standing for a user and password pair in a pool name, so that
-- connections authenticated differently are never shared, without the
-- pool name (shown by tostring of a socket) holding the password.
local function secret_id(user, password)
  local key = user .. "\0" .. password
  local id = secret_ids[key]
  if not id then
    n_secret_ids = n_secret_ids + 1
    id = n_secret_ids
    secret_ids[key] = id
  end
  return id
end

local function default_helo()
  local ok, ffi = pcall(require, "ffi")
  if ok then
    pcall(ffi.cdef, "int gethostname(char *name, size_t len);")
    local buf = ffi.new("char[256]")
    if pcall(function() return ffi.C.gethostname(buf, 255) end) and buf[0] ~= 0 then
      return ffi.string(buf)
    end
  end
  return "localhost"
end

local Conn = {}
Conn.__index = Conn

function Conn.__tostring(self)
  return self.sock and "smtpd.client connection" or "smtpd.client connection (closed)"
end

local function check_conn(self, method)
  if getmetatable(self) ~= Conn then
    error(format("smtpd.client: %s: expected a connection (use c:%s), got %s", method, method,
      type(self)), 3)
  end
end

-- The connection failed: close it (never pool it).
local function broken(self, err)
  local sock = self.sock
  self.sock = nil
  if sock then sock:close() end
  return nil, err
end

-- Reads one reply, all its lines. Returns code, message (the text of every
-- line after the code and separator, joined with "\n"), lines (the texts as
-- an array); or nil, err when the connection failed (it is closed then).
local function read_reply(self)
  local sock = self.sock
  if not sock then return nil, "closed" end
  local lines, size, code = {}, 0, nil
  while true do
    local line, err = sock:receive("*l")
    if not line then return broken(self, err) end
    local c, sep, text = line:match("^(%d%d%d)([ %-]?)(.*)$")
    if not c or (code and c ~= code) then
      return broken(self, "protocol error: bad reply line")
    end
    code = c
    size = size + #line
    lines[#lines + 1] = text
    if size > M.REPLY_MAX or #lines > M.REPLY_LINES_MAX then
      return broken(self, "protocol error: reply too long")
    end
    if sep ~= "-" then break end
  end
  return tonumber(code), concat(lines, "\n"), lines
end

local function command(self, line)
  local sock = self.sock
  if not sock then return nil, "closed" end
  local ok, err = sock:send(line .. "\r\n")
  if not ok then return broken(self, err) end
  return read_reply(self)
end

local function parse_ehlo(lines)
  local ext = {}
  for i = 2, #lines do
    local kw, params = lines[i]:match("^(%S+)%s*(.*)$")
    if kw then ext[upper(kw)] = params end
  end
  return ext
end

--- Sends EHLO (LHLO on an LMTP connection) and records the extensions.
-- @param[opt] name the name to greet with (default: the connect option `helo`)
-- @return code, message; or `nil, err`
function Conn:ehlo(name)
  check_conn(self, "ehlo")
  local code, msg, lines = command(self, (self.lmtp and "LHLO " or "EHLO ") .. (name or self.helo))
  if not code then return nil, msg end
  if code == 250 then
    self.ext = parse_ehlo(lines)
    if self.pool then pool_caps[self.pool] = { ext = self.ext } end
  end
  return code, msg
end

--- The extensions of the last successful EHLO: keyword (upper case) -> its
-- parameters (`ext.SIZE == "10240000"`, `ext.AUTH == "PLAIN LOGIN"`).
-- @return a table, or nil before EHLO
function Conn:extensions()
  check_conn(self, "extensions")
  return self.ext
end

--- Sends STARTTLS and does the TLS handshake (`sock:sslhandshake` with the
-- connect option `tls`), then EHLO again.
-- @param[opt] tls overrides the connect option `tls` for this handshake
-- @return code, message of the EHLO after TLS; or `nil, err` (a reply
--   other than 220 as `"starttls refused"`, or the socket's
--   `"certificate verify failed: ..."` / `"handshake failed: ..."`)
function Conn:starttls(tls)
  check_conn(self, "starttls")
  local code, msg = command(self, "STARTTLS")
  if not code then return nil, msg end
  if code ~= 220 then return nil, "starttls refused", code, msg end
  local ok, err = self.sock:sslhandshake(tls or self.tls)
  if not ok then
    self.sock = nil -- the socket closed itself
    return nil, err
  end
  self.secure = true
  self.ext = nil
  return self:ehlo()
end

--- Authenticates with PLAIN or LOGIN (whichever the server offers, PLAIN
-- first; or `mechanism`).
-- @param user the user name
-- @param password the password (sent once, not kept)
-- @param[opt] mechanism `"PLAIN"` or `"LOGIN"`
-- @return 235, message; or `nil, err` (`"auth not offered"`,
--   `"no common auth mechanism"`, `"auth failed"` with the code and message
--   as third and fourth values)
function Conn:auth(user, password, mechanism)
  check_conn(self, "auth")
  if type(user) ~= "string" or type(password) ~= "string" then
    error("smtpd.client: c:auth: expected user and password strings", 2)
  end
  if mechanism ~= nil and mechanism ~= "PLAIN" and mechanism ~= "LOGIN" then
    error("smtpd.client: c:auth: mechanism must be \"PLAIN\" or \"LOGIN\", got " .. tostring(mechanism), 2)
  end
  local offered = self.ext and self.ext.AUTH
  if not offered then return nil, "auth not offered" end
  local have = {}
  for m in offered:gmatch("%S+") do have[upper(m)] = true end
  local mech = mechanism or (have.PLAIN and "PLAIN") or (have.LOGIN and "LOGIN")
  if not mech or not have[mech] then return nil, "no common auth mechanism" end
  local code, msg
  if mech == "PLAIN" then
    code, msg = command(self, "AUTH PLAIN " .. smtpd.b64encode("\0" .. user .. "\0" .. password))
  else
    code, msg = command(self, "AUTH LOGIN")
    if code == 334 then code, msg = command(self, smtpd.b64encode(user)) end
    if code == 334 then code, msg = command(self, smtpd.b64encode(password)) end
  end
  if not code then return nil, msg end
  if code ~= 235 then
    if code == 334 then return broken(self, "protocol error: unexpected challenge") end
    return nil, "auth failed", code, msg
  end
  return code, msg
end

local function with_options(verb, arg, opts)
  if opts and #opts > 0 then return verb .. arg .. " " .. concat(opts, " ") end
  return verb .. arg
end

local function check_address(what, a)
  if type(a) ~= "string" then error(format("smtpd.client: %s: expected an address string, got %s", what,
    type(a)), 3) end
  if find(a, "[\r\n%z<>]") then error(format("smtpd.client: %s: the address holds CR, LF, NUL or <>",
    what), 3) end
end

local function check_opts(what, opts)
  if opts == nil then return end
  if type(opts) ~= "table" then error(format("smtpd.client: %s: options must be an array of strings",
    what), 3) end
  for _, o in ipairs(opts) do
    if type(o) ~= "string" or find(o, "[\r\n%z]") then
      error(format("smtpd.client: %s: options must be strings without CR, LF or NUL", what), 3)
    end
  end
end

--- MAIL FROM.
-- @param from the reverse path ("" for the null sender)
-- @param[opt] opts an array of parameters (`{"SIZE=1234", "BODY=8BITMIME"}`)
-- @return code, message; or `nil, err`
function Conn:mail(from, opts)
  check_conn(self, "mail")
  if from == "<>" then from = "" end
  check_address("c:mail", from)
  check_opts("c:mail", opts)
  self.n_rcpt = 0
  local code, msg = command(self, with_options("MAIL FROM:<", from .. ">", opts))
  return code, msg
end

--- RCPT TO.
-- @param to the recipient
-- @param[opt] opts an array of parameters
-- @return code, message; or `nil, err`
function Conn:rcpt(to, opts)
  check_conn(self, "rcpt")
  check_address("c:rcpt", to)
  check_opts("c:rcpt", opts)
  local code, msg = command(self, with_options("RCPT TO:<", to .. ">", opts))
  if code and code >= 200 and code < 300 then self.n_rcpt = (self.n_rcpt or 0) + 1 end
  return code, msg
end

--- The message as it goes on the wire after DATA's 354: every LF ends a
-- CRLF line, a line starting with "." gets another (RFC 5321 4.5.2), the
-- last line is terminated and the "." line follows.
-- @param data the message bytes
-- @return the wire form (a string)
function M.wire(data)
  local s = gsub(data, "\r?\n", "\r\n")
  s = gsub(s, "\n%.", "\n..")
  if sub(s, 1, 1) == "." then s = "." .. s end
  if s ~= "" and sub(s, -2) ~= "\r\n" then s = s .. "\r\n" end
  return s .. ".\r\n"
end

-- After a 354: sends the message and reads the final reply (one per
-- accepted recipient on LMTP).
local function send_body(self, data)
  local sock = self.sock
  local ok, err = sock:send(M.wire(data))
  if not ok then return broken(self, err) end
  sock:settimeouts(self.timeouts.connect, self.timeouts.command, self.timeouts.data)
  local code, msg
  if self.lmtp then
    local replies = {}
    for i = 1, self.n_rcpt or 0 do
      local c, m = read_reply(self)
      if not c then
        sock:settimeouts(self.timeouts.connect, self.timeouts.command, self.timeouts.command)
        return nil, m
      end
      replies[i] = { c, m }
    end
    if self.sock then
      sock:settimeouts(self.timeouts.connect, self.timeouts.command, self.timeouts.command)
    end
    self.n_rcpt = 0
    local first = replies[1] or { 554, "no valid recipients" }
    return first[1], first[2], replies
  end
  code, msg = read_reply(self)
  if self.sock then sock:settimeouts(self.timeouts.connect, self.timeouts.command, self.timeouts.command) end
  self.n_rcpt = 0
  return code, msg
end

--- DATA, then the message (dot-stuffed and CRLF-terminated here).
-- @param data the message bytes
-- @return the final code, message (on LMTP the first recipient's, and a
--   third value: an array of `{code, message}`, one per recipient accepted
--   since MAIL, in RCPT order); the reply to DATA itself when it is not
--   354; or `nil, err`
function Conn:data(data)
  check_conn(self, "data")
  if type(data) ~= "string" then error("smtpd.client: c:data: expected the message bytes, got " ..
    type(data), 2) end
  local code, msg = command(self, "DATA")
  if not code then return nil, msg end
  if code ~= 354 then return code, msg end
  return send_body(self, data)
end

--- RSET.
-- @return code, message; or `nil, err`
function Conn:rset()
  check_conn(self, "rset")
  self.n_rcpt = 0
  local code, msg = command(self, "RSET")
  return code, msg
end

--- NOOP.
-- @return code, message; or `nil, err`
function Conn:noop()
  check_conn(self, "noop")
  local code, msg = command(self, "NOOP")
  return code, msg
end

--- QUIT, and closes the connection.
-- @return code, message; or `nil, err`
function Conn:quit()
  check_conn(self, "quit")
  local code, msg = command(self, "QUIT")
  if self.sock then
    self.sock:close()
    self.sock = nil
  end
  return code, msg
end

--- Closes the connection without QUIT.
-- @return true, or `nil, "closed"`
function Conn:close()
  check_conn(self, "close")
  local sock = self.sock
  if not sock then return nil, "closed" end
  self.sock = nil
  return sock:close()
end

--- Sends RSET and puts the connection into the generation's pool for the
-- next message to the same upstream (with the same TLS and AUTH settings);
-- the object is unusable after. A reply other than 250 to RSET closes it.
-- @param[opt] idle seconds it may stay idle in the pool (default 60)
-- @param[opt] size the pool's size (default 32)
-- @return true, or `nil, err`
function Conn:setkeepalive(idle, size)
  check_conn(self, "setkeepalive")
  if not self.sock then return nil, "closed" end
  local code, msg = command(self, "RSET")
  if not code then return nil, msg end
  if code ~= 250 then
    broken(self, "rset refused")
    return nil, "rset refused"
  end
  local sock = self.sock
  self.sock = nil
  return sock:setkeepalive(idle, size)
end

--- How many times the connection was taken from the pool (0: fresh).
-- @return a number, or `nil, "closed"`
function Conn:getreusedtimes()
  check_conn(self, "getreusedtimes")
  if not self.sock then return nil, "closed" end
  return self.sock:getreusedtimes()
end

local CONNECT_TYPES = {
  host = "string", port = "number", path = "string", lmtp = "boolean", helo = "string",
  starttls = { string = true, boolean = true }, tls = "table", implicit_tls = "boolean",
  auth = "table", timeouts = "table", pool = "string", keepalive = { boolean = true, table = true },
  -- send only:
  from = "string", to = { table = true, string = true }, mail_options = "table",
  rcpt_options = "table", data = "string", require_all = "boolean",
}
local SEND_ONLY = { from = true, to = true, mail_options = true, rcpt_options = true, data = true,
  require_all = true, keepalive = true }

local function check_connect_options(opts, what)
  if type(opts) ~= "table" then
    error(format("smtpd.client.%s: expected a table of options, got %s", what, type(opts)), 3)
  end
  for k, v in pairs(opts) do
    local want = CONNECT_TYPES[k]
    if not want or (what == "connect" and SEND_ONLY[k]) then
      error(format("smtpd.client.%s: unknown option %s", what, tostring(k)), 3)
    end
    local t = type(v)
    if (type(want) == "string" and t ~= want) or (type(want) == "table" and not want[t]) then
      error(format("smtpd.client.%s: %s has the wrong type (%s)", what, k, t), 3)
    end
  end
  if opts.path and (opts.host or opts.port) then
    error(format("smtpd.client.%s: path excludes host and port", what), 3)
  end
  if not opts.path and not opts.host then error(format("smtpd.client.%s: host or path is required", what), 3) end
  local port = opts.port
  if port and (port < 1 or port > 65535 or port % 1 ~= 0) then
    error(format("smtpd.client.%s: port must be an integer 1-65535", what), 3)
  end
  if opts.starttls ~= nil and opts.starttls ~= false and not STARTTLS_MODES[opts.starttls] then
    error(format("smtpd.client.%s: starttls must be \"required\", \"opportunistic\" or false", what), 3)
  end
  if opts.auth and (type(opts.auth.user) ~= "string" or type(opts.auth.password) ~= "string") then
    error(format("smtpd.client.%s: auth needs user and password strings", what), 3)
  end
  if opts.timeouts then
    for k, v in pairs(opts.timeouts) do
      if not M.TIMEOUTS[k] or type(v) ~= "number" or v ~= v or v <= 0 then
        error(format("smtpd.client.%s: timeouts.%s must be a number of seconds > 0", what, tostring(k)), 3)
      end
    end
  end
end

-- The TLS settings of one handshake: verify on unless written out.
local function tls_settings(opts, host)
  local t = opts.tls or {}
  local s = { verify = t.verify ~= false, cafile = t.cafile, server_name = t.server_name }
  if not s.server_name and host and not find(host, "^[%d%.]+$") and not find(host, ":") then
    s.server_name = host
  end
  return s
end

local function pool_name(opts, host, port, tls)
  if opts.pool then return opts.pool end
  local target = opts.path and ("unix:" .. opts.path) or (host .. ":" .. port)
  local a = opts.auth and ("+auth" .. secret_id(opts.auth.user, opts.auth.password)) or ""
  return format("%s:%s/%s/%s/%s/%s%s", opts.lmtp and "lmtp" or "smtp", target,
    tostring(opts.starttls == nil and "opportunistic" or opts.starttls), tostring(opts.implicit_tls),
    tostring(tls.server_name), tostring(tls.verify) .. tostring(tls.cafile), a)
end

local function fail(stage, err, code, msg, extra)
  local partial = extra or {}
  partial.stage, partial.code, partial.message = stage, code, msg
  return nil, err, partial
end

-- EHLO during open: true, or nil, err, partial (after QUIT when the server
-- refused it).
local function open_ehlo(self)
  local code, msg = self:ehlo()
  if not code then return fail("ehlo", msg) end
  if code ~= 250 then
    self:quit()
    return fail("ehlo", "ehlo refused", code, msg)
  end
  return true
end

-- Connects, reads the greeting, EHLO, STARTTLS, AUTH. Returns the
-- connection, or nil, err, partial.
local function open(opts, what)
  local timeouts = {}
  for k, v in pairs(M.TIMEOUTS) do timeouts[k] = (opts.timeouts and opts.timeouts[k]) or v end
  local host, port = opts.host, opts.port or (opts.lmtp and 24 or (opts.implicit_tls and 465 or 25))
  local tls = tls_settings(opts, host)
  local starttls = opts.starttls
  if starttls == nil then starttls = "opportunistic" end
  local pool = pool_name(opts, host, port, tls)
  local self = setmetatable({ lmtp = opts.lmtp or false, helo = opts.helo or M.helo, tls = tls,
    timeouts = timeouts, pool = pool, n_rcpt = 0 }, Conn)
  local sockets = smtpd.socket
  if not sockets then error("smtpd.client." .. what .. ": smtpd.socket is not available", 3) end

  local function connect_once(tls_try)
    local sock = sockets.tcp()
    self.sock = sock
    sock:settimeouts(timeouts.connect, timeouts.command, timeouts.command)
    local ok, err
    if opts.path then
      ok, err = sock:connect("unix:" .. opts.path, { pool = pool })
    else
      ok, err = sock:connect(host, port, { pool = pool })
    end
    if not ok then
      self.sock = nil
      return fail("connect", err)
    end
    if opts.implicit_tls then
      ok, err = sock:sslhandshake(tls_try)
      if not ok then
        self.sock = nil
        return fail("connect", err)
      end
      self.secure = true
    end
    if sock:getreusedtimes() > 0 and pool_caps[pool] then
      self.ext = pool_caps[pool].ext
      self.reused = true
      return self
    end
    local code, msg = read_reply(self)
    if not code then return fail("greeting", msg) end
    if code ~= 220 then
      self:close()
      return fail("greeting", "greeting refused", code, msg)
    end
    local partial
    ok, err, partial = open_ehlo(self)
    if not ok then return nil, err, partial end
    if not opts.implicit_tls and starttls then
      if self.ext.STARTTLS then
        code, msg = command(self, "STARTTLS")
        if not code then return fail("starttls", msg) end
        if code ~= 220 then
          if starttls == "required" then
            self:quit()
            return fail("starttls", "starttls refused", code, msg)
          end
        else
          ok, err = sock:sslhandshake(tls_try)
          if not ok then
            self.sock = nil
            return fail("starttls", err)
          end
          self.secure = true
          ok, err, partial = open_ehlo(self)
          if not ok then return nil, err, partial end
        end
      elseif starttls == "required" then
        self:quit()
        return fail("starttls", "starttls not offered")
      end
    end
    if opts.auth then
      local c, m, c2, m2 = self:auth(opts.auth.user, opts.auth.password, opts.auth.mechanism)
      if not c then
        if self.sock then self:quit() end
        return fail("auth", m, c2, m2)
      end
    end
    return self
  end

  local conn, err, partial = connect_once(tls)
  if not conn and starttls == "opportunistic" and tls.verify and type(err) == "string" and
      find(err, "^certificate verify failed") and (partial.stage == "starttls" or partial.stage == "connect") then
    -- Postfix's `may`: a certificate that does not verify is used anyway,
    -- and said so in the log.
    local target = opts.path or (host .. ":" .. port)
    if smtpd.log then
      smtpd.log("warn", format("smtpd.client: %s: %s; using TLS without verification (starttls = opportunistic)",
        target, err))
    end
    local unverified = { verify = false, cafile = tls.cafile, server_name = tls.server_name }
    self.pool = pool .. "/unverified"
    pool = self.pool
    conn, err, partial = connect_once(unverified)
    if conn then conn.verified = false end
  end
  return conn, err, partial
end

--- Opens a connection: connects (TCP or a UNIX path), reads the greeting,
-- sends EHLO (LHLO with `lmtp = true`), STARTTLS as `starttls` says, and
-- AUTH when `auth` is given. A connection from the pool (after an earlier
-- `c:setkeepalive()`) is ready for MAIL at once.
-- @param opts `host`, `port` (25; 24 with `lmtp`; 465 with `implicit_tls`)
--   or `path`; `lmtp`; `helo`; `starttls`; `tls`; `implicit_tls`; `auth`;
--   `timeouts`; `pool` (a pool name; default: the target with every TLS and
--   AUTH setting)
-- @return a connection, or `nil, err, partial` (see `send`)
-- @usage local c = assert(smtpd.client.connect{ host = "10.0.0.5", port = 25 })
function M.connect(opts)
  check_connect_options(opts, "connect")
  return open(opts, "connect")
end

local function needs_smtputf8(opts, from, to)
  for _, o in ipairs(opts.mail_options or {}) do
    if upper(o) == "SMTPUTF8" then return true end
  end
  if find(from, "[\128-\255]") then return true end
  for _, t in ipairs(to) do
    if find(t, "[\128-\255]") then return true end
  end
  return false
end

local function has_option(list, prefix)
  for _, o in ipairs(list) do
    if sub(upper(o), 1, #prefix) == prefix then return true end
  end
  return false
end

--- How many times `send` takes another connection when a pooled one
-- turns out to be dead at its first command.
M.STALE_RETRIES = 2

-- A failure at the first command: on a pooled connection the upstream may
-- have closed it while idle (nothing was sent to a live server), so the
-- caller may try again; returns the failure with that as a fourth value.
local function stale(c, ...)
  local res, err, partial = ...
  return res, err, partial, c.reused == true
end

local send_once

--- Delivers one message (delivery.md 1).
-- @param opts the options of `connect`, and `from` (string), `to` (an array
--   of addresses, or one), `data` (the message bytes), `mail_options`,
--   `rcpt_options` (arrays of parameters), `require_all` (true: when any
--   recipient is refused the message is not sent at all: `nil, "recipient
--   refused"`), `keepalive` (true, or `{idle, size}`: RSET and pool the
--   connection after the message)
-- @return `{ code =, message =, accepted = {addr, ...}, rejected = { [addr]
--   = {code, message} }, lmtp = { [addr] = {code, message} } }` (lmtp only
--   on LMTP), or `nil, err, partial` where partial is `{ stage =, code =,
--   message = }` (`stage` one of "connect", "greeting", "ehlo",
--   "starttls", "auth", "mail", "rcpt", "data"), plus `accepted` and
--   `rejected` once RCPT replies were read.
-- @usage local res, err, partial = smtpd.client.send{ host = "127.0.0.1", port = 2525,
--   from = envelope.mail_from, to = envelope.rcpt_tos, data = envelope.original_content }
function M.send(opts)
  check_connect_options(opts, "send")
  local from, to, data = opts.from, opts.to, opts.data
  if type(from) ~= "string" then error("smtpd.client.send: from is required (a string)", 2) end
  if from == "<>" then from = "" end -- the null sender, as envelope.mail_from has it
  if type(to) == "string" then to = { to } end
  if type(to) ~= "table" or #to == 0 then error("smtpd.client.send: to must be a non-empty array", 2) end
  if type(data) ~= "string" then error("smtpd.client.send: data is required (the message bytes)", 2) end
  check_address("send: from", from)
  for _, t in ipairs(to) do check_address("send: to", t) end
  check_opts("send: mail_options", opts.mail_options)
  check_opts("send: rcpt_options", opts.rcpt_options)
  -- A pooled connection the upstream dropped while it was idle fails at
  -- the first command: then once more on another connection (each failed
  -- one is closed, so the pool runs out of stale ones).
  for _ = 1, M.STALE_RETRIES do
    local res, err, partial, was_stale = send_once(opts, from, to, data)
    if not was_stale then return res, err, partial end
  end
  return send_once(opts, from, to, data)
end

send_once = function(opts, from, to, data)
  local c, err, partial = open(opts, "send")
  if not c then return nil, err, partial end
  -- The connection's end on a path that read every reply: pooled (after
  -- RSET) with keepalive, else QUIT.
  local function done()
    if opts.keepalive then
      local k = type(opts.keepalive) == "table" and opts.keepalive or {}
      return c:setkeepalive(k[1], k[2])
    end
    return c:quit()
  end
  local ext = c.ext or {}

  local mail_options = {}
  for i, o in ipairs(opts.mail_options or {}) do mail_options[i] = o end
  local size_limit = ext.SIZE and tonumber(ext.SIZE:match("^(%d+)"))
  local wire = M.wire(data)
  if size_limit and size_limit > 0 and #data > size_limit then
    done()
    return fail("mail", "message too large for the server", nil, nil)
  end
  if ext.SIZE and not has_option(mail_options, "SIZE=") then
    mail_options[#mail_options + 1] = "SIZE=" .. #data
  end
  if needs_smtputf8(opts, from, to) then
    if not ext.SMTPUTF8 then
      done()
      return fail("mail", "server lacks SMTPUTF8")
    end
    if not has_option(mail_options, "SMTPUTF8") then mail_options[#mail_options + 1] = "SMTPUTF8" end
  end
  if find(data, "[\128-\255]") or has_option(mail_options, "BODY=8BITMIME") then
    if not ext["8BITMIME"] then
      done()
      return fail("mail", "server lacks 8BITMIME")
    end
    if not has_option(mail_options, "BODY=") then mail_options[#mail_options + 1] = "BODY=8BITMIME" end
  end

  local res = { accepted = {}, rejected = {} }
  local sock = c.sock
  local mcode, mmsg, dcode, dmsg
  local rcpt_replies = {}
  local rcpt_opts = opts.rcpt_options
  c.n_rcpt = 0
  if ext.PIPELINING then
    -- RFC 2920: MAIL, every RCPT and DATA in one write; the replies in order.
    local buf = { with_options("MAIL FROM:<", from .. ">", mail_options), "\r\n" }
    for _, t in ipairs(to) do
      buf[#buf + 1] = with_options("RCPT TO:<", t .. ">", rcpt_opts)
      buf[#buf + 1] = "\r\n"
    end
    buf[#buf + 1] = "DATA\r\n"
    local ok, serr = sock:send(buf)
    if not ok then
      broken(c, serr)
      return stale(c, fail("mail", serr))
    end
    mcode, mmsg = read_reply(c)
    if not mcode then return stale(c, fail("mail", mmsg)) end
    for i = 1, #to do
      local rc, rm = read_reply(c)
      if not rc then return fail("rcpt", rm, nil, nil, res) end
      rcpt_replies[i] = { rc, rm }
    end
    dcode, dmsg = read_reply(c)
    if not dcode then return fail("data", dmsg, nil, nil, res) end
  else
    mcode, mmsg = command(c, with_options("MAIL FROM:<", from .. ">", mail_options))
    if not mcode then return stale(c, fail("mail", mmsg)) end
    if mcode >= 200 and mcode < 300 then
      for i, t in ipairs(to) do
        local rc, rm = command(c, with_options("RCPT TO:<", t .. ">", rcpt_opts))
        if not rc then return fail("rcpt", rm, nil, nil, res) end
        rcpt_replies[i] = { rc, rm }
      end
    end
  end

  if not (mcode >= 200 and mcode < 300) then
    -- With PIPELINING the server refused the RCPTs and DATA that followed.
    if dcode == 354 then
      broken(c, "aborted")
    else
      done()
    end
    return fail("mail", "mail refused", mcode, mmsg)
  end
  for i, t in ipairs(to) do
    local r = rcpt_replies[i]
    if r[1] >= 200 and r[1] < 300 then
      res.accepted[#res.accepted + 1] = t
      c.n_rcpt = c.n_rcpt + 1
    else
      res.rejected[t] = r
    end
  end
  local refused_one = #res.accepted < #to
  if #res.accepted == 0 or (opts.require_all and refused_one) then
    -- Never send a message for a transaction that should not happen; a
    -- pipelined DATA that got 354 anyway is abandoned by closing.
    if dcode == 354 then broken(c, "aborted") else done() end
    local first = rcpt_replies[1]
    for i = 1, #to do
      if rcpt_replies[i][1] >= 300 then first = rcpt_replies[i] break end
    end
    return fail("rcpt", #res.accepted == 0 and "all recipients refused" or "recipient refused",
      first[1], first[2], res)
  end

  if not ext.PIPELINING then
    dcode, dmsg = command(c, "DATA")
    if not dcode then return fail("data", dmsg, nil, nil, res) end
  end
  if dcode ~= 354 then
    done()
    return fail("data", "data refused", dcode, dmsg, res)
  end
  local ok, serr = sock:send(wire)
  if not ok then
    broken(c, serr)
    return fail("data", serr, nil, nil, res)
  end
  sock:settimeouts(c.timeouts.connect, c.timeouts.command, c.timeouts.data)
  local code, msg
  if c.lmtp then
    res.lmtp = {}
    local first_ok
    for _, t in ipairs(res.accepted) do
      local rc, rm = read_reply(c)
      if not rc then return fail("data", rm, nil, nil, res) end
      res.lmtp[t] = { rc, rm }
      if rc >= 200 and rc < 300 and not first_ok then first_ok = { rc, rm } end
    end
    local first = first_ok or res.lmtp[res.accepted[1]]
    code, msg = first[1], first[2]
    if not first_ok then
      done()
      return fail("data", "data refused", code, msg, res)
    end
  else
    code, msg = read_reply(c)
    if not code then return fail("data", msg, nil, nil, res) end
    if code < 200 or code >= 300 then
      done()
      return fail("data", "data refused", code, msg, res)
    end
  end
  sock:settimeouts(c.timeouts.connect, c.timeouts.command, c.timeouts.command)
  c.n_rcpt = 0
  res.code, res.message = code, msg
  done()
  return res
end

M.helo = default_helo()

return M
