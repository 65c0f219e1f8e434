-- What the delivery specs share: a real SMTP upstream (Debian's aiosmtpd,
-- spec/functional/upstream.py) or a raw LMTP responder on a free loopback
-- port or a UNIX socket, started by the spec and stopped by PID; its JSON
-- event log, with the message bytes decoded.
local cjson = require "cjson"
local mime = require "mime"
local hu = require "spec.functional.hostile_util"

local M = {}

local SCRIPT = "spec/functional/upstream.py"

--- Starts an upstream. opts: `auth = "user:pass"`, `tls = {cert =, key =}`,
-- `refuse`, `tempfail_rcpt`, `data_reply`, `size`, `smtputf8`,
-- `pipelining`, `lmtp`, `lmtp_fail`, `unix` (true: listen on a UNIX socket),
-- `host` and `port` (default 127.0.0.1, a free port).
-- Returns { port =, path = (UNIX), log =, pid =, dir = }.
function M.start(opts)
  opts = opts or {}
  local dir = hu.tempdir()
  local u = { dir = dir, log = dir .. "/upstream.log", port_file = dir .. "/port" }
  local a = { "/usr/bin/python3", SCRIPT, "--port-file", u.port_file, "--log", u.log }
  local function add(...) for _, v in ipairs{ ... } do a[#a + 1] = hu.shell_quote(tostring(v)) end end
  if opts.unix then
    u.path = dir .. "/upstream.sock"
    add("--unix", u.path)
  end
  if opts.host then add("--host", opts.host) end
  if opts.port then add("--port", opts.port) end
  if opts.auth then add("--auth", opts.auth) end
  if opts.tls then add("--tls", opts.tls.cert, opts.tls.key) end
  if opts.refuse then add("--refuse", opts.refuse) end
  if opts.tempfail_rcpt then add("--tempfail-rcpt", opts.tempfail_rcpt) end
  if opts.data_reply then add("--data-reply", opts.data_reply) end
  if opts.size then add("--size", opts.size) end
  if opts.smtputf8 then add("--smtputf8") end
  if opts.pipelining then add("--pipelining") end
  if opts.lmtp then add("--lmtp") end
  if opts.lmtp_fail then add("--lmtp-fail", opts.lmtp_fail) end
  local f = assert(io.popen(table.concat(a, " ") .. " >" .. dir .. "/out 2>&1 & echo $!"))
  u.pid = tonumber(f:read("*l"))
  f:close()
  hu.wait_until(function()
    u.port = tonumber(hu.read_file(u.port_file) or "")
    return u.port ~= nil
  end, 15, "the upstream's port", function() return hu.read_file(dir .. "/out") or "" end)
  return u
end

function M.stop(u)
  if not u then return end
  os.execute("kill " .. u.pid .. " 2>/dev/null")
  hu.rmdir(u.dir)
end

--- The upstream's events, decoded (`data` of a message event as bytes).
function M.events(u, kind)
  local out = {}
  for line in (hu.read_file(u.log) or ""):gmatch("[^\n]+") do
    local ev = cjson.decode(line)
    if ev.data then ev.data = (mime.unb64(ev.data)) or "" end
    if not kind or ev.ev == kind then out[#out + 1] = ev end
  end
  return out
end

--- Waits until the upstream has logged `n` (default 1) events of `kind`.
function M.wait(u, kind, n)
  n = n or 1
  hu.wait_until(function() return #M.events(u, kind) >= n end, 10, "upstream event " .. kind,
    function() return hu.read_file(u.log) or "" end)
  return M.events(u, kind)
end

--- A certificate for the upstream, signed by a fresh CA: { ca =, cert =, key = }.
function M.certs()
  local testing = require "smtpd.testing"
  local ca = testing.make_cert{ cn = "Upstream Test CA", is_ca = true, alg = "ec" }
  local leaf = testing.make_cert{ cn = "localhost", ca = ca, dir = ca.dir, name = "upstream", alg = "ec" }
  return { ca = ca.cert, cert = leaf.cert, key = leaf.key, dir = ca.dir }
end

return M
