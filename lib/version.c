/*
 * version.c — lock-free pinning of the current version, and reclamation.
 *
 * Grace periods work like userspace RCU with two parities. A reader picks its
 * thread's stripe, reads the parity p, increments pins[p], and re-reads the
 * parity: if it changed, it undoes the increment and tries again (this can
 * only repeat while reclaimers flip, so readers never wait on a lock or a
 * writer). ver_synchronize flips the parity and waits until every stripe's
 * pins[old] is zero: a reader that registered under the old parity has
 * unpinned, and any later reader loads the current pointer after the flip,
 * so it cannot see what was retired before. Reclaimers are serialised by
 * sync_lock.
 *
 * Fences. The reader's increment and its re-read of the parity are a store
 * then a load to another address, which x86 (and every weaker model) may
 * reorder unless a full fence sits between them, and a locked instruction
 * per pin and unpin also stops the CPU from overlapping one get's cache
 * misses with the next one's. Where the kernel offers membarrier(2)
 * (MEMBARRIER_CMD_PRIVATE_EXPEDITED, Linux 4.14), the fence moves to the
 * reclaimer, as in userspace RCU's "memb" flavour: a reader on a stripe it
 * owns updates its counters with plain loads and stores, and ver_synchronize
 * calls membarrier between the flip and the scan. membarrier returns only
 * after every running thread of the process has executed a full barrier
 * (a thread that is not running passed one when it was switched out). For
 * a reader that barrier falls either before its increment, and then its
 * re-read sees the flip and it retries, or after it, and then the scan
 * sees the increment and waits. Without membarrier (or on the shared
 * stripe) readers use sequentially consistent read-modify-writes as before.
 *
 * Versions are reference counted: the domain holds one for the current
 * version, each view one more. The count reaching zero only queues the
 * version on a lock-free stack; ver_reclaim frees the queue after a grace
 * period, because a reader may have loaded the pointer just before.
 */
#include "version.h"

#include <sched.h>
#include <stdlib.h>
#ifdef __linux__
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/*
 * Stripe ownership is process-wide: a thread claims a free stripe index (a
 * bit in stripes_owned) on its first read and gives it back when it exits,
 * so the index is its own in every domain. Pins always use atomic
 * read-modify-writes, so even a reader running after its thread's key
 * destructor stays correct; only a statistic could then be miscounted.
 */
#define SHARED_STRIPE (VER_STRIPES - 1)
_Static_assert(SHARED_STRIPE <= 32, "stripe ownership bitmap is 32 bits");

static atomic_uint_least32_t stripes_owned;
static pthread_key_t stripe_key;
static pthread_once_t stripe_once = PTHREAD_ONCE_INIT;
static int stripe_key_ok;
_Thread_local unsigned ver_my_stripe_plus1 __attribute__((tls_model("initial-exec")));

static void stripe_release(void *idx_plus1)
{
    unsigned idx = (unsigned)(uintptr_t)idx_plus1 - 1;
    /* A read later in this thread's exit (another key's destructor) must
     * not touch the stripe the next thread may claim: from here on this
     * thread uses the shared stripe, whose pins are atomic. */
    ver_my_stripe_plus1 = SHARED_STRIPE + 1;
    atomic_fetch_and(&stripes_owned, ~((uint_least32_t)1 << idx));
}

/* ---- membarrier ---- */

static atomic_int membarrier_wanted = 1;
static pthread_once_t membarrier_once = PTHREAD_ONCE_INIT;
static int membarrier_ok;

static void membarrier_register(void)
{
#if defined(__linux__) && defined(SYS_membarrier)
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED) &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0)
        membarrier_ok = 1;
#endif
}

/* A full barrier on every running thread of the process. */
static void membarrier_all(void)
{
#if defined(__linux__) && defined(SYS_membarrier)
    /* Its failures are an unknown command (ENOSYS, EINVAL) or a process
     * that did not register (EPERM); registration succeeded before any
     * domain turned asym on, so none of them can happen here. */
    (void)syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
#endif
}

void ver_set_membarrier(int enabled)
{
    atomic_store(&membarrier_wanted, enabled != 0);
}

int ver_domain_asymmetric(const ver_domain *d)
{
    return d->asym;
}

static void stripe_key_init(void)
{
    stripe_key_ok = pthread_key_create(&stripe_key, stripe_release) == 0;
}

static unsigned claim_stripe(void)
{
    pthread_once(&stripe_once, stripe_key_init);
    if (!stripe_key_ok)
        return SHARED_STRIPE;
    const uint_least32_t all = SHARED_STRIPE == 32 ? UINT32_MAX : ((uint_least32_t)1 << SHARED_STRIPE) - 1;
    uint_least32_t cur = atomic_load(&stripes_owned);
    while ((cur & all) != all) {
        unsigned idx = (unsigned)__builtin_ctz(~cur);
        if (atomic_compare_exchange_weak(&stripes_owned, &cur, cur | ((uint_least32_t)1 << idx))) {
            if (pthread_setspecific(stripe_key, (void *)(uintptr_t)(idx + 1)) == 0)
                return idx;
            stripe_release((void *)(uintptr_t)(idx + 1));
            return SHARED_STRIPE;
        }
    }
    return SHARED_STRIPE;
}

