/* auth_limit.c — address groups and the per-process penalty table of
 * auth_limit.h. The table is a fixed array of sets of four slots hashed by
 * address group: bounded whatever the number of attackers, O(1) per
 * failure, and the slot least recently failed in a set is the one reused.
 * Each worker has its own (the cross-worker count is
 * auth_fail_limit_per_client's shared dictionary). Must not block. */
#include "auth_limit.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "crypto.h"

#define SET_WAYS 4
#define N_SETS (AUTH_PENALTY_SLOTS / SET_WAYS)

struct penalty_slot {
    char key[AUTH_LIMIT_KEY_MAX]; /* "" when free */
    unsigned failures;
    double last; /* time of the last failure */
};

static struct penalty_slot slots[N_SETS][SET_WAYS];

bool auth_limit_key(const char *peer, char *out)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, peer, &a4) == 1) {
        snprintf(out, AUTH_LIMIT_KEY_MAX, "%s", peer);
        return true;
    }
    if (inet_pton(AF_INET6, peer, &a6) != 1) return false;
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
        memcpy(&a4, a6.s6_addr + 12, 4);
        inet_ntop(AF_INET, &a4, out, AUTH_LIMIT_KEY_MAX);
        return true;
    }
    /* One site (a /48) is one client: an attacker gets 2^80 addresses. */
    memset(a6.s6_addr + 6, 0, 10);
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &a6, text, sizeof text);
    snprintf(out, AUTH_LIMIT_KEY_MAX, "%s/48", text);
    return true;
}

/* FNV-1a, keyed once per process so set choice is not predictable. */
static uint32_t hash_key(const char *key)
{
    static uint32_t seed;
    static bool seeded;
    if (!seeded) {
        if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != (ssize_t)sizeof seed) seed = 0x9e3779b9u;
        seeded = true;
    }
    uint32_t h = 2166136261u ^ seed;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) h = (h ^ *p) * 16777619u;
    return h;
}

static struct penalty_slot *find(const char *key, bool create, double now)
{
    struct penalty_slot *set = slots[hash_key(key) % N_SETS];
    struct penalty_slot *victim = &set[0];
    for (int i = 0; i < SET_WAYS; i++) {
        if (set[i].key[0] && !strcmp(set[i].key, key)) {
            if (now - set[i].last >= AUTH_PENALTY_FORGET_SECS) set[i].failures = 0;
            return &set[i];
        }
        if (!set[i].key[0] || set[i].last < victim->last) victim = &set[i];
    }
    if (!create) return NULL;
    snprintf(victim->key, sizeof victim->key, "%s", key);
    victim->failures = 0;
    victim->last = now;
    return victim;
}

double auth_penalty_delay(const char *key, double now)
{
    struct penalty_slot *slot = find(key, false, now);
    if (!slot || slot->failures == 0) return 0;
    double penalty = AUTH_PENALTY_INIT_SECS;
    for (unsigned i = 1; i < slot->failures && penalty < AUTH_PENALTY_MAX_SECS; i++) penalty *= 2;
    if (penalty > AUTH_PENALTY_MAX_SECS) penalty = AUTH_PENALTY_MAX_SECS;
    double left = penalty - (now - slot->last);
    return left > 0 ? left : 0;
}

void auth_penalty_failed(const char *key, double now)
{
    struct penalty_slot *slot = find(key, true, now);
    if (slot->failures < 64) slot->failures++;
    slot->last = now;
}

void auth_penalty_succeeded(const char *key)
{
    struct penalty_slot *slot = find(key, false, 0);
    if (slot) slot->failures = 0;
}

double auth_fail_pause(void)
{
    uint32_t r = 0;
    if (!crypto_random(&r, sizeof r)) return AUTH_FAIL_PAUSE_MAX_SECS / 2;
    return AUTH_FAIL_PAUSE_MAX_SECS * ((double)r / 4294967296.0);
}
