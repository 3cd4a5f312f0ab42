/* test_version.c — lock-free pinning, grace periods and reclamation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "db.h"
#include "kyro.h"
#include "testutil.h"
#include "version.h"

#ifdef __linux__
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static run *new_run(void)
{
    run *r;
    assert_int_equal(run_new_empty(&r), KV_OK);
    return r;
}

static ver_buf *new_vbuf(void)
{
    buf *b;
    assert_int_equal(buf_new(&b), KV_OK);
    ver_buf *vb = ver_buf_new(b);
    assert_non_null(vb);
    return vb;
}

/* A version built from fresh parts, holding the only references to them. */
static ver *new_version(run **base_out)
{
    ver_buf *a = new_vbuf();
    run *r = new_run();
    ver *v = ver_new(a, NULL, r, 0);
    assert_non_null(v);
    ver_buf_unref(a);
    if (base_out)
        *base_out = r;
    run_unref(r);
    return v;
}

static void test_pin_sees_current(void **state)
{
    (void)state;
    ver_domain d;
    ver *v1 = new_version(NULL);
    assert_int_equal(ver_domain_init(&d, v1), 0);
    ver_hold h = ver_enter(&d);
    assert_ptr_equal(ver_current(&d), v1);
    ver_leave(h);
    ver *v2 = new_version(NULL);
    ver_publish(&d, v2);
    assert_ptr_equal(ver_current(&d), v2);
    ver_reclaim(&d);
    ver_domain_destroy(&d);
}

static void test_view_reference_keeps_version(void **state)
{
    (void)state;
    ver_domain d;
    run *r1;
    ver *v1 = new_version(&r1);
    ver_domain_init(&d, v1);
    ver *held = ver_acquire(&d);
    assert_ptr_equal(held, v1);
    assert_int_equal(atomic_load(&v1->refs), 2);

    run_ref(r1); /* watch r1's count to see when v1 is freed */
    ver_publish(&d, new_version(NULL));
    ver_reclaim(&d);
    assert_int_equal(atomic_load(&r1->refs), 2); /* v1 still alive: the view holds it */
    ver_release(&d, held);
    assert_int_equal(atomic_load(&r1->refs), 2); /* queued, not freed by a reader */
    ver_reclaim(&d);
    assert_int_equal(atomic_load(&r1->refs), 1); /* freed after the grace period */
    run_unref(r1);
    ver_domain_destroy(&d);
}

static void test_shared_parts_survive(void **state)
{
    (void)state;
    ver_domain d;
    run *r;
    ver *v1 = new_version(&r);
    ver_domain_init(&d, v1);
    /* Freeze: the old active buffer becomes the frozen one of v2. */
    ver_buf *a2 = new_vbuf();
    ver *v2 = ver_new(a2, v1->active, v1->base, 0);
    ver_buf_unref(a2);
    ver_buf *frozen = v1->active;
    ver_publish(&d, v2);
    ver_reclaim(&d);
    assert_int_equal(atomic_load(&frozen->refs), 1);
    assert_int_equal(atomic_load(&r->refs), 1);
    assert_int_equal(buf_put(frozen->b, 7, 1, 0, "x", 1), KV_OK);
    const void *val;
    size_t len;
    assert_int_equal(buf_get(v2->frozen->b, 7, 1, &val, &len), BUF_VALUE);
    ver_domain_destroy(&d);
}

typedef struct {
    ver_domain *d;
    atomic_int pinned, release, unpinned;
} hold_ctx;

static void *hold_pin(void *arg)
{
    hold_ctx *c = arg;
    ver_hold h = ver_enter(c->d);
    atomic_store(&c->pinned, 1);
    while (!atomic_load(&c->release)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&c->unpinned, 1);
    ver_leave(h);
    return NULL;
}

static void *release_later(void *arg)
{
    hold_ctx *c = arg;
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    atomic_store(&c->release, 1);
    return NULL;
}

static void test_synchronize_waits_for_pinned_reader(void **state)
{
    (void)state;
    ver_domain d;
    ver_domain_init(&d, new_version(NULL));
    hold_ctx c = {.d = &d};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, hold_pin, &c);
    while (!atomic_load(&c.pinned))
        sched_yield();
    pthread_create(&t2, NULL, release_later, &c);
    ver_synchronize(&d);
    /* The grace period cannot end while the reader is still pinned. */
    assert_int_equal(atomic_load(&c.unpinned), 1);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ver_domain_destroy(&d);
}

/* Readers chase a stream of publishes; every version they can reach must
 * still be intact (ASan/TSan catch a premature free). */
typedef struct {
    ver_domain *d;
    atomic_int stop;
    atomic_long checks;
} stress_ctx;

static void *stress_reader(void *arg)
{
    stress_ctx *c = arg;
    while (!atomic_load(&c->stop)) {
        ver_hold h = ver_enter(c->d);
        ver *v = ver_current(c->d);
        assert_true(v->base->nsegs == 1 && v->active->b != NULL);
        ver_leave(h);
        ver *held = ver_acquire(c->d);
        assert_true(atomic_load(&held->refs) >= 1);
        ver_release(c->d, held);
        atomic_fetch_add(&c->checks, 1);
    }
    return NULL;
}

