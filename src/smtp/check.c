/* check.c — owns the warnings -t prints for a script that loaded: known
 * blocking network modules its top level required (they stall every
 * connection of the process while they wait), and a handle_DATA whose
 * bytecode has a reachable return without a value (451, so the client sends
 * the message again). Must not refuse a script, run its hooks, or change
 * the generation beyond a few temporary stack slots. */
#include "check.h"

#include <lauxlib.h>
#include <lua.h>

/* Runs in the generation's state with (handle_DATA or nil); returns the
 * warnings as strings. package.loaded holds every module the top level
 * required (directly or not) and nothing else a script did not ask for.
 * The bytecode walk follows jumps from the entry: JMP goes only to its
 * target, a comparison may skip the JMP after it, other jumps may fall
 * through; RET0 reached means "returns nothing" on that path. It cannot know
 * that error() or os.exit() never return, so a function ending in one of
 * those is reported as "may return nothing". */
static const char check_chunk[] =
    "local data = ...\n"
    "local out = {}\n"
    "local blocking = {}\n"
    "for name in pairs(package.loaded) do\n"
    "  if type(name) == 'string' and (name == 'socket' or name == 'socket.http'\n"
    "      or name == 'socket.smtp' or name == 'socket.ftp' or name == 'luasql'\n"
    "      or name:match('^luasql%.')) then blocking[#blocking + 1] = name end\n"
    "end\n"
    "table.sort(blocking)\n"
    "if #blocking > 0 then\n"
    "  out[#out + 1] = ('the script requires %s, which block%s: while a call waits '\n"
    "    .. '(connect, query, transfer), every connection of this process waits; keep '\n"
    "    .. 'such calls out of the hooks or short'):format(table.concat(blocking, ', '),\n"
    "    #blocking == 1 and 's' or '')\n"
    "end\n"
    "if type(data) == 'function' then\n"
    "  local ok, ju = pcall(require, 'jit.util')\n"
    "  local vok, vm = pcall(require, 'jit.vmdef')\n"
    "  if ok and vok and ju.funcinfo(data).bytecodes then\n"
    "    local info = ju.funcinfo(data)\n"
    "    local function op(pc)\n"
    "      local ins, m = ju.funcbc(data, pc)\n"
    "      if not ins then return nil end\n"
    "      ins = ins % 4294967296 -- funcbc gives a signed 32-bit word\n"
    "      local o = ins % 256\n"
    "      local target = nil\n"
    "      if math.floor(m / 128) % 16 == 13 then\n"
    "        target = pc + math.floor(ins / 65536) - 0x7fff\n"
    "      end\n"
    "      return vm.bcnames:sub(o * 6 + 1, o * 6 + 6):gsub(' ', ''), target\n"
    "    end\n"
    "    local seen, todo, value, nothing = {}, { 1 }, false, false\n"
    "    while #todo > 0 and #todo < 100000 do\n"
    "      local pc = table.remove(todo)\n"
    "      if pc >= 1 and pc < info.bytecodes and not seen[pc] then\n"
    "        seen[pc] = true\n"
    "        local name, target = op(pc)\n"
    "        if name == 'RET0' then nothing = true\n"
    "        elseif name and (name:match('^RET') or name:match('^CALLM?T$')) then value = true\n"
    "        elseif name == 'JMP' or name == 'UCLO' or name == 'ISNEXT' then\n"
    "          todo[#todo + 1] = target\n"
    "        elseif name then\n"
    "          todo[#todo + 1] = pc + 1\n"
    "          if target then todo[#todo + 1] = target end\n"
    "          if name:match('^IS') then todo[#todo + 1] = pc + 2 end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    local where = ('%s:%d'):format(tostring(info.source):gsub('^@', ''),\n"
    "      info.linedefined or 0)\n"
    "    if not value then\n"
    "      out[#out + 1] = ('handle_DATA (%s) never returns a status line: every message '\n"
    "        .. 'gets 451 and the client sends it again; return \"250 OK\" once it is '\n"
    "        .. 'stored'):format(where)\n"
    "    elseif nothing then\n"
    "      out[#out + 1] = ('handle_DATA (%s) may return nothing on some path (a bare '\n"
    "        .. '`return` or the end of the function): that message gets 451 and comes '\n"
    "        .. 'again; ignore this if that path ends in error()'):format(where)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

int check_warnings(struct policy *p, FILE *out)
{
    lua_State *L = p->vm.L;
    int top = lua_gettop(L);
    int n = 0;
    if (luaL_loadbuffer(L, check_chunk, sizeof check_chunk - 1, "=check") == 0) {
        if (policy_has_hook(p, HOOK_DATA))
            lua_rawgeti(L, LUA_REGISTRYINDEX, p->hook_ref[HOOK_DATA]);
        else
            lua_pushnil(L);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_istable(L, -1)) {
            for (int i = 1;; i++) {
                lua_rawgeti(L, -1, i);
                const char *w = lua_tostring(L, -1);
                lua_pop(L, 1);
                if (!w) break;
                fprintf(out, "%s: warning: %s\n", p->script_name, w);
                n++;
            }
        } else {
            fprintf(out, "%s: warning: the checks could not run: %s\n", p->script_name,
                    lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        }
    }
    lua_settop(L, top);
    return n;
}
