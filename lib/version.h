/*
 * version.h — what a reader sees, and how readers hold it without locks.
 *
 * A version is an immutable triple {active buffer, frozen buffer, base run}.
 * The current version is one atomic pointer. A reader pins the domain (an
 * increment on a per-thread stripe counter: no lock, no waiting, and where
 * the kernel offers membarrier(2) no fence or locked instruction), loads the
 * current version and uses it; writers publish a new version with one atomic
 * exchange and free what they replaced only after every reader that could
 * still see it has unpinned (ver_synchronize, an RCU-style grace period).
 * Views keep a version longer by taking a reference count on it.
 */
#ifndef KYRO_VERSION_H
#define KYRO_VERSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "buffer.h"
#include "run.h"

/* A reference-counted buffer: the same buffer is shared by successive
 * versions (active in one, frozen in the next). */
typedef struct ver_buf {
    atomic_uint_fast32_t refs;
    buf *b;
} ver_buf;

typedef struct ver {
    atomic_uint_fast32_t refs; /* one for being current, one per view */
    ver_buf *active;           /* never NULL */
    ver_buf *frozen;           /* being folded, or NULL */
    run *base;                 /* never NULL */
    /* Every write in active has a seq above this, so a reader at a seq at
     * or below it skips the active buffer (the usual state after a fold,
     * until the next write). 0 when not known. */
    uint64_t active_from;
    struct ver *retired_next;
} ver;

#define VER_STRIPES 32

/* One cache line per stripe: the pin counters for the two grace-period
 * parities and the read statistics of the threads that use the stripe.
 * Up to VER_STRIPES - 1 live threads each own a stripe; any more share the
 * last one. */
typedef struct ver_stripe {
    _Alignas(64) atomic_uint_fast64_t pins[2];
    /* A get is answered by a write buffer (buffer_gets) or looked up in the
     * base (lookups): two counters, so a base get adds to no third one. */
    atomic_uint_fast64_t buffer_gets, scans, probed, lookups, fallbacks;
    int shared;     /* set once at init for the last stripe */
    int fence_free; /* set once at init: not shared, and the domain is asym */
} ver_stripe;

/* Add to one of a stripe's statistics. On a stripe its thread owns this is
 * a plain load and store: no locked instruction, no fence on every read. */
static inline void ver_stat_add(ver_stripe *s, atomic_uint_fast64_t *c, uint64_t n)
{
    if (s->shared)
        atomic_fetch_add_explicit(c, n, memory_order_relaxed);
    else
        atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                              memory_order_relaxed);
}

