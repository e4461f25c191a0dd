/*
 * The configuration of the WM_COPYDATA adapter (`type: copydata`): its
 * settings struct, filled by the loader from the key table in
 * copydata_keys.c (portable, so check-config checks it everywhere), and
 * read by the implementation (win/copydata.c).
 */
#ifndef SB_COPYDATA_KEYS_H
#define SB_COPYDATA_KEYS_H

#include "config/adapter_keys.h"

#include <stddef.h>
#include <stdint.h>

typedef enum { SB_COPYDATA_IN = 0, SB_COPYDATA_OUT } sb_copydata_direction;

/* What lpData holds, both ways. */
typedef enum {
    SB_COPYDATA_BYTES = 0, /* the payload as it is */
    SB_COPYDATA_UTF8,      /* UTF-8 text ending at a NUL (checked in, NUL added out) */
    SB_COPYDATA_ANSI,      /* text in `codepage`, to and from UTF-8, ending at a NUL */
    SB_COPYDATA_UTF16      /* UTF-16LE text, to and from UTF-8, ending at a NUL */
} sb_copydata_encoding;

#define SB_COPYDATA_DEFAULT_CLASS "SwitchboardCopyData"
#define SB_COPYDATA_DEFAULT_TOPIC "{adapter}/{data}"

typedef struct sb_copydata_settings {
    int direction; /* direction: in (default): a window that receives; out: a sink that sends */
    /* class / title: in: the broker's window (class default
     * SwitchboardCopyData, title default the adapter's name); out: the
     * window sent to (at least one of them) */
    char *window_class;
    char *title;
    char *topic;     /* in: template of {adapter} {data}, default {adapter}/{data};
                        out: maps a delivery's topic back to its dwData */
    char **data_map; /* "NUMBER=topic" (decimal or 0x hex): dwData <-> topic */
    size_t data_map_count;
    int strict;                /* in: refuse a dwData that data_map does not name, default false */
    char *dwdata;              /* out: the dwData of deliveries no header or map names, default 0 */
    int64_t send_timeout_ms;   /* out: SendMessageTimeout's timeout, default 5s */
    int allow_lower_integrity; /* in: let lower-integrity senders through UIPI, default false */
    int encoding;              /* encoding: bytes (default) | utf-8 | ansi | utf-16 */
    int codepage;              /* ansi: the code page, default 0 (the system ANSI code page) */
    int64_t max_message;       /* bytes, default 1MiB */
    int64_t reconnect_backoff_ms;     /* out: waiting for the window, default 500ms ... */
    int64_t reconnect_max_backoff_ms; /* ... doubling up to 30s */
} sb_copydata_settings;

extern const sb_adapter_keys sb_copydata_keys;

/* Parses data_map entry `s` ("NUMBER=topic", blanks around '=' allowed)
 * into *data and a new string *topic (sb_free it). Returns 0, SB_EINVAL
 * (why says what is wrong) or SB_ENOMEM. */
int sb_copydata_map_entry(uint64_t *data, char **topic, const char *s, const char **why);

#endif
