--- smtpd.handlers.debugging: prints every message to stdout with an
-- X-Peer header after the message's headers, like aiosmtpd's `Debugging`.
-- It is the embedded default handler. It defines no authenticator, so every
-- AUTH attempt is rejected.
-- @usage return require("smtpd.handlers.debugging")()

local function python_list(items)
  local quoted = {}
  for i, item in ipairs(items) do quoted[i] = "'" .. item .. "'" end
  return "[" .. table.concat(quoted, ", ") .. "]"
end

return function(opts)
  local out = opts and opts.out or io.stdout
  local handler = {}
  function handler.handle_DATA(_, session, envelope)
    out:write("---------- MESSAGE FOLLOWS ----------\n")
    if #envelope.mail_options > 0 then
      out:write("mail options: ", python_list(envelope.mail_options), "\n\n")
    end
    local peer = string.format("X-Peer: ('%s', %d)", session.peer[1], session.peer[2])
    local in_headers = true
    -- Python's splitlines(): CRLF, CR and LF all end a line.
    local content = envelope.content
    local pos = 1
    while pos <= #content do
      local s, e = content:find("\r\n", pos, true)
      local cr = content:find("[\r\n]", pos)
      if cr and (not s or cr < s) then s, e = cr, cr end
      local line = s and content:sub(pos, s - 1) or content:sub(pos)
      pos = s and e + 1 or #content + 1
      if in_headers and line == "" then
        out:write(peer, "\n")
        in_headers = false
      end
      out:write(line, "\n")
    end
    out:write("------------ END MESSAGE ------------\n")
    out:flush()
    return "250 OK"
  end
  return handler
end
