/*
 * `switchboard com register | unregister | status | server` (com_cmd.h,
 * docs/com.md): the machine-wide registration of Switchboard.Broker.
 *
 * Everything goes under HKLM\Software\Classes (Wine ignores per-user COM
 * classes, and a broker is a machine's): the class with its LocalServer32
 * (this executable's `com server`, with the endpoint to reach), the ProgIDs
 * Switchboard.Broker and Switchboard.Broker.1, the AppID with explicit
 * launch and access permissions, and the type library embedded in the
 * executable with its interfaces (RegisterTypeLib). The class, the
 * interfaces and the type library's win32 entry are written to the 32-bit
 * view as well, so that 32-bit clients (32-bit Office VBA) find the class
 * and marshal the interfaces. unregister removes all of it, in both views.
 */
#include "adapters/com/com_cmd.h"
#include "adapters/com/win/com_int.h"

#include "service/alloc.h"
#include "service/platform/win/utf.h"

#include <sddl.h>
#include <stdio.h>
#include <string.h>

/* {fa8a880f-c9c6-4079-8362-322e8119d9c3} */
const GUID APPID_Switchboard = {
    0xfa8a880f, 0xc9c6, 0x4079, {0x83, 0x62, 0x32, 0x2e, 0x81, 0x19, 0xd9, 0xc3}};

#define CLASSES L"Software\\Classes"
#define PROGID L"Switchboard.Broker"
#define PROGID_1 L"Switchboard.Broker.1"
#define EXE_NAME L"switchboard.exe"
#define SERVICE_ACCOUNT L"NT SERVICE\\Switchboard"
/* The proxy/stub class of typelib-marshaled (dual) interfaces and of
 * dispinterfaces, as RegisterTypeLib writes them. */
#define PS_OA_INTERFACE L"{00020424-0000-0000-C000-000000000046}"
#define PS_DISPATCH L"{00020420-0000-0000-C000-000000000046}"
/* COM_RIGHTS_EXECUTE | _EXECUTE_LOCAL (CC, DC) and _ACTIVATE_LOCAL (SW):
 * local only, never remote. */
#define LAUNCH_RIGHTS L"CCDCSW"
#define ACCESS_RIGHTS L"CCDC"

typedef struct reg_options {
    const char *endpoint;
    const char *launch; /* SDDL, NULL: the default */
    const char *access;
    int quiet;
} reg_options;

static void guid_text(REFGUID g, wchar_t out[40])
{
    StringFromGUID2(g, out, 40);
}

static void win_error(const char *what, DWORD code)
{
    char text[256];
    sb_win_strerror(code, text, sizeof text);
    fprintf(stderr, "switchboard com: %s: %s\n", what, text);
}

/* Sets a value under HKLM\Software\Classes\key in view (0 or
 * KEY_WOW64_32KEY); data NULL only creates the key. */
static int set_value(REGSAM view, const wchar_t *key, const wchar_t *name, DWORD type,
                     const void *data, DWORD len)
{
    wchar_t path[512];
    HKEY k;
    LONG r;
    _snwprintf(path, 512, CLASSES L"\\%ls", key);
    path[511] = 0;
    r = RegCreateKeyExW(HKEY_LOCAL_MACHINE, path, 0, NULL, 0, KEY_WRITE | view, NULL, &k, NULL);
    if (r != ERROR_SUCCESS) {
        char what[600];
        snprintf(what, sizeof what, "cannot create HKLM\\%ls%s", path,
                 r == ERROR_ACCESS_DENIED ? " (run it from an elevated prompt)" : "");
        win_error(what, (DWORD)r);
        return -1;
    }
    if (data != NULL)
        r = RegSetValueExW(k, name, 0, type, data, len);
    RegCloseKey(k);
    if (r != ERROR_SUCCESS) {
        win_error("cannot write a registry value", (DWORD)r);
        return -1;
    }
    return 0;
}

static int set_sz(REGSAM view, const wchar_t *key, const wchar_t *name, const wchar_t *value)
{
    return set_value(view, key, name, REG_SZ, value, (DWORD)((wcslen(value) + 1) * sizeof(wchar_t)));
}

/* Deletes HKLM\Software\Classes\key with everything under it; a missing
 * key is fine. */
