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

/* Renders the headers of Decision `d` with the RateHeaders `rh` (not
 * checked) into out[] (at most ST_NHDR new (name, value) tuples, str, or
 * lower-case bytes when `raw`), and which header each is into which[].
 * Returns how many, or -1 with an exception set (TypeError unless `d` is
 * a Decision; MemoryError), out[] then holding nothing. Runs no Python
 * code. */
Py_ssize_t st_rate_headers_render(PyObject *rh, PyObject *d, int raw,
                                  PyObject **out, int *which);

/* Whether `name` (bytes or str) is X-RateLimit-Limit, -Remaining or
 * -Reset, in any case. Runs no Python code. */
int st_is_x_header(PyObject *name);

/* Whether the list `headers` holds a (name, value) pair (tuple or list)
 * whose name is X-RateLimit-Limit in any case. Runs no Python code. */
int st_has_x_limit(PyObject *headers);

/* Creates _core.RateHeaders and the header names into the state and adds
 * the type to the module. Needs st->decision_type. Returns 0, or -1 with
 * an exception set. */
int st_rate_headers_exec(PyObject *module, st_state *st);

#endif /* ST_RATE_HEADERS_TYPE_H */
