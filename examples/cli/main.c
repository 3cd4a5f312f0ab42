/*
 * main.c — kyro, a command-line shell for a KyroDB directory (in the manner
 * of sqlite3 and mdb_stat/mdb_dump).
 *
 *   kyro DIR COMMAND [ARGS...]   run one command and exit
 *   kyro DIR                     read commands from stdin, one per line
 *   kyro --help | help           usage, the dump format and the exit codes
 *
 * One-shot commands open the database as little as they need: get, scan,
 * stats and dump open it KV_READONLY (never changing a file); check reads the
 * files itself (check.c), then opens it KV_READONLY; put
 * and load create it if missing; del, snapshot and compact need it to
 * exist. The shell opens it once for writing, and falls back to read-only
 * when another process holds it (if the library lets readers in then).
 *
 * Output: `get` writes the value's bytes exactly (nothing added, so
 * `kyro DIR get K > f` and `kyro DIR put K - < f` round-trip); in the shell
 * a newline follows. `scan` writes one line per pair, KEY<TAB>VALUE, with the
 * value escaped so each pair stays on one line: printable ASCII as is, \\ for
 * a backslash, \t \n \r, and \xHH for every other byte. Messages go to
 * stderr; exit codes are listed in cli.h and in --help.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#define SHELL_MAX_ARGS 8

/* OPEN_NONE: the command opens what it needs itself (check). */
typedef enum { OPEN_RO, OPEN_RW, OPEN_CREATE, OPEN_NONE } open_mode;

typedef struct cli {
    const char *dir;
    kv_db *db;
    bool shell;
} cli;

typedef struct command {
    const char *name;
    int min_args, max_args; /* not counting the command name */
    open_mode mode;
    const char *args, *help;
    int (*run)(cli *c, int argc, char **argv);
} command;

