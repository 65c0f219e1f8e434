/* check.h — what -t says about a script that loads: warnings about things
 * that work but hurt (a blocking network module at the top level, a
 * handle_DATA that can return nothing). Must not refuse a script. */
#ifndef LUASMTPD_CHECK_H
#define LUASMTPD_CHECK_H

#include <stdio.h>

#include "policy.h"

/* Writes one "warning: ..." line per finding to out; returns how many. */
int check_warnings(struct policy *p, FILE *out);

#endif
