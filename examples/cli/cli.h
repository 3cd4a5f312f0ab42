/*
 * cli.h — what the files of the kyro command-line tool share.
 *
 *   main.c   arguments, the command table, the interactive shell, exit codes
 *   dump.c   the dump/load text format (described at the top of dump.c)
 *   check.c  `check`: every file of the directory verified on its own
 *
 * Exit codes (also in `kyro --help`):
 *   0  success
 *   1  not found: the key, or no database in DIR
 *   2  usage error
 *   3  the tool's own I/O or input error (a file it cannot open or write,
 *      a malformed dump)
 *   3 + n  the library returned -n: 4 KV_EINVAL, 5 KV_ENOMEM, 6 KV_EIO,
 *      7 KV_ECORRUPT, 8 KV_EBUSY, 9 KV_ETOOBIG, 10 KV_ERANGE,
 *      11 KV_EREADONLY, 12 KV_EVERSION
 */
#ifndef KYRO_CLI_H
#define KYRO_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "kyro.h"

enum { EXIT_NOTFOUND = 1, EXIT_USAGE = 2, EXIT_IO = 3 };

/* The exit code for a library status (KV_NOTFOUND -> 1, -n -> 3 + n), after
 * printing "kyro: WHAT: <kv_strerror>" to stderr (for KV_EIO on the open
 * database, followed by ": <strerror(kv_errno)>"). */
int cli_lib_error(const char *what, int rc);
/* Print "kyro: ..." to stderr. */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Strict decimal u64 (digits only, no sign, no junk, no overflow). */
int cli_parse_u64(const char *s, uint64_t *out);

/* Write every pair of db to out in the dump format; *count gets the number
 * of pairs. Returns an exit code (0 on success). */
int dump_write(kv_db *db, FILE *out, const char *out_name, uint64_t *count);
/* Read a dump from in and put every pair into db (db NULL: only check the
 * text). Pairs are committed in batches; *count gets the number of pairs.
 * Returns an exit code (0 on success). */
int dump_load(kv_db *db, FILE *in, const char *in_name, uint64_t *count);

/* `kyro DIR check` (check.c): verify every file of the database in dir and
 * report each damaged one; then, if they all pass, walk the contents through
 * db (or a read-only open of dir when db is NULL). Changes no file. Returns
 * an exit code: 0 nothing damaged (warnings such as a torn log tail
 * allowed), 7 a file is damaged, 12 an unknown format version, 1 no
 * database. */
int check_dir(const char *dir, kv_db *db);

#endif /* KYRO_CLI_H */
