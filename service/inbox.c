/* Thread-safe hand-off to the loop thread (see inbox.h). */
#include "service/inbox.h"
#include "service/alloc.h"
#include "service/error.h"

typedef struct inbox_item {
    sb_inbox_fn fn;
    void *arg;
    struct inbox_item *next;
} inbox_item;

struct sb_inbox {
    uv_async_t async;
    uv_mutex_t lock;
    inbox_item *head, *tail;
    int closed;
};

static void drain(uv_async_t *h)
{
    sb_inbox *in = h->data;
    inbox_item *items;
    uv_mutex_lock(&in->lock);
    items = in->head;
    in->head = in->tail = NULL;
    uv_mutex_unlock(&in->lock);
    while (items != NULL) {
        inbox_item *next = items->next;
        items->fn(items->arg);
        sb_free(items);
        items = next;
    }
}

int sb_inbox_new(sb_inbox **out, uv_loop_t *loop)
{
    sb_inbox *in = sb_calloc(1, sizeof(*in));
    *out = NULL;
    if (in == NULL)
        return SB_ENOMEM;
    if (uv_mutex_init(&in->lock) != 0 || uv_async_init(loop, &in->async, drain) != 0) {
        sb_free(in);
        return SB_ENOMEM;
    }
    in->async.data = in;
    *out = in;
    return 0;
}

int sb_inbox_post(sb_inbox *in, sb_inbox_fn fn, void *arg)
{
    inbox_item *item = sb_malloc(sizeof(*item));
    if (item == NULL)
        return SB_ENOMEM;
    item->fn = fn;
    item->arg = arg;
    item->next = NULL;
    uv_mutex_lock(&in->lock);
    if (in->closed) {
        uv_mutex_unlock(&in->lock);
        sb_free(item);
        return SB_ESHUTDOWN;
    }
    if (in->tail != NULL)
        in->tail->next = item;
    else
        in->head = item;
    in->tail = item;
    uv_mutex_unlock(&in->lock);
    uv_async_send(&in->async);
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    sb_inbox *in = h->data;
    uv_mutex_destroy(&in->lock);
    sb_free(in);
}

void sb_inbox_close(sb_inbox *in)
{
    uv_mutex_lock(&in->lock);
    in->closed = 1;
    uv_mutex_unlock(&in->lock);
    drain(&in->async); /* what was posted before the close still runs */
    uv_close((uv_handle_t *)&in->async, on_closed);
}
