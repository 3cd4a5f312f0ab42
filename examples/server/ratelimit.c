/*
 * ratelimit.c — per-client token buckets (--enable-rate-limiting).
 *
 * A client is its peer address string. Each client has two buckets: the
 * ordinary one fills at rps tokens a second up to rps (one second of burst),
 * the admin one (snapshot, compact, rmi/build, warmup) at admin_rps up to
 * max(1, admin_rps). A request takes one token; an empty bucket means 429.
 * Buckets are refilled lazily from the time elapsed since the client's last
 * request, so an idle client costs nothing but its entry.
 *
 * The table is a chained hash of RL_BUCKETS chains; chain i is guarded by
 * lock i % RL_LOCKS, so workers contend only when they hash to the same
 * stripe. At most RL_MAX_CLIENTS entries exist: rl_sweep (once every few
 * seconds) drops clients whose buckets are full again, and while the table
 * is full, new clients share one overflow entry (so a flood of new addresses
 * is limited as one client rather than growing memory without bound).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define RL_BUCKETS 4096
#define RL_LOCKS 64
#define RL_MAX_CLIENTS 100000
#define RL_ADDR_MAX 64

typedef struct rl_entry {
    struct rl_entry *next;
    double tokens, admin_tokens;
    uint64_t last_ns;
    char addr[RL_ADDR_MAX];
} rl_entry;

struct rl_table {
    double rps, burst, admin_rps, admin_burst;
    rl_entry *chain[RL_BUCKETS];
    pthread_mutex_t lock[RL_LOCKS];
    _Atomic size_t count;
    pthread_mutex_t overflow_lock;
    rl_entry overflow;
};

static uint64_t hash_addr(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */

    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

int rl_create(double rps, double admin_rps, rl_table **out)
{
    rl_table *t = calloc(1, sizeof *t);

    if (t == NULL)
        return -1;
    t->rps = rps > 0 ? rps : 1;
    t->burst = t->rps < 1 ? 1 : t->rps;
    t->admin_rps = admin_rps > 0 ? admin_rps : t->rps / 10;
    t->admin_burst = t->admin_rps < 1 ? 1 : t->admin_rps;
    for (int i = 0; i < RL_LOCKS; i++)
        pthread_mutex_init(&t->lock[i], NULL);
    pthread_mutex_init(&t->overflow_lock, NULL);
    t->overflow.tokens = t->burst;
    t->overflow.admin_tokens = t->admin_burst;
    *out = t;
    return 0;
}

void rl_destroy(rl_table *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < RL_BUCKETS; i++) {
        rl_entry *e = t->chain[i];
        while (e) {
            rl_entry *n = e->next;
            free(e);
            e = n;
        }
    }
    for (int i = 0; i < RL_LOCKS; i++)
        pthread_mutex_destroy(&t->lock[i]);
    pthread_mutex_destroy(&t->overflow_lock);
    free(t);
}

static void refill(rl_table *t, rl_entry *e, uint64_t now)
{
    if (now > e->last_ns) {
        double dt = (double)(now - e->last_ns) / 1e9;
        e->tokens += dt * t->rps;
        if (e->tokens > t->burst)
            e->tokens = t->burst;
        e->admin_tokens += dt * t->admin_rps;
        if (e->admin_tokens > t->admin_burst)
            e->admin_tokens = t->admin_burst;
        e->last_ns = now;
    }
}

static bool take(rl_table *t, rl_entry *e, bool admin, uint64_t now)
{
    double *b;

    refill(t, e, now);
    b = admin ? &e->admin_tokens : &e->tokens;
    if (*b < 1.0)
        return false;
    *b -= 1.0;
    return true;
}

bool rl_allow(rl_table *t, const char *client, bool admin, uint64_t now_ns)
{
    uint64_t h = hash_addr(client);
    size_t b = (size_t)(h % RL_BUCKETS);
    pthread_mutex_t *lk = &t->lock[b % RL_LOCKS];
    rl_entry *e;
    bool ok;

    pthread_mutex_lock(lk);
    for (e = t->chain[b]; e != NULL; e = e->next)
        if (strcmp(e->addr, client) == 0)
            break;
    if (e == NULL && atomic_load(&t->count) < RL_MAX_CLIENTS) {
        e = calloc(1, sizeof *e);
        if (e != NULL) {
            size_t n = strlen(client);
            if (n >= RL_ADDR_MAX)
                n = RL_ADDR_MAX - 1;
            memcpy(e->addr, client, n);
            e->tokens = t->burst;
            e->admin_tokens = t->admin_burst;
            e->last_ns = now_ns;
            e->next = t->chain[b];
            t->chain[b] = e;
            atomic_fetch_add(&t->count, 1);
        }
    }
    if (e != NULL) {
        ok = take(t, e, admin, now_ns);
        pthread_mutex_unlock(lk);
        return ok;
    }
    pthread_mutex_unlock(lk);
    pthread_mutex_lock(&t->overflow_lock);
    if (t->overflow.last_ns == 0)
        t->overflow.last_ns = now_ns;
    ok = take(t, &t->overflow, admin, now_ns);
    pthread_mutex_unlock(&t->overflow_lock);
    return ok;
}

void rl_sweep(rl_table *t, uint64_t now_ns)
{
    for (size_t b = 0; b < RL_BUCKETS; b++) {
        pthread_mutex_t *lk = &t->lock[b % RL_LOCKS];
        pthread_mutex_lock(lk);
        rl_entry **pp = &t->chain[b];
        while (*pp) {
            rl_entry *e = *pp;
            refill(t, e, now_ns);
            if (e->tokens >= t->burst && e->admin_tokens >= t->admin_burst) {
                *pp = e->next;
                free(e);
                atomic_fetch_sub(&t->count, 1);
            } else {
                pp = &e->next;
            }
        }
        pthread_mutex_unlock(lk);
    }
}

size_t rl_clients(rl_table *t)
{
    return t ? atomic_load(&t->count) : 0;
}