static void test_concurrent_publish_and_reclaim(void **state)
{
    (void)state;
    ver_domain d;
    ver_domain_init(&d, new_version(NULL));
    stress_ctx c = {.d = &d};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, stress_reader, &c);
    const char *scale = getenv("KYRO_TEST_SCALE");
    int rounds = scale && scale[0] == 's' ? 300 : 3000;
    /* Publishing goes on until the readers have also checked enough
     * versions while it ran: on a loaded machine (or under a sanitizer)
     * the readers may be scheduled only after the rounds are done. Readers
     * that never get there fail the test instead of hanging it. */
    long overlap = 3L * rounds, limit = 1000L * rounds;
    for (long i = 0; i < rounds || (atomic_load(&c.checks) < overlap && i < limit); i++) {
        ver_publish(&d, new_version(NULL));
        if (i % 4 == 0)
            ver_reclaim(&d);
        if (i >= rounds)
            sched_yield();
    }
    atomic_store(&c.stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    ver_reclaim(&d);
    assert_true(atomic_load(&c.checks) >= overlap);
    ver_domain_destroy(&d);
}

/* Nested pins on one thread, and pins from more threads than there are
 * owned stripes (the extra ones share the last stripe, atomically): every
 * grace period still waits for each of them. */
typedef struct {
    ver_domain *d;
    atomic_int go, pinned, release;
} many_ctx;

static void *pin_twice_and_hold(void *arg)
{
    many_ctx *c = arg;
    ver_hold h1 = ver_enter(c->d);
    ver_hold h2 = ver_enter(c->d);
    atomic_fetch_add(&c->pinned, 1);
    while (!atomic_load(&c->release))
        sched_yield();
    ver_leave(h2);
    ver_leave(h1);
    return NULL;
}

typedef struct {
    ver_domain *d;
    atomic_int done;
} sync_ctx;

static void *synchronize_once(void *arg)
{
    sync_ctx *c = arg;
    ver_synchronize(c->d);
    atomic_store(&c->done, 1);
    return NULL;
}

#define MANY_READERS (VER_STRIPES + 8)

static void test_grace_period_waits_for_every_stripe(void **state)
{
    (void)state;
    ver_domain d;
    ver_domain_init(&d, new_version(NULL));
    many_ctx c = {.d = &d};
    pthread_t t[MANY_READERS];
    for (int i = 0; i < MANY_READERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, pin_twice_and_hold, &c), 0);
    while (atomic_load(&c.pinned) < MANY_READERS)
        sched_yield();
    sync_ctx sc = {.d = &d};
    pthread_t st;
    pthread_create(&st, NULL, synchronize_once, &sc);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(atomic_load(&sc.done), 0);
    atomic_store(&c.release, 1);
    for (int i = 0; i < MANY_READERS; i++)
        pthread_join(t[i], NULL);
    pthread_join(st, NULL);
    assert_int_equal(atomic_load(&sc.done), 1);
    for (unsigned i = 0; i < VER_STRIPES; i++) {
        assert_int_equal(atomic_load(&d.stripes[i].pins[0]), 0);
        assert_int_equal(atomic_load(&d.stripes[i].pins[1]), 0);
    }
    ver_domain_destroy(&d);
}

/* Where the kernel offers private expedited membarrier, readers use it. */
static void test_membarrier_used_where_offered(void **state)
{
    (void)state;
    int offered = 0;
#if defined(__linux__) && defined(SYS_membarrier)
    long cmds = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    offered = cmds > 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED);
#endif
    ver_domain d;
    ver_domain_init(&d, new_version(NULL));
    assert_int_equal(ver_domain_asymmetric(&d), offered);
    ver_domain_destroy(&d);
}

/* Each reader's stripe has a cache line of its own in a real handle, or
 * two threads' pins and statistics would bounce one line between them. */
static void test_stripes_own_their_lines(void **state)
{
    (void)state;
    char root[TU_PATH], dir[TU_PATH];
    assert_int_equal(tu_mkdtemp(root, "version"), 0);
    tu_join(dir, root, "db");
    kv_db *db;
    assert_int_equal(kv_open(dir, NULL, &db), KV_OK);
    for (unsigned i = 0; i < VER_STRIPES; i++)
        assert_int_equal((uintptr_t)&db->vd.stripes[i] % 64, 0);
    assert_int_equal(sizeof(ver_stripe), 64);
    assert_int_equal(kv_close(db), KV_OK);
    assert_int_equal(tu_rmrf(root), 0);
}

/* The same tests again with fenced readers (as where membarrier is not
 * available), so both reader paths are exercised on every machine. */
static int use_fences(void **state)
{
    (void)state;
    ver_set_membarrier(0);
    return 0;
}

static void test_fenced_readers_when_asked(void **state)
{
    (void)state;
    ver_domain d;
    ver_domain_init(&d, new_version(NULL));
    assert_int_equal(ver_domain_asymmetric(&d), 0);
    ver_domain_destroy(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_membarrier_used_where_offered),
        cmocka_unit_test(test_pin_sees_current),
        cmocka_unit_test(test_view_reference_keeps_version),
        cmocka_unit_test(test_shared_parts_survive),
        cmocka_unit_test(test_synchronize_waits_for_pinned_reader),
        cmocka_unit_test(test_concurrent_publish_and_reclaim),
        cmocka_unit_test(test_grace_period_waits_for_every_stripe),
        cmocka_unit_test(test_stripes_own_their_lines),
    };
    const struct CMUnitTest fenced[] = {
        cmocka_unit_test(test_fenced_readers_when_asked),
        cmocka_unit_test(test_synchronize_waits_for_pinned_reader),
        cmocka_unit_test(test_concurrent_publish_and_reclaim),
        cmocka_unit_test(test_grace_period_waits_for_every_stripe),
    };
    int failed = cmocka_run_group_tests_name("membarrier readers (where available)", tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("fenced readers", fenced, use_fences, NULL);
    return failed;
}
