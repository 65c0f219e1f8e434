/* fuzz.h — what every fuzz target shares: the sanitizer options compiled
 * into the binary, so a target run by hand (on a reproducer, say) behaves
 * as under fuzz/run. UBSan reports are recoverable in the sanitizer build;
 * halt_on_error turns every one into a crash libFuzzer saves. More options
 * (a suppressions file while a reported bug is open) come from UBSAN_OPTIONS
 * in the environment, which is read after these. */
#ifndef LUASMTPD_FUZZ_H
#define LUASMTPD_FUZZ_H

const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void)
{
    return "halt_on_error=1:print_stacktrace=1";
}

#endif
