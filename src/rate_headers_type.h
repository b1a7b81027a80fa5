/* _core.RateHeaders: the rate limit response headers of one (rule,
 * limiter) pair, rendered for a Decision in C (see rate_headers_type.c).
 */
#ifndef ST_RATE_HEADERS_TYPE_H
#define ST_RATE_HEADERS_TYPE_H

#include "module.h"

/* The header names, in the order they are sent. */
enum {
	ST_HDR_POLICY,    /* RateLimit-Policy */
	ST_HDR_RATELIMIT, /* RateLimit */
	ST_HDR_X_LIMIT,   /* X-RateLimit-Limit */
	ST_HDR_X_REMAIN,  /* X-RateLimit-Remaining */
	ST_HDR_X_RESET,   /* X-RateLimit-Reset */
	ST_NHDR
};

/* Creates _core.RateHeaders and the header names into the state and adds
 * the type to the module. Needs st->decision_type. Returns 0, or -1 with
 * an exception set. */
int st_rate_headers_exec(PyObject *module, st_state *st);

#endif /* ST_RATE_HEADERS_TYPE_H */
