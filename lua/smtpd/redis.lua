--- smtpd.redis: a RESP2 client on cosockets (async-api.md 8), the shape of
-- OpenResty's lua-resty-redis. Timeouts, TLS, pooling and cancellation are
-- the socket layer's (`smtpd.socket.tcp()`, async-api.md 4); this module
-- only writes commands and reads replies.
--
-- Arguments always go out as RESP bulk strings (`*N\r\n$len\r\narg\r\n`),
-- so no argument can inject a command through spaces or CRLF. Replies are
-- parsed with bounds: a nesting depth limit, lengths and counts checked
-- before anything is read; a reply that breaks them is a protocol error and
-- the connection is closed. After any failure of the connection (timeout,
-- protocol error, closed, reset) the client closes its socket, so a late
-- reply can never reach the pool's next user.
--
-- Must not block (every wait is a cosocket call) and must not keep secrets:
-- the password is sent once on a fresh connection and not stored.
local smtpd = require "smtpd"

local byte, sub, find, format = string.byte, string.sub, string.find, string.format
local tostring, tonumber, type, setmetatable, select = tostring, tonumber, type, setmetatable, select

local M = {}

--- Deepest nesting of arrays a reply may have (a top-level array is 1).
M.DEPTH_MAX = 16
--- Longest bulk string a reply may carry: Redis's own `proto-max-bulk-len`
-- default (512 MiB). The generation's Lua heap limit is the real bound.
M.BULK_MAX = 512 * 1024 * 1024
--- Most elements one array of a reply may announce.
M.ARRAY_MAX = 16 * 1024 * 1024

local DEFAULTS = { host = "127.0.0.1", port = 6379, db = 0, timeout = 5 }

local null = smtpd.null

local PLUS, MINUS, COLON, DOLLAR, STAR = byte("+"), byte("-"), byte(":"), byte("$"), byte("*")

-- Distinct passwords seen by this generation -> a number, so the default
-- pool name tells connections authenticated differently apart without
-- holding the password itself (a pool name shows in tostring of a socket).
local password_ids, n_password_ids = {}, 0

local function password_id(password)
  local id = password_ids[password]
  if not id then
    n_password_ids = n_password_ids + 1
    id = n_password_ids
    password_ids[password] = id
  end
  return id
end

