/* Python bindings for _core.Decision (the layout is in decision_type.h).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     @final
 *     class Decision:
 *         def __init__(self, allowed, limit, remaining, reset_after=0.0,
 *                      retry_after=0.0, banned=False): ...
 *             # counts >= 0, seconds >= 0
 *         allowed: bool; limit: int; remaining: int
 *         reset_after: float; retry_after: float        # seconds
 *         reset_after_ns: int; retry_after_ns: int
 *         banned: bool          # refused by a ban (Penalty), not a rate
 *         def __bool__(self): return self.allowed
 *         def __eq__(self, other): ...                  # field by field
 */
#include "decision_type.h"

#include "args.h"

/* Decision(allowed, limit, remaining, reset_after=0.0, retry_after=0.0,
 * banned=False):
 * counts are ints in [0, INT64_MAX] and times finite seconds >= 0
 * (ValueError otherwise). Returns a new reference, or NULL with an
 * exception set. May run Python code (__index__, __float__). */
static PyObject *decision_new(PyTypeObject *type, PyObject *args,
                              PyObject *kwds)
{
	static char *kwlist[] = {"allowed",     "limit",       "remaining",
	                         "reset_after", "retry_after", "banned",
	                         NULL};
	int allowed, banned = 0;
	long long limit, remaining;
	PyObject *limit_o, *remaining_o, *reset = NULL, *retry = NULL;
	int64_t reset_ns = 0, retry_ns = 0;
	DecisionObject *o;

	if (!PyArg_ParseTupleAndKeywords(
	        args, kwds, "pOO|OOp:Decision", kwlist, &allowed, &limit_o,
	        &remaining_o, &reset, &retry, &banned))
		return NULL;
	if (banned && allowed) {
		PyErr_SetString(PyExc_ValueError,
		                "a banned decision cannot be allowed");
		return NULL;
	}
	if (st_count_arg(limit_o, "limit", &limit) < 0 ||
	    st_count_arg(remaining_o, "remaining", &remaining) < 0)
		return NULL;
	if (reset && st_seconds_to_ns(reset, "reset_after", &reset_ns) < 0)
		return NULL;
	if (retry && st_seconds_to_ns(retry, "retry_after", &retry_ns) < 0)
		return NULL;
	o = (DecisionObject *)type->tp_alloc(type, 0);
	if (o == NULL)
		return NULL;
	o->allowed = allowed;
	o->banned = banned;
	o->limit = limit;
	o->remaining = remaining;
	o->reset_after_ns = reset_ns;
	o->retry_after_ns = retry_ns;
	return (PyObject *)o;
}

/* Keeps the memory on the module's free list while it has room (the
 * instance is unreachable: its type reference is dropped here). */
static void decision_dealloc(DecisionObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	st_state *st = PyType_GetModuleState(tp);

	/* The type is not subclassable, so every instance has the plain
	 * size and can be kept for reuse. */
	if (st != NULL && st->ndecisions < ST_DECISION_FREELIST)
		st->decisions[st->ndecisions++] = (PyObject *)self;
	else
		tp->tp_free(self);
	Py_DECREF(tp);
}

/* A decision is true when the hit was allowed. */
static int decision_bool(DecisionObject *self)
{
	return self->allowed;
}

/* Decision(allowed=..., limit=..., remaining=..., reset_after=...,
 * retry_after=...), the times in seconds. */
static PyObject *decision_repr(DecisionObject *self)
{
	char reset[32], retry[32];
	PyOS_snprintf(reset, sizeof(reset), "%.9g",
	              (double)self->reset_after_ns / 1e9);
	PyOS_snprintf(retry, sizeof(retry), "%.9g",
	              (double)self->retry_after_ns / 1e9);
	return PyUnicode_FromFormat(
	    "Decision(allowed=%s, limit=%lld, remaining=%lld, "
	    "reset_after=%s, retry_after=%s%s)",
	    self->allowed ? "True" : "False", (long long)self->limit,
	    (long long)self->remaining, reset, retry,
	    self->banned ? ", banned=True" : "");
}

