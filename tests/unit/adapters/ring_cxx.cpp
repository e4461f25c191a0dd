// sb_ring.h promises C and C++ programs alike that they can include it: this
// file is a C++ program using every call of it, compiled (not run) by the
// test ring_header_cxx.
#include "adapters/filemap/sb_ring.h"

#include <cstdio>

int main(int argc, char **argv)
{
    sb_ring *r = nullptr;
    sb_ring_slot slot;
    sb_ring_msg m;
    sb_ring_info info;
    uint64_t seq = 0;
    const sb_ring_kv headers[] = {{"content-type", "text/plain"}};
    if (argc < 2 || sb_ring_open(&r, argv[1], SB_RING_PRODUCER) != SB_RING_OK)
        return 1;
    sb_ring_get_info(r, &info);
    if (sb_ring_reserve(r, &slot, "a/b", 0, 1, 0) == SB_RING_OK) {
        slot.payload[0] = 'x';
        sb_ring_commit(r, &slot);
    }
    sb_ring_write_headers(r, "a/b", headers, 1, "y", 1, 100, &seq);
    std::printf("%s %d %d\n", sb_ring_strerror(sb_ring_write(r, "a/b", "z", 1, 0, &seq)),
                sb_ring_wait_committed(r, seq, 0), sb_ring_syserror(r));
    if (sb_ring_next(r, &m, 0) == SB_RING_OK) {
        std::printf("%s\n", sb_ring_msg_header(&m, "k"));
        sb_ring_release(r, &m);
    }
    std::printf("%d\n", sb_ring_recovered(r));
    sb_ring_close(r);
    return 0;
}
