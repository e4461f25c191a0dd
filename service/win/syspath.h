/*
 * The machine-wide PATH (HKLM\...\Session Manager\Environment, value Path):
 * adding and removing the install folder, as an installer does, so that
 * `sbctl` works from any new console. Programs started afterwards see the
 * change (WM_SETTINGCHANGE "Environment" is broadcast).
 */
#ifndef SB_WIN_SYSPATH_H
#define SB_WIN_SYSPATH_H

#include <wchar.h>

/* Appends dir to the system PATH unless an entry equals it (case-insensitive,
 * a trailing backslash ignored). Returns 0 or a Win32 error code. */
unsigned long sb_win_syspath_add(const wchar_t *dir);

/* Removes every entry equal to dir. Returns 0 (also when there was none) or a
 * Win32 error code. */
unsigned long sb_win_syspath_remove(const wchar_t *dir);

#endif
