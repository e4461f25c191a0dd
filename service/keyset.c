/*
 * Crit-bit tree of strings (see keyset.h). An inner node splits its keys
 * on one bit, the first in which they differ: byte `byte`, the bit clear in
 * `otherbits` (whose other bits are set). Keys with that bit clear sort
 * first, and a key that ends sooner reads as NUL there, so an in-order walk
 * is byte order. Pointers to inner nodes have their low bit set; leaves are
 * the keys' copies (sb_malloc aligns them, low bit clear).
 */
#include "service/keyset.h"

#include "service/alloc.h"
#include "service/error.h"

#include <stdint.h>
#include <string.h>

typedef struct inner {
    void *child[2];
    size_t byte;
    uint8_t otherbits;
} inner;

static int is_inner(const void *p)
{
    return ((uintptr_t)p & 1) != 0;
}

static inner *as_inner(void *p)
{
    return (inner *)((uintptr_t)p - 1);
}

/* The side of n that key (of length len) goes to. */
static int side(const inner *n, const uint8_t *key, size_t len)
{
    uint8_t c = n->byte < len ? key[n->byte] : 0;
    return (1 + (n->otherbits | c)) >> 8;
}

/* The leaf a walk for key ends at (the set is not empty). */
static const char *nearest(const sb_keyset *s, const uint8_t *key, size_t len)
{
    void *p = s->root;
    while (is_inner(p)) {
        inner *n = as_inner(p);
        p = n->child[side(n, key, len)];
    }
    return p;
}

int sb_keyset_has(const sb_keyset *s, const char *key)
{
    return s->root != NULL && strcmp(nearest(s, (const uint8_t *)key, strlen(key)), key) == 0;
}

int sb_keyset_add(sb_keyset *s, const char *key)
{
    const uint8_t *k = (const uint8_t *)key;
    size_t len = strlen(key), byte;
    const uint8_t *near;
    uint32_t bits;
    uint8_t otherbits;
    int dir;
    char *leaf;
    inner *n;
    void **where;

    if (s->root == NULL) {
        if ((leaf = sb_strdup(key)) == NULL)
            return SB_ENOMEM;
        s->root = leaf;
        s->count = 1;
        return 0;
    }
    near = (const uint8_t *)nearest(s, k, len);
    /* the first bit in which key differs from its nearest key */
    for (byte = 0; byte < len && near[byte] == k[byte]; byte++)
        ;
    if (byte == len && near[byte] == 0)
        return 0;                            /* there already */
    bits = (uint32_t)(near[byte] ^ k[byte]); /* (k[len] is its NUL) */
    bits |= bits >> 1;
    bits |= bits >> 2;
    bits |= bits >> 4;
    otherbits = (uint8_t)((bits & ~(bits >> 1)) ^ 255);
    dir = (1 + (otherbits | near[byte])) >> 8; /* the nearest key's side */

    if ((n = sb_malloc(sizeof(*n))) == NULL)
        return SB_ENOMEM;
    if ((leaf = sb_strdup(key)) == NULL) {
        sb_free(n);
        return SB_ENOMEM;
    }
    n->byte = byte;
    n->otherbits = otherbits;
    n->child[1 - dir] = leaf;
    /* down to where the new split goes: above nodes splitting later bits */
    where = &s->root;
    while (is_inner(*where)) {
        inner *m = as_inner(*where);
        if (m->byte > byte || (m->byte == byte && m->otherbits > otherbits))
            break;
        where = &m->child[side(m, k, len)];
    }
    n->child[dir] = *where;
    *where = (void *)((uintptr_t)n + 1);
    s->count++;
    return 0;
}

int sb_keyset_remove(sb_keyset *s, const char *key)
{
    const uint8_t *k = (const uint8_t *)key;
    size_t len = strlen(key);
    void **where = &s->root, **parent_at = NULL;
    inner *parent = NULL;
    int dir = 0;

    if (s->root == NULL)
        return 0;
    while (is_inner(*where)) {
        parent_at = where;
        parent = as_inner(*where);
        dir = side(parent, k, len);
        where = &parent->child[dir];
    }
    if (strcmp(*where, key) != 0)
        return 0;
    sb_free(*where);
    if (parent == NULL) {
        s->root = NULL;
    } else {
        *parent_at = parent->child[1 - dir];
        sb_free(parent);
    }
    s->count--;
    return 1;
}

static void walk(void *p, void (*fn)(const char *key, void *ctx), void *ctx)
{
    /* the depth is at most the bits of the longest shared prefix */
    while (is_inner(p)) {
        inner *n = as_inner(p);
        walk(n->child[0], fn, ctx);
        p = n->child[1];
    }
    fn(p, ctx);
}

void sb_keyset_each(const sb_keyset *s, const char *prefix, void (*fn)(const char *key, void *ctx),
                    void *ctx)
{
    const uint8_t *k = (const uint8_t *)prefix;
    size_t len = strlen(prefix);
    void *p = s->root, *top = p;

    if (p == NULL)
        return;
    /* top: the highest node whose keys all agree on the prefix's bytes */
    while (is_inner(p)) {
        inner *n = as_inner(p);
        p = n->child[side(n, k, len)];
        if (n->byte < len)
            top = p;
    }
    if (strncmp(p, prefix, len) != 0)
        return;
    walk(top, fn, ctx);
}

static void clear(void *p)
{
    while (is_inner(p)) {
        inner *n = as_inner(p);
        void *next = n->child[1];
        clear(n->child[0]);
        sb_free(n);
        p = next;
    }
    sb_free(p);
}

void sb_keyset_clear(sb_keyset *s)
{
    if (s->root != NULL)
        clear(s->root);
    s->root = NULL;
    s->count = 0;
}
