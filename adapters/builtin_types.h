/*
 * The built-in adapter types: ONE line each, X(name, platforms), where
 * platforms is ALL, WIN or POSIX. A line names two things by convention:
 *   sb_<name>_keys     its key table (config/adapter_keys.h), in its folder,
 *                      compiled on every platform (check-config checks
 *                      every type everywhere)
 *   sb_adapter_<name>  its implementation (service/adapter.h), only on the
 *                      platforms listed; elsewhere the type has keys and
 *                      no implementation, and `run` refuses it.
 * Adding a type: its folder, a line here, its sources in CMake.
 */
#ifndef SB_BUILTIN_TYPES_H
#define SB_BUILTIN_TYPES_H

#define SB_BUILTIN_TYPES(X)                                                                        \
    X(tcp, ALL)                                                                                    \
    X(udp, ALL)                                                                                    \
    X(unix, POSIX)                                                                                 \
    X(pipe, ALL)                                                                                   \
    X(exec, ALL)                                                                                   \
    X(mailslot, WIN)                                                                               \
    X(dde, WIN)                                                                                    \
    X(null, ALL)

#endif
