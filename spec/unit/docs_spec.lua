-- The reference in docs/ and the README stay in step with the code:
-- every hook name, option and `smtpd` / `smtpd.testing` function the code
-- defines is documented under docs/, everything docs/ names exists in the
-- code, every relative link in README.md and docs/*.md reaches a file (and
-- heading) of the repository, and nothing points outside it. The names come
-- from the code itself (src/smtp/options.c's option table, the hook names the C
-- side knows, the fields luaopen_smtpd sets, the functions of
-- lua/smtpd/*.lua), never from a list kept here.

local function read(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. path)
  local s = f:read("*a")
  f:close()
  return s
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function ls(pattern)
  local p = assert(io.popen("ls -1 " .. pattern .. " 2>/dev/null"))
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

local function sorted_keys(set)
  local t = {}
  for k in pairs(set) do t[#t + 1] = k end
  table.sort(t)
  return t
end

-- Names in `a` but not in `b`, sorted.
local function missing(a, b)
  local t = {}
  for _, k in ipairs(sorted_keys(a)) do
    if not b[k] then t[#t + 1] = k end
  end
  return t
end

local DOCS = ls("docs/*.md")
local ALL_DOCS = {}
for _, path in ipairs(DOCS) do ALL_DOCS[#ALL_DOCS + 1] = read(path) end
local DOCS_TEXT = table.concat(ALL_DOCS, "\n")

-- A markdown section: from the heading line to the next heading of the same
-- or a higher level.
local function section(text, heading)
  local start = text:find("\n" .. heading .. "\n", 1, true)
  assert(start, "no heading " .. heading)
  local level = heading:match("^(#+)")
  local rest = text:sub(start + #heading + 2)
  local stop = rest:find("\n" .. level .. " ", 1, true)
  return stop and rest:sub(1, stop) or rest
end

-- First-column names of a table's rows: "| `name` |" or "| `a`, `b` |".
local function table_names(text)
  local names = {}
  for cell in text:gmatch("\n| ([^|\n]+) |") do
    for name in cell:gmatch("`([%w_<>]+)`") do names[name] = true end
  end
  return names
end

-- ---------------------------------------------------------------------------
-- What the code defines

local function code_options()
  local src = read("src/smtp/options.c")
  local tbl = src:match("opt_defs%[%] = {(.-)\n};")
  assert(tbl, "option table not found in src/smtp/options.c")
  local names = {}
  -- Rows are OPT("name", TYPE, field) or {"name", TYPE, ...}.
  for name in tbl:gmatch('[{(]"([%w_]+)",') do names[name] = true end
  assert(next(names), "no options parsed from src/smtp/options.c")
  return names
end

-- Every "handle_X" literal in src/*.c (policy_hook_names, the hooks'
-- log and error messages), plus the other entries of policy_hook_names.
local function code_hooks()
  local names = {}
  for _, path in ipairs(ls("src/*/*.c")) do
    for name in read(path):gmatch('"(handle_[%w_]+)') do names[name] = true end
  end
  local tbl = read("src/smtp/policy.c"):match("policy_hook_names%[HOOK_COUNT%] = {(.-)};")
  assert(tbl, "policy_hook_names not found in src/smtp/policy.c")
  for name in tbl:gmatch('"([%w_]+)"') do names[name] = true end
  assert(names.handle_DATA and names.authenticator, "hook names not parsed")
  return names
end

-- The fields luaopen_smtpd puts into the module table.
local function code_smtpd()
  local body = read("src/lua/lua_smtpd.c"):match("int luaopen_smtpd%(lua_State %*L%)\n(%b{})")
  assert(body, "luaopen_smtpd not found in src/lua/lua_smtpd.c")
  local names = {}
  for name in body:gmatch('lua_setfield%(L, %-2, "([%w_]+)"%)') do
    if not name:match("^__") then names[name] = true end -- metatable fields of MISSING etc.
  end
  assert(names.AuthResult, "smtpd functions not parsed")
  -- The Lua library modules reached as fields that are not one file
  -- lua/smtpd/NAME.lua (those are checked as modules): smtpd.handlers.
  local lazy = read("src/lua/lua_smtpd.c"):match("lazy_modules%[%] = (%b{})")
  for name in (lazy or ""):gmatch('"([%w_]+)"') do
    if not exists("lua/smtpd/" .. name .. ".lua") then names[name] = true end
  end
  -- Wait kinds add theirs in their own file (src/l_<kind>.c, l_<kind>_register).
  for _, path in ipairs(ls("src/lua/l_*.c")) do
    local reg = read(path):match("void l_[%w_]+_register%(lua_State %*L%)\n(%b{})")
    for name in (reg or ""):gmatch('lua_setfield%(L, %-2, "([%w_]+)"%)') do names[name] = true end
  end
  return names
end

-- lua/smtpd/NAME.lua → { NAME = { fn = true, ... } }: `function M.fn` and
-- `M.fn =` at top level.
local function code_lua_modules()
  local mods = {}
  for _, path in ipairs(ls("lua/smtpd/*.lua")) do
    local mod = path:match("([%w_]+)%.lua$")
    local names = {}
    for line in (read(path) .. "\n"):gmatch("(.-)\n") do
      local name = line:match("^function M%.([%w_]+)") or line:match("^M%.([%w_]+) *=")
      if name then names[name] = true end
    end
    mods[mod] = names
  end
  return mods