static int delete_tree(REGSAM view, const wchar_t *key)
{
    HKEY classes;
    LONG r = RegOpenKeyExW(HKEY_LOCAL_MACHINE, CLASSES, 0, KEY_ALL_ACCESS | view, &classes);
    if (r != ERROR_SUCCESS)
        return r == ERROR_FILE_NOT_FOUND ? 0 : -1;
    r = RegDeleteTreeW(classes, key);
    if (r == ERROR_SUCCESS || r == ERROR_FILE_NOT_FOUND) {
        /* RegDeleteTree leaves the key itself on some systems */
        LONG d = RegDeleteKeyExW(classes, key, view, 0);
        (void)d;
        r = ERROR_SUCCESS;
    }
    RegCloseKey(classes);
    if (r != ERROR_SUCCESS) {
        char what[300];
        snprintf(what, sizeof what, "cannot delete HKLM\\" "Software\\Classes\\%ls", key);
        win_error(what, (DWORD)r);
        return -1;
    }
    return 0;
}

static int key_exists(REGSAM view, const wchar_t *key)
{
    wchar_t path[512];
    HKEY k;
    _snwprintf(path, 512, CLASSES L"\\%ls", key);
    path[511] = 0;
    if (RegOpenKeyExW(HKEY_LOCAL_MACHINE, path, 0, KEY_READ | view, &k) != ERROR_SUCCESS)
        return 0;
    RegCloseKey(k);
    return 1;
}

/* A self-relative security descriptor from SDDL, with owner and group
 * Administrators when the SDDL names none (COM requires both). */
static int permission_sd(const char *sddl, const wchar_t *rights, const wchar_t *service_sid,
                         PSECURITY_DESCRIPTOR *out, ULONG *out_len, const char *what)
{
    wchar_t buf[2048];
    if (sddl != NULL) {
        wchar_t *w = sb_utf8_to_wide(sddl);
        if (w == NULL) {
            fprintf(stderr, "switchboard com: %s: the SDDL is not valid UTF-8\n", what);
            return -1;
        }
        _snwprintf(buf, 2048, L"%ls%ls%ls", wcsstr(w, L"O:") != NULL ? L"" : L"O:BA",
                   wcsstr(w, L"G:") != NULL ? L"" : L"G:BA", w);
        sb_free(w);
    } else {
        /* Local interactive users, SYSTEM and the service's account. */
        _snwprintf(buf, 2048, L"O:BAG:BAD:(A;;%ls;;;IU)(A;;%ls;;;SY)%ls%ls%ls%ls%ls", rights,
                   rights, service_sid != NULL ? L"(A;;" : L"",
                   service_sid != NULL ? rights : L"", service_sid != NULL ? L";;;" : L"",
                   service_sid != NULL ? service_sid : L"", service_sid != NULL ? L")" : L"");
    }
    buf[2047] = 0;
    if (!ConvertStringSecurityDescriptorToSecurityDescriptorW(buf, SDDL_REVISION_1, out,
                                                              out_len)) {
        char text[256];
        sb_win_strerror(GetLastError(), text, sizeof text);
        fprintf(stderr, "switchboard com: %s: invalid SDDL \"%ls\": %s\n", what, buf, text);
        return -1;
    }
    return 0;
}

/* The SID of NT SERVICE\Switchboard as a string (LocalFree), or NULL where
 * virtual accounts cannot be resolved (Wine, older systems). */
static wchar_t *service_sid(void)
{
    BYTE sid[SECURITY_MAX_SID_SIZE];
    DWORD sid_len = sizeof sid, dom_len = 256;
    wchar_t domain[256], *text = NULL;
    SID_NAME_USE use;
    if (!LookupAccountNameW(NULL, SERVICE_ACCOUNT, sid, &sid_len, domain, &dom_len, &use) ||
        !ConvertSidToStringSidW(sid, &text))
        return NULL;
    return text;
}

static int exe_path(wchar_t *out, DWORD n)
{
    DWORD len = GetModuleFileNameW(NULL, out, n);
    return len == 0 || len >= n ? -1 : 0;
}

