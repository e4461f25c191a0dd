/*
 * The settings of type dde: a DDEML server (Excel's =SERVICE|topic!item
 * links and legacy clients talk to the broker) or a client of a legacy DDE
 * server. Topic and item names map into `topic` levels (dde_map.h).
 */
#ifndef SB_DDE_KEYS_H
#define SB_DDE_KEYS_H

#include "config/adapter_keys.h"

typedef enum { SB_DDE_SERVER = 0, SB_DDE_CLIENT } sb_dde_role;

#define SB_DDE_DEFAULT_TOPIC "{service}/{dde_topic}/{item}"

typedef struct sb_dde_settings {
    char *protocol;  /* raw only (the key is refused otherwise) */
    char *framing;   /* refused: a DDE transaction is one message */
    char *topic;     /* template: {adapter} {service} {dde_topic} {item},
                        default SB_DDE_DEFAULT_TOPIC */
    int64_t max_message;              /* bytes, default 1048576 */
    int64_t reconnect_backoff_ms;     /* client: default 500ms */
    int64_t reconnect_max_backoff_ms; /* client: default 30s */
    int dde_role;                     /* sb_dde_role: role: server (default) | client */
    char *dde_service;                /* service: the DDE service name, default SWITCHBOARD */
    char **dde_topics;                /* dde_topics (server): topics served; none or "*": any */
    size_t dde_topics_count;
    char *dde_topic;  /* dde_topic (client, required): the server's topic */
    char **dde_items; /* items: client: hot-linked; server: the only items served (none: any) */
    size_t dde_items_count;
    char *dde_execute_topic; /* execute_topic: server: XTYP_EXECUTE commands are published
                                here; client: deliveries on it are EXECUTEd, not POKEd */
    int dde_codepage;        /* codepage: of CF_TEXT, 0 (default): the system ANSI code page */
} sb_dde_settings;

#define SB_DDE_CFG(cfg) ((const sb_dde_settings *)(cfg)->settings)

#endif
