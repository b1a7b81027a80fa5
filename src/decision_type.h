/* _core.Decision: the answer of a limiter, and the instance layout other
 * binding files read (the header renderer) or fill (Limiter.hit).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class Decision:
 *         allowed: bool; limit: int; remaining: int
 *         reset_after: float; retry_after: float        # seconds
 *         reset_after_ns: int; retry_after_ns: int
 *         banned: bool          # refused by a ban, not by a rate
 *         def __bool__(self): return self.allowed
 */
#ifndef ST_DECISION_TYPE_H
#define ST_DECISION_TYPE_H

#include "limit.h"
#include "module.h"

typedef struct {
	PyObject_HEAD int allowed;
	int banned;
	int64_t limit;
	int64_t remaining;
	int64_t reset_after_ns;
	int64_t retry_after_ns;
} DecisionObject;

/* A new Decision holding `d`, taken from the module's free list when it
 * has one (a hit then allocates nothing). Returns a new reference, or
 * NULL with MemoryError set. Runs no Python code. */
ST_INLINE PyObject *st_decision_make(st_state *st, const st_decision *d)
{
	DecisionObject *o;

	if (ST_LIKELY(st->ndecisions > 0)) {
		o = (DecisionObject *)st->decisions[--st->ndecisions];
		PyObject_Init((PyObject *)o, st->decision_type);
	} else {
		o = PyObject_New(DecisionObject, st->decision_type);
		if (o == NULL)
			return NULL;
	}
	o->allowed = d->allowed;
	o->banned = d->banned;
	o->limit = d->limit;
	o->remaining = d->remaining;
	o->reset_after_ns = d->reset_after_ns;
	o->retry_after_ns = d->retry_after_ns;
	return (PyObject *)o;
}

/* True when `o` is a Decision of this module (the type is final). */
ST_INLINE int st_decision_check(st_state *st, PyObject *o)
{
	return Py_IS_TYPE(o, st->decision_type);
}

/* Creates _core.Decision into the state and adds it to the module.
 * Returns 0, or -1 with an exception set. */
int st_decision_exec(PyObject *module, st_state *st);

#endif /* ST_DECISION_TYPE_H */
