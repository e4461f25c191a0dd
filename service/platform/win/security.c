/*
 * Windows security descriptors of the broker's own objects (security.h),
 * and the parts of service/platform.h that deal with them: the SDDL check
 * of the config, the private-file check at start and the admin pipe's DACL.
 */
#include "service/platform/win/security.h"
#include "service/alloc.h"
#include "service/log.h"
#include "service/platform.h"
#include "service/platform/win/utf.h"

#include <aclapi.h>
#include <sddl.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

/* SYSTEM, Administrators: full control of everything the broker owns. */
#define SID_SYSTEM L"S-1-5-18"
#define SID_ADMINS L"S-1-5-32-544"

wchar_t *sb_win_own_sid(DWORD *out_err)
{
    HANDLE token;
    union {
        TOKEN_USER user;
        char buf[512];
    } info;
    DWORD n;
    wchar_t *s = NULL;
    *out_err = 0;
    if (!OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token)) {
        *out_err = GetLastError();
        return NULL;
    }
    if (!GetTokenInformation(token, TokenUser, &info, sizeof(info), &n) ||
        !ConvertSidToStringSidW(info.user.User.Sid, &s)) {
        *out_err = GetLastError();
        s = NULL;
    }
    CloseHandle(token);
    return s;
}

DWORD sb_win_private_dir_sd(PSECURITY_DESCRIPTOR *out, const wchar_t *account_sid)
{
    wchar_t sddl[512], *own = NULL;
    DWORD code = 0;
    *out = NULL;
    if (account_sid == NULL) {
        own = sb_win_own_sid(&code);
        if (own == NULL)
            return code;
        account_sid = own;
    }
    if (account_sid[0] != L'\0')
        _snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]),
                   L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;%ls)", account_sid);
    else
        _snwprintf(sddl, sizeof(sddl) / sizeof(sddl[0]), L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)");
    sddl[sizeof(sddl) / sizeof(sddl[0]) - 1] = 0;
    if (own != NULL)
        LocalFree(own);
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, out, NULL)) {
        *out = NULL;
        return GetLastError();
    }
    return 0;
}

/* Accounts that may appear in a private DACL. CREATOR OWNER and OWNER
 * RIGHTS stand for whoever creates or owns a file: the broker, for what it
 * creates in its data directory. */
static int sid_allowed(PSID sid, PSID own)
{
    wchar_t *s = NULL;
    int ok;
    if (own != NULL && EqualSid(sid, own))
        return 1;
    if (!ConvertSidToStringSidW(sid, &s))
        return 0;
    ok = wcscmp(s, SID_SYSTEM) == 0 || wcscmp(s, SID_ADMINS) == 0 || wcscmp(s, L"S-1-3-0") == 0 ||
         wcscmp(s, L"S-1-3-4") == 0;
    LocalFree(s);
    return ok;
}

static PSID own_psid(void)
{
    DWORD code;
    wchar_t *s = sb_win_own_sid(&code);
    PSID sid = NULL;
    if (s != NULL) {
        if (!ConvertStringSidToSidW(s, &sid))
            sid = NULL;
        LocalFree(s);
    }
    return sid;
}

int sb_win_acl_shared(const ACL *dacl)
{
    PSID own;
    int shared = 0;
    if (dacl == NULL)
        return 1; /* no DACL: everyone has full access */
    own = own_psid();
    for (DWORD i = 0; i < dacl->AceCount && !shared; i++) {
        ACE_HEADER *h;
        if (!GetAce((PACL)dacl, i, (void **)&h))
            continue;
        /* Object and callback ACEs are for directory-service objects and
         * conditions, not files. */
        if (h->AceType == ACCESS_ALLOWED_ACE_TYPE) {
            ACCESS_ALLOWED_ACE *a = (ACCESS_ALLOWED_ACE *)h;
            if (a->Mask != 0 && !sid_allowed((PSID)&a->SidStart, own))
                shared = 1;
        }
    }
    if (own != NULL)
        LocalFree(own);
    return shared;
}

