/* The raw protocol's framings and helpers shared by the transports. */
#ifndef SB_RAW_H
#define SB_RAW_H

#include "adapters/conn.h"

enum { SB_FRAMING_LINE = 0, SB_FRAMING_LENGTH, SB_FRAMING_DATAGRAM, SB_FRAMING_MESSAGE };

/* Framing by config name (NULL: the transport's default); -1 if unknown. */
int sb_raw_framing_parse(const char *name, int is_datagram);

/* Expands a topic template ({adapter}, {peer}); '/', '+', '#' inside a
 * substituted value become '_'. Returns a new string or NULL. */
char *sb_raw_topic(const char *tmpl, const char *adapter, const char *peer);

/* Writes one delivery as a frame on a raw connection (acked when written).
 * Returns 0, SB_EINVAL (a payload with a newline under line framing),
 * SB_ECLOSED or SB_ENOMEM. */
int sb_raw_deliver(sb_conn *c, sb_delivery *d);

#endif
