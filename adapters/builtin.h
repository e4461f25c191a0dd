/*
 * The adapter types built into the switchboard executable
 * (builtin_types.h lists them). service/main.c registers them once at
 * start; a program that runs a broker in process (the Windows reload tests)
 * does the same; a program that only reads configurations registers their
 * keys alone.
 */
#ifndef SB_ADAPTERS_BUILTIN_H
#define SB_ADAPTERS_BUILTIN_H

#include "config/adapter_keys.h"
#include "service/adapter.h"

/* A type's keys and its implementation here (NULL: not on this platform). */
typedef struct sb_adapter_builtin {
    const sb_adapter_keys *keys;
    const sb_adapter_type *type;
} sb_adapter_builtin;

/* Every built-in type, ended by {NULL, NULL} (adapters/builtin.c). */
extern const sb_adapter_builtin sb_adapters_builtin[];

/* Registers the keys of every built-in type and the implementations this
 * platform has, stopping at the first failure (its code; err names the
 * type). In the sb_adapters library. */
int sb_adapters_register_builtin(sb_error *err);

/* Registers the keys alone (check-config on any platform, tests that only
 * load configs). In the small sb_adapter_keys library. Returns as
 * sb_adapter_keys_register (SB_EEXIST when called twice). */
int sb_adapter_keys_register_builtin(sb_error *err);

#endif
