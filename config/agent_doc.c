/*
 * The configuration a session agent runs (docs/agent.md): the YAML of the
 * adapters it hosts, copied node for node from the text the broker loaded,
 * so the agent parses and checks exactly what the administrator wrote for
 * them with the same loader, and sees nothing else of the file (other
 * adapters, routes, the auth files' paths).
 */
#include "config/config.h"
#include "service/alloc.h"
#include "service/error.h"

#include <string.h>
#include <yaml.h>

typedef struct out_buf {
    char *p;
    size_t len, cap;
    int failed;
} out_buf;

static int write_out(void *data, unsigned char *buffer, size_t size)
{
    out_buf *o = data;
    if (o->len + size + 1 > o->cap) {
        size_t cap = o->cap == 0 ? 4096 : o->cap;
        char *n;
        while (cap < o->len + size + 1)
            cap *= 2;
        n = sb_realloc(o->p, cap);
        if (n == NULL) {
            o->failed = 1;
            return 0;
        }
        o->p = n;
        o->cap = cap;
    }
    memcpy(o->p + o->len, buffer, size);
    o->len += size;
    o->p[o->len] = '\0';
    return 1;
}

/* Copies node `id` of src (and everything under it) into dst; returns the
 * new node's id, or 0 on out-of-memory. The loader bounded the nesting. */
static int copy_node(yaml_document_t *dst, yaml_document_t *src, int id)
{
    yaml_node_t *n = yaml_document_get_node(src, id);
    int copy = 0;
    if (n == NULL)
        return 0;
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return yaml_document_add_scalar(dst, n->tag, n->data.scalar.value,
                                        (int)n->data.scalar.length, n->data.scalar.style);
    case YAML_SEQUENCE_NODE:
        copy = yaml_document_add_sequence(dst, n->tag, n->data.sequence.style);
        for (yaml_node_item_t *i = n->data.sequence.items.start;
             copy != 0 && i < n->data.sequence.items.top; i++) {
            int item = copy_node(dst, src, *i);
            if (item == 0 || !yaml_document_append_sequence_item(dst, copy, item))
                return 0;
        }
        return copy;
    case YAML_MAPPING_NODE:
        copy = yaml_document_add_mapping(dst, n->tag, n->data.mapping.style);
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
             copy != 0 && p < n->data.mapping.pairs.top; p++) {
            int k = copy_node(dst, src, p->key), v = k != 0 ? copy_node(dst, src, p->value) : 0;
            if (v == 0 || !yaml_document_append_mapping_pair(dst, copy, k, v))
                return 0;
        }
        return copy;
    default:
        return 0;
    }
}

static const yaml_node_t *mapping_get(yaml_document_t *doc, const yaml_node_t *map, const char *key)
{
    if (map == NULL || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const yaml_node_t *k = yaml_document_get_node(doc, p->key);
        if (k != NULL && k->type == YAML_SCALAR_NODE && k->data.scalar.length == strlen(key) &&
            memcmp(k->data.scalar.value, key, k->data.scalar.length) == 0)
            return yaml_document_get_node(doc, p->value);
    }
    return NULL;
}

static int wanted(const yaml_node_t *name, const char *const *names, size_t count)
{
    if (name == NULL || name->type != YAML_SCALAR_NODE)
        return 0;
    for (size_t i = 0; i < count; i++)
        if (strlen(names[i]) == name->data.scalar.length &&
            memcmp(names[i], name->data.scalar.value, name->data.scalar.length) == 0)
            return 1;
    return 0;
}

static int add_plain(yaml_document_t *doc, const char *s)
{
    return yaml_document_add_scalar(doc, NULL, (yaml_char_t *)s, (int)strlen(s),
                                    YAML_PLAIN_SCALAR_STYLE);
}

int sb_config_agent_doc(char **out, size_t *out_len, const sb_config *cfg, const char *log_level,
                        const char *const *names, size_t count)
{
    yaml_parser_t parser;
    yaml_document_t src, dst;
    yaml_emitter_t emitter;
    const yaml_node_t *adapters;
    out_buf o = {0};
    int root, broker, log, seq, ok = 0, have_src = 0, have_dst = 0;

    *out = NULL;
    *out_len = 0;
    if (cfg->text == NULL)
        return SB_EINVAL;
    if (!yaml_parser_initialize(&parser))
        return SB_ENOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)cfg->text, cfg->text_len);
    if (!yaml_parser_load(&parser, &src))
        goto done;
    have_src = 1;
    if (!yaml_document_initialize(&dst, NULL, NULL, NULL, 1, 1))
        goto done;
    have_dst = 1;
    root = yaml_document_add_mapping(&dst, NULL, YAML_BLOCK_MAPPING_STYLE);
    broker = yaml_document_add_mapping(&dst, NULL, YAML_BLOCK_MAPPING_STYLE);
    log = yaml_document_add_mapping(&dst, NULL, YAML_FLOW_MAPPING_STYLE);
    seq = yaml_document_add_sequence(&dst, NULL, YAML_BLOCK_SEQUENCE_STYLE);
    if (root == 0 || broker == 0 || log == 0 || seq == 0 ||
        !yaml_document_append_mapping_pair(&dst, log, add_plain(&dst, "level"),
                                           add_plain(&dst, log_level)) ||
        !yaml_document_append_mapping_pair(&dst, broker, add_plain(&dst, "log"), log) ||
        !yaml_document_append_mapping_pair(&dst, root, add_plain(&dst, "broker"), broker) ||
        !yaml_document_append_mapping_pair(&dst, root, add_plain(&dst, "adapters"), seq))
        goto done;
    adapters = mapping_get(&src, yaml_document_get_root_node(&src), "adapters");
    if (adapters != NULL && adapters->type == YAML_SEQUENCE_NODE)
        for (yaml_node_item_t *i = adapters->data.sequence.items.start;
             i < adapters->data.sequence.items.top; i++) {
            const yaml_node_t *item = yaml_document_get_node(&src, *i);
            int copy;
            if (!wanted(mapping_get(&src, item, "name"), names, count))
                continue;
            copy = copy_node(&dst, &src, *i);
            if (copy == 0 || !yaml_document_append_sequence_item(&dst, seq, copy))
                goto done;
        }
    if (!yaml_emitter_initialize(&emitter))
        goto done;
    yaml_emitter_set_output(&emitter, write_out, &o);
    yaml_emitter_set_unicode(&emitter, 1);
    yaml_emitter_set_width(&emitter, -1);
    /* dump takes the document (and deletes it) */
    have_dst = 0;
    ok = yaml_emitter_open(&emitter) && yaml_emitter_dump(&emitter, &dst) &&
         yaml_emitter_close(&emitter) && yaml_emitter_flush(&emitter) && !o.failed;
    yaml_emitter_delete(&emitter);
done:
    if (have_dst)
        yaml_document_delete(&dst);
    if (have_src)
        yaml_document_delete(&src);
    yaml_parser_delete(&parser);
    if (!ok) {
        sb_free(o.p);
        return SB_ENOMEM;
    }
    *out = o.p;
    *out_len = o.len;
    return 0;
}
