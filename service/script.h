/*
 * Lua route scripts: the sandbox a transform's `lua` step runs in (README
 * "Transforms", "Lua scripts").
 *
 * A script is a Lua 5.4 chunk that defines a global function
 * `transform(msg)`. It gets the message as a table {topic, payload,
 * headers, ts} and returns what the destination gets: nil (nothing), a
 * string (the payload, the rest unchanged), a message table (fields it
 * leaves out are the input's), or a list of them (several messages).
 *
 * Each script has a Lua state of its own with only the base (without
 * dofile, loadfile, load, collectgarbage and print), string (without
 * dump), table, math and utf8 libraries: no io, os, package/require or
 * debug. A call may run `budget` VM instructions (a count hook) and the
 * state may hold `memory` bytes (its own allocator); either overrun, or
 * an error, fails that message with the script's file and line. A state
 * is used by one thread at a time (the loop's).
 */
#ifndef SB_SCRIPT_H
#define SB_SCRIPT_H

#include "service/message.h"

#include <stddef.h>
#include <stdint.h>

/* Defaults of a `lua` step's budget and memory (README). */
#define SB_SCRIPT_BUDGET 100000
#define SB_SCRIPT_MEMORY (8 * 1024 * 1024)
/* Messages one call may return at most. */
#define SB_SCRIPT_MAX_OUTPUTS 1000

typedef struct sb_script sb_script;

/* One message in or out of a script: topic, payload and headers, owned
 * by whoever holds the struct (sb_script_msg_release frees them). */
typedef struct sb_script_msg {
    char *topic;
    unsigned char *payload;
    size_t len;
    sb_header *h;
    size_t nh;
} sb_script_msg;

void sb_script_msg_release(sb_script_msg *m);

/* Compiles and runs the chunk src[0..len) named `name` (its file, in
 * error messages) in a new sandbox with the given limits, and checks that
 * it defined transform(). Returns 0, SB_ENOMEM, or SB_EINVAL with why
 * (size n) as Lua puts it, "NAME:LINE: message". */
int sb_script_new(sb_script **out, const char *name, const char *src, size_t len, int64_t budget,
                  size_t memory, char *why, size_t n);

void sb_script_free(sb_script *s);

/* Calls transform() on in (ts: when it was published, Unix ms). On
 * success *out is an array of *count messages (sb_free it after
 * sb_script_msg_release of each; NULL when none). Returns 0, SB_ENOMEM
 * (the process is out of memory), or SB_EINVAL with why "NAME:LINE:
 * message" (an error, the budget or the memory limit) or "NAME: ..." (a
 * result that is not a message). */
int sb_script_call(sb_script *s, const sb_script_msg *in, int64_t ts, sb_script_msg **out,
                   size_t *count, char *why, size_t n);

#endif