void cli_err(const char *fmt, ...)
{
    va_list ap;

    fputs("kyro: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The open database, so that an I/O error can name its errno. */
static kv_db *open_handle;

/* err: the errno behind a KV_EIO, 0 if unknown. */
static int lib_error_errno(const char *what, int rc, int err)
{
    if (err != 0)
        cli_err("%s: %s: %s", what, kv_strerror(rc), strerror(err));
    else
        cli_err("%s: %s", what, kv_strerror(rc));
    if (rc == KV_NOTFOUND)
        return EXIT_NOTFOUND;
    if (rc >= 0)
        return EXIT_IO;
    return -rc > 100 ? 103 : 3 - rc;
}

int cli_lib_error(const char *what, int rc)
{
    return lib_error_errno(what, rc, rc == KV_EIO && open_handle ? kv_errno(open_handle) : 0);
}

int cli_parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        unsigned d = (unsigned)((unsigned char)*s - '0');
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static int parse_key(const char *s, uint64_t *key)
{
    if (cli_parse_u64(s, key) != 0) {
        cli_err("bad key '%s': expected a decimal integer from 0 to 18446744073709551615", s);
        return EXIT_USAGE;
    }
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Escape a value for one line of scan output. */
static void put_escaped(FILE *f, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        if (c == '\\')
            fputs("\\\\", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c >= 0x20 && c < 0x7F)
            fputc((int)c, f);
        else
            fprintf(f, "\\x%02x", c);
    }
}

/* ---- commands ------------------------------------------------------------ */

static int cmd_get(cli *c, int argc, char **argv)
{
    uint64_t key;
    void *val;
    size_t len;
    int rc, code;

    (void)argc;
    if ((code = parse_key(argv[1], &key)) != 0)
        return code;
    rc = kv_get_alloc(c->db, key, &val, &len);
    if (rc == KV_NOTFOUND) {
        cli_err("key %" PRIu64 " not found", key);
        return EXIT_NOTFOUND;
    }
    if (rc != KV_OK)
        return cli_lib_error("get", rc);
    code = fwrite(val, 1, len, stdout) == len ? 0 : EXIT_IO;
    if (c->shell && (len == 0 || ((char *)val)[len - 1] != '\n'))
        fputc('\n', stdout);
    kv_free(val);
    if (code != 0)
        cli_err("write failed: %s", strerror(errno));
    return code;
}

/* Read all of stdin (at most KV_MAX_VALUE + 1 bytes, so the library can say
 * the value is too big). */
static int read_stdin(char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);

    if (buf == NULL)
        return cli_lib_error("put", KV_ENOMEM);
    for (;;) {
        if (n == cap) {
            if (cap > KV_MAX_VALUE) {
                cli_err("put: value on stdin is larger than %zu bytes", (size_t)KV_MAX_VALUE);
                free(buf);
                return cli_lib_error("put", KV_ETOOBIG);
            }
            size_t ncap = cap * 2 > KV_MAX_VALUE + 1 ? KV_MAX_VALUE + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                free(buf);
                return cli_lib_error("put", KV_ENOMEM);
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) {
            if (ferror(stdin)) {
                cli_err("put: reading stdin: %s", strerror(errno));
                free(buf);
                return EXIT_IO;
            }
            break;
        }
    }
    *out = buf;
    *len = n;
    return 0;
}

static int cmd_put(cli *c, int argc, char **argv)
{
    uint64_t key;
    char *val = argv[2], *owned = NULL;
    size_t len = strlen(argv[2]);
    int rc, code;

    (void)argc;
    if ((code = parse_key(argv[1], &key)) != 0)
        return code;
    if (strcmp(argv[2], "-") == 0) {
        if (c->shell) {
            cli_err("put KEY - reads stdin, which is the shell's input; give the value instead");
            return EXIT_USAGE;
        }
        if ((code = read_stdin(&owned, &len)) != 0)
            return code;
        val = owned;
    }
    rc = kv_put(c->db, key, val, len);
    free(owned);
    if (rc != KV_OK)
        return cli_lib_error("put", rc);
    return 0;
}

static int cmd_del(cli *c, int argc, char **argv)
{
    uint64_t key;
    size_t len;
    int rc, code;

    (void)argc;
    if ((code = parse_key(argv[1], &key)) != 0)
        return code;
    rc = kv_get(c->db, key, NULL, 0, &len); /* a size query: is it there? */
    if (rc == KV_NOTFOUND) {
        cli_err("key %" PRIu64 " not found", key);
        return EXIT_NOTFOUND;
    }
    if (rc != KV_OK && rc != KV_ERANGE)
        return cli_lib_error("del", rc);
    rc = kv_delete(c->db, key);
    return rc == KV_OK ? 0 : cli_lib_error("del", rc);
}

static int cmd_scan(cli *c, int argc, char **argv)
{
    uint64_t lo, hi, limit = UINT64_MAX, n = 0, key;
    kv_iter *it;
    const void *val;
    size_t len;
    int rc, code;

    if ((code = parse_key(argv[1], &lo)) != 0 || (code = parse_key(argv[2], &hi)) != 0)
        return code;
    if (argc > 3 && cli_parse_u64(argv[3], &limit) != 0) {
        cli_err("bad limit '%s'", argv[3]);
        return EXIT_USAGE;
    }
    rc = kv_iter_open(c->db, lo, hi, &it);
    if (rc != KV_OK)
        return cli_lib_error("scan", rc);
    while (n < limit && (rc = kv_iter_next(it, &key, &val, &len)) == KV_OK) {
        printf("%" PRIu64 "\t", key);
        put_escaped(stdout, val, len);
        putchar('\n');
        n++;
    }
    kv_iter_close(it);
    if (n < limit && rc != KV_NOTFOUND)
        return cli_lib_error("scan", rc);
    return 0;
}

static int cmd_stats(cli *c, int argc, char **argv)
{
    kv_stats s;
    int rc;

    (void)argc;
    (void)argv;
    rc = kv_stats_get(c->db, &s);
    if (rc != KV_OK)
        return cli_lib_error("stats", rc);
    printf("keys:             %" PRIu64 "\n", s.keys);
    printf("pending_writes:   %" PRIu64 "\n", s.pending_writes);
    printf("wal_bytes:        %" PRIu64 "\n", s.wal_bytes);
    printf("snapshot_bytes:   %" PRIu64 "\n", s.snapshot_bytes);
    printf("memory_bytes:     %" PRIu64 "\n", s.memory_bytes);
    printf("gets:             %" PRIu64 "\n", s.gets);
    printf("puts:             %" PRIu64 "\n", s.puts);
    printf("deletes:          %" PRIu64 "\n", s.deletes);
    printf("scans:            %" PRIu64 "\n", s.scans);
    printf("index_models:     %" PRIu64 "\n", s.index_models);
    printf("index_max_error:  %" PRIu64 "\n", s.index_max_error);
    printf("index_avg_probe:  %.3f\n", s.index_avg_probe);
    printf("index_fallbacks:  %" PRIu64 "\n", s.index_fallbacks);
    printf("rebuilds:         %" PRIu64 "\n", s.rebuilds);
    printf("snapshots:        %" PRIu64 "\n", s.snapshots);
    printf("compactions:      %" PRIu64 "\n", s.compactions);
    printf("wal_syncs:        %" PRIu64 "\n", s.wal_syncs);
    printf("last_rebuild_ms:  %.3f\n", (double)s.last_rebuild_ns / 1e6);
    printf("last_snapshot_ms: %.3f\n", (double)s.last_snapshot_ns / 1e6);
    printf("recovery_ms:      %.3f\n", (double)s.recovery_ns / 1e6);
    printf("simd:             %s\n", s.simd ? s.simd : "unknown");
    return 0;
}

/* Every file checked on its own (check.c), so the damaged one is named;
 * then the contents walked through the open handle (the shell's) or a
 * read-only open. */
static int cmd_check(cli *c, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return check_dir(c->dir, c->db);
}

static int cmd_dump(cli *c, int argc, char **argv)
{
    FILE *out = stdout;
    const char *name = "stdout";
    uint64_t n = 0;
    int code;

    if (argc > 1 && strcmp(argv[1], "-") != 0) {
        name = argv[1];
        out = fopen(name, "wb");
        if (out == NULL) {
            cli_err("%s: %s", name, strerror(errno));
            return EXIT_IO;
        }
    }
    code = dump_write(c->db, out, name, &n);
    if (out != stdout && fclose(out) != 0 && code == 0) {
        cli_err("%s: %s", name, strerror(errno));
        code = EXIT_IO;
    }
    if (code == 0 && out != stdout)
        fprintf(stderr, "dumped %" PRIu64 " pairs to %s\n", n, name);
    return code;
}

static int cmd_load(cli *c, int argc, char **argv)
{
    FILE *in = stdin;
    const char *name = "stdin";
    uint64_t n = 0;
    int code;

    if (argc > 1 && strcmp(argv[1], "-") != 0) {
        name = argv[1];
        in = fopen(name, "rb");
        if (in == NULL) {
            cli_err("%s: %s", name, strerror(errno));
            return EXIT_IO;
        }
    } else if (c->shell) {
        cli_err("load in the shell needs a FILE (stdin is the shell's input)");
        return EXIT_USAGE;
    }
    code = dump_load(c->db, in, name, &n);
    if (in != stdin)
        fclose(in);
    if (code == 0)
        fprintf(stderr, "loaded %" PRIu64 " pairs\n", n);
    return code;
}

static int cmd_maint(cli *c, int argc, char **argv)
{
    uint64_t t0 = now_ns();
    kv_stats s;
    int rc;

    (void)argc;
    rc = strcmp(argv[0], "snapshot") == 0 ? kv_snapshot(c->db) : kv_compact(c->db);
    if (rc != KV_OK)
        return cli_lib_error(argv[0], rc);
    if (kv_stats_get(c->db, &s) == KV_OK)
        printf("%s done in %.1f ms: %" PRIu64 " keys, snapshot %" PRIu64 " bytes, wal %" PRIu64
               " bytes\n",
               argv[0], (double)(now_ns() - t0) / 1e6, s.keys, s.snapshot_bytes, s.wal_bytes);
    return 0;
}

static const command commands[] = {
    {"get", 1, 1, OPEN_RO, "KEY", "write the value of KEY to stdout (exact bytes)", cmd_get},
    {"put", 2, 2, OPEN_CREATE, "KEY VALUE|-", "set KEY to VALUE, or to all of stdin with -", cmd_put},
    {"del", 1, 1, OPEN_RW, "KEY", "delete KEY (exit 1 if it was not there)", cmd_del},
    {"scan", 2, 3, OPEN_RO, "LO HI [LIMIT]", "list pairs with LO <= key <= HI, ascending", cmd_scan},
    {"stats", 0, 0, OPEN_RO, "", "print the database statistics", cmd_stats},
    {"check", 0, 0, OPEN_NONE, "", "verify every file, checksum and invariant; name what is damaged",
     cmd_check},
    {"dump", 0, 1, OPEN_RO, "[FILE]", "write every pair in the dump format (default stdout)", cmd_dump},
    {"load", 0, 1, OPEN_CREATE, "[FILE]", "put every pair of a dump (default stdin)", cmd_load},
    {"snapshot", 0, 0, OPEN_RW, "", "write a snapshot and retire the WAL it covers", cmd_maint},
    {"compact", 0, 0, OPEN_RW, "", "drop space held by overwritten and deleted values", cmd_maint},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: kyro DIR COMMAND [ARGS...]\n"
               "       kyro DIR            (shell: read commands from stdin, one per line)\n"
               "       kyro --help | --version\n\n"
               "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-8s %-14s %s\n", commands[i].name, commands[i].args, commands[i].help);
    fprintf(f,
            "\n"
            "KEY, LO, HI: decimal integers from 0 to 18446744073709551615.\n"
            "get writes the value's bytes with nothing added; scan writes KEY<TAB>VALUE lines\n"
            "with the value escaped (\\\\ \\t \\n \\r, \\xHH for non-printable bytes).\n"
            "get, scan, stats and dump open the database read-only. check reads every file\n"
            "itself (MANIFEST; the snapshot's header, sections, key order, value references\n"
            "and learned index; every WAL record and the sequence chain), names each damaged\n"
            "file, then opens read-only and looks every key up again. It exits 0 if nothing\n"
            "is damaged (a torn log tail is only a warning), 7 if a file is damaged.\n"
            "\n"
            "dump format (text, round-trips any bytes):\n"
            "  KYRODUMP 1\n"
            "  KEY<TAB>HEX        one line per pair, ascending; HEX = the value's bytes as\n"
            "                     two hex digits each, empty for an empty value\n"
            "  END COUNT          the number of pair lines\n"
            "load checks a dump file in full before writing; it commits in batches.\n"
            "\n"
            "shell: one command per line, arguments split at spaces, \"double quotes\" with\n"
            "\\\\ \\\" \\n \\t \\xHH escapes, 'single quotes' literal; help, quit.\n"
            "\n"
            "exit codes: 0 ok, 1 not found (key or database), 2 usage, 3 input/output\n"
            "error of the tool itself, 3+n a library error -n: 4 EINVAL, 5 ENOMEM, 6 EIO,\n"
            "7 ECORRUPT, 8 EBUSY, 9 ETOOBIG, 10 ERANGE, 11 EREADONLY, 12 EVERSION.\n");
}

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static int check_args(const command *cmd, int argc)
{
    if (argc - 1 < cmd->min_args || argc - 1 > cmd->max_args) {
        cli_err("usage: %s %s", cmd->name, cmd->args);
        return EXIT_USAGE;
    }
    return 0;
}