/* The class, its ProgID link and the interfaces for one registry view. */
static int write_class(REGSAM view, const wchar_t *command)
{
    wchar_t clsid[40], appid[40], libid[40], key[256];
    const GUID *ifaces[] = {&IID_IBroker, &IID_ISubscription, &IID_IMessage};
    int rc = 0;

    guid_text(&CLSID_Broker, clsid);
    guid_text(&APPID_Switchboard, appid);
    guid_text(&LIBID_Switchboard, libid);
    _snwprintf(key, 256, L"CLSID\\%ls", clsid);
    rc |= set_sz(view, key, NULL, L"Switchboard Broker");
    rc |= set_sz(view, key, L"AppID", appid);
    _snwprintf(key, 256, L"CLSID\\%ls\\LocalServer32", clsid);
    rc |= set_sz(view, key, NULL, command);
    _snwprintf(key, 256, L"CLSID\\%ls\\ProgID", clsid);
    rc |= set_sz(view, key, NULL, PROGID_1);
    _snwprintf(key, 256, L"CLSID\\%ls\\VersionIndependentProgID", clsid);
    rc |= set_sz(view, key, NULL, PROGID);
    _snwprintf(key, 256, L"CLSID\\%ls\\TypeLib", clsid);
    rc |= set_sz(view, key, NULL, libid);
    _snwprintf(key, 256, L"CLSID\\%ls\\Version", clsid);
    rc |= set_sz(view, key, NULL, L"1.0");
    if (view == 0)
        return rc;
    /* 32-bit clients marshal the interfaces through the type library. */
    for (size_t i = 0; i < sizeof ifaces / sizeof ifaces[0]; i++) {
        wchar_t iid[40];
        guid_text(ifaces[i], iid);
        _snwprintf(key, 256, L"Interface\\%ls\\ProxyStubClsid32", iid);
        rc |= set_sz(view, key, NULL, PS_OA_INTERFACE);
        _snwprintf(key, 256, L"Interface\\%ls\\ProxyStubClsid", iid);
        rc |= set_sz(view, key, NULL, PS_OA_INTERFACE);
        _snwprintf(key, 256, L"Interface\\%ls\\TypeLib", iid);
        rc |= set_sz(view, key, NULL, libid);
        rc |= set_sz(view, key, L"Version", L"1.0");
    }
    {
        wchar_t diid[40];
        guid_text(&DIID__ISubscriptionEvents, diid);
        _snwprintf(key, 256, L"Interface\\%ls\\ProxyStubClsid32", diid);
        rc |= set_sz(view, key, NULL, PS_DISPATCH);
        _snwprintf(key, 256, L"Interface\\%ls\\TypeLib", diid);
        rc |= set_sz(view, key, NULL, libid);
        rc |= set_sz(view, key, L"Version", L"1.0");
    }
    return rc;
}