/* Count one index lookup that probed `probed` positions. */
static inline void ver_stat_lookup(ver_stripe *s, uint64_t probed, int fallback)
{
    if (s->shared) {
        atomic_fetch_add_explicit(&s->probed, probed, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->lookups, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->fallbacks, fallback != 0, memory_order_relaxed);
        return;
    }
    atomic_store_explicit(&s->probed, atomic_load_explicit(&s->probed, memory_order_relaxed) + probed,
                          memory_order_relaxed);
    atomic_store_explicit(&s->lookups, atomic_load_explicit(&s->lookups, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (fallback)
        atomic_store_explicit(&s->fallbacks,
                              atomic_load_explicit(&s->fallbacks, memory_order_relaxed) + 1,
                              memory_order_relaxed);
}

typedef struct ver_domain {
    _Atomic(ver *) current;
    atomic_uint parity;
    int asym; /* fence-free readers, membarrier in ver_synchronize (see version.c) */
    _Atomic(ver *) retired; /* versions whose last reference went away */
    pthread_mutex_t sync_lock;
    ver_stripe stripes[VER_STRIPES];
} ver_domain;

int ver_domain_init(ver_domain *d, ver *initial);
/* Test hook: 0 makes domains initialised afterwards use fenced readers even
 * where membarrier works; 1 (the default) uses membarrier where it works. */
void ver_set_membarrier(int enabled);
/* Whether d's readers run without fences (membarrier registered). */
int ver_domain_asymmetric(const ver_domain *d);
/* Frees the current version and everything retired; no reader may remain. */
void ver_domain_destroy(ver_domain *d);

/* The calling thread's stripe index plus one; 0 until it first needs one.
 * initial-exec: a plain %fs-relative load, also inside the shared library
 * (a call to __tls_get_addr otherwise). */
extern _Thread_local unsigned ver_my_stripe_plus1 __attribute__((tls_model("initial-exec")));
unsigned ver_claim_stripe(void); /* first use on a thread: claim and remember one */
static inline unsigned ver_stripe_index(void)
{
    unsigned s = ver_my_stripe_plus1;
    return s ? s - 1 : ver_claim_stripe();
}
static inline ver_stripe *ver_my_stripe(ver_domain *d)
{
    return &d->stripes[ver_stripe_index()];
}

/* Reader side: lock-free. ver_enter returns the hold for ver_leave, which
 * the same thread must call; between the two, ver_current's result and
 * everything it points to stays valid. Holds nest. The fast path (membarrier
 * domain, a stripe of the thread's own) is inline; the rest is
 * ver_enter_fenced. */
typedef struct ver_hold {
    ver_stripe *stripe;        /* the holder's own: count its reads here */
    atomic_uint_fast64_t *pin; /* the pin counter it raised */
    int fenced;                /* raised with a locked instruction: undo likewise */
} ver_hold;
ver_hold ver_enter_fenced(ver_domain *d, ver_stripe *st);
static inline ver_hold ver_enter(ver_domain *d)
{
    ver_stripe *st = &d->stripes[ver_stripe_index()];
    if (!st->fence_free)
        return ver_enter_fenced(d, st);
    for (;;) {
        unsigned parity = atomic_load_explicit(&d->parity, memory_order_relaxed) & 1;
        atomic_uint_fast64_t *pin = &st->pins[parity];
        uint_fast64_t n = atomic_load_explicit(pin, memory_order_relaxed);
        atomic_store_explicit(pin, n + 1, memory_order_relaxed);
        /* Keeps the compiler from moving the re-read above the store; the
         * CPU's side is ver_synchronize's membarrier (version.c). */
        atomic_signal_fence(memory_order_seq_cst);
        if (parity == (atomic_load_explicit(&d->parity, memory_order_acquire) & 1))
            return (ver_hold){st, pin, 0};
        atomic_store_explicit(pin, n, memory_order_relaxed);
    }
}
/* The hold says how it was raised, so leaving does not load the stripe's
 * flag again. */
static inline void ver_leave(ver_hold h)
{
    if (!h.fenced)
        atomic_store_explicit(h.pin, atomic_load_explicit(h.pin, memory_order_relaxed) - 1,
                              memory_order_release);
    else
        atomic_fetch_sub_explicit(h.pin, 1, memory_order_release);
}
static inline ver *ver_current(ver_domain *d)
{
    return atomic_load_explicit(&d->current, memory_order_acquire);
}

/* A counted reference to the current version (views). Lock-free. */
ver *ver_acquire(ver_domain *d);
/* Drop a reference; the last one queues the version for ver_reclaim.
 * Lock-free (never frees, never waits). */
void ver_release(ver_domain *d, ver *v);

/* Writer side (callers serialise publishes). */
ver_buf *ver_buf_new(buf *b);          /* takes ownership of b; NULL on ENOMEM */
void ver_buf_ref(ver_buf *vb);
void ver_buf_unref(ver_buf *vb);
/* A new version with one reference; takes new references on its parts. */
ver *ver_new(ver_buf *active, ver_buf *frozen, run *base, uint64_t active_from);
/* Make v current (v's reference becomes the domain's); the old current loses
 * the domain's reference. */
void ver_publish(ver_domain *d, ver *v);
/* Wait until every reader pinned before this call has unpinned. */
void ver_synchronize(ver_domain *d);
/* Free every version queued by ver_release, after a grace period. */
void ver_reclaim(ver_domain *d);

#endif
