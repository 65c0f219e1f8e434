-- Differential spec: every dialogue of spec/reference/dialogues.lua runs
-- against aiosmtpd 1.4.3 (Debian's python3-aiosmtpd, /usr/bin/python3) and
-- against luasmtpd ($LUASMTPD_BIN, default build/luasmtpd); the replies must
-- agree line by line except where the case names a documented deviation.
--
-- For a readable side-by-side view of a failure:
--   luajit spec/reference/compare.lua <case-name-pattern>
local compare = require "spec.reference.compare"

local dialogues = compare.load_dialogues()

describe("luasmtpd against aiosmtpd 1.4.3", function()
  local missing

  setup(function()
    local f = io.open(compare.bin_path(), "rb")
    if f then
      f:close()
    else
      missing = "luasmtpd binary not found: " .. compare.bin_path() .. " (set LUASMTPD_BIN)"
    end
  end)

  teardown(function()
    compare.stop_all()
  end)

  for _, case in ipairs(dialogues.cases) do
    it(case.name, function()
      assert(not missing, missing)
      local result, err = compare.run_case(case, dialogues.deviations)
      assert(result, err)
      local lines = { "unexpected differences (run `luajit spec/reference/compare.lua '^"
                      .. case.name .. "$'` for the side-by-side view):" }
      for _, u in ipairs(result.unexpected) do
        lines[#lines + 1] = "  " .. compare.visible(u)
      end
      assert.is_true(#result.unexpected == 0, table.concat(lines, "\n"))
      -- The reference must really have answered: a transcript with nothing
      -- but the greeting means the dialogue tested nothing.
      assert.is_true(#result.ref >= 2, "aiosmtpd gave no reply beyond the greeting")
    end)
  end
end)