static int open_db(cli *c, open_mode mode)
{
    kv_options o;
    int rc;

    kv_options_init(&o);
    o.flags = mode == OPEN_RO ? KV_READONLY : mode == OPEN_CREATE ? KV_CREATE : 0;
    rc = kv_open(c->dir, &o, &c->db);
    int open_errno = errno; /* kv_open's KV_EIO leaves its cause there */
    if (rc == KV_NOTFOUND) {
        cli_err("%s: no database here", c->dir);
        return EXIT_NOTFOUND;
    }
    if (rc != KV_OK) {
        char what[512];
        snprintf(what, sizeof what, "cannot open %s", c->dir);
        return lib_error_errno(what, rc, rc == KV_EIO ? open_errno : 0);
    }
    open_handle = c->db;
    return 0;
}

/* Split a shell line into words. Returns the count, or -1 on bad quoting. */
static int split_words(char *s, char **argv, int max)
{
    int argc = 0;

    for (;;) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (*s == '\0' || *s == '#')
            return argc;
        if (argc == max)
            return -1;
        char *out = s;
        argv[argc++] = out;
        while (*s && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') {
            if (*s == '\'') {
                for (s++; *s && *s != '\''; s++)
                    *out++ = *s;
                if (*s != '\'')
                    return -1;
                s++;
            } else if (*s == '"') {
                for (s++; *s && *s != '"'; s++) {
                    if (*s != '\\') {
                        *out++ = *s;
                        continue;
                    }
                    s++;
                    switch (*s) {
                    case 'n': *out++ = '\n'; break;
                    case 't': *out++ = '\t'; break;
                    case 'r': *out++ = '\r'; break;
                    case '\\': *out++ = '\\'; break;
                    case '"': *out++ = '"'; break;
                    case 'x': {
                        unsigned v;
                        if (sscanf(s + 1, "%2x", &v) != 1 || !s[1] || !s[2])
                            return -1;
                        *out++ = (char)v;
                        s += 2;
                        break;
                    }
                    default: return -1;
                    }
                }
                if (*s != '"')
                    return -1;
                s++;
            } else {
                *out++ = *s++;
            }
        }
        if (*s)
            s++;
        *out = '\0';
    }
}