unsigned ver_claim_stripe(void)
{
    if (ver_my_stripe_plus1 == 0)
        ver_my_stripe_plus1 = claim_stripe() + 1;
    return ver_my_stripe_plus1 - 1;
}

int ver_domain_init(ver_domain *d, ver *initial)
{
    atomic_init(&d->current, initial);
    atomic_init(&d->parity, 0);
    atomic_init(&d->retired, NULL);
    pthread_once(&membarrier_once, membarrier_register);
    d->asym = membarrier_ok && atomic_load(&membarrier_wanted);
    for (unsigned i = 0; i < VER_STRIPES; i++) {
        ver_stripe *s = &d->stripes[i];
        atomic_init(&s->pins[0], 0);
        atomic_init(&s->pins[1], 0);
        atomic_init(&s->buffer_gets, 0);
        atomic_init(&s->scans, 0);
        atomic_init(&s->probed, 0);
        atomic_init(&s->lookups, 0);
        atomic_init(&s->fallbacks, 0);
        s->shared = i == SHARED_STRIPE;
        s->fence_free = d->asym && !s->shared;
    }
    return pthread_mutex_init(&d->sync_lock, NULL) == 0 ? 0 : -1;
}

ver_hold ver_enter_fenced(ver_domain *d, ver_stripe *st)
{
    for (;;) {
        atomic_uint_fast64_t *pin = &st->pins[atomic_load(&d->parity) & 1];
        atomic_fetch_add(pin, 1);
        if (pin == &st->pins[atomic_load(&d->parity) & 1])
            return (ver_hold){st, pin, 1};
        atomic_fetch_sub(pin, 1);
    }
}

void ver_synchronize(ver_domain *d)
{
    pthread_mutex_lock(&d->sync_lock);
    unsigned old = atomic_fetch_add(&d->parity, 1) & 1;
    if (d->asym)
        membarrier_all();
    for (unsigned i = 0; i < VER_STRIPES; i++) {
        while (atomic_load(&d->stripes[i].pins[old]) != 0)
            sched_yield();
    }
    pthread_mutex_unlock(&d->sync_lock);
}

ver_buf *ver_buf_new(buf *b)
{
    ver_buf *vb = malloc(sizeof *vb);
    if (!vb)
        return NULL;
    atomic_init(&vb->refs, 1);
    vb->b = b;
    return vb;
}

void ver_buf_ref(ver_buf *vb)
{
    atomic_fetch_add_explicit(&vb->refs, 1, memory_order_relaxed);
}

void ver_buf_unref(ver_buf *vb)
{
    if (vb && atomic_fetch_sub_explicit(&vb->refs, 1, memory_order_acq_rel) == 1) {
        buf_free(vb->b);
        free(vb);
    }
}

ver *ver_new(ver_buf *active, ver_buf *frozen, run *base, uint64_t active_from)
{
    ver *v = malloc(sizeof *v);
    if (!v)
        return NULL;
    atomic_init(&v->refs, 1);
    v->active = active;
    v->frozen = frozen;
    v->base = base;
    v->active_from = active_from;
    v->retired_next = NULL;
    ver_buf_ref(active);
    if (frozen)
        ver_buf_ref(frozen);
    run_ref(base);
    return v;
}

static void ver_free(ver *v)
{
    ver_buf_unref(v->active);
    ver_buf_unref(v->frozen);
    run_unref(v->base);
    free(v);
}

ver *ver_acquire(ver_domain *d)
{
    for (;;) {
        ver_hold h = ver_enter(d);
        ver *v = ver_current(d);
        uint_fast32_t n = atomic_load(&v->refs);
        /* Increment only if still live: a count of zero means the version
         * is already queued for reclamation; load the newer current. */
        while (n != 0 && !atomic_compare_exchange_weak(&v->refs, &n, n + 1)) {
        }
        ver_leave(h);
        if (n != 0)
            return v;
    }
}

void ver_release(ver_domain *d, ver *v)
{
    if (atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    ver *head = atomic_load(&d->retired);
    do
        v->retired_next = head;
    while (!atomic_compare_exchange_weak(&d->retired, &head, v));
}

void ver_publish(ver_domain *d, ver *v)
{
    ver *old = atomic_exchange(&d->current, v);
    if (old)
        ver_release(d, old);
}

void ver_reclaim(ver_domain *d)
{
    if (atomic_load(&d->retired) == NULL)
        return;
    ver *list = atomic_exchange(&d->retired, NULL);
    ver_synchronize(d);
    while (list) {
        ver *next = list->retired_next;
        ver_free(list);
        list = next;
    }
}

void ver_domain_destroy(ver_domain *d)
{
    ver *cur = atomic_exchange(&d->current, NULL);
    if (cur)
        ver_release(d, cur);
    ver *list = atomic_exchange(&d->retired, NULL);
    while (list) {
        ver *next = list->retired_next;
        ver_free(list);
        list = next;
    }
    pthread_mutex_destroy(&d->sync_lock);
}
