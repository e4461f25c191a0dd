/* String-keyed chained hash map (FNV-1a). */
#include "service/map.h"
#include "service/alloc.h"
#include "service/error.h"

#include <string.h>

static size_t hash_key(const char *s)
{
    size_t h = (size_t)1469598103934665603ULL;
    while (*s != '\0') {
        h ^= (unsigned char)*s++;
        h *= (size_t)1099511628211ULL;
    }
    return h;
}

static sb_map_node **find_slot(const sb_map *m, const char *key, size_t h)
{
    sb_map_node **p;
    if (m->bucket_count == 0)
        return NULL;
    for (p = &m->buckets[h & (m->bucket_count - 1)]; *p != NULL; p = &(*p)->next)
        if ((*p)->hash == h && strcmp((*p)->key, key) == 0)
            return p;
    return p;
}

void *sb_map_get(const sb_map *m, const char *key)
{
    sb_map_node **p = find_slot(m, key, hash_key(key));
    return p != NULL && *p != NULL ? (*p)->value : NULL;
}

static int grow(sb_map *m)
{
    size_t n = m->bucket_count == 0 ? 16 : m->bucket_count * 2;
    sb_map_node **b = sb_calloc(n, sizeof(*b));
    if (b == NULL)
        return SB_ENOMEM;
    for (size_t i = 0; i < m->bucket_count; i++) {
        sb_map_node *node = m->buckets[i];
        while (node != NULL) {
            sb_map_node *next = node->next;
            node->next = b[node->hash & (n - 1)];
            b[node->hash & (n - 1)] = node;
            node = next;
        }
    }
    sb_free(m->buckets);
    m->buckets = b;
    m->bucket_count = n;
    return 0;
}

int sb_map_put(sb_map *m, const char *key, void *value, void **old)
{
    size_t h = hash_key(key), len;
    sb_map_node **p, *node;

    if (old != NULL)
        *old = NULL;
    if ((m->count + 1) * 4 > m->bucket_count * 3 && grow(m) != 0)
        return SB_ENOMEM;
    p = find_slot(m, key, h);
    if (*p != NULL) {
        if (old != NULL)
            *old = (*p)->value;
        (*p)->value = value;
        return 0;
    }
    len = strlen(key);
    node = sb_malloc(sizeof(*node) + len + 1);
    if (node == NULL)
        return SB_ENOMEM;
    node->next = NULL;
    node->hash = h;
    node->value = value;
    memcpy(node->key, key, len + 1);
    *p = node;
    m->count++;
    return 0;
}

void *sb_map_remove(sb_map *m, const char *key)
{
    sb_map_node **p = find_slot(m, key, hash_key(key)), *node;
    void *value;
    if (p == NULL || *p == NULL)
        return NULL;
    node = *p;
    *p = node->next;
    value = node->value;
    sb_free(node);
    m->count--;
    return value;
}

void sb_map_each(const sb_map *m, void (*fn)(const char *key, void *value, void *ctx), void *ctx)
{
    for (size_t i = 0; i < m->bucket_count; i++)
        for (sb_map_node *node = m->buckets[i]; node != NULL; node = node->next)
            fn(node->key, node->value, ctx);
}

void sb_map_clear(sb_map *m)
{
    for (size_t i = 0; i < m->bucket_count; i++) {
        sb_map_node *node = m->buckets[i];
        while (node != NULL) {
            sb_map_node *next = node->next;
            sb_free(node);
            node = next;
        }
    }
    sb_free(m->buckets);
    m->buckets = NULL;
    m->bucket_count = 0;
    m->count = 0;
}
