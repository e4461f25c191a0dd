/*
 * `switchboard com ...` (docs/com.md): registering Switchboard.Broker with
 * COM, and the relay process COM starts for it. Windows only; elsewhere
 * the commands explain that and fail.
 *
 *   switchboard com register [--endpoint NAME] [--launch-permission SDDL]
 *                            [--access-permission SDDL]
 *   switchboard com unregister
 *   switchboard com status
 *   switchboard com server [--endpoint NAME]   (started by COM)
 */
#ifndef SB_COM_CMD_H
#define SB_COM_CMD_H

/* Runs `switchboard com <argv...>`; returns the process exit code. */
int sb_com_command(int argc, char **argv);

/* What `service install` and `service configure` do after the service:
 * registers with the defaults, printing what it did. Returns 0 or 1. */
int sb_com_register_defaults(void);

/* What `service uninstall` and `service unconfigure` do: unregisters,
 * quietly when nothing is registered. Returns 0 or 1. */
int sb_com_unregister_all(void);

/* The relay (`com server`): serves Switchboard.Broker until its last
 * object is released. Returns the process exit code. */
int sb_com_server_run(const char *endpoint);

#endif