static int do_register(const reg_options *o)
{
    wchar_t exe[MAX_PATH], command[MAX_PATH * 2 + 64], appid[40], clsid[40], key[256];
    wchar_t *wendpoint, *svc_sid;
    PSECURITY_DESCRIPTOR launch = NULL, access = NULL;
    ULONG launch_len = 0, access_len = 0;
    ITypeLib *tlb = NULL;
    HRESULT hr;
    int rc = 0;

    if (exe_path(exe, MAX_PATH) != 0) {
        fprintf(stderr, "switchboard com: cannot find the program's path\n");
        return 1;
    }
    wendpoint = sb_utf8_to_wide(o->endpoint);
    if (wendpoint == NULL || wcschr(wendpoint, L'"') != NULL || wendpoint[0] == 0) {
        fprintf(stderr, "switchboard com: invalid endpoint \"%s\"\n", o->endpoint);
        sb_free(wendpoint);
        return 1;
    }
    svc_sid = service_sid();
    if (permission_sd(o->launch, LAUNCH_RIGHTS, svc_sid, &launch, &launch_len,
                      "--launch-permission") != 0 ||
        permission_sd(o->access, ACCESS_RIGHTS, svc_sid, &access, &access_len,
                      "--access-permission") != 0) {
        rc = 1;
        goto done;
    }
    _snwprintf(command, sizeof command / sizeof command[0],
               L"\"%ls\" com server --endpoint \"%ls\"", exe, wendpoint);
    guid_text(&APPID_Switchboard, appid);
    guid_text(&CLSID_Broker, clsid);

    /* The type library first: a failure here leaves no half registration
     * that points at a missing one. */
    hr = LoadTypeLibEx(exe, REGKIND_NONE, &tlb);
    if (SUCCEEDED(hr))
        hr = RegisterTypeLib(tlb, exe, NULL);
    if (FAILED(hr)) {
        fprintf(stderr, "switchboard com: cannot register the type library of %ls (0x%08lx)%s\n",
                exe, (unsigned long)hr,
                hr == TYPE_E_REGISTRYACCESS ? " (run it from an elevated prompt)" : "");
        rc = 1;
        goto done;
    }
    if (write_class(0, command) != 0 || write_class(KEY_WOW64_32KEY, command) != 0)
        rc = 1;
    {
        wchar_t libid[40];
        guid_text(&LIBID_Switchboard, libid);
        _snwprintf(key, 256, L"TypeLib\\%ls\\1.0\\0\\win32", libid);
        rc |= set_sz(KEY_WOW64_32KEY, key, NULL, exe);
    }
    rc |= set_sz(0, PROGID, NULL, L"Switchboard Broker");
    rc |= set_sz(0, PROGID L"\\CLSID", NULL, clsid);
    rc |= set_sz(0, PROGID L"\\CurVer", NULL, PROGID_1);
    rc |= set_sz(0, PROGID_1, NULL, L"Switchboard Broker");
    rc |= set_sz(0, PROGID_1 L"\\CLSID", NULL, clsid);
    _snwprintf(key, 256, L"AppID\\%ls", appid);
    rc |= set_sz(0, key, NULL, L"Switchboard");
    rc |= set_value(0, key, L"LaunchPermission", REG_BINARY, launch, launch_len);
    rc |= set_value(0, key, L"AccessPermission", REG_BINARY, access, access_len);
    rc |= set_sz(0, L"AppID\\" EXE_NAME, L"AppID", appid);
    if (rc != 0) {
        rc = 1;
        goto done;
    }
    if (!o->quiet) {
        wchar_t *lt = NULL, *at = NULL;
        ConvertSecurityDescriptorToStringSecurityDescriptorW(launch, SDDL_REVISION_1,
                                                             DACL_SECURITY_INFORMATION, &lt, NULL);
        ConvertSecurityDescriptorToStringSecurityDescriptorW(access, SDDL_REVISION_1,
                                                             DACL_SECURITY_INFORMATION, &at, NULL);
        printf("Registered Switchboard.Broker (and Switchboard.Broker.1), 64- and 32-bit clients.\n"
               "  server:            %ls\n"
               "  launch permission: %ls\n"
               "  access permission: %ls\n",
               command, lt != NULL ? lt : L"?", at != NULL ? at : L"?");
        if (svc_sid == NULL)
            printf("  note: %ls cannot be resolved here; the service's account is not named\n",
                   SERVICE_ACCOUNT);
        LocalFree(lt);
        LocalFree(at);
    }
done:
    if (tlb != NULL)
        ITypeLib_Release(tlb);
    LocalFree(launch);
    LocalFree(access);
    LocalFree(svc_sid);
    sb_free(wendpoint);
    return rc;
}

static int do_unregister(int quiet)
{
    wchar_t appid[40], clsid[40], libid[40], key[256];
    const GUID *ifaces[] = {&IID_IBroker, &IID_ISubscription, &IID_IMessage,
                            &DIID__ISubscriptionEvents};
    REGSAM views[] = {0, KEY_WOW64_32KEY};
    int was = 0, rc = 0;

    guid_text(&APPID_Switchboard, appid);
    guid_text(&CLSID_Broker, clsid);
    guid_text(&LIBID_Switchboard, libid);
    _snwprintf(key, 256, L"CLSID\\%ls", clsid);
    was = key_exists(0, key) || key_exists(0, PROGID);
    (void)UnRegisterTypeLib(&LIBID_Switchboard, 1, 0, LOCALE_NEUTRAL, SYS_WIN64);
    (void)UnRegisterTypeLib(&LIBID_Switchboard, 1, 0, LOCALE_NEUTRAL, SYS_WIN32);
    for (size_t v = 0; v < 2; v++) {
        _snwprintf(key, 256, L"CLSID\\%ls", clsid);
        rc |= delete_tree(views[v], key);
        for (size_t i = 0; i < sizeof ifaces / sizeof ifaces[0]; i++) {
            wchar_t iid[40];
            guid_text(ifaces[i], iid);
            _snwprintf(key, 256, L"Interface\\%ls", iid);
            rc |= delete_tree(views[v], key);
        }
        _snwprintf(key, 256, L"TypeLib\\%ls", libid);
        rc |= delete_tree(views[v], key);
    }
    rc |= delete_tree(0, PROGID);
    rc |= delete_tree(0, PROGID_1);
    _snwprintf(key, 256, L"AppID\\%ls", appid);
    rc |= delete_tree(0, key);
    rc |= delete_tree(0, L"AppID\\" EXE_NAME);
    if (rc != 0)
        return 1;
    if (!quiet)
        printf(was ? "Unregistered Switchboard.Broker.\n"
                   : "Switchboard.Broker was not registered; nothing left of it.\n");
    return 0;
}

