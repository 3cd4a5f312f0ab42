/*
 * fuzz_json.c — the example server's JSON code (examples/server/json.c)
 * against references written here, on any bytes.
 *
 * The whole input is offered to each function in turn:
 *   - json_parse_key must accept exactly the ASCII digit strings whose value
 *     fits in 64 bits, and give that value;
 *   - json_utf8_valid must agree with a decoder by code point (overlongs,
 *     surrogates and anything above U+10FFFF rejected);
 *   - json_parse_put, as a POST /v1/put body: when it accepts, the body and
 *     the decoded value are valid UTF-8, and the pair written back out with
 *     json_escape (members in both orders, with and without whitespace)
 *     parses to the same key and the same value bytes;
 *   - json_escape of the input as a value: the output is valid UTF-8 with no
 *     raw control character, and parses back to the input itself when that
 *     is valid UTF-8, else to the input with every byte that starts no valid
 *     sequence replaced by U+FFFD.
 * Any mismatch aborts.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "server.h"

#define FUZZ_NAME "fuzz_json"
#include "fuzz.h"

/* ---- references --------------------------------------------------------- */

/* Whether s[0..n) is a key: digits only, at most UINT64_MAX once leading
 * zeros are dropped (compared as decimal strings, not by arithmetic). */
static bool ref_key(const uint8_t *s, size_t n, uint64_t *out)
{
    static const char max[] = "18446744073709551615";
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    size_t z = 0;
    while (z + 1 < n && s[z] == '0')
        z++;
    size_t len = n - z;
    if (len > sizeof max - 1 || (len == sizeof max - 1 && memcmp(s + z, max, len) > 0))
        return false;
    uint64_t v = 0;
    for (size_t i = z; i < n; i++)
        v = v * 10 + (uint64_t)(s[i] - '0');
    *out = v;
    return true;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0: decode the code
 * point, then require the shortest form and a scalar value. */
static size_t ref_seq(const uint8_t *s, size_t n)
{
    size_t k;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xE0) == 0xC0) {
        k = 2;
        cp = s[0] & 0x1F;
    } else if ((s[0] & 0xF0) == 0xE0) {
        k = 3;
        cp = s[0] & 0x0F;
    } else if ((s[0] & 0xF8) == 0xF0) {
        k = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3F);
    }
    static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}

static bool ref_utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t k = ref_seq(s + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* s with every byte that starts no valid sequence replaced by U+FFFD, into
 * out (room for 3 * n bytes); returns its length. */
static size_t ref_replace(const uint8_t *s, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = ref_seq(s + i, n - i);
        if (k == 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        }
    }
    return o;
}

/* ---- helpers ------------------------------------------------------------ */

/* A POST /v1/put body for (key, value), the value escaped by json_escape. */
static struct evbuffer *put_body(uint64_t key, const void *val, size_t vlen, int value_first,
                                 int spaced)
{
    struct evbuffer *b = evbuffer_new();
    CHECK(b, "evbuffer_new failed");
    const char *ws = spaced ? " \t\r\n" : "";
    char k[48];
    snprintf(k, sizeof k, "%s\"key\"%s:%s%" PRIu64, ws, ws, ws, key);
    evbuffer_add_printf(b, "%s{", ws);
    if (!value_first)
        evbuffer_add_printf(b, "%s%s,", k, ws);
    evbuffer_add_printf(b, "%s\"value\"%s:%s\"", ws, ws, ws);
    CHECK(json_escape(b, val, vlen) == 0, "json_escape failed");
    evbuffer_add_printf(b, "\"%s", ws);
    if (value_first)
        evbuffer_add_printf(b, ",%s%s", k, ws);
    evbuffer_add_printf(b, "}%s", ws);
    return b;
}

static const char *contiguous(struct evbuffer *b, size_t *n)
{
    *n = evbuffer_get_length(b);
    const char *p = (const char *)evbuffer_pullup(b, -1);
    CHECK(p || *n == 0, "evbuffer_pullup failed");
    return p ? p : "";
}