int sb_win_dacl_shared(const wchar_t *wpath, wchar_t **out_sddl, DWORD *out_err)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    PACL dacl = NULL;
    DWORD code;
    int shared;

    *out_sddl = NULL;
    *out_err = 0;
    code = GetNamedSecurityInfoW(wpath, SE_FILE_OBJECT, DACL_SECURITY_INFORMATION, NULL, NULL,
                                 &dacl, NULL, &sd);
    if (code != ERROR_SUCCESS) {
        *out_err = code;
        return -1;
    }
    shared = sb_win_acl_shared(dacl);
    if (shared && !ConvertSecurityDescriptorToStringSecurityDescriptorW(
                      sd, SDDL_REVISION_1, DACL_SECURITY_INFORMATION, out_sddl, NULL))
        *out_sddl = NULL;
    LocalFree(sd);
    return shared;
}

/* ---- service/platform.h ---- */

int sb_platform_sddl_check(const char *sddl, char *why, size_t why_len)
{
    wchar_t *w = sb_utf8_to_wide(sddl);
    PSECURITY_DESCRIPTOR sd = NULL;
    if (w == NULL) {
        snprintf(why, why_len, "not valid UTF-8");
        return -1;
    }
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(w, SDDL_REVISION_1, &sd, NULL)) {
        DWORD code = GetLastError();
        char text[200];
        sb_win_strerror(code, text, sizeof(text));
        snprintf(why, why_len, "%s (error %lu)", text, (unsigned long)code);
        sb_free(w);
        return -1;
    }
    LocalFree(sd);
    sb_free(w);
    return 1;
}

int sb_platform_warn_if_shared(const char *path, const char *what)
{
    wchar_t *w = sb_utf8_to_wide(path), *sddl = NULL;
    char *text;
    DWORD code;
    int shared;
    if (w == NULL)
        return 0;
    shared = sb_win_dacl_shared(w, &sddl, &code);
    sb_free(w);
    if (shared < 0) {
        char msg[200];
        sb_win_strerror(code, msg, sizeof(msg));
        sb_debug(NULL, "cannot read the permissions of %s %s: %s", what, path, msg);
        return 0;
    }
    if (shared == 0)
        return 0;
    text = sddl != NULL ? sb_wide_to_utf8(sddl) : NULL;
    sb_warn(NULL,
            "the %s %s is accessible to other accounts (DACL %s): other users of this machine "
            "may read what it holds; grant only SYSTEM, Administrators and the broker's account "
            "(what `switchboard service install` sets up)",
            what, path, text != NULL ? text : "(none: everyone has full access)");
    sb_free(text);
    if (sddl != NULL)
        LocalFree(sddl);
    return 1;
}

/* 1 if dacl has an allow ACE giving sid all access. */
static int grants_all(PACL dacl, PSID sid)
{
    for (DWORD i = 0; i < dacl->AceCount; i++) {
        ACE_HEADER *h;
        if (GetAce(dacl, i, (void **)&h) && h->AceType == ACCESS_ALLOWED_ACE_TYPE) {
            ACCESS_ALLOWED_ACE *a = (ACCESS_ALLOWED_ACE *)h;
            if (EqualSid((PSID)&a->SidStart, sid) &&
                (a->Mask == GENERIC_ALL || (a->Mask & FILE_ALL_ACCESS) == FILE_ALL_ACCESS))
                return 1;
        }
    }
    return 0;
}

/* sd with an ACE for `own` (all access) appended to its DACL, as SDDL
 * (LocalFree), or NULL with *out_err set. */
