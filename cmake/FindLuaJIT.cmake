# FindLuaJIT: prefers pkg-config (Debian ships luajit.pc), falls back to a
# plain search. Defines LuaJIT::LuaJIT.
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(PC_LUAJIT QUIET luajit)
endif()
find_path(LUAJIT_INCLUDE_DIR NAMES luajit.h
  HINTS ${PC_LUAJIT_INCLUDE_DIRS} PATH_SUFFIXES luajit-2.1)
find_library(LUAJIT_LIBRARY NAMES luajit-5.1 HINTS ${PC_LUAJIT_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LuaJIT DEFAULT_MSG LUAJIT_LIBRARY LUAJIT_INCLUDE_DIR)
if(LuaJIT_FOUND AND NOT TARGET LuaJIT::LuaJIT)
  add_library(LuaJIT::LuaJIT UNKNOWN IMPORTED)
  set_target_properties(LuaJIT::LuaJIT PROPERTIES
    IMPORTED_LOCATION "${LUAJIT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LUAJIT_INCLUDE_DIR}")
endif()
mark_as_advanced(LUAJIT_INCLUDE_DIR LUAJIT_LIBRARY)