static int shell(cli *c)
{
    char *line = NULL, *argv[SHELL_MAX_ARGS];
    size_t cap = 0;
    bool tty = isatty(STDIN_FILENO);
    int last = 0, code;

    code = open_db(c, OPEN_CREATE);
    if (code == 8) { /* KV_EBUSY: someone writes; look but do not touch */
        code = open_db(c, OPEN_RO);
        if (code == 0)
            fprintf(stderr, "kyro: %s is in use by another process: opened read-only\n", c->dir);
    }
    if (code != 0)
        return code;
    if (tty)
        printf("kyro %s, database %s. Type help for commands, quit to leave.\n", kv_version(), c->dir);
    for (;;) {
        if (tty) {
            fputs("kyro> ", stdout);
            fflush(stdout);
        }
        if (getline(&line, &cap, stdin) < 0)
            break;
        int argc = split_words(line, argv, SHELL_MAX_ARGS);
        if (argc < 0) {
            cli_err("cannot parse the line (quotes or escapes)");
            last = EXIT_USAGE;
            continue;
        }
        if (argc == 0)
            continue;
        if (strcmp(argv[0], "quit") == 0 || strcmp(argv[0], "exit") == 0 ||
            strcmp(argv[0], ".quit") == 0)
            break;
        if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], ".help") == 0) {
            usage(stdout);
            continue;
        }
        const command *cmd = find_command(argv[0]);
        if (cmd == NULL) {
            cli_err("unknown command '%s' (try help)", argv[0]);
            last = EXIT_USAGE;
            continue;
        }
        code = check_args(cmd, argc);
        if (code == 0)
            code = cmd->run(c, argc, argv);
        fflush(stdout);
        if (code != 0)
            last = code;
    }
    free(line);
    if (tty)
        putchar('\n');
    return last;
}

int main(int argc, char **argv)
{
    cli c = {0};
    const command *cmd;
    int code, rc;

    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("kyro %s (library %s)\n", KYRO_VERSION, kv_version());
        return 0;
    }
    c.dir = argv[1];
    if (argc == 2) {
        c.shell = true;
        code = shell(&c);
    } else {
        cmd = find_command(argv[2]);
        if (cmd == NULL) {
            if (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "help") == 0) {
                usage(stdout);
                return 0;
            }
            cli_err("unknown command '%s' (see kyro --help)", argv[2]);
            return EXIT_USAGE;
        }
        if ((code = check_args(cmd, argc - 2)) != 0)
            return code;
        if (cmd->mode != OPEN_NONE && (code = open_db(&c, cmd->mode)) != 0)
            return code;
        code = cmd->run(&c, argc - 2, argv + 2);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        cli_err("writing stdout: %s", strerror(errno));
        if (code == 0)
            code = EXIT_IO;
    }
    open_handle = NULL; /* kv_close frees it, failing or not */
    rc = kv_close(c.db);
    if (rc != KV_OK && code == 0)
        code = cli_lib_error("close", rc);
    return code;
}
