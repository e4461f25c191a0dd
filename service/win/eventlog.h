/*
 * The Windows Event Log (source "Switchboard" in the Application log): the
 * service's lifecycle and every warning and error of the broker log.
 */
#ifndef SB_WIN_EVENTLOG_H
#define SB_WIN_EVENTLOG_H

#include "service/log.h"

/* Registers the event source (HKLM, needs administrator rights), pointing
 * at this executable's message table. Returns 0 or -1. */
int sb_eventlog_register(void);
void sb_eventlog_unregister(void);

/* Opens the source for writing (call once before sb_eventlog_write). */
void sb_eventlog_open(void);

/* A log sink (sb_log_set_sink): writes one event. */
void sb_eventlog_write(sb_log_level level, const char *who, const char *text);

#endif
