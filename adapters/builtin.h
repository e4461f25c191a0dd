/*
 * The adapter types built into the switchboard executable. service/main.c
 * registers them once at start (sb_adapter_register_all); a program that
 * runs a broker in process (the Windows reload tests) does the same.
 */
#ifndef SB_ADAPTERS_BUILTIN_H
#define SB_ADAPTERS_BUILTIN_H

#include "service/adapter.h"

/* This platform's types, NULL-terminated (adapters/builtin.c). */
extern const sb_adapter_type *const sb_adapters_builtin[];

#endif
