-- A submission policy: AUTH against a user table, only authenticated
-- senders, only local recipients for others, and messages written to a
-- maildir-like spool directory. Start from this and replace the parts.
--
--   luasmtpd --handler scripts/examples/users.lua -o auth_require_tls=false   # testing only
--   SPOOL_DIR=/var/spool/luasmtpd luasmtpd --handler scripts/examples/users.lua ...
--
-- Started as root, luasmtpd runs its hooks as nobody (or --user): the spool
-- directory must be writable by that user.
local smtpd = require "smtpd"

local handler = {
  options = {
    auth_required = true,      -- MAIL/RCPT/DATA need AUTH first
    data_size_limit = 10 * 1024 * 1024,
    -- What EHLO offers, in order: the shipped mechanisms beside PLAIN/LOGIN
    -- (SCRAM's -PLUS forms only appear under TLS).
    auth_mechanisms = { "SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN" },
  },
}

-- Plaintext passwords work with every mechanism listed. In production keep
-- SCRAM secrets instead (`luasmtpd --hash-password scram-sha-256`): they
-- serve SCRAM, PLAIN and LOGIN (not CRAM-MD5) and never reveal the password.
local users = { alice = "s3cret", bob = "hunter2" }
local local_domain = "example.com"
local spool = os.getenv("SPOOL_DIR")  -- nil: print a summary instead

-- One authenticator for every mechanism: auth_data:verify does the
-- mechanism's check (for SCRAM, the rest of the exchange); an unknown user
-- (nil) costs the same work and fails.
function handler.authenticator(server, session, envelope, mechanism, auth_data)
  local ok = auth_data:verify(users[auth_data.login])
  return smtpd.AuthResult { success = ok, handled = false, auth_data = auth_data }
end

function handler.handle_RCPT(server, session, envelope, address, rcpt_options)
  local domain = address:match("@([^@]+)$")
  if not session.authenticated and (domain or ""):lower() ~= local_domain then
    return "550 5.7.1 Relaying denied"
  end
  envelope.rcpt_tos[#envelope.rcpt_tos + 1] = address
  return "250 OK"
end

-- Spool files: a name no other process or restart can pick (time, pid,
-- counter, a random part, and O_EXCL to be sure), written under a
-- temporary name, fsync'ed, renamed into place, and the directory fsync'ed,
-- all before the 250. Lua's io cannot do this: f:flush() only hands the
-- bytes to the kernel (a power cut can still lose them) and io.open has no
-- O_EXCL; so this uses LuaJIT's FFI and the C library directly.
local ffi = require "ffi"
pcall(ffi.cdef, [[
int open(const char *path, int flags, int mode);
long write(int fd, const void *buf, unsigned long n);
int fsync(int fd);
int close(int fd);
int rename(const char *from, const char *to);
int unlink(const char *path);
int getpid(void);
char *strerror(int errnum);
]])
-- Linux's values (asm-generic; ARM moved O_DIRECTORY).
local O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC = 1, 64, 128, 524288
local O_DIRECTORY = (ffi.arch == "arm64" or ffi.arch == "arm") and 16384 or 65536
local EEXIST = 17

local function c_error(what)
  return what .. ": " .. ffi.string(ffi.C.strerror(ffi.errno()))
end

local function random_part()
  local f = io.open("/dev/urandom", "rb")
  local bytes = f and f:read(6) or tostring(os.clock())
  if f then f:close() end
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end
local process_tag = ("%d.%s"):format(ffi.C.getpid(), random_part())
local counter = 0

-- Writes content to dir/ID.eml durably; returns ID, or nil and an error.
local function store(dir, content)
  for _ = 1, 10 do
    counter = counter + 1
    local id = ("%d.%s.%d"):format(os.time(), process_tag, counter)
    local tmp, final = ("%s/.%s.tmp"):format(dir, id), ("%s/%s.eml"):format(dir, id)
    local fd = ffi.C.open(tmp, O_WRONLY + O_CREAT + O_EXCL + O_CLOEXEC, 384) -- 0600
    if fd < 0 then
      if ffi.errno() ~= EEXIST then return nil, c_error(tmp) end
    else
      local off, err = 0, nil
      while off < #content and not err do
        local n = ffi.C.write(fd, ffi.cast("const char *", content) + off, #content - off)
        if n < 0 then err = c_error("write " .. tmp) else off = off + tonumber(n) end
      end
      if not err and ffi.C.fsync(fd) ~= 0 then err = c_error("fsync " .. tmp) end
      ffi.C.close(fd)
      if not err and ffi.C.rename(tmp, final) ~= 0 then err = c_error("rename " .. tmp) end
      if err then
        ffi.C.unlink(tmp)
        return nil, err
      end
      -- The rename is durable once the directory is.
      local dfd = ffi.C.open(dir, O_DIRECTORY + O_CLOEXEC, 0)
      if dfd >= 0 then
        ffi.C.fsync(dfd)
        ffi.C.close(dfd)
      end
      return id
    end
  end
  return nil, "no unique name in " .. dir
end

function handler.handle_DATA(server, session, envelope)
  if spool then
    local id, err = store(spool, envelope.content)
    if not id then
      io.stderr:write("spool: ", err, "\n")
      io.stderr:flush()
      return "451 4.3.0 Cannot store the message, try again later"
    end
    return "250 2.0.0 Queued as " .. id
  end
  counter = counter + 1
  local id = ("%d.%s.%d"):format(os.time(), process_tag, counter)
  -- Flushed before the 250: redirected, stdout is block-buffered, and what
  -- sits in the buffer is lost if the process is killed.
  io.stdout:write(("%s: %d bytes from %s (%s) for %s\n"):format(id, #envelope.content,
    envelope.mail_from, session.auth_data and session.auth_data.login or "-",
    table.concat(envelope.rcpt_tos, ", ")))
  io.stdout:flush()
  return "250 2.0.0 Queued as " .. id
end

return handler
