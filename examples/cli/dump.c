/*
 * dump.c — the kyro dump format: plain text, one pair per line, any bytes.
 *
 *     KYRODUMP 1\n
 *     <key>\t<value-hex>\n        one line per pair
 *     ...
 *     END <count>\n
 *
 * <key> is the key in decimal (0 to 18446744073709551615, no sign, no
 * padding); <value-hex> is the value's bytes as two hex digits each
 * (written lowercase, read in either case), empty for a 0-byte value.
 * `kyro dump` writes the pairs in ascending key order from one consistent
 * view of the database. The END line carries the number of pair lines, so a
 * truncated dump is detected. A reader must refuse: a missing or different
 * header (the 1 is the format version), a line without exactly one TAB, a
 * bad key, an odd number of hex digits or a non-hex character, a value over
 * KV_MAX_VALUE, anything after the END line, a count that does not match.
 * A '\r' before a '\n' is tolerated on input. Keys may come in any order on
 * load; a later line for the same key wins.
 *
 * Loading puts pairs into the database in batches of BATCH_PAIRS pairs (or
 * BATCH_BYTES of values), each batch atomic. When the input is a regular
 * file the whole file is checked first, so a malformed file loads nothing;
 * from a pipe the pairs before the first bad line stay loaded.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define DUMP_HEADER "KYRODUMP 1"
#define BATCH_PAIRS 4096
#define BATCH_BYTES ((size_t)32 << 20)

static const char hexdig[] = "0123456789abcdef";

int dump_write(kv_db *db, FILE *out, const char *out_name, uint64_t *count)
{
    kv_iter *it = NULL;
    uint64_t key, n = 0;
    const void *val;
    size_t len;
    char *line = NULL;
    size_t cap = 0;
    int rc, code = 0;

    rc = kv_iter_open(db, 0, UINT64_MAX, &it);
    if (rc != KV_OK)
        return cli_lib_error("dump", rc);
    if (fprintf(out, "%s\n", DUMP_HEADER) < 0)
        goto io_fail;
    while ((rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        size_t need = 2 * len + 24;
        if (need > cap) {
            char *nl = realloc(line, need);
            if (nl == NULL) {
                code = cli_lib_error("dump", KV_ENOMEM);
                goto out;
            }
            line = nl;
            cap = need;
        }
        int k = snprintf(line, cap, "%" PRIu64 "\t", key);
        size_t pos = (size_t)k;
        const unsigned char *p = val;
        for (size_t i = 0; i < len; i++) {
            line[pos++] = hexdig[p[i] >> 4];
            line[pos++] = hexdig[p[i] & 15];
        }
        line[pos++] = '\n';
        if (fwrite(line, 1, pos, out) != pos)
            goto io_fail;
        n++;
    }
    if (rc != KV_NOTFOUND) {
        code = cli_lib_error("dump", rc);
        goto out;
    }
    if (fprintf(out, "END %" PRIu64 "\n", n) < 0 || fflush(out) != 0)
        goto io_fail;
    *count = n;
    goto out;
io_fail:
    cli_err("%s: write failed: %s", out_name, strerror(errno));
    code = EXIT_IO;
out:
    kv_iter_close(it);
    free(line);
    return code;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* One pass over the dump; db NULL checks only. */
