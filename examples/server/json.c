/*
 * json.c — the little JSON the server needs, written out strictly.
 *
 * Input: only the body of POST /v1/put is JSON, and only one shape of it is
 * accepted:
 *
 *     ws { ws "key" ws : ws <uint64> ws , ws "value" ws : ws <string> ws } ws
 *
 * (the two members in either order, member names may use escapes). The
 * grammar is RFC 8259's: a number is parsed in full and then required to be
 * a non-negative integer with no fraction or exponent that fits in 64 bits;
 * a string may not hold a raw control character, every escape must be one of
 * \" \\ \/ \b \f \n \r \t \uXXXX, a \uXXXX high surrogate must be followed by
 * a \uXXXX low surrogate (and a lone low surrogate is an error), and the text
 * must be well-formed UTF-8. Duplicate, missing or extra members, a trailing
 * byte, nesting, null/true/false in place of the two values: all errors.
 *
 * Output: json_escape writes any bytes as the inside of a JSON string. Valid
 * UTF-8 passes through; a byte that does not start a valid sequence becomes
 * U+FFFD (callers that must round-trip binary values say so separately).
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "server.h"

int json_parse_key(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)s[i] - '0';
        if (d > 9)
            return -1;
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Length of the well-formed UTF-8 sequence at p (p < end), or 0. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t avail = (size_t)(end - p);

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return avail >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (avail < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && p[1] < 0xA0) /* overlong */
            return 0;
        if (c == 0xED && p[1] >= 0xA0) /* UTF-16 surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (avail < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
            (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) /* overlong */
            return 0;
        if (c == 0xF4 && p[1] >= 0x90) /* above U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

bool json_utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p, *end = s + n;

    while (s < end) {
        if (*s < 0x80) {
            s++;
            continue;
        }
        size_t k = utf8_seq(s, end);
        if (k == 0)
            return false;
        s += k;
    }
    return true;
}

int json_escape(struct evbuffer *out, const void *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = p, *end = s + n, *run = s;

    while (s < end) {
        unsigned c = *s;
        size_t k = 1;
        char esc[8];
        size_t elen = 0;

        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7F) {
            s++;
            continue;
        }
        if (c >= 0x80) {
            k = utf8_seq(s, end);
            if (k != 0) {
                s += k;
                continue;
            }
        }
        if (s > run && evbuffer_add(out, run, (size_t)(s - run)) != 0)
            return -1;
        switch (c) {
        case '"': memcpy(esc, "\\\"", 2); elen = 2; break;
        case '\\': memcpy(esc, "\\\\", 2); elen = 2; break;
        case '\b': memcpy(esc, "\\b", 2); elen = 2; break;
        case '\f': memcpy(esc, "\\f", 2); elen = 2; break;
        case '\n': memcpy(esc, "\\n", 2); elen = 2; break;
        case '\r': memcpy(esc, "\\r", 2); elen = 2; break;
        case '\t': memcpy(esc, "\\t", 2); elen = 2; break;
        default:
            if (c < 0x80) { /* control character or DEL */
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            } else { /* not valid UTF-8: U+FFFD */
                memcpy(esc, "\xEF\xBF\xBD", 3);
                elen = 3;
            }
        }
        if (evbuffer_add(out, esc, elen) != 0)
            return -1;
        s += 1;
        run = s;
    }
    if (s > run && evbuffer_add(out, run, (size_t)(s - run)) != 0)
        return -1;
    return 0;
}

/* ---- the parser ------------------------------------------------------------ */

typedef struct {
    const unsigned char *p, *end;
    const char *err;
} jp;

