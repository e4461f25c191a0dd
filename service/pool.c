/* Free lists of fixed-size objects (see pool.h). */
#include "service/pool.h"
#include "service/alloc.h"

#include <assert.h>

#if defined(__SANITIZE_ADDRESS__)
#define SB_POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SB_POOL_ASAN 1
#endif
#endif
#ifdef SB_POOL_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void sb_pool_init(sb_pool *p, size_t size, size_t max)
{
    assert(size >= sizeof(void *));
    p->free = NULL;
    p->size = size;
    p->count = 0;
    p->max = max;
}

void *sb_pool_get(sb_pool *p)
{
    void *obj = p->free;
    if (obj == NULL)
        return sb_malloc(p->size);
    if (sb_alloc__inject())
        return NULL;
    UNPOISON(obj, p->size);
    p->free = *(void **)obj;
    p->count--;
    return obj;
}

void sb_pool_put(sb_pool *p, void *obj)
{
    if (obj == NULL)
        return;
    if (p->count >= p->max) {
        sb_free(obj);
        return;
    }
    *(void **)obj = p->free;
    POISON(obj, p->size);
    p->free = obj;
    p->count++;
}

void sb_pool_drain(sb_pool *p)
{
    while (p->free != NULL) {
        void *obj = p->free;
        UNPOISON(obj, p->size);
        p->free = *(void **)obj;
        sb_free(obj);
    }
    p->count = 0;
}