-- Appends the bulk strings of one command (arguments first..last of args)
-- to buf. Returns nil, or an error message naming the bad argument.
local function encode(buf, args, first, last, what)
  local n = last - first + 1
  if n < 1 then return what .. ": expected a command name" end
  buf[#buf + 1] = "*" .. n .. "\r\n"
  for i = first, last do
    local a = args[i]
    local t = type(a)
    if t == "number" then
      a = tostring(a)
    elseif t ~= "string" then
      return format("%s: argument %d must be a string or a number, got %s", what, i - first + 1, t)
    end
    buf[#buf + 1] = "$" .. #a .. "\r\n"
    buf[#buf + 1] = a
    buf[#buf + 1] = "\r\n"
  end
  return nil
end

-- A length of a `$` or `*` header: -1, or 0..max; nil if it is anything
-- else (non-numeric, another negative, a fraction, absurdly large).
local function parse_length(s, max)
  if not find(s, "^%-?%d+$") or #s > 12 then return nil end
  local n = tonumber(s)
  if n == -1 or (n >= 0 and n <= max) then return n end
  return nil
end

-- A close once part of a reply has arrived is a truncated reply.
local function midway(err)
  if err == "closed" then return "protocol error: truncated reply" end
  return err
end

-- Reads one reply. Returns its value; or false, message for a Redis error
-- reply; or nil, err when the connection failed (the caller closes it).
-- started: part of the reply stream was already read (a close is a
-- truncation, not the server having gone away between commands).
local function read_reply(sock, depth, started)
  local line, err = sock:receive("*l")
  if not line then
    if started then return nil, midway(err) end
    return nil, err
  end
  local kind, rest = byte(line, 1), sub(line, 2)
  if kind == PLUS then
    return rest
  elseif kind == MINUS then
    return false, rest
  elseif kind == COLON then
    if not find(rest, "^%-?%d+$") or #rest > 20 then
      return nil, "protocol error: bad integer"
    end
    return tonumber(rest)
  elseif kind == DOLLAR then
    local n = parse_length(rest, M.BULK_MAX)
    if not n then return nil, "protocol error: bad bulk length" end
    if n == -1 then return null end
    local data, rerr = sock:receive(n + 2)
    if not data then return nil, midway(rerr) end
    if sub(data, -2) ~= "\r\n" then
      return nil, "protocol error: bulk string not followed by CRLF"
    end
    return sub(data, 1, n)
  elseif kind == STAR then
    local n = parse_length(rest, M.ARRAY_MAX)
    if not n then return nil, "protocol error: bad array length" end
    if n == -1 then return null end
    if depth >= M.DEPTH_MAX then
      return nil, "protocol error: reply nested deeper than " .. M.DEPTH_MAX
    end
    local arr = {}
    for i = 1, n do
      local v, e = read_reply(sock, depth + 1, true)
      if v == nil then return nil, e end
      if v == false then v = { false, e } end
      arr[i] = v
    end
    return arr
  end
  if kind == nil then return nil, "protocol error: empty reply line" end
  if kind > 32 and kind < 127 then
    return nil, format("protocol error: unknown reply type %q", sub(line, 1, 1))
  end
  return nil, format("protocol error: unknown reply type 0x%02x", kind)
end

local Client = {}
Client.__index = Client

function Client.__tostring(self)
  return self.sock and "smtpd.redis client" or "smtpd.redis client (closed)"
end

-- The connection failed: close it (never pool it) and pass err on.
local function fail(self, err)
  local sock = self.sock
  self.sock = nil
  if sock then sock:close() end
  return nil, err
end

local function check_client(self, method)
  if getmetatable(self) ~= Client then
    error(format("smtpd.redis: %s: expected a client (use client:%s), got %s", method, method,
      type(self)), 3)
  end
end

--- Sends one command and reads its reply.
-- @param cmd the command name (`"GET"`, `"SET"`, ...)
-- @param ... its arguments: strings, or numbers (sent as `tostring(n)`)
-- @return the reply: a status or bulk string as a string, an integer as a
--   number, an array as a table (a Redis error inside it as `{false, msg}`),
--   a nil bulk or nil array as `smtpd.null`; or `nil, msg` for a Redis error
--   reply (the server's text, e.g. `"ERR unknown command ..."`), or
--   `nil, err` when the connection failed (it is closed then).
-- @usage local n, err = client:call("INCR", "rate:" .. ip)
function Client:call(...)
  check_client(self, "call")
  local args = { ... }
  local buf = {}
  local bad = encode(buf, args, 1, select("#", ...), "client:call")
  if bad then error("smtpd.redis: " .. bad, 2) end
  local sock = self.sock
  if not sock then return nil, "closed" end
  local ok, err = sock:send(buf)
  if not ok then return fail(self, err) end
  local v, e = read_reply(sock, 1, false)
  if v == nil then return fail(self, e) end
  if v == false then return nil, e end
  return v
end

--- Sends several commands in one write and reads all their replies.
-- @param cmds an array of commands, each an array `{cmd, arg, ...}`
-- @return an array with one reply per command (a Redis error as
--   `{false, msg}`), or `nil, err` when the connection failed.
-- @usage local r = client:pipeline{ {"INCR", key}, {"EXPIRE", key, 60} }
function Client:pipeline(cmds)
  check_client(self, "pipeline")
  if type(cmds) ~= "table" then
    error("smtpd.redis: client:pipeline: expected an array of commands, got " .. type(cmds), 2)
  end
  local buf = {}
  local n = #cmds
  for i = 1, n do
    local c = cmds[i]
    if type(c) ~= "table" then
      error(format("smtpd.redis: client:pipeline: command %d must be a table, got %s", i, type(c)), 2)
    end
    local bad = encode(buf, c, 1, #c, format("client:pipeline: command %d", i))
    if bad then error("smtpd.redis: " .. bad, 2) end
  end
  local sock = self.sock
  if not sock then return nil, "closed" end
  if n == 0 then return {} end
  local ok, err = sock:send(buf)
  if not ok then return fail(self, err) end
  local replies = {}
  for i = 1, n do
    local v, e = read_reply(sock, 1, i > 1)
    if v == nil then return fail(self, e) end
    if v == false then v = { false, e } end
    replies[i] = v
  end
  return replies
end

--- Puts the connection back into the generation's pool (as the socket's
-- `setkeepalive`); the client is unusable after.
-- @return `true`, or `nil, err` (`"closed"` after a failure or close)
function Client:setkeepalive(...)
  check_client(self, "setkeepalive")
  local sock = self.sock
  if not sock then return nil, "closed" end
  self.sock = nil
  return sock:setkeepalive(...)
end

--- Closes the connection.
-- @return `true`, or `nil, "closed"` if it was closed already
function Client:close()
  check_client(self, "close")
  local sock = self.sock
  if not sock then return nil, "closed" end
  self.sock = nil
  return sock:close()
end

--- How many times the connection was taken from the pool (0: fresh).
-- @return a number, or `nil, "closed"`
function Client:getreusedtimes()
  check_client(self, "getreusedtimes")
  if not self.sock then return nil, "closed" end
  return self.sock:getreusedtimes()
end

local OPTION_TYPES = {
  host = "string", port = "number", path = "string", password = "string", db = "number",
  timeout = "number", tls = "table", pool = "string", socket = "function",
}

local function check_options(opts)
  if type(opts) ~= "table" then
    return "expected a table of options, got " .. type(opts)
  end
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then return "unknown option " .. tostring(k) end
    if type(v) ~= want then return format("%s must be a %s, got %s", k, want, type(v)) end
  end
  local port = opts.port
  if port and (port < 1 or port > 65535 or port % 1 ~= 0) then
    return "port must be an integer 1-65535"
  end
  if opts.db and (opts.db < 0 or opts.db % 1 ~= 0) then return "db must be an integer >= 0" end
  if opts.timeout and not (opts.timeout > 0 and opts.timeout < math.huge) then
    return "timeout must be a number of seconds > 0"
  end
  if opts.path and (opts.host or opts.port) then return "path excludes host and port" end
  return nil
end

local function new_socket()
  local sockets = smtpd.socket
  if not sockets then error("smtpd.redis.connect: smtpd.socket is not available", 3) end
  return sockets.tcp()
end

--- Connects to a Redis server (or takes an idle connection from the pool).
-- A fresh connection is authenticated (`AUTH password`) and switched to
-- `db` (`SELECT`); a pooled one already was.
-- @param opts `host` ("127.0.0.1"), `port` (6379), or `path` (a unix
--   socket); `password`; `db` (0); `timeout` (5 s: connect, send and each
--   read); `tls` (a table passed to `sock:sslhandshake`); `pool` (a pool
--   name; default: the target, db and password together)
-- @return a client, or `nil, err` (the socket's error, or the server's
--   reply to AUTH/SELECT, e.g. `"WRONGPASS ..."`)
-- @usage local r = assert(smtpd.redis.connect{ host = "10.0.0.5", password = pw })
function M.connect(opts)
  local bad = check_options(opts)
  if bad then error("smtpd.redis.connect: " .. bad, 2) end
  local host, port = opts.host or DEFAULTS.host, opts.port or DEFAULTS.port
  local db, timeout = opts.db or DEFAULTS.db, opts.timeout or DEFAULTS.timeout
  local password, path = opts.password, opts.path
  local target = path and ("unix:" .. path) or (host .. ":" .. port)
  local pool = opts.pool or
    ("redis:" .. target .. "/" .. db .. (password and ("+auth" .. password_id(password)) or ""))

  local sock = opts.socket and opts.socket() or new_socket()
  sock:settimeout(timeout)
  local ok, err
  if path then
    ok, err = sock:connect("unix:" .. path, { pool = pool })
  else
    ok, err = sock:connect(host, port, { pool = pool })
  end
  if not ok then
    sock:close()
    return nil, err
  end
  if opts.tls then
    ok, err = sock:sslhandshake(opts.tls)
    if not ok then
      sock:close()
      return nil, err
    end
  end
  local client = setmetatable({ sock = sock }, Client)
  if sock:getreusedtimes() == 0 then
    local r, e
    if password then
      r, e = client:call("AUTH", password)
      if not r then
        client:close()
        return nil, e
      end
    end
    if db ~= 0 then
      r, e = client:call("SELECT", db)
      if not r then
        client:close()
        return nil, e
      end
    end
  end
  return client
end

return M
