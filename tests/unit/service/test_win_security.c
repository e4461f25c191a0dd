/*
 * Windows: which DACLs count as private to the broker (SYSTEM,
 * Administrators, its own account, the creator/owner placeholders) for the
 * start-up warning about the data directory and the password file, and the
 * DACL the broker gives a directory it creates. Checked on security
 * descriptors built from SDDL, as Wine keeps no DACLs on files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "service/platform/win/security.h"

#include <sddl.h>

static int shared(const wchar_t *sddl)
{
    PSECURITY_DESCRIPTOR sd = NULL;
    PACL dacl = NULL;
    BOOL present = FALSE, defaulted;
    int rc;
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1, &sd, NULL))
        fail_msg("bad test SDDL %ls (error %lu)", sddl, (unsigned long)GetLastError());
    assert_true(GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted));
    rc = sb_win_acl_shared(present ? dacl : NULL);
    LocalFree(sd);
    return rc;
}

static void test_acl_shared(void **state)
{
    DWORD err;
    wchar_t *own = sb_win_own_sid(&err), sddl[512];
    (void)state;
    assert_non_null(own);
    _snwprintf(sddl, 512, L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;BA)(A;OICI;FA;;;%ls)", own);
    assert_int_equal(shared(sddl), 0);
    _snwprintf(sddl, 512, L"D:P(A;OICI;FA;;;SY)(A;OICI;FA;;;%ls)(A;OICI;FR;;;BU)", own);
    assert_int_equal(shared(sddl), 1);
    assert_int_equal(shared(L"D:P(A;;FA;;;SY)(A;;GR;;;WD)"), 1);
    assert_int_equal(shared(L"D:P(A;;FA;;;SY)(A;;GRGW;;;IU)"), 1);
    /* deny ACEs grant nothing */
    assert_int_equal(shared(L"D:P(D;;FA;;;WD)(A;;FA;;;SY)"), 0);
    /* what %ProgramData% passes on: the creator/owner placeholders */
    assert_int_equal(shared(L"D:(A;OICIIO;GA;;;CO)(A;;FA;;;OW)(A;;FA;;;BA)"), 0);
    /* no DACL at all: everyone */
    assert_int_equal(sb_win_acl_shared(NULL), 1);
    LocalFree(own);
}

static void test_private_dir_sd(void **state)
{
    PSECURITY_DESCRIPTOR sd;
    PACL dacl;
    BOOL present, defaulted;
    SECURITY_DESCRIPTOR_CONTROL control;
    DWORD revision;
    (void)state;
    /* this process's account */
    assert_int_equal(sb_win_private_dir_sd(&sd, NULL), 0);
    assert_true(GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted));
    assert_true(present);
    assert_int_equal(dacl->AceCount, 3);
    assert_int_equal(sb_win_acl_shared(dacl), 0);
    assert_true(GetSecurityDescriptorControl(sd, &control, &revision));
    assert_true(control & SE_DACL_PROTECTED);
    LocalFree(sd);
    /* a service's account; "": SYSTEM and Administrators only */
    assert_int_equal(sb_win_private_dir_sd(&sd, L"S-1-5-80-1-2-3-4-5"), 0);
    assert_true(GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted));
    assert_int_equal(dacl->AceCount, 3);
    assert_int_equal(sb_win_acl_shared(dacl), 1); /* not this process's account */
    LocalFree(sd);
    assert_int_equal(sb_win_private_dir_sd(&sd, L""), 0);
    assert_true(GetSecurityDescriptorDacl(sd, &present, &dacl, &defaulted));
    assert_int_equal(dacl->AceCount, 2);
    assert_int_equal(sb_win_acl_shared(dacl), 0);
    LocalFree(sd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acl_shared),
        cmocka_unit_test(test_private_dir_sd),
    };
    return cmocka_run_group_tests_name("win_security", tests, NULL, NULL);
}