static int do_status(void)
{
    wchar_t clsid[40], path[300], cmd[1024];
    DWORD len = sizeof cmd;
    guid_text(&CLSID_Broker, clsid);
    _snwprintf(path, 300, CLASSES L"\\CLSID\\%ls\\LocalServer32", clsid);
    if (RegGetValueW(HKEY_LOCAL_MACHINE, path, NULL, RRF_RT_REG_SZ, NULL, cmd, &len) !=
        ERROR_SUCCESS) {
        printf("Switchboard.Broker is not registered (switchboard com register)\n");
        return 1;
    }
    printf("Switchboard.Broker is registered: %ls\n", cmd);
    return 0;
}

int sb_com_register_defaults(void)
{
    reg_options o = {SB_COM_DEFAULT_ENDPOINT, NULL, NULL, 0};
    HRESULT init = CoInitializeEx(NULL, COINIT_APARTMENTTHREADED);
    int rc = do_register(&o);
    if (SUCCEEDED(init))
        CoUninitialize();
    return rc;
}

int sb_com_unregister_all(void)
{
    HRESULT init = CoInitializeEx(NULL, COINIT_APARTMENTTHREADED);
    int rc = do_unregister(1);
    if (SUCCEEDED(init))
        CoUninitialize();
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f,
            "Usage:\n"
            "  switchboard com register [--endpoint NAME] [--launch-permission SDDL]\n"
            "                           [--access-permission SDDL]\n"
            "  switchboard com unregister\n"
            "  switchboard com status\n"
            "  switchboard com server [--endpoint NAME]\n"
            "\n"
            "register    registers Switchboard.Broker for every user (HKLM; elevated prompt)\n"
            "            for 64- and 32-bit clients. --endpoint: the pipe of the broker's\n"
            "            `type: com` adapter (default " SB_COM_DEFAULT_ENDPOINT "). Permissions:\n"
            "            who may start and call the COM server (default: interactive users,\n"
            "            SYSTEM and the service's account; local only)\n"
            "unregister  removes everything register wrote\n"
            "status      says whether it is registered (exit code 0) and how\n"
            "server      the process COM starts for Switchboard.Broker (not run by hand)\n");
}

int sb_com_command(int argc, char **argv)
{
    const char *cmd = argc > 0 ? argv[0] : NULL;
    reg_options o = {SB_COM_DEFAULT_ENDPOINT, NULL, NULL, 0};
    int rc;

    if (cmd == NULL || strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) {
        usage(cmd == NULL ? stderr : stdout);
        return cmd == NULL ? 2 : 0;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--endpoint") == 0 && i + 1 < argc)
            o.endpoint = argv[++i];
        else if (strcmp(argv[i], "--launch-permission") == 0 && i + 1 < argc &&
                 strcmp(cmd, "register") == 0)
            o.launch = argv[++i];
        else if (strcmp(argv[i], "--access-permission") == 0 && i + 1 < argc &&
                 strcmp(cmd, "register") == 0)
            o.access = argv[++i];
        else if (strcmp(cmd, "server") == 0 &&
                 (_stricmp(argv[i], "-Embedding") == 0 || _stricmp(argv[i], "/Embedding") == 0))
            continue; /* COM says it started us */
        else {
            fprintf(stderr, "switchboard com %s: unexpected argument '%s'\n", cmd, argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(cmd, "server") == 0)
        return sb_com_server_run(o.endpoint);
    if (strcmp(cmd, "status") == 0)
        return do_status();
    if (strcmp(cmd, "register") != 0 && strcmp(cmd, "unregister") != 0) {
        fprintf(stderr, "switchboard com: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    if (FAILED(CoInitializeEx(NULL, COINIT_APARTMENTTHREADED))) {
        fprintf(stderr, "switchboard com: cannot initialise COM\n");
        return 1;
    }
    rc = strcmp(cmd, "register") == 0 ? do_register(&o) : do_unregister(0);
    CoUninitialize();
    return rc;
}