static int load_pass(kv_db *db, FILE *in, const char *name, uint64_t *count)
{
    char *line = NULL;
    size_t cap = 0, batch_bytes = 0;
    ssize_t got;
    uint64_t lineno = 0, n = 0;
    unsigned char *val = NULL;
    size_t valcap = 0;
    kv_batch *b = NULL;
    bool ended = false;
    int rc, code = 0;

    if (db != NULL && (rc = kv_batch_new(&b)) != KV_OK)
        return cli_lib_error("load", rc);
    while ((got = getline(&line, &cap, in)) >= 0) {
        size_t len = (size_t)got;
        lineno++;
        if (len == 0 || line[len - 1] != '\n') {
            cli_err("%s:%" PRIu64 ": line not terminated by a newline (truncated dump?)", name, lineno);
            code = EXIT_IO;
            goto out;
        }
        line[--len] = '\0';
        if (len > 0 && line[len - 1] == '\r')
            line[--len] = '\0';
        if (lineno == 1) {
            if (strcmp(line, DUMP_HEADER) != 0) {
                cli_err("%s: not a kyro dump (the first line must be '%s')", name, DUMP_HEADER);
                code = EXIT_IO;
                goto out;
            }
            continue;
        }
        if (ended) {
            cli_err("%s:%" PRIu64 ": data after the END line", name, lineno);
            code = EXIT_IO;
            goto out;
        }
        if (strncmp(line, "END ", 4) == 0) {
            uint64_t declared;
            if (cli_parse_u64(line + 4, &declared) != 0 || declared != n) {
                cli_err("%s:%" PRIu64 ": END line says '%s' but %" PRIu64 " pairs were read", name,
                        lineno, line + 4, n);
                code = EXIT_IO;
                goto out;
            }
            ended = true;
            continue;
        }
        char *tab = strchr(line, '\t');
        uint64_t key;
        if (tab == NULL || strchr(tab + 1, '\t') != NULL) {
            cli_err("%s:%" PRIu64 ": expected KEY<TAB>HEX", name, lineno);
            code = EXIT_IO;
            goto out;
        }
        *tab = '\0';
        if (cli_parse_u64(line, &key) != 0) {
            cli_err("%s:%" PRIu64 ": bad key '%.40s'", name, lineno, line);
            code = EXIT_IO;
            goto out;
        }
        const char *hex = tab + 1;
        size_t hl = len - (size_t)(hex - line);
        if (hl % 2 != 0 || hl / 2 > KV_MAX_VALUE) {
            cli_err("%s:%" PRIu64 ": %s", name, lineno,
                    hl % 2 ? "odd number of hex digits" : "value larger than KV_MAX_VALUE");
            code = EXIT_IO;
            goto out;
        }
        if (hl / 2 > valcap) {
            unsigned char *nv = realloc(val, hl / 2);
            if (nv == NULL) {
                code = cli_lib_error("load", KV_ENOMEM);
                goto out;
            }
            val = nv;
            valcap = hl / 2;
        }
        for (size_t i = 0; i < hl / 2; i++) {
            int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
            if (hi < 0 || lo < 0) {
                cli_err("%s:%" PRIu64 ": bad hex digit", name, lineno);
                code = EXIT_IO;
                goto out;
            }
            val[i] = (unsigned char)(hi << 4 | lo);
        }
        n++;
        if (db == NULL)
            continue;
        if ((rc = kv_batch_put(b, key, val, hl / 2)) != KV_OK) {
            code = cli_lib_error("load", rc);
            goto out;
        }
        batch_bytes += hl / 2;
        if (n % BATCH_PAIRS == 0 || batch_bytes >= BATCH_BYTES) {
            if ((rc = kv_batch_commit(db, b)) != KV_OK) {
                code = cli_lib_error("load", rc);
                goto out;
            }
            kv_batch_clear(b);
            batch_bytes = 0;
        }
    }
    if (ferror(in)) {
        cli_err("%s: read failed: %s", name, strerror(errno));
        code = EXIT_IO;
        goto out;
    }
    if (lineno == 0) {
        cli_err("%s: empty input, not a kyro dump", name);
        code = EXIT_IO;
        goto out;
    }
    if (!ended) {
        cli_err("%s: no END line (truncated dump?)", name);
        code = EXIT_IO;
        goto out;
    }
    if (db != NULL && (rc = kv_batch_commit(db, b)) != KV_OK) {
        code = cli_lib_error("load", rc);
        goto out;
    }
    *count = n;
out:
    kv_batch_free(b);
    free(line);
    free(val);
    return code;
}

int dump_load(kv_db *db, FILE *in, const char *in_name, uint64_t *count)
{
    long start = ftell(in);
    int code;

    /* A seekable input is checked in full before anything is written. */
    if (db != NULL && start >= 0 && fseek(in, start, SEEK_SET) == 0) {
        code = load_pass(NULL, in, in_name, count);
        if (code != 0)
            return code;
        if (fseek(in, start, SEEK_SET) != 0) {
            cli_err("%s: cannot rewind: %s", in_name, strerror(errno));
            return EXIT_IO;
        }
    }
    return load_pass(db, in, in_name, count);
}
