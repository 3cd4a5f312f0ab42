/*
 * log.c — levelled logging to stderr, for the server only (the library never
 * prints). The level comes from KYRODB_LOG in the spirit of RUST_LOG:
 * "error", "warn", "info" (default), "debug", "trace" or "off", or a list
 * such as "warn,kyrodb=debug" in which a directive for a target starting
 * with "kyrodb" beats a bare level. Each line is written with one fprintf
 * (stdio locks the stream), so lines from different threads never mix:
 *
 *     2024-05-01T12:00:00.123Z  INFO kyrodb_server: listening on ...
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "server.h"

int log_level = KLOG_INFO;

static const char *const level_names[] = {"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

static int level_from(const char *s, size_t n)
{
    static const struct {
        const char *name;
        int level;
    } names[] = {{"off", KLOG_OFF},     {"error", KLOG_ERROR}, {"warn", KLOG_WARN},
                 {"warning", KLOG_WARN}, {"info", KLOG_INFO},   {"debug", KLOG_DEBUG},
                 {"trace", KLOG_TRACE}};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].name) == n && strncasecmp(names[i].name, s, n) == 0)
            return names[i].level;
    return -1;
}

int log_parse_level(const char *s, int *out)
{
    int bare = -1, targeted = -1;

    while (s != NULL && *s != '\0') {
        const char *comma = strchr(s, ',');
        size_t n = comma ? (size_t)(comma - s) : strlen(s);
        const char *eq = memchr(s, '=', n);

        while (n > 0 && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (eq == NULL) {
            int l = level_from(s, n);
            if (l >= 0)
                bare = l;
        } else if ((size_t)(eq - s) >= 6 && strncasecmp(s, "kyrodb", 6) == 0) {
            int l = level_from(eq + 1, n - (size_t)(eq + 1 - s));
            if (l >= 0)
                targeted = l;
        }
        s = comma ? comma + 1 : NULL;
    }
    if (targeted >= 0)
        *out = targeted;
    else if (bare >= 0)
        *out = bare;
    else
        return -1;
    return 0;
}

void log_msg(int level, const char *fmt, ...)
{
    char msg[1024], stamp[32];
    struct timespec ts;
    struct tm tm;
    va_list ap;

    if (level <= KLOG_OFF || level > KLOG_TRACE)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %5s kyrodb_server: %s\n", stamp, ts.tv_nsec / 1000000,
            level_names[level], msg);
}
