/* The broker log (see log.h). A mutex serialises lines from all threads. */
#include "service/log.h"
#include "service/error.h"
#include "service/platform.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <uv.h>

static uv_once_t log_once = UV_ONCE_INIT;
static uv_mutex_t log_mutex;
static sb_log_level log_level = SB_LOG_INFO;
static int log_to_stderr = 1;
static FILE *log_file;
static sb_log_sink log_sink;
static sb_log_level log_sink_level = SB_LOG_WARN;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

static void log_init(void)
{
    uv_mutex_init(&log_mutex);
}

int sb_log_level_parse(const char *s)
{
    for (int i = 0; i <= SB_LOG_OFF; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return SB_LOG_WARN;
    return -1;
}

/* Opens the log file for appending, creating its directory if missing (as
 * the data directory is). On failure NULL, and why (size n) says why. */
static FILE *open_log_file(const char *file, char *why, size_t n)
{
    FILE *f = sb_platform_fopen(file, "a");
    const char *slash = NULL;
    char dir[1024];
    sb_error err;

    if (f == NULL && errno == ENOENT) {
        for (const char *p = file; *p != '\0'; p++)
            if (*p == '/' || *p == '\\')
                slash = p;
        if (slash != NULL && slash != file && (size_t)(slash - file) < sizeof dir) {
            memcpy(dir, file, (size_t)(slash - file));
            dir[slash - file] = '\0';
            if (sb_platform_mkdir_p(dir, &err) != 0) {
                snprintf(why, n, "%s", err.msg);
                return NULL;
            }
            f = sb_platform_fopen(file, "a");
        }
    }
    if (f == NULL)
        snprintf(why, n, "%s", strerror(errno));
    return f;
}

int sb_log_configure(sb_log_level level, int to_stderr, const char *file)
{
    FILE *f = NULL;
    uv_once(&log_once, log_init);
    if (file != NULL && file[0] != '\0') {
        char why[300];
        f = open_log_file(file, why, sizeof why);
        if (f == NULL) {
            sb_log(SB_LOG_ERROR, "log", "cannot open the log file %s (broker.log.file): %s", file,
                   why);
            return SB_EIO;
        }
    }
    uv_mutex_lock(&log_mutex);
    if (log_file != NULL)
        fclose(log_file);
    log_file = f;
    log_level = level;
    log_to_stderr = to_stderr;
    uv_mutex_unlock(&log_mutex);
    return 0;
}

void sb_log_close(void)
{
    uv_once(&log_once, log_init);
    uv_mutex_lock(&log_mutex);
    if (log_file != NULL)
        fclose(log_file);
    log_file = NULL;
    uv_mutex_unlock(&log_mutex);
}

void sb_log_set_sink(sb_log_sink sink, sb_log_level min_level)
{
    uv_once(&log_once, log_init);
    uv_mutex_lock(&log_mutex);
    log_sink = sink;
    log_sink_level = min_level;
    uv_mutex_unlock(&log_mutex);
}

int sb_log_enabled(sb_log_level level)
{
    return level >= log_level && level < SB_LOG_OFF;
}

void sb_log(sb_log_level level, const char *who, const char *fmt, ...)
{
    char line[2048];
    char stamp[32];
    uv_timeval64_t tv;
    struct tm tm;
    time_t secs;
    size_t n;
    va_list ap;
    sb_log_sink sink;

    if (!sb_log_enabled(level))
        return;
    uv_once(&log_once, log_init);
    uv_gettimeofday(&tv);
    secs = (time_t)tv.tv_sec;
    sb_platform_gmtime(secs, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    n = (size_t)snprintf(line, sizeof(line), "%s.%03dZ %s [%s] ", stamp, (int)(tv.tv_usec / 1000),
                         level_names[level], who != NULL ? who : "broker");
    if (n < sizeof(line)) {
        va_start(ap, fmt);
        vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        va_end(ap);
    }
    uv_mutex_lock(&log_mutex);
    if (log_to_stderr) {
        fputs(line, stderr);
        fputc('\n', stderr);
    }
    if (log_file != NULL) {
        fputs(line, log_file);
        fputc('\n', log_file);
        fflush(log_file);
    }
    sink = level >= log_sink_level ? log_sink : NULL;
    uv_mutex_unlock(&log_mutex);
    if (sink != NULL)
        sink(level, who != NULL ? who : "broker", line + n);
}