static void skip_ws(jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int fail(jp *j, const char *msg)
{
    if (j->err == NULL)
        j->err = msg;
    return -1;
}

static int hex4(jp *j, unsigned *out)
{
    unsigned v = 0;

    if (j->end - j->p < 4)
        return fail(j, "truncated \\u escape");
    for (int i = 0; i < 4; i++) {
        unsigned c = j->p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return fail(j, "bad hex digit in \\u escape");
        v = v << 4 | d;
    }
    j->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Parse a string at j->p (which is at '"') into o (room for at least the
 * remaining input length), setting *olen. The decoded form is never longer
 * than the encoded one. */
static int parse_string(jp *j, unsigned char *o, size_t *olen)
{
    size_t n = 0;

    if (j->p >= j->end || *j->p != '"')
        return fail(j, "expected a string");
    j->p++;
    for (;;) {
        if (j->p >= j->end)
            return fail(j, "unterminated string");
        unsigned c = *j->p;
        if (c == '"') {
            j->p++;
            break;
        }
        if (c < 0x20)
            return fail(j, "raw control character in string");
        if (c >= 0x80) {
            size_t k = utf8_seq(j->p, j->end);
            if (k == 0)
                return fail(j, "invalid UTF-8 in string");
            memcpy(o + n, j->p, k);
            n += k;
            j->p += k;
            continue;
        }
        if (c != '\\') {
            o[n++] = (unsigned char)c;
            j->p++;
            continue;
        }
        j->p++;
        if (j->p >= j->end)
            return fail(j, "unterminated escape");
        c = *j->p++;
        switch (c) {
        case '"': o[n++] = '"'; break;
        case '\\': o[n++] = '\\'; break;
        case '/': o[n++] = '/'; break;
        case 'b': o[n++] = '\b'; break;
        case 'f': o[n++] = '\f'; break;
        case 'n': o[n++] = '\n'; break;
        case 'r': o[n++] = '\r'; break;
        case 't': o[n++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(j, &cp) != 0)
                return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return fail(j, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return fail(j, "high surrogate not followed by a low surrogate");
                j->p += 2;
                if (hex4(j, &lo) != 0)
                    return -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return fail(j, "high surrogate not followed by a low surrogate");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            n += put_utf8(o + n, cp);
            break;
        }
        default:
            return fail(j, "unknown escape in string");
        }
    }
    *olen = n;
    return 0;
}

/* A JSON number that must be an integer in [0, UINT64_MAX]. The full number
 * grammar is consumed first so that "1.5" or "-1" get a precise message. */
static int parse_u64_number(jp *j, uint64_t *out)
{
    bool neg = false, frac = false, exp = false;

    if (j->p < j->end && *j->p == '-') {
        neg = true;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return fail(j, "\"key\" must be an unsigned 64-bit integer");
    if (*j->p == '0' && j->p + 1 < j->end && j->p[1] >= '0' && j->p[1] <= '9')
        return fail(j, "leading zero in number");
    const unsigned char *digits = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
        j->p++;
    const unsigned char *digits_end = j->p;
    if (j->p < j->end && *j->p == '.') {
        frac = true;
        j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return fail(j, "bad number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        exp = true;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (j->p >= j->end || *j->p < '0' || *j->p > '9')
            return fail(j, "bad number");
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (neg || frac || exp)
        return fail(j, "\"key\" must be an unsigned 64-bit integer");
    if (json_parse_key((const char *)digits, (size_t)(digits_end - digits), out) != 0)
        return fail(j, "\"key\" is larger than 18446744073709551615");
    return 0;
}

int json_parse_put(const char *s, size_t n, uint64_t *key, char **val, size_t *vlen,
                   const char **err)
{
    jp j = {(const unsigned char *)s, (const unsigned char *)s + n, NULL};
    /* The value decodes into buf[0..n), member names into buf[n..2n): a
     * decoded string is never longer than its encoding. */
    unsigned char *buf = malloc(n ? 2 * n : 1);
    unsigned char *name;
    bool have_key = false, have_val = false;
    size_t len = 0;

    *val = NULL;
    *vlen = 0;
    if (buf == NULL) {
        *err = "out of memory";
        return -1;
    }
    name = buf + n;
    skip_ws(&j);
    if (j.p >= j.end || *j.p != '{') {
        fail(&j, "body must be a JSON object {\"key\": <u64>, \"value\": \"...\"}");
        goto fail;
    }
    j.p++;
    for (int members = 0;; members++) {
        skip_ws(&j);
        if (members > 0) {
            if (j.p < j.end && *j.p == '}')
                break;
            if (j.p >= j.end || *j.p != ',') {
                fail(&j, "expected ',' or '}' after a member");
                goto fail;
            }
            j.p++;
            skip_ws(&j);
        } else if (j.p < j.end && *j.p == '}') {
            break; /* {} : reported as a missing member below */
        }
        size_t nlen;
        if (parse_string(&j, name, &nlen) != 0)
            goto fail;
        int which = -1;
        if (nlen == 3 && memcmp(name, "key", 3) == 0)
            which = 0;
        else if (nlen == 5 && memcmp(name, "value", 5) == 0)
            which = 1;
        if (which < 0) {
            fail(&j, "unknown member (only \"key\" and \"value\" are allowed)");
            goto fail;
        }
        skip_ws(&j);
        if (j.p >= j.end || *j.p != ':') {
            fail(&j, "expected ':' after a member name");
            goto fail;
        }
        j.p++;
        skip_ws(&j);
        if (which == 0) {
            if (have_key) {
                fail(&j, "duplicate \"key\"");
                goto fail;
            }
            if (parse_u64_number(&j, key) != 0)
                goto fail;
            have_key = true;
        } else {
            if (have_val) {
                fail(&j, "duplicate \"value\"");
                goto fail;
            }
            if (j.p >= j.end || *j.p != '"') {
                fail(&j, "\"value\" must be a string");
                goto fail;
            }
            if (parse_string(&j, buf, &len) != 0)
                goto fail;
            have_val = true;
        }
    }
    j.p++; /* '}' */
    skip_ws(&j);
    if (j.p != j.end) {
        fail(&j, "trailing data after the JSON object");
        goto fail;
    }
    if (!have_key || !have_val) {
        fail(&j, have_key ? "missing \"value\"" : "missing \"key\"");
        goto fail;
    }
    *val = (char *)buf;
    *vlen = len;
    return 0;
fail:
    free(buf);
    *err = j.err ? j.err : "bad JSON";
    return -1;
}
