/*
 * The broker log: one line per event, to stderr and/or a file, with a level
 * filter. Thread-safe (adapter and store threads log too). Lines look like
 *   2026-11-25T15:27:02.123Z error [tcp-in] peer 127.0.0.1:5000: frame too large
 */
#ifndef SB_LOG_H
#define SB_LOG_H

#include "service/error.h" /* SB_PRINTF */

typedef enum {
    SB_LOG_DEBUG = 0,
    SB_LOG_INFO = 1,
    SB_LOG_WARN = 2,
    SB_LOG_ERROR = 3,
    SB_LOG_OFF = 4
} sb_log_level;

/* Parses "debug", "info", "warn", "error", "off"; returns -1 if unknown. */
int sb_log_level_parse(const char *s);

/* Configures the log. file may be NULL (no file). Returns 0 or SB_EIO if the
 * file cannot be opened (the previous configuration is then kept). */
int sb_log_configure(sb_log_level level, int to_stderr, const char *file);

/* Closes the log file, if any. */
void sb_log_close(void);

/* Writes one line if level passes the filter. `who` names the adapter, route
 * or module the event concerns (may be NULL). */
void sb_log(sb_log_level level, const char *who, const char *fmt, ...) SB_PRINTF(3, 4);

/* An extra destination for lines at `min_level` or above (the Windows Event
 * Log); called with the level, `who` and the message text (no timestamp),
 * outside the log lock. NULL removes it. */
typedef void (*sb_log_sink)(sb_log_level level, const char *who, const char *text);
void sb_log_set_sink(sb_log_sink sink, sb_log_level min_level);

/* True if a message at `level` would be written (to skip costly formatting). */
int sb_log_enabled(sb_log_level level);

#define sb_debug(who, ...) sb_log(SB_LOG_DEBUG, who, __VA_ARGS__)
#define sb_info(who, ...) sb_log(SB_LOG_INFO, who, __VA_ARGS__)
#define sb_warn(who, ...) sb_log(SB_LOG_WARN, who, __VA_ARGS__)
#define sb_errlog(who, ...) sb_log(SB_LOG_ERROR, who, __VA_ARGS__)

#endif
