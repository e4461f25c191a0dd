/*
 * Fuzz target for the ring's reader (adapters/filemap/sb_ring.h): the input
 * is what a hostile program could leave in a ring's shared memory, and the
 * reader walks it as the broker (in rings) and a consumer (out rings) do.
 *
 * Input: a 1024-byte ring header (taken as it is, except that magic,
 * version and header size are forced so the walk gets past them in most
 * runs, and the capacity is clamped to what the input holds) followed by
 * the data area. The walk starts at the header's commit and follows
 * sbr_peek until the ring is empty, a record is still being written, or
 * sbr_peek calls it bad; every complete record's topic and headers are
 * checked as the broker checks them, the headers decoded into a message.
 * Then the refusal log is looked up for every position seen.
 *
 * The reader must never read outside the mapping (ASan), never loop
 * forever (each step moves forward at least 8 bytes, and no further than
 * reserve), and never accept a record that does not lie inside the data
 * area.
 */
#define SB_RING_NO_OS
#include "adapters/filemap/sb_ring.h"

#include "service/message.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_ring_header h;
    unsigned char *mem;
    uint64_t cap, pos, reserve, steps = 0;
    const char *why;

    if (size < sizeof(h))
        return 0;
    memcpy(&h, data, sizeof(h));
    h.magic = SB_RING_MAGIC;
    h.version = SB_RING_VERSION;
    h.header_size = SB_RING_HEADER_SIZE;
    cap = (size - sizeof(h)) & ~(uint64_t)7;
    if (cap < SB_RING_MIN_CAPACITY)
        cap = SB_RING_MIN_CAPACITY; /* the rest of the data area is zero */
    if (h.capacity != cap && (h.capacity & 1) == 0)
        h.capacity = cap; /* mostly the right capacity; sometimes a wrong one */
    /* The mapping holds exactly the header and the data area. */
    mem = calloc(1, SB_RING_HEADER_SIZE + cap);
    if (mem == NULL)
        return 0;
    memcpy(mem, &h, sizeof(h));
    memcpy(mem + SB_RING_HEADER_SIZE, data + sizeof(h),
           size - sizeof(h) < cap ? size - sizeof(h) : cap);
    {
        sb_ring_header *hp = (sb_ring_header *)(void *)mem;
        unsigned char *area = mem + SB_RING_HEADER_SIZE;
        if (sbr_check_header(hp, SB_RING_HEADER_SIZE + cap, 0, &why) != SB_RING_OK)
            goto done;
        cap = hp->capacity;
        pos = hp->commit;
        reserve = hp->reserve;
        /* the checks the broker and sb_ring_next make before walking */
        if (pos % 8 != 0 || reserve % 8 != 0 || reserve < pos || reserve - pos > cap)
            goto done;
        for (;;) {
            const sb_ring_rec *rec;
            int kind = sbr_peek(hp, area, cap, pos, reserve, hp->max_payload, &rec, &why);
            if (kind == SBR_EMPTY || kind == SBR_BAD || kind == SBR_PENDING)
                break;
            if ((const unsigned char *)rec < area ||
                (const unsigned char *)rec + rec->len > area + cap || rec->len < 8 ||
                rec->len % 8 != 0)
                abort(); /* sbr_peek accepted a record outside the data area */
            if (kind == SBR_READY) {
                const char *t = (const char *)rec + SB_RING_REC_SIZE;
                if (sbr_topic_valid(t, rec->topic_len) &&
                    sbr_headers_valid(t + rec->topic_len, rec->headers_len)) {
                    sb_message *m = sb_message_new("x", NULL, 0);
                    if (m != NULL) {
                        if (rec->headers_len > 0 &&
                            sb_message_headers_decode(m, (const unsigned char *)t + rec->topic_len,
                                                      rec->headers_len) != 0)
                            abort(); /* a blob sbr_headers_valid accepted */
                        sb_message_unref(m);
                    }
                }
            }
            (void)sbr_refusal_of(hp, pos);
            pos += rec->len;
            if (++steps > cap / 8 + 1)
                abort(); /* more steps than the ring has room for */
        }
    }
done:
    free(mem);
    return 0;
}