/* == and != field by field against another Decision; NotImplemented
 * for anything else. */
static PyObject *decision_richcompare(PyObject *a, PyObject *b, int op)
{
	DecisionObject *x = (DecisionObject *)a, *y = (DecisionObject *)b;
	int eq;
	if (!PyObject_TypeCheck(b, Py_TYPE(a)) || (op != Py_EQ && op != Py_NE))
		Py_RETURN_NOTIMPLEMENTED;
	eq = x->allowed == y->allowed && x->banned == y->banned &&
	     x->limit == y->limit && x->remaining == y->remaining &&
	     x->reset_after_ns == y->reset_after_ns &&
	     x->retry_after_ns == y->retry_after_ns;
	return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

/* The getters: each returns a new reference, or NULL on MemoryError. */
static PyObject *decision_allowed(DecisionObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->allowed);
}

static PyObject *decision_banned(DecisionObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->banned);
}

static PyObject *decision_limit(DecisionObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->limit);
}

static PyObject *decision_remaining(DecisionObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->remaining);
}

static PyObject *decision_reset_after(DecisionObject *self, void *c)
{
	(void)c;
	return PyFloat_FromDouble((double)self->reset_after_ns / 1e9);
}

static PyObject *decision_retry_after(DecisionObject *self, void *c)
{
	(void)c;
	return PyFloat_FromDouble((double)self->retry_after_ns / 1e9);
}

static PyObject *decision_reset_after_ns(DecisionObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->reset_after_ns);
}

static PyObject *decision_retry_after_ns(DecisionObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->retry_after_ns);
}

static PyGetSetDef decision_getset[] = {
    {"allowed", (getter)decision_allowed, NULL,
     "True when the hit was allowed (and, for hit, consumed).", NULL},
    {"limit", (getter)decision_limit, NULL,
     "Capacity of the binding rate: its burst or N per window.", NULL},
    {"remaining", (getter)decision_remaining, NULL,
     "Hits of cost 1 the binding rate still allows right now.", NULL},
    {"reset_after", (getter)decision_reset_after, NULL,
     "Seconds until the binding rate is back to full capacity.", NULL},
    {"retry_after", (getter)decision_retry_after, NULL,
     "Seconds until the same hit would be allowed; 0.0 when allowed.", NULL},
    {"reset_after_ns", (getter)decision_reset_after_ns, NULL,
     "reset_after in integer nanoseconds.", NULL},
    {"retry_after_ns", (getter)decision_retry_after_ns, NULL,
     "retry_after in integer nanoseconds.", NULL},
    {"banned", (getter)decision_banned, NULL,
     "True when refused by a ban (a limiter's Penalty), not by a rate: "
     "retry_after\nis then the time left on the ban.",
     NULL},
    {NULL},
};

PyDoc_STRVAR(decision_doc,
             "Decision(allowed, limit, remaining, reset_after=0.0, "
             "retry_after=0.0, banned=False)\n--\n\n"
             "The answer to a hit or a peek. It is true when allowed. When a "
             "limiter has\nseveral rates, the fields describe the most "
             "restrictive one.");

static PyType_Slot decision_slots[] = {
    {Py_tp_doc, (void *)decision_doc},
    {Py_tp_new, decision_new},
    {Py_tp_dealloc, decision_dealloc},
    {Py_tp_repr, decision_repr},
    {Py_tp_richcompare, decision_richcompare},
    {Py_tp_getset, decision_getset},
    {Py_nb_bool, decision_bool},
    {0, NULL},
};

static PyType_Spec decision_spec = {
    .name = "stanchion._core.Decision",
    .basicsize = sizeof(DecisionObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = decision_slots,
};

/* See decision_type.h. */
int st_decision_exec(PyObject *module, st_state *st)
{
	st->decision_type = (PyTypeObject *)PyType_FromModuleAndSpec(
	    module, &decision_spec, NULL);
	if (st->decision_type == NULL)
		return -1;
	return PyModule_AddType(module, st->decision_type);
}
