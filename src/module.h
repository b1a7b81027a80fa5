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

/* Decisions kept for reuse: a hit allocates nothing in the common case. */
#define ST_DECISION_FREELIST 64

typedef struct {
	PyTypeObject *limiter_type;     /* _core.Limiter */
	PyTypeObject *decision_type;    /* _core.Decision */
	PyTypeObject *cache_type;       /* _core.Cache */
	PyTypeObject *cached_call_type; /* _core.CachedCall */
	PyTypeObject *cache_info_type;  /* _core.CacheInfo */
	PyObject *kwd_mark; /* separates args from kwargs in cache keys */
	PyObject *str_cost; /* interned keyword names */
	PyObject *str_default;
	PyObject *str_ttl;
	st_fastclock clock; /* calibrated once; limiters copy its rate */
	int ndecisions;     /* entries used in `decisions` */
	PyObject
	    *decisions[ST_DECISION_FREELIST]; /* freed, type ref dropped */
} st_state;

extern PyModuleDef st_module_def;

/* The module state for an instance of one of our types, or of a Python
 * subclass of one. Returns NULL with an exception set if `type` is not. */
st_state *st_state_from_type(PyTypeObject *type);

/* Each binding file creates its types into the state and adds them to the
 * module. They return 0, or -1 with an exception set. */
int st_limiter_exec(PyObject *module, st_state *st);
int st_cache_exec(PyObject *module, st_state *st);

/* The clock policy of every Limiter and Cache given clock=: calls the
 * user's clock (a callable returning seconds) and converts the reading to
 * integer nanoseconds. A reading must be a real number (TypeError
 * otherwise), finite, >= 0 and below ST_MAX_CLOCK_NS (ValueError
 * otherwise). A reading earlier than *last_ns is taken as *last_ns: time
 * never runs backwards for one object, whether the clock stepped back or
 * another thread's later reading was stored first (the comparison and the
 * store run under the GIL once the clock has returned). Stores the result
 * in *now and *last_ns and returns 0, or returns -1 with an exception set
 * (the clock's own, or the above) and changes nothing.
 *
 * Runs Python code: call it before touching any structure, and re-check
 * whatever the clock could have changed (it may even re-initialise the
 * object that owns it: the call holds its own reference to `clock`). */
int st_read_clock(PyObject *clock, int64_t *last_ns, int64_t *now);

/* Matches a FASTCALL keyword name: by pointer against the interned name,
 * then by value. */
static inline int st_kw_is(PyObject *name, PyObject *interned)
{
	return name == interned || PyUnicode_Compare(name, interned) == 0;
}

#endif /* ST_MODULE_H */
