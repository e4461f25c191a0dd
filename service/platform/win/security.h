/*
 * Security descriptors the broker gives its own objects on Windows: the
 * private DACL of the data directory and of the files in it (SYSTEM,
 * Administrators and the broker's own account), the admin pipe's DACL, and
 * the check at start that the data directory and the password file grant
 * nobody else access. One place for the account the broker runs as (a
 * virtual service account, LocalSystem, or the user running `switchboard
 * run`).
 */
#ifndef SB_WIN_SECURITY_H
#define SB_WIN_SECURITY_H

#include <windows.h>

/* The SID of the account this process runs as, as a string (LocalFree it),
 * or NULL with *out_err set. */
wchar_t *sb_win_own_sid(DWORD *out_err);

/* A security descriptor (LocalFree it) whose protected DACL grants SYSTEM,
 * Administrators and `account_sid` (a string SID; NULL: this process's
 * account; "" : nobody else) full control, inherited by files and
 * subdirectories. Returns 0, or a Windows error code. */
DWORD sb_win_private_dir_sd(PSECURITY_DESCRIPTOR *out, const wchar_t *account_sid);

/* 1 if dacl (NULL: no DACL, everyone has full access) grants an account
 * other than SYSTEM, Administrators, this process's account and the
 * creator/owner placeholders any access, else 0. Deny ACEs only take away. */
int sb_win_acl_shared(const ACL *dacl);

/* Describes the DACL of the file or directory at wpath: 1 if it grants an
 * account other than SYSTEM, Administrators, this process's account and the
 * creator/owner placeholders any access (or has no DACL: everyone), with
 * *out_sddl (LocalFree it) the DACL as SDDL; 0 if it does not; -1 if it
 * cannot be read (*out_err set). */
int sb_win_dacl_shared(const wchar_t *wpath, wchar_t **out_sddl, DWORD *out_err);

#endif
