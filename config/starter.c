/*
 * The starter configuration `switchboard service install` writes when there
 * is none: the data directory and log file as YAML strings quoted whatever
 * the path holds, the com endpoint (install registers Switchboard.Broker,
 * which needs it), and commented examples of the common adapters (a named
 * pipe in, a mailslot out, MQTT on loopback) that an administrator
 * uncomments. tests/unit/config loads it, and it with the examples
 * uncommented, so that both stay valid.
 */
#include "config/config.h"
#include "service/alloc.h"

#include <stdio.h>
#include <string.h>

/* A growable string; an allocation failure sticks. */
typedef struct text {
    char *p;
    size_t len, cap;
    int failed;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap == 0 ? 4096 : t->cap;
        char *p;
        while (cap < t->len + n + 1)
            cap *= 2;
        p = sb_realloc(t->p, cap);
        if (p == NULL) {
            t->failed = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void puts_(text *t, const char *s)
{
    put(t, s, strlen(s));
}

static int has_control(const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    return 0;
}

/* A YAML scalar holding exactly s (then suffix): single-quoted (only ' is
 * special there, written twice), or double-quoted with escapes when s has
 * control characters, which single quotes cannot carry. */
static void put_quoted(text *t, const char *s, const char *suffix)
{
    int control = has_control(s) || has_control(suffix);
    put(t, control ? "\"" : "'", 1);
    for (int i = 0; i < 2; i++) {
        const char *p = i == 0 ? s : suffix;
        for (; p != NULL && *p != '\0'; p++) {
            char esc[8];
            if (!control && *p == '\'')
                puts_(t, "''");
            else if (control && (*p == '\\' || *p == '"'))
                put(t, (char[]){'\\', *p}, 2);
            else if (control && ((unsigned char)*p < 0x20 || *p == 0x7f)) {
                snprintf(esc, sizeof esc, "\\x%02X", (unsigned)(unsigned char)*p);
                puts_(t, esc);
            } else
                put(t, p, 1);
        }
    }
    put(t, control ? "\"" : "'", 1);
}

char *sb_config_starter(const char *data_dir, const char *config_path)
{
    text t = {0};
    puts_(&t, "# Switchboard service configuration, written by `switchboard service install`.\n"
              "# After a change, check it with `switchboard check-config FILE`, then apply it\n"
              "# with `switchboard service reload`. This file is ");
    put_quoted(&t, config_path, NULL);
    puts_(&t, ".\n"
              "# Every key is described in examples\\full.yaml next to switchboard.exe\n"
              "# (config/examples/full.yaml in the sources) and in README.md.\n"
              "#\n"
              "# Examples below: to use one, remove the '#' in front of each of its lines\n"
              "# (keep the explanations commented), then check and reload.\n"
              "broker:\n"
              "  data_dir: ");
    put_quoted(&t, data_dir, NULL);
    puts_(&t, "\n  log: { level: info, file: ");
    put_quoted(&t, data_dir, "\\switchboard.log");
    puts_(&t, " }\n"
              "  # sbctl talks to the broker over \\\\.\\pipe\\switchboard-admin, open to\n"
              "  # SYSTEM, Administrators and the service's account only. To let another\n"
              "  # account administer the broker, give the pipe's full security descriptor\n"
              "  # (SDDL), e.g. read/write for the local group Users (BU):\n"
              "  #admin:\n"
              "  #  security: \"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GRGW;;;BU)\"\n"
              "\n"
              "adapters:\n"
              "  # Scripts, Office macros and .NET programs of this machine use the\n"
              "  # broker through COM (Switchboard.Broker, registered by the install):\n"
              "  # their relay reaches it here, and the ACL applies to their account.\n"
              "  - name: com\n"
              "    type: com\n"
              "\n"
              "  # A legacy program writes to the named pipe \\\\.\\pipe\\orders; each pipe\n"
              "  # message becomes a message on the topic orders/orders-in.\n"
              "  #- name: orders-in\n"
              "  #  type: pipe\n"
              "  #  path: orders\n"
              "  #  framing: message\n"
              "  #  topic: orders/{adapter}\n"
              "\n"
              "  # Messages routed here are written to the mailslot\n"
              "  # \\\\.\\mailslot\\orders-audit, which another program reads.\n"
              "  #- name: audit-out\n"
              "  #  type: mailslot\n"
              "  #  connect: orders-audit\n"
              "\n"
              "  # MQTT 3.1.1 clients of this machine (loopback only) publish and\n"
              "  # subscribe here, e.g. to orders/#.\n"
              "  #- name: mqtt\n"
              "  #  type: tcp\n"
              "  #  listen: 127.0.0.1:1883\n"
              "  #  protocol: mqtt\n"
              "\n"
              "routes:\n"
              "  # Every order is written to the audit mailslot, durably: a message\n"
              "  # waits in the queue while the mailslot's reader is away.\n"
              "  #- name: orders-to-audit\n"
              "  #  from: orders/#\n"
              "  #  to: audit-out\n");
    if (t.failed) {
        sb_free(t.p);
        return NULL;
    }
    return t.p;
}