static wchar_t *add_own_ace(PSECURITY_DESCRIPTOR sd, PSID own, DWORD *out_err)
{
    SECURITY_DESCRIPTOR abs;
    SECURITY_DESCRIPTOR_CONTROL control;
    PACL dacl = NULL, sacl = NULL, acl = NULL;
    PSID owner = NULL, group = NULL;
    BOOL present = FALSE, sacl_present = FALSE, defaulted;
    DWORD revision, size, info = DACL_SECURITY_INFORMATION;
    wchar_t *out = NULL;

    *out_err = 0;
    if (!GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted) ||
        !GetSecurityDescriptorControl(sd, &control, &revision) ||
        !GetSecurityDescriptorOwner(sd, &owner, &defaulted) ||
        !GetSecurityDescriptorGroup(sd, &group, &defaulted) ||
        !GetSecurityDescriptorSacl(sd, &sacl_present, &sacl, &defaulted))
        goto fail;
    size = (dacl != NULL ? dacl->AclSize : sizeof(ACL)) + sizeof(ACCESS_ALLOWED_ACE) +
           GetLengthSid(own);
    acl = LocalAlloc(LPTR, size);
    if (acl == NULL || !InitializeAcl(acl, size, dacl != NULL ? dacl->AclRevision : ACL_REVISION))
        goto fail;
    for (DWORD i = 0; dacl != NULL && i < dacl->AceCount; i++) {
        ACE_HEADER *h;
        if (!GetAce(dacl, i, (void **)&h) ||
            !AddAce(acl, dacl->AclRevision, MAXDWORD, h, h->AceSize))
            goto fail;
    }
    if (!AddAccessAllowedAce(acl, acl->AclRevision, GENERIC_ALL, own) ||
        !InitializeSecurityDescriptor(&abs, SECURITY_DESCRIPTOR_REVISION) ||
        !SetSecurityDescriptorDacl(&abs, TRUE, acl, FALSE))
        goto fail;
    if (owner != NULL) {
        SetSecurityDescriptorOwner(&abs, owner, FALSE);
        info |= OWNER_SECURITY_INFORMATION;
    }
    if (group != NULL) {
        SetSecurityDescriptorGroup(&abs, group, FALSE);
        info |= GROUP_SECURITY_INFORMATION;
    }
    if (sacl_present) {
        SetSecurityDescriptorSacl(&abs, TRUE, sacl, FALSE);
        info |= SACL_SECURITY_INFORMATION;
    }
    SetSecurityDescriptorControl(&abs, SE_DACL_PROTECTED | SE_DACL_AUTO_INHERITED,
                                 control & (SE_DACL_PROTECTED | SE_DACL_AUTO_INHERITED));
    if (!ConvertSecurityDescriptorToStringSecurityDescriptorW(&abs, SDDL_REVISION_1, info, &out,
                                                              NULL))
        goto fail;
    LocalFree(acl);
    return out;
fail:
    *out_err = GetLastError();
    if (acl != NULL)
        LocalFree(acl);
    return NULL;
}

int sb_platform_admin_security(char **out, const char *configured, sb_error *err)
{
    wchar_t *own = NULL, *w = NULL, *result = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    PSID own_sid = NULL;
    BOOL present = FALSE, defaulted;
    PACL dacl = NULL;
    DWORD code = 0;
    char text[256];
    int rc = 0;

    *out = NULL;
    own = sb_win_own_sid(&code);
    if (own == NULL)
        goto win_error;
    if (configured == NULL) {
        /* No interactive users, no network: only who administers the
         * machine and the broker itself. */
        size_t n = wcslen(own) + 64;
        w = sb_malloc(n * sizeof(wchar_t));
        if (w == NULL) {
            rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
            goto done;
        }
        _snwprintf(w, n, L"D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;%ls)", own);
        w[n - 1] = 0;
        *out = sb_wide_to_utf8(w);
        if (*out == NULL)
            rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
        goto done;
    }
    w = sb_utf8_to_wide(configured);
    if (w == NULL) {
        rc = sb_error_set(err, SB_ECONFIG, 0, "broker.admin.security: not valid UTF-8");
        goto done;
    }
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(w, SDDL_REVISION_1, &sd, NULL)) {
        code = GetLastError();
        sb_win_strerror(code, text, sizeof(text));
        rc = sb_error_set(err, SB_ECONFIG, (int)code,
                          "broker.admin.security: invalid security descriptor \"%s\": %s",
                          configured, text);
        goto done;
    }
    if (!ConvertStringSidToSidW(own, &own_sid) ||
        !GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted))
        goto win_error;
    /* The broker's account must keep creating instances of its own pipe:
     * add it when the configured DACL leaves it out (a NULL DACL already
     * lets everyone in). */
    if (!present || dacl == NULL || grants_all(dacl, own_sid)) {
        *out = sb_strdup(configured);
    } else {
        result = add_own_ace(sd, own_sid, &code);
        if (result == NULL)
            goto win_error;
        *out = sb_wide_to_utf8(result);
    }
    if (*out == NULL)
        rc = sb_error_set(err, SB_ENOMEM, 0, "out of memory");
    goto done;
win_error:
    if (code == 0)
        code = GetLastError();
    sb_win_strerror(code, text, sizeof(text));
    rc = sb_error_set(err, sb_error_from_win32(code), (int)code,
                      "admin endpoint: cannot build its security descriptor: %s", text);
done:
    if (own != NULL)
        LocalFree(own);
    if (own_sid != NULL)
        LocalFree(own_sid);
    if (sd != NULL)
        LocalFree(sd);
    if (result != NULL)
        LocalFree(result);
    sb_free(w);
    return rc;
}
