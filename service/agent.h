/*
 * `switchboard agent`: the session agent (service/agent.c, docs/agent.md).
 */
#ifndef SB_AGENT_H
#define SB_AGENT_H

/* Runs `switchboard agent <argv...>`; returns the exit code: 0 stopped as
 * asked, 1 bad configuration, 2 usage, 3 connection lost or never made,
 * 4 refused by the service. */
int sb_agent_command(int argc, char **argv);

#endif
