/* The stanchion._core module state and the hooks each binding file exports.
 *
 * Every type is a heap type created per module object (multi-phase init),
 * so a module can be re-imported or loaded in a subinterpreter; code that
 * runs with only an instance at hand reaches the state through the
 * pointer the instance stored when it was created (the instance keeps
 * its type, and so the module, alive).
 */
#ifndef ST_MODULE_H
#define ST_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "clock.h"
#include "limit.h"
#include "penalty.h"

/* Decisions kept for reuse: a hit allocates nothing in the common case. */
#define ST_DECISION_FREELIST 64
/* Holds kept for reuse, the same way. */
#define ST_HOLD_FREELIST 32

typedef struct {
	PyTypeObject *limiter_type;      /* _core.Limiter */
	PyTypeObject *decision_type;     /* _core.Decision */
	PyTypeObject *cache_type;        /* _core.Cache */
	PyTypeObject *cached_call_type;  /* _core.CachedCall */
	PyTypeObject *cache_info_type;   /* _core.CacheInfo */
	PyTypeObject *rate_headers_type; /* _core.RateHeaders */
	PyTypeObject *header_send_type;  /* _core.HeaderSend */
	PyTypeObject *header_start_type; /* _core.HeaderStart */
	PyTypeObject *gate_type;         /* _core.Gate */
	PyTypeObject *shm_limiter_type;  /* _core.SharedMemoryLimiter */
	PyTypeObject *conc_type;         /* _core.Concurrency */
	PyTypeObject *hold_type;         /* _core.Hold */
	PyTypeObject *ready_type;        /* _core._Ready */
	PyTypeObject *conc_shm_type;     /* _core.SharedMemoryConcurrency */
	PyTypeObject *logparser_type;    /* _core.LogParser */
	PyObject *hdr_str[5];   /* header names: RateLimit-Policy, ... */
	PyObject *hdr_bytes[5]; /* the same, lower-case latin-1 (ASGI) */
	PyObject *hdr_lower[5]; /* the same, lower-case str (Django) */
	PyObject *kwd_mark;     /* separates args from kwargs in cache keys */
	PyObject *str_cost;     /* interned keyword names */
	PyObject *str_default;
	PyObject *str_ttl;
	PyObject *str_type; /* ASGI message keys and the start type */
	PyObject *str_headers;
	PyObject *str_response_start;
	st_fastclock clock; /* calibrated once; limiters copy its rate */
	int ndecisions;     /* entries used in `decisions` */
	PyObject
	    *decisions[ST_DECISION_FREELIST]; /* freed, type ref dropped */
	int nholds;                           /* entries used in `holds` */
	PyObject *holds[ST_HOLD_FREELIST];    /* freed Holds (GC memory) */
	PyObject *ready_none; /* an awaitable done at once with None */
	PyObject *tracker;    /* testhooks.h: told of new objects, or NULL */
	Py_ssize_t disabled;  /* testhooks.h: open disabled() blocks */
} st_state;

extern PyModuleDef st_module_def;

/* The module state for an instance of one of our types, or of a Python
 * subclass of one. Returns NULL with an exception set if `type` is not. */
st_state *st_state_from_type(PyTypeObject *type);

/* Each binding file creates its types into the state and adds them to the
 * module. They return 0, or -1 with an exception set. */
int st_decision_exec(PyObject *module, st_state *st);
int st_limiter_exec(PyObject *module, st_state *st);
int st_cache_exec(PyObject *module, st_state *st);
int st_cached_exec(PyObject *module, st_state *st);
int st_cache_info_exec(PyObject *module, st_state *st);
int st_rate_headers_exec(PyObject *module, st_state *st);
int st_header_send_exec(PyObject *module, st_state *st);
int st_shm_limiter_exec(PyObject *module, st_state *st);
int st_gate_exec(PyObject *module, st_state *st);
int st_conc_exec(PyObject *module, st_state *st);
int st_conc_shm_exec(PyObject *module, st_state *st);
int st_logparser_exec(PyObject *module, st_state *st);
int st_testhooks_exec(PyObject *module, st_state *st);

/* The compiled policy and max_keys of a _core.Limiter `obj` (limiter_type.c),
 * for engines that must decide exactly as it does. Returns 0, or -1 with a
 * TypeError (not a Limiter) or RuntimeError (not initialised). */
int st_limiter_policy(st_state *st, PyObject *obj, st_policy *policy,
                      size_t *max_keys);

/* Limiter.hit(key, cost) of a _core.Limiter `obj` (or a subclass: its
 * Python methods are not called) without building a Decision: fills *d.
 * Returns 0, or -1 with an exception set (TypeError: not a Limiter or a
 * bad key; ValueError: a cost out of range; RuntimeError: not
 * initialised). Python code runs only in the limiter's injected clock
 * and its ban callback; the caller holds references to `obj` and `key`. */
int st_limiter_hit(st_state *st, PyObject *obj, PyObject *key, int64_t cost,
                   st_decision *d);

/* The penalty of a _core.Limiter `obj` already checked by
 * st_limiter_policy: returns 1 and fills *penalty when it has one, else
 * 0. */
int st_limiter_penalty(PyObject *obj, st_penalty *penalty);

#endif /* ST_MODULE_H */
