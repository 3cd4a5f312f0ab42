/* test_version.c — lock-free pinning, grace periods and reclamation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "kyro.h"
#include "version.h"

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
    ver *v = ver_new(a, NULL, r);
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
    unsigned tok = ver_pin(&d);
    assert_ptr_equal(ver_current(&d), v1);
    ver_unpin(&d, tok);
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
    ver *v2 = ver_new(a2, v1->active, v1->base);
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
    unsigned tok = ver_pin(c->d);
    atomic_store(&c->pinned, 1);
    while (!atomic_load(&c->release)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    atomic_store(&c->unpinned, 1);
    ver_unpin(c->d, tok);
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
        unsigned tok = ver_pin(c->d);
        ver *v = ver_current(c->d);
        assert_true(v->base->nsegs == 1 && v->active->b != NULL);
        ver_unpin(c->d, tok);
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
    for (int i = 0; i < rounds; i++) {
        ver_publish(&d, new_version(NULL));
        if (i % 4 == 0)
            ver_reclaim(&d);
    }
    atomic_store(&c.stop, 1);
    for (int i = 0; i < 3; i++)
        pthread_join(t[i], NULL);
    ver_reclaim(&d);
    assert_true(atomic_load(&c.checks) > 0);
    ver_domain_destroy(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pin_sees_current),
        cmocka_unit_test(test_view_reference_keeps_version),
        cmocka_unit_test(test_shared_parts_survive),
        cmocka_unit_test(test_synchronize_waits_for_pinned_reader),
        cmocka_unit_test(test_concurrent_publish_and_reclaim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