/* Parse body, which must succeed, and check it gives (key, want). */
static void parse_back(const char *body, size_t n, uint64_t key, const void *want, size_t wlen)
{
    uint64_t k = 0;
    char *v = NULL;
    size_t vl = 0;
    const char *err = NULL;
    int rc = json_parse_put(body, n, &k, &v, &vl, &err);
    CHECK(rc == 0, "a body json_escape wrote did not parse: %s", err ? err : "?");
    CHECK(k == key, "key %" PRIu64 " came back as %" PRIu64, key, k);
    CHECK(vl == wlen && (wlen == 0 || memcmp(v, want, wlen) == 0),
          "value of %zu bytes came back as %zu different ones", wlen, vl);
    free(v);
}

/* ---- the properties ----------------------------------------------------- */

static void check_key(const uint8_t *d, size_t n)
{
    uint64_t want = 0, got = 0;
    bool ok = ref_key(d, n, &want);
    int rc = json_parse_key((const char *)d, n, &got);
    CHECK((rc == 0) == ok, "json_parse_key on %zu bytes: rc %d, reference %d", n, rc, ok);
    CHECK(!ok || got == want, "json_parse_key: %" PRIu64 ", want %" PRIu64, got, want);
}

static void check_utf8(const uint8_t *d, size_t n)
{
    bool got = json_utf8_valid(d, n), want = ref_utf8_valid(d, n);
    CHECK(got == want, "json_utf8_valid on %zu bytes: %d, reference %d", n, got, want);
}

static void check_put(const uint8_t *d, size_t n)
{
    uint64_t key = 0;
    char *val = NULL;
    size_t vlen = 0;
    const char *err = NULL;
    if (json_parse_put((const char *)d, n, &key, &val, &vlen, &err) != 0) {
        CHECK(err != NULL, "json_parse_put failed without a message");
        CHECK(val == NULL, "json_parse_put failed but left a value");
        return;
    }
    CHECK(ref_utf8_valid(d, n), "json_parse_put accepted a body that is not UTF-8");
    CHECK(ref_utf8_valid((const uint8_t *)val, vlen), "json_parse_put decoded to invalid UTF-8");
    for (int order = 0; order < 2; order++) {
        for (int spaced = 0; spaced < 2; spaced++) {
            struct evbuffer *b = put_body(key, val, vlen, order, spaced);
            size_t bn;
            const char *body = contiguous(b, &bn);
            parse_back(body, bn, key, val, vlen);
            evbuffer_free(b);
        }
    }
    free(val);
}

static void check_escape(const uint8_t *d, size_t n)
{
    struct evbuffer *e = evbuffer_new();
    CHECK(e, "evbuffer_new failed");
    CHECK(json_escape(e, d, n) == 0, "json_escape failed");
    size_t en;
    const uint8_t *esc = (const uint8_t *)contiguous(e, &en);
    CHECK(ref_utf8_valid(esc, en), "json_escape wrote invalid UTF-8");
    for (size_t i = 0; i < en; i++)
        CHECK(esc[i] >= 0x20 && esc[i] != 0x7F, "json_escape left control byte %#x", esc[i]);
    evbuffer_free(e);

    bool valid = ref_utf8_valid(d, n);
    uint8_t *want = malloc(3 * n + 1);
    CHECK(want, "out of memory");
    size_t wlen = ref_replace(d, n, want);
    CHECK(!valid || (wlen == n && memcmp(want, d, n) == 0), "replacement changed valid text");
    struct evbuffer *b = put_body(UINT64_MAX, d, n, 0, 0);
    size_t bn;
    const char *body = contiguous(b, &bn);
    parse_back(body, bn, UINT64_MAX, want, wlen);
    evbuffer_free(b);
    free(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_key(data, size);
    check_utf8(data, size);
    check_put(data, size);
    check_escape(data, size);
    return 0;
}
