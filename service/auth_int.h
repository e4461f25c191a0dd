/* Internals of service/auth.c that its unit tests look at. */
#ifndef SB_AUTH_INT_H
#define SB_AUTH_INT_H

#include "service/auth.h"

/* The work a password check of user does (the dummy entry's for an unknown
 * user): *pbkdf2 is 1 for PBKDF2-HMAC-SHA-512 (0: one SHA-512, Mosquitto
 * 1.x), *iterations its count. Returns 0, or SB_EINVAL without passwords. */
int sb_auth__check_cost(const sb_auth *a, const char *user, int *pbkdf2, int *iterations);

/* How many password hashes this process has computed (cache hits compute
 * none). */
unsigned long sb_auth__hash_count(void);

#endif