end

-- ---------------------------------------------------------------------------

describe("docs/", function()
  it("exists, with an index linking every page", function()
    assert.is_true(#DOCS >= 2, "no docs/*.md")
    local index = read("docs/README.md")
    for _, path in ipairs(DOCS) do
      local name = path:match("[^/]+$")
      if name ~= "README.md" then
        assert.truthy(index:find("](" .. name .. ")", 1, true), "docs/README.md does not link " .. name)
      end
    end
  end)

  it("documents every option of src/smtp/options.c and no other", function()
    local code = code_options()
    local doc = table_names(section(read("docs/options.md"), "## Option table"))
    assert.same({}, missing(code, doc), "options in src/smtp/options.c but not in docs/options.md")
    assert.same({}, missing(doc, code), "options in docs/options.md but not in src/smtp/options.c")
  end)

  it("documents every hook the C side knows and names no other", function()
    local code = code_hooks()
    local doc = table_names(section(read("docs/handler-api.md"), "## Hooks"))
    local doc_hooks = {}
    for name in pairs(doc) do
      if name:match("^handle_") or name == "authenticator" then doc_hooks[name] = true end
    end
    assert.same({}, missing(code, doc_hooks), "hooks in src/ but not in docs/handler-api.md's table")
    local named = {}
    for name in DOCS_TEXT:gmatch("handle_[%w_]+") do named[name] = true end
    assert.same({}, missing(named, code), "hooks named in docs/ that src/ does not know")
  end)

  it("documents every smtpd.* field of src/lua/lua_smtpd.c and src/l_*.c and names no other", function()
    local code = code_smtpd()
    local mods = code_lua_modules()
    local doc = {}
    for name in DOCS_TEXT:gmatch("`smtpd%.([%a_][%w_]*)") do
      if not mods[name] then doc[name] = true end -- `smtpd.testing` is a module
    end
    assert.same({}, missing(code, doc), "smtpd fields in src/lua/lua_smtpd.c but not in docs/")
    assert.same({}, missing(doc, code), "smtpd fields named in docs/ but not in src/lua/lua_smtpd.c")
  end)

  it("documents every function of lua/smtpd/*.lua and names no other", function()
    local mods = code_lua_modules()
    assert.truthy(mods.testing and mods.testing.start, "lua/smtpd/testing.lua not parsed")
    for mod, names in pairs(mods) do
      local doc = {}
      -- `testing.start(...)`, `smtpd.mechanisms.PLAIN(...)`: a code span
      -- naming the module's function.
      for name in DOCS_TEXT:gmatch("`" .. mod .. "%.([%a_][%w_]*)") do doc[name] = true end
      for name in DOCS_TEXT:gmatch("`smtpd%." .. mod .. "%.([%a_][%w_]*)") do doc[name] = true end
      assert.same({}, missing(names, doc), "functions of lua/smtpd/" .. mod .. ".lua not in docs/")
      assert.same({}, missing(doc, names), "names in docs/ that lua/smtpd/" .. mod .. ".lua lacks")
    end
  end)
end)

-- GitHub's heading anchors: lower case, punctuation dropped, spaces → "-".
local function anchors(text)
  local set = {}
  for heading in ("\n" .. text):gmatch("\n#+ ([^\n]+)") do
    set[(heading:lower():gsub("[^%w%- _]", ""):gsub(" ", "-"))] = true
  end
  return set
end

describe("links in README.md and docs/*.md", function()
  local files = { "README.md" }
  for _, path in ipairs(DOCS) do files[#files + 1] = path end

  it("never point outside the repository", function()
    local outside = ".." .. "/shared"
    for _, path in ipairs(files) do
      local text = read(path)
      assert.falsy(text:find(outside, 1, true), path .. " mentions " .. outside)
      assert.falsy(text:find("/work/", 1, true), path .. " names a path of this machine")
    end
  end)

  it("reach an existing file, and heading when they name one", function()
    local checked = 0
    for _, path in ipairs(files) do
      local dir = path:match("^(.*)/[^/]*$") or "."
      local text = read(path):gsub("\n```.-\n```", "") -- code blocks hold no links
      for target in text:gmatch("%]%(([^)%s]+)%)") do
        if not target:match("^%a[%w+.-]*:") then -- http:, https:, mailto:
          local file, anchor = target:match("^([^#]*)#?(.*)$")
          local full = file == "" and path or (dir .. "/" .. file)
          assert.is_true(exists(full), path .. ": link to missing " .. target)
          assert.falsy(full:find("^%.%./") or full:find("/%.%./%.%./"),
            path .. ": link leaves the repository: " .. target)
          if anchor ~= "" and full:match("%.md$") then
            assert.is_true(anchors(read(full))[anchor] == true, path .. ": no heading #" .. anchor .. " in " .. full)
          end
          checked = checked + 1
        end
      end
    end
    assert.is_true(checked > 10, "too few links found: " .. checked)
  end)
end)
