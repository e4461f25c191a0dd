/* The subscription index: filters in a tree by topic level (see subindex.h). */
#include "service/subindex.h"
#include "service/alloc.h"
#include "service/error.h"

#include <stdint.h>
#include <string.h>

/* A node is one filter level below its parent. Literal children are in a
 * chained hash table by level text; '+' and '#' have a slot each. A node
 * exists while a filter ends at it or passes through it. */
struct sb_subnode {
    sb_subnode *parent;
    sb_subnode *chain;       /* next literal child in the parent's bucket */
    sb_subnode **buckets;    /* literal children; bucket_count a power of 2 */
    sb_subnode *plus, *hash; /* the '+' and '#' children */
    void **values;           /* of the filters that end here */
    uint32_t value_count, value_cap;
    uint32_t child_count, bucket_count;
    uint32_t level_hash;
    uint32_t len;
    char level[]; /* the level's text (not NUL-terminated) */
};

static uint32_t hash_level(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

/* The end of the level starting at pos: the next '/' or len. */
static size_t level_end(const char *s, size_t len, size_t pos)
{
    const char *slash = memchr(s + pos, '/', len - pos);
    return slash != NULL ? (size_t)(slash - s) : len;
}

static sb_subnode *node_new(sb_subnode *parent, const char *level, size_t len, uint32_t h)
{
    sb_subnode *n = sb_calloc(1, sizeof(*n) + len);
    if (n == NULL)
        return NULL;
    n->parent = parent;
    n->level_hash = h;
    n->len = (uint32_t)len;
    if (len > 0)
        memcpy(n->level, level, len);
    return n;
}

static sb_subnode *find_child(const sb_subnode *n, const char *level, size_t len, uint32_t h)
{
    if (n->bucket_count == 0)
        return NULL;
    for (sb_subnode *c = n->buckets[h & (n->bucket_count - 1)]; c != NULL; c = c->chain)
        if (c->level_hash == h && c->len == len && memcmp(c->level, level, len) == 0)
            return c;
    return NULL;
}

/* Adds c to n's literal children (grows the table at one child a bucket). */
static int link_child(sb_subnode *n, sb_subnode *c)
{
    sb_subnode **slot;
    if (n->child_count >= n->bucket_count) {
        uint32_t count = n->bucket_count == 0 ? 4 : n->bucket_count * 2;
        sb_subnode **b = sb_calloc(count, sizeof(*b));
        if (b == NULL)
            return SB_ENOMEM;
        for (uint32_t i = 0; i < n->bucket_count; i++) {
            sb_subnode *x = n->buckets[i];
            while (x != NULL) {
                sb_subnode *next = x->chain;
                x->chain = b[x->level_hash & (count - 1)];
                b[x->level_hash & (count - 1)] = x;
                x = next;
            }
        }
        sb_free(n->buckets);
        n->buckets = b;
        n->bucket_count = count;
    }
    slot = &n->buckets[c->level_hash & (n->bucket_count - 1)];
    c->chain = *slot;
    *slot = c;
    n->child_count++;
    return 0;
}

static void unlink_child(sb_subnode *n, sb_subnode *c)
{
    sb_subnode **p = &n->buckets[c->level_hash & (n->bucket_count - 1)];
    while (*p != c)
        p = &(*p)->chain;
    *p = c->chain;
    c->chain = NULL;
    n->child_count--;
}

static int node_empty(const sb_subnode *n)
{
    return n->value_count == 0 && n->child_count == 0 && n->plus == NULL && n->hash == NULL;
}

static void node_free(sb_subnode *n)
{
    sb_free(n->buckets);
    sb_free(n->values);
    sb_free(n);
}

/* Frees n and its ancestors while they hold nothing. */
static void prune(sb_subindex *ix, sb_subnode *n)
{
    while (n != NULL && node_empty(n)) {
        sb_subnode *parent = n->parent;
        if (parent == NULL)
            ix->root = NULL;
        else if (parent->plus == n)
            parent->plus = NULL;
        else if (parent->hash == n)
            parent->hash = NULL;
        else
            unlink_child(parent, n);
        node_free(n);
        n = parent;
    }
}

/* The node of filter[0..len), created when `create`; NULL if absent or out
 * of memory (then what was created is pruned again). */
static sb_subnode *walk(sb_subindex *ix, const char *filter, size_t len, int create)
{
    sb_subnode *n;
    size_t pos = 0;

    if (ix->root == NULL) {
        if (!create || (ix->root = node_new(NULL, "", 0, 0)) == NULL)
            return NULL;
    }
    n = ix->root;
    for (;;) {
        size_t end = level_end(filter, len, pos), ll = end - pos;
        const char *level = filter + pos;
        sb_subnode **slot = NULL, *c;
        uint32_t h = 0;
        int terminal = ll == 1 && level[0] == '#';

        if (terminal)
            slot = &n->hash;
        else if (ll == 1 && level[0] == '+')
            slot = &n->plus;
        if (slot != NULL) {
            c = *slot;
        } else {
            h = hash_level(level, ll);
            c = find_child(n, level, ll, h);
        }
        if (c == NULL) {
            if (!create)
                return NULL;
            c = node_new(n, level, ll, h);
            if (c == NULL || (slot == NULL && link_child(n, c) != 0)) {
                sb_free(c);
                prune(ix, n);
                return NULL;
            }
            if (slot != NULL)
                *slot = c;
        }
        n = c;
        /* '#' ends a filter (a valid one has nothing after it) */
        if (terminal || end == len)
            return n;
        pos = end + 1;
    }
}

int sb_subindex_add(sb_subindex *ix, const char *filter, size_t len, void *value)
{
    sb_subnode *n;
    if (len == 0)
        return 0;
    if ((n = walk(ix, filter, len, 1)) == NULL)
        return SB_ENOMEM;
    if (n->value_count == n->value_cap) {
        uint32_t cap = n->value_cap == 0 ? 1 : n->value_cap * 2;
        void **v = sb_realloc(n->values, cap * sizeof(*v));
        if (v == NULL) {
            prune(ix, n);
            return SB_ENOMEM;
        }
        n->values = v;
        n->value_cap = cap;
    }
    n->values[n->value_count++] = value;
    ix->count++;
    return 0;
}

int sb_subindex_remove(sb_subindex *ix, const char *filter, size_t len, void *value)
{
    sb_subnode *n;
    if (len == 0)
        return 0;
    if ((n = walk(ix, filter, len, 0)) == NULL)
        return SB_ENOTFOUND;
    for (uint32_t i = 0; i < n->value_count; i++)
        if (n->values[i] == value) {
            n->values[i] = n->values[--n->value_count];
            if (n->value_count == 0) {
                sb_free(n->values);
                n->values = NULL;
                n->value_cap = 0;
            }
            ix->count--;
            prune(ix, n);
            return 0;
        }
    return SB_ENOTFOUND;
}

int sb_subindex_add_all(sb_subindex *ix, const sb_sub_filter *filters, size_t count, void *value)
{
    for (size_t i = 0; i < count; i++) {
        if (sb_subindex_add(ix, filters[i].filter, strlen(filters[i].filter), value) != 0) {
            while (i-- > 0) /* undo the filters before this one */
                sb_subindex_remove(ix, filters[i].filter, strlen(filters[i].filter), value);
            return SB_ENOMEM;
        }
    }
    return 0;
}

void sb_subindex_remove_all(sb_subindex *ix, const sb_sub_filter *filters, size_t count,
                            void *value)
{
    for (size_t i = 0; i < count; i++)
        sb_subindex_remove(ix, filters[i].filter, strlen(filters[i].filter), value);
}

static void report(const sb_subnode *n, sb_subindex_fn fn, void *ctx)
{
    for (uint32_t i = 0; i < n->value_count; i++)
        fn(n->values[i], ctx);
}

/* A depth-first walk without a stack: a node's children are tried '#',
 * '+', then the literal one, and going back up recomputes where the
 * parent's level started from where the child's did. */
void sb_subindex_match(const sb_subindex *ix, const char *topic, sb_subindex_fn fn, void *ctx)
{
    enum { ENTER, AFTER_PLUS, AFTER_LITERAL } step = ENTER;
    const sb_subnode *root = ix->root, *n = root;
    size_t len = strlen(topic);
    size_t pos = 0; /* where n's next level starts; len + 1: none is left */
    int dollar = topic[0] == '$';

    if (root == NULL)
        return;
    for (;;) {
        /* MQTT: '+' and '#' as a first level do not match '$' topics */
        int wild = n != root || !dollar;
        if (step == ENTER) {
            if (pos > len) {
                /* the whole topic matched: filters ending here, and "x/#"
                 * matches its parent "x" */
                report(n, fn, ctx);
                if (n->hash != NULL)
                    report(n->hash, fn, ctx);
                step = AFTER_LITERAL;
            } else {
                if (n->hash != NULL && wild)
                    report(n->hash, fn, ctx);
                if (n->plus != NULL && wild) {
                    n = n->plus;
                    pos = level_end(topic, len, pos) + 1;
                    continue;
                }
                step = AFTER_PLUS;
            }
        }
        if (step == AFTER_PLUS) {
            size_t end = level_end(topic, len, pos);
            const sb_subnode *c =
                find_child(n, topic + pos, end - pos, hash_level(topic + pos, end - pos));
            if (c != NULL) {
                n = c;
                pos = end + 1;
                step = ENTER;
                continue;
            }
        }
        /* done with n: back to its parent, whose level ends before pos */
        if (n == root)
            return;
        step = n == n->parent->plus ? AFTER_PLUS : AFTER_LITERAL;
        n = n->parent;
        pos--;
        while (pos > 0 && topic[pos - 1] != '/')
            pos--;
    }
}

/* Literal children in table order: the first, and the one after c. */
static const sb_subnode *first_child(const sb_subnode *n)
{
    for (uint32_t i = 0; i < n->bucket_count && n->child_count > 0; i++)
        if (n->buckets[i] != NULL)
            return n->buckets[i];
    return NULL;
}

static const sb_subnode *next_sibling(const sb_subnode *c)
{
    const sb_subnode *p = c->parent;
    if (c->chain != NULL)
        return c->chain;
    for (uint32_t i = (c->level_hash & (p->bucket_count - 1)) + 1; i < p->bucket_count; i++)
        if (p->buckets[i] != NULL)
            return p->buckets[i];
    return NULL;
}

/* A '+' or '#' as the first level of a filter skips '$' topics. */
static const sb_subnode *visible(const sb_subnode *c, int at_root)
{
    while (c != NULL && at_root && c->len > 0 && c->level[0] == '$')
        c = next_sibling(c);
    return c;
}

/* Reports n and every node below it (literal children only, so a topic
 * index), skipping '$' children of the root. */
static void report_subtree(const sb_subnode *top, sb_subindex_fn fn, void *ctx)
{
    const sb_subnode *n = top;
    report(n, fn, ctx);
    n = visible(first_child(top), top->parent == NULL);
    while (n != NULL) {
        const sb_subnode *c;
        report(n, fn, ctx);
        if ((c = first_child(n)) != NULL) {
            n = c;
            continue;
        }
        /* the next sibling of n or of its nearest ancestor below top */
        while (n != top) {
            const sb_subnode *s = visible(next_sibling(n), n->parent->parent == NULL);
            if (s != NULL) {
                n = s;
                break;
            }
            n = n->parent;
        }
        if (n == top)
            return;
    }
}

/* The filter's level starting at pos: '+', '#' or literal. */
enum { LEVEL_LITERAL, LEVEL_PLUS, LEVEL_HASH };
static int level_kind(const char *filter, size_t end, size_t pos)
{
    if (end - pos == 1 && filter[pos] == '+')
        return LEVEL_PLUS;
    if (end - pos == 1 && filter[pos] == '#')
        return LEVEL_HASH;
    return LEVEL_LITERAL;
}

void sb_subindex_match_filter(const sb_subindex *ix, const char *filter, size_t len,
                              sb_subindex_fn fn, void *ctx)
{
    const sb_subnode *root = ix->root, *n = root;
    size_t pos = 0; /* where the filter's level for n's children starts */

    if (root == NULL || len == 0)
        return;
    for (;;) {
        /* enter n */
        const sb_subnode *c = NULL;
        if (pos > len) {
            report(n, fn, ctx); /* the topic ends where the filter does */
        } else {
            size_t end = level_end(filter, len, pos);
            switch (level_kind(filter, end, pos)) {
            case LEVEL_HASH:
                report_subtree(n, fn, ctx); /* "a/#" also matches "a" */
                break;
            case LEVEL_PLUS:
                c = visible(first_child(n), n == root);
                break;
            default:
                c = find_child(n, filter + pos, end - pos, hash_level(filter + pos, end - pos));
                break;
            }
            if (c != NULL) {
                n = c;
                pos = end + 1;
                continue;
            }
        }
        /* leave n: go to the next sibling where the parent's level is '+',
         * else further up */
        for (;;) {
            const sb_subnode *p = n->parent;
            size_t ppos;
            if (n == root)
                return;
            ppos = pos - 1;
            while (ppos > 0 && filter[ppos - 1] != '/')
                ppos--;
            if (level_kind(filter, pos - 1, ppos) == LEVEL_PLUS &&
                (c = visible(next_sibling(n), p == root)) != NULL) {
                n = c;
                break; /* enter the sibling at the same pos */
            }
            n = p;
            pos = ppos;
        }
    }
}

static int reaches(const sb_subnode *n, const char *prefix, size_t len, size_t pos, int wild)
{
    size_t end;
    const sb_subnode *c;
    if (pos > len)
        return n->child_count > 0 || n->plus != NULL || n->hash != NULL;
    if (wild && n->hash != NULL)
        return 1;
    end = level_end(prefix, len, pos);
    if (wild && n->plus != NULL && reaches(n->plus, prefix, len, end + 1, 1))
        return 1;
    c = find_child(n, prefix + pos, end - pos, hash_level(prefix + pos, end - pos));
    return c != NULL && reaches(c, prefix, len, end + 1, 1);
}

int sb_subindex_reaches(const sb_subindex *ix, const char *prefix)
{
    if (ix->root == NULL)
        return 0;
    return reaches(ix->root, prefix, strlen(prefix), 0, prefix[0] != '$');
}

static void free_tree(sb_subnode *n)
{
    /* iterative: free leaves bottom-up through parent pointers */
    while (n != NULL) {
        sb_subnode *c = n->hash != NULL ? n->hash : n->plus;
        if (c == NULL && n->child_count > 0) {
            for (uint32_t i = 0; c == NULL; i++)
                c = n->buckets[i];
        }
        if (c != NULL) {
            n = c;
            continue;
        }
        c = n->parent;
        if (c != NULL) {
            if (c->hash == n)
                c->hash = NULL;
            else if (c->plus == n)
                c->plus = NULL;
            else
                unlink_child(c, n);
        }
        node_free(n);
        n = c;
    }
}

void sb_subindex_clear(sb_subindex *ix)
{
    free_tree(ix->root);
    ix->root = NULL;
    ix->count = 0;
}
