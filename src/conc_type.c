/* Python bindings for the concurrency engine (conc.h): _core.Concurrency
 * and the _core.Hold it hands out.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class Concurrency:
 *         def __init__(self, limit, queue=0, timeout=None, priorities=1,
 *                      reserve=0, max_keys=100_000): ...
 *         def hold(self, key=None, /, *, priority=0, timeout=<default>)
 *             -> Hold: ...
 *         def in_flight(self, key=None) -> int: ...
 *         def queued(self, key=None) -> int: ...
 *         def stats(self) -> dict: ...
 *         def _enter_slow(self, hold): ...   # a subclass's: queue, wait
 *
 *     class Hold:                            # one use at a time
 *         def __enter__(self): take a free slot, else
 *                              return self.owner._enter_slow(self)
 *         def __exit__(self, *exc): self.release()
 *         def release(self): give the slot back (to the next waiter)
 *         def _try(self) -> bool: take a free slot, or change nothing
 *         def _queue(self, wake) -> int: HELD, WAITING or a refusal;
 *             `wake()` is called once the hold leaves the queue for
 *             another reason than _cancel (a slot, or shed)
 *         def _cancel(self) -> bool: leave the queue if still in it
 *
 * The C parts run under the GIL, each method in one piece: no Python code
 * runs while the engine's structures are inconsistent. Wakes (Python
 * callables) run after the engine is consistent again, and a waiter's
 * fate is decided by its `state`, set here, never by which Python
 * callback ran first: a waiter that gives up calls _cancel(), which says
 * whether it was still queued; if not, it was granted (it then holds the
 * slot and must release it) or shed.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "args.h"
#include "clock.h"
#include "conc.h"
#include "module.h"
#include "testhooks.h"

/* Key kinds in the table, as in the Limiter's. */
#define KEY_STR 1
#define KEY_BYTES 2

/* Hold states. */
#define H_IDLE 0
#define H_WAITING 1
#define H_HELD 2
#define H_SHED 3

/* Results of Hold._queue. */
#define Q_HELD 0
#define Q_WAITING 1
#define Q_FULL 2
#define Q_TIMEOUT 3
#define Q_KEYS 4

typedef struct {
	PyObject_HEAD st_state *st; /* module state: the Hold type */
	cc_table t;                 /* the engine */
	st_fastclock clock;         /* hold durations, for retry_after */
	int64_t mean_ns;            /* running mean hold time; 0 = none */
	uint32_t ticks;             /* free-slot holds, to sample 1 in 8 */
	double timeout;             /* default wait, seconds; < 0 = None */
	int ready;                  /* __init__ succeeded */
} ConcObject;

typedef struct {
	PyObject_HEAD cc_node node; /* the engine's link while WAITING */
	ConcObject *owner;          /* strong */
	PyObject *key;              /* strong; None = the global key */
	PyObject *wake;             /* strong, set while WAITING */
	cc_key *k;                  /* the key state while WAITING or HELD */
	double timeout;             /* seconds; < 0 = None */
	int64_t since_ns;           /* when the slot was taken; 0: not timed */
	int lane;                   /* priority */
	int state;                  /* H_* */
} HoldObject;

#define HOLD_OF(n) ((HoldObject *)((char *)(n)-offsetof(HoldObject, node)))

/* =========================================================================
 * Arguments
 * ========================================================================= */

/* An int argument in [lo, hi]: TypeError for a non-int (or bool),
 * ValueError out of range. */
static int int_arg(PyObject *v, const char *what, long long lo, long long hi,
                   long long *out)
{
	int overflow;
	long long x;

	if (!PyLong_Check(v) || PyBool_Check(v)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s",
		             what, Py_TYPE(v)->tp_name);
		return -1;
	}
	x = PyLong_AsLongLongAndOverflow(v, &overflow);
	if (x == -1 && PyErr_Occurred())
		return -1;
	if (overflow != 0 || x < lo || x > hi) {
		PyErr_Format(PyExc_ValueError,
		             "%s must be between %lld and %lld, got %R", what,
		             lo, hi, v);
		return -1;
	}
	*out = x;
	return 0;
}

/* A wait in seconds: None (as long as the queue allows; also +inf) gives
 * -1.0, else a number >= 0. TypeError for a non-number (or bool),
 * ValueError for NaN or a negative number. */
static int timeout_arg(PyObject *v, double *out)
{
	double d;

	if (v == Py_None) {
		*out = -1.0;
		return 0;
	}
	if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
		PyErr_Format(PyExc_TypeError,
		             "timeout must be None or a number of seconds, "
		             "not %.100s",
		             Py_TYPE(v)->tp_name);
		return -1;
	}
	d = st_to_double(v);
	if (d == -1.0 && PyErr_Occurred())
		return -1;
	if (isnan(d) || d < 0.0) {
		PyErr_Format(PyExc_ValueError,
		             "timeout must be None or >= 0 seconds, got %R",
		             v);
		return -1;
	}
	*out = isinf(d) ? -1.0 : d;
	return 0;
}

/* A key: None, str or bytes (a TypeError otherwise). */
static int key_arg(PyObject *key)
{
	if (key == Py_None || PyUnicode_Check(key) || PyBytes_Check(key))
		return 0;
	PyErr_Format(PyExc_TypeError,
	             "key must be None, str or bytes, not %.100s",
	             Py_TYPE(key)->tp_name);
	return -1;
}

/* Reads a str or bytes key's bytes and hash without running Python code
 * (str subclasses are hashed as str). */
ST_INLINE int key_bytes(PyObject *key, const char **buf, Py_ssize_t *len,
                        uint8_t *tag, Py_hash_t *hash)
{
	if (ST_LIKELY(PyUnicode_CheckExact(key) &&
	              PyUnicode_IS_COMPACT_ASCII(key) &&
	              ((PyASCIIObject *)key)->hash != -1)) {
		*hash = ((PyASCIIObject *)key)->hash;
		*buf = (const char *)PyUnicode_DATA(key);
		*len = PyUnicode_GET_LENGTH(key);
		*tag = KEY_STR;
	} else if (PyUnicode_Check(key)) {
		*buf = PyUnicode_AsUTF8AndSize(key, len);
		*tag = KEY_STR;
		if (*buf == NULL)
			return -1;
		*hash = PyUnicode_Type.tp_hash(key);
	} else {
		*buf = PyBytes_AS_STRING(key);
		*len = PyBytes_GET_SIZE(key);
		*tag = KEY_BYTES;
		*hash = PyBytes_Type.tp_hash(key);
	}
	if (*hash == -1)
		return -1;
	if (ST_UNLIKELY((size_t)*len > KT_MAX_KEY)) {
		PyErr_Format(PyExc_ValueError,
		             "key must be at most %llu bytes, got %zd",
		             (unsigned long long)KT_MAX_KEY, *len);
		return -1;
	}
	return 0;
}

/* The state of `key` (None: the global one). With `add`, creates it when
 * absent; *err is then CC_FULL when the table is full (no exception) and
 * CC_NOMEM (MemoryError set). Without `add`, NULL means absent. Returns
 * NULL with *err = CC_NOMEM and an exception set on a bad key. */
static cc_key *key_state(ConcObject *c, PyObject *key, int add, int *err)
{
	const char *buf;
	Py_ssize_t len;
	uint8_t tag;
	Py_hash_t hash;
	cc_key *k;

	*err = CC_OK;
	if (key == Py_None)
		return c->t.global;
	if (key_bytes(key, &buf, &len, &tag, &hash) < 0) {
		*err = CC_NOMEM;
		return NULL;
	}
	if (!add)
		return cc_find(&c->t, (uint64_t)hash, tag, buf, (size_t)len);
	k = cc_find_or_add(&c->t, (uint64_t)hash, tag, buf, (size_t)len, err);
	if (k == NULL && *err == CC_NOMEM)
		PyErr_NoMemory();
	return k;
}

/* =========================================================================
 * _Ready: an awaitable that is done at once
 * ========================================================================= */

/* What Hold.__aenter__ returns when a slot was free, and __aexit__: an
 * awaitable whose first step returns `value`, so `async with` on a free
 * slot runs no Python code and suspends nothing. */
typedef struct {
	PyObject_HEAD PyObject *value; /* strong */
} ReadyObject;

static PyObject *ready_new(st_state *st, PyObject *value)
{
	ReadyObject *r = PyObject_New(ReadyObject, st->ready_type);
	if (r == NULL)
		return NULL;
	r->value = Py_NewRef(value);
	return (PyObject *)r;
}

static void ready_dealloc(ReadyObject *r)
{
	PyTypeObject *tp = Py_TYPE(r);
	Py_DECREF(r->value);
	tp->tp_free(r);
	Py_DECREF(tp);
}

static PyObject *ready_await(PyObject *r)
{
	return Py_NewRef(r);
}

static PyObject *ready_next(ReadyObject *r)
{
	if (r->value == Py_None)
		return NULL; /* StopIteration(None) */
	/* Not a tuple nor an exception: StopIteration(value). */
	PyErr_SetObject(PyExc_StopIteration, r->value);
	return NULL;
}

static PySendResult ready_send(ReadyObject *r, PyObject *arg,
                               PyObject **result)
{
	(void)arg;
	*result = Py_NewRef(r->value);
	return PYGEN_RETURN;
}

static PyType_Slot ready_slots[] = {
    {Py_tp_doc, (void *)"An awaitable that is done at once."},
    {Py_tp_dealloc, ready_dealloc},
    {Py_am_await, ready_await},
    {Py_tp_iter, ready_await},
    {Py_tp_iternext, ready_next},
    {Py_am_send, ready_send},
    {0, NULL},
};

static PyType_Spec ready_spec = {
    .name = "stanchion._core._Ready",
    .basicsize = sizeof(ReadyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ready_slots,
};

/* =========================================================================
 * Hold: taking, queueing, releasing
 * ========================================================================= */

/* Calls a waiter's wake (it left the queue: granted or shed). A wake
 * that raises is reported, not propagated: the slot stays with the
 * waiter, whose own exit path (cancellation, timeout, dealloc) gives it
 * back. */
static void hold_wake(PyObject *wake)
{
	PyObject *r;

	if (wake == NULL)
		return;
	r = PyObject_CallNoArgs(wake);
	if (r == NULL)
		PyErr_WriteUnraisable(wake);
	Py_XDECREF(r);
	Py_DECREF(wake);
}

/* Takes a free slot if there is one. Returns 1 (HELD), 0 (nothing
 * changed; *err = CC_FULL when the key would not fit in the table), or
 * -1 with an exception set. */
ST_INLINE int hold_try(HoldObject *h, int *err)
{
	ConcObject *c = h->owner;
	cc_key *k;

	if (st_is_disabled(c->st)) {
		/* stanchion.testing.disabled(): held, on no slot at all (a
		 * hold with no key state; releasing it changes nothing). */
		h->k = NULL;
		h->state = H_HELD;
		h->since_ns = 0;
		return 1;
	}
	k = key_state(c, h->key, 1, err);

	if (k == NULL)
		return *err == CC_FULL ? 0 : -1;
	if (!cc_try(&c->t, k, h->lane)) {
		cc_drop_if_idle(&c->t, k);
		return 0;
	}
	h->k = k;
	h->state = H_HELD;
	/* Hold times feed retry_after: a sample of free-slot holds is as
	 * good a mean as all of them, without two clock reads each. */
	h->since_ns = (c->ticks++ & 7) == 0 ? st_fastclock_now(&c->clock) : 0;
	return 1;
}

/* The state error of a hold used out of turn. */
static PyObject *hold_misuse(HoldObject *h, const char *what)
{
	static const char *names[] = {"idle", "waiting", "held", "shed"};
	PyErr_Format(PyExc_RuntimeError, "cannot %s a hold that is %s", what,
	             names[h->state]);
	return NULL;
}

/* Gives the slot of a HELD hold back, handing it to the next waiter
 * (woken after the engine is consistent). */
static void hold_release(HoldObject *h)
{
	ConcObject *c = h->owner;
	cc_key *k = h->k;
	HoldObject *next = NULL;
	PyObject *wake = NULL;
	cc_node *n;

	if (k == NULL) { /* held while disabled(): no slot to give back */
		h->state = H_IDLE;
		return;
	}
	if (h->since_ns != 0) {
		int64_t d = st_fastclock_now(&c->clock) - h->since_ns;
		c->mean_ns =
		    c->mean_ns ? c->mean_ns + (d - c->mean_ns) / 8 : d;
		if (c->mean_ns == 0)
			c->mean_ns = 1;
	}
	h->state = H_IDLE;
	h->k = NULL;
	n = cc_release(&c->t, k);
	if (n != NULL) {
		next = HOLD_OF(n);
		next->state = H_HELD;
		next->since_ns = st_fastclock_now(&c->clock);
		wake = next->wake;
		next->wake = NULL;
	}
	cc_drop_if_idle(&c->t, k);
	hold_wake(wake);
}

/* Leaves the queue (WAITING only). */
static void hold_unqueue(HoldObject *h)
{
	ConcObject *c = h->owner;
	PyObject *wake = h->wake;

	cc_cancel(&c->t, h->k, &h->node);
	cc_drop_if_idle(&c->t, h->k);
	h->k = NULL;
	h->wake = NULL;
	h->state = H_IDLE;
	Py_XDECREF(wake);
}

/* Gives up whatever the hold has: its place in the queue or its slot. */
static void hold_abandon(HoldObject *h)
{
	if (h->owner == NULL)
		return;
	if (h->state == H_WAITING)
		hold_unqueue(h);
	else if (h->state == H_HELD)
		hold_release(h);
	else
		h->state = H_IDLE;
}

static PyObject *hold_enter(HoldObject *h, PyObject *unused)
{
	int err;
	(void)unused;

	if (ST_UNLIKELY(h->state != H_IDLE))
		return hold_misuse(h, "enter");
	switch (hold_try(h, &err)) {
	case 1:
		return Py_NewRef(h);
	case 0:
		return PyObject_CallMethod((PyObject *)h->owner, "_enter_slow",
		                           "O", h);
	default:
		return NULL;
	}
}

static PyObject *hold_exit(HoldObject *h, PyObject *const *args,
                           Py_ssize_t nargs)
{
	(void)args;
	(void)nargs;
	if (ST_UNLIKELY(h->state != H_HELD))
		return hold_misuse(h, "release");
	hold_release(h);
	Py_RETURN_FALSE;
}

static PyObject *hold_aenter(HoldObject *h, PyObject *unused)
{
	int err;
	(void)unused;

	if (ST_UNLIKELY(h->state != H_IDLE))
		return hold_misuse(h, "enter");
	switch (hold_try(h, &err)) {
	case 1:
		return ready_new(h->owner->st, (PyObject *)h);
	case 0:
		return PyObject_CallMethod((PyObject *)h->owner,
		                           "_aenter_slow", "O", h);
	default:
		return NULL;
	}
}

static PyObject *hold_aexit(HoldObject *h, PyObject *const *args,
                            Py_ssize_t nargs)
{
	(void)args;
	(void)nargs;
	if (ST_UNLIKELY(h->state != H_HELD))
		return hold_misuse(h, "release");
	hold_release(h);
	return Py_NewRef(h->owner->st->ready_none);
}

static PyObject *hold_release_m(HoldObject *h, PyObject *unused)
{
	(void)unused;
	if (h->state != H_HELD)
		return hold_misuse(h, "release");
	hold_release(h);
	Py_RETURN_NONE;
}

static PyObject *hold_try_m(HoldObject *h, PyObject *unused)
{
	int err;
	(void)unused;

	if (h->state != H_IDLE)
		return hold_misuse(h, "enter");
	switch (hold_try(h, &err)) {
	case 1:
		Py_RETURN_TRUE;
	case 0:
		Py_RETURN_FALSE;
	default:
		return NULL;
	}
}

static PyObject *hold_queue_m(HoldObject *h, PyObject *wake)
{
	ConcObject *c = h->owner;
	cc_node *shed = NULL;
	PyObject *shed_wake = NULL;
	cc_key *k;
	int err;

	if (h->state != H_IDLE)
		return hold_misuse(h, "enter");
	if (!PyCallable_Check(wake)) {
		PyErr_Format(PyExc_TypeError,
		             "wake must be callable, not %.100s",
		             Py_TYPE(wake)->tp_name);
		return NULL;
	}
	switch (hold_try(h, &err)) {
	case 1:
		return PyLong_FromLong(Q_HELD);
	case 0:
		break;
	default:
		return NULL;
	}
	if (err == CC_FULL)
		return PyLong_FromLong(Q_KEYS);
	if (h->timeout == 0.0)
		return PyLong_FromLong(Q_TIMEOUT);
	k = key_state(c, h->key, 1, &err);
	if (k == NULL)
		return err == CC_FULL ? PyLong_FromLong(Q_KEYS) : NULL;
	if (cc_enqueue(&c->t, k, &h->node, h->lane, &shed) < 0) {
		cc_drop_if_idle(&c->t, k);
		return PyLong_FromLong(Q_FULL);
	}
	h->k = k;
	h->wake = Py_NewRef(wake);
	h->state = H_WAITING;
	if (shed != NULL) {
		HoldObject *s = HOLD_OF(shed);
		s->state = H_SHED;
		s->k = NULL;
		shed_wake = s->wake;
		s->wake = NULL;
		hold_wake(shed_wake);
	}
	return PyLong_FromLong(Q_WAITING);
}

static PyObject *hold_cancel_m(HoldObject *h, PyObject *unused)
{
	(void)unused;
	if (h->state == H_SHED)
		h->state = H_IDLE; /* the waiter saw it: usable again */
	if (h->state != H_WAITING)
		Py_RETURN_FALSE;
	hold_unqueue(h);
	Py_RETURN_TRUE;
}

/* Seconds until a slot might free up for a refused hold: the mean hold
 * time, times the waiters ahead plus one, over the slots; None before
 * any hold ended. */
static PyObject *hold_retry_after_m(HoldObject *h, PyObject *unused)
{
	ConcObject *c = h->owner;
	int64_t ahead = 0;
	cc_key *k;
	int err;

	(void)unused;
	if (c->mean_ns == 0)
		Py_RETURN_NONE;
	k = key_state(c, h->key, 0, &err);
	if (k == NULL && err != CC_OK)
		return NULL;
	if (k != NULL)
		ahead = k->queued;
	return PyFloat_FromDouble((double)c->mean_ns * (double)(ahead + 1) /
	                          (double)c->t.limit / 1e9);
}

/* ---- lifecycle ---------------------------------------------------------- */

static int hold_traverse(HoldObject *h, visitproc visit, void *arg)
{
	Py_VISIT(h->owner);
	Py_VISIT(h->key);
	Py_VISIT(h->wake);
	Py_VISIT(Py_TYPE(h));
	return 0;
}

static int hold_clear(HoldObject *h)
{
	hold_abandon(h);
	Py_CLEAR(h->wake);
	Py_CLEAR(h->key);
	Py_CLEAR(h->owner);
	return 0;
}

static void hold_dealloc(HoldObject *h)
{
	PyTypeObject *tp = Py_TYPE(h);
	st_state *st;

	PyObject_GC_UnTrack(h);
	if (h->state == H_WAITING || h->state == H_HELD) {
		/* Dropped while queued or holding (an abandoned generator):
		 * give it back. Wakes may run Python code. */
#if PY_VERSION_HEX >= 0x030C0000
		PyObject *exc = PyErr_GetRaisedException();
		hold_abandon(h);
		PyErr_SetRaisedException(exc);
#else
		PyObject *type, *value, *tb;
		PyErr_Fetch(&type, &value, &tb);
		hold_abandon(h);
		PyErr_Restore(type, value, tb);
#endif
	}
	hold_clear(h);
	/* Keep the memory for the next hold while the free list has room
	 * (the type is not subclassable: every Hold has the plain size). */
	st = PyType_GetModuleState(tp);
	if (st != NULL && st->nholds < ST_HOLD_FREELIST)
		st->holds[st->nholds++] = (PyObject *)h;
	else
		tp->tp_free(h);
	Py_DECREF(tp);
}

static PyObject *hold_get_key(HoldObject *h, void *c)
{
	(void)c;
	return Py_NewRef(h->key ? h->key : Py_None);
}

static PyObject *hold_get_priority(HoldObject *h, void *c)
{
	(void)c;
	return PyLong_FromLong(h->lane);
}

static PyObject *hold_get_timeout(HoldObject *h, void *c)
{
	(void)c;
	if (h->timeout < 0.0)
		Py_RETURN_NONE;
	return PyFloat_FromDouble(h->timeout);
}

static PyObject *hold_get_state(HoldObject *h, void *c)
{
	(void)c;
	return PyLong_FromLong(h->state);
}

static PyObject *hold_get_owner(HoldObject *h, void *c)
{
	(void)c;
	return Py_NewRef(h->owner ? (PyObject *)h->owner : Py_None);
}

static PyObject *hold_get_held(HoldObject *h, void *c)
{
	(void)c;
	return PyBool_FromLong(h->state == H_HELD);
}

static PyMethodDef hold_methods[] = {
    {"__enter__", (PyCFunction)hold_enter, METH_NOARGS,
     "Take a slot: at once when one is free, else through the queue."},
    {"__exit__", (PyCFunction)(void (*)(void))hold_exit, METH_FASTCALL,
     "Give the slot back (to the next waiter)."},
    {"__aenter__", (PyCFunction)hold_aenter, METH_NOARGS,
     "Take a slot with asyncio: at once when one is free, else through "
     "the queue."},
    {"__aexit__", (PyCFunction)(void (*)(void))hold_aexit, METH_FASTCALL,
     "Give the slot back (to the next waiter)."},
    {"release", (PyCFunction)hold_release_m, METH_NOARGS,
     "release($self, /)\n--\n\nGive the slot back (to the next waiter)."},
    {"_try", (PyCFunction)hold_try_m, METH_NOARGS,
     "Take a free slot and return True, or change nothing and return "
     "False."},
    {"_queue", (PyCFunction)hold_queue_m, METH_O,
     "Take a free slot (0), or queue with a wake callable (1), or refuse: "
     "queue full (2), no wait allowed (3), key table full (4)."},
    {"_cancel", (PyCFunction)hold_cancel_m, METH_NOARGS,
     "Leave the queue: True if still queued, False if granted or shed\n"
     "(a shed hold is then idle again)."},
    {"_retry_after", (PyCFunction)hold_retry_after_m, METH_NOARGS,
     "Estimated seconds until a slot frees up, or None."},
    {NULL},
};

static PyGetSetDef hold_getset[] = {
    {"key", (getter)hold_get_key, NULL, "The key (None: global).", NULL},
    {"priority", (getter)hold_get_priority, NULL, "The priority lane.", NULL},
    {"timeout", (getter)hold_get_timeout, NULL,
     "Seconds this hold may wait in the queue; None: as long as it takes.",
     NULL},
    {"held", (getter)hold_get_held, NULL, "True while holding a slot.", NULL},
    {"_state", (getter)hold_get_state, NULL,
     "0 idle, 1 waiting, 2 held, 3 shed.", NULL},
    {"_owner", (getter)hold_get_owner, NULL, "The Concurrency.", NULL},
    {NULL},
};

PyDoc_STRVAR(hold_doc,
             "A claim on one slot of a Concurrency, made by its hold(): a "
             "context manager\n(taken on enter, given back on exit), "
             "reusable once released.");

static PyType_Slot hold_slots[] = {
    {Py_tp_doc, (void *)hold_doc},
    {Py_tp_dealloc, hold_dealloc},
    {Py_tp_traverse, hold_traverse},
    {Py_tp_clear, hold_clear},
    {Py_tp_methods, hold_methods},
    {Py_tp_getset, hold_getset},
    {0, NULL},
};

static PyType_Spec hold_spec = {
    .name = "stanchion._core.Hold",
    .basicsize = sizeof(HoldObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = hold_slots,
};

/* =========================================================================
 * Concurrency
 * ========================================================================= */

static PyObject *conc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	ConcObject *self;
	st_state *st = st_state_from_type(type);

	(void)args;
	(void)kwds;
	if (st == NULL)
		return NULL;
	self = (ConcObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->st = st;
	st_fastclock_copy(&self->clock, &st->clock);
	self->timeout = -1.0;
	return (PyObject *)self;
}

static int conc_init(ConcObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"limit",      "queue",   "timeout",
	                         "priorities", "reserve", "max_keys",
	                         NULL};
	PyObject *limit_o, *queue_o = NULL, *timeout_o = Py_None;
	PyObject *prio_o = NULL, *reserve_o = NULL, *max_keys_o = NULL;
	long long limit, queue = 0, prios = 1, reserve = 0, max_keys = 100000;
	double timeout;

	if (!PyArg_ParseTupleAndKeywords(
	        args, kwds, "O|OOOOO:Concurrency", kwlist, &limit_o, &queue_o,
	        &timeout_o, &prio_o, &reserve_o, &max_keys_o))
		return -1;
	if (int_arg(limit_o, "limit", 1, INT32_MAX, &limit) < 0)
		return -1;
	if (queue_o && int_arg(queue_o, "queue", 0, INT32_MAX, &queue) < 0)
		return -1;
	if (timeout_arg(timeout_o, &timeout) < 0)
		return -1;
	if (prio_o &&
	    int_arg(prio_o, "priorities", 1, CC_MAX_LANES, &prios) < 0)
		return -1;
	if (reserve_o &&
	    int_arg(reserve_o, "reserve", 0, INT32_MAX, &reserve) < 0)
		return -1;
	if (max_keys_o &&
	    int_arg(max_keys_o, "max_keys", 1, INT32_MAX, &max_keys) < 0)
		return -1;
	if (reserve * (prios - 1) >= limit) {
		PyErr_Format(
		    PyExc_ValueError,
		    "reserve * (priorities - 1) must be below limit, so "
		    "that priority 0 keeps a slot (got reserve=%lld, "
		    "priorities=%lld, limit=%lld)",
		    reserve, prios, limit);
		return -1;
	}
	if (self->ready) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Concurrency.__init__ may run only once");
		return -1;
	}
	if (cc_init(&self->t, limit, queue, (int)prios, reserve,
	            (size_t)max_keys, (uint64_t)(uintptr_t)self) < 0) {
		PyErr_NoMemory();
		return -1;
	}
	self->timeout = timeout;
	self->ready = 1;
	return 0;
}

static int conc_traverse(ConcObject *self, visitproc visit, void *arg)
{
	(void)self;
	Py_VISIT(Py_TYPE(self));
	return 0;
}

static void conc_dealloc(ConcObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	/* Holds keep their Concurrency alive: nothing holds or waits. */
	if (self->ready)
		cc_free(&self->t);
	tp->tp_free(self);
	Py_DECREF(tp);
}

static int conc_check_ready(ConcObject *self)
{
	if (ST_LIKELY(self->ready))
		return 0;
	PyErr_SetString(PyExc_RuntimeError,
	                "Concurrency.__init__ was not called");
	return -1;
}

/* Parses (key=None, /, *, priority=0[, timeout=<the default>]) for
 * `fname` and makes an idle Hold. */
static HoldObject *conc_make_hold(ConcObject *self, const char *fname,
                                  PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames, int with_timeout)
{
	PyObject *key = Py_None, *prio_o = NULL, *timeout_o = NULL;
	Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
	long long lane = 0;
	double timeout;
	HoldObject *h;

	if (conc_check_ready(self) < 0)
		return NULL;
	if (nargs > 1) {
		PyErr_Format(PyExc_TypeError,
		             "%s() takes at most 1 positional argument (%zd "
		             "given)",
		             fname, nargs);
		return NULL;
	}
	if (nargs == 1)
		key = args[0];
	for (Py_ssize_t i = 0; i < nkw; i++) {
		PyObject *name = PyTuple_GET_ITEM(kwnames, i);
		PyObject **slot;
		if (PyUnicode_CompareWithASCIIString(name, "priority") == 0)
			slot = &prio_o;
		else if (with_timeout && PyUnicode_CompareWithASCIIString(
		                             name, "timeout") == 0)
			slot = &timeout_o;
		else {
			PyErr_Format(PyExc_TypeError,
			             "%s() got an unexpected keyword argument "
			             "'%U'",
			             fname, name);
			return NULL;
		}
		*slot = args[nargs + i];
	}
	if (key_arg(key) < 0)
		return NULL;
	if (prio_o != NULL &&
	    int_arg(prio_o, "priority", 0, self->t.nlanes - 1, &lane) < 0)
		return NULL;
	timeout = self->timeout;
	if (timeout_o != NULL && timeout_arg(timeout_o, &timeout) < 0)
		return NULL;
	if (self->st->nholds > 0) {
		h = (HoldObject *)self->st->holds[--self->st->nholds];
		PyObject_Init((PyObject *)h, self->st->hold_type);
	} else {
		h = PyObject_GC_New(HoldObject, self->st->hold_type);
		if (h == NULL)
			return NULL;
	}
	h->node.prev = h->node.next = NULL;
	h->node.lane = 0;
	h->owner = (ConcObject *)Py_NewRef(self);
	h->key = Py_NewRef(key);
	h->wake = NULL;
	h->k = NULL;
	h->timeout = timeout;
	h->since_ns = 0;
	h->lane = (int)lane;
	h->state = H_IDLE;
	PyObject_GC_Track(h);
	return h;
}

static PyObject *conc_hold(ConcObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
	return (PyObject *)conc_make_hold(self, "hold", args, nargs, kwnames,
	                                  1);
}

static PyObject *conc_ahold(ConcObject *self, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames)
{
	return (PyObject *)conc_make_hold(self, "ahold", args, nargs, kwnames,
	                                  1);
}

/* try_acquire(key=None, /, *, priority=0): a held Hold, or None. */
static PyObject *conc_try_acquire(ConcObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
	HoldObject *h =
	    conc_make_hold(self, "try_acquire", args, nargs, kwnames, 0);
	int err;

	if (h == NULL)
		return NULL;
	switch (hold_try(h, &err)) {
	case 1:
		return (PyObject *)h;
	case 0:
		Py_DECREF(h);
		Py_RETURN_NONE;
	default:
		Py_DECREF(h);
		return NULL;
	}
}

/* The key argument of in_flight/queued. */
static cc_key *conc_lookup(ConcObject *self, PyObject *args, PyObject *kwds,
                           const char *fmt, int *err)
{
	static char *kwlist[] = {"key", NULL};
	PyObject *key = Py_None;

	*err = CC_NOMEM;
	if (conc_check_ready(self) < 0)
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, fmt, kwlist, &key))
		return NULL;
	if (key_arg(key) < 0)
		return NULL;
	return key_state(self, key, 0, err);
}

static PyObject *conc_in_flight(ConcObject *self, PyObject *args,
                                PyObject *kwds)
{
	int err;
	cc_key *k = conc_lookup(self, args, kwds, "|O:in_flight", &err);
	if (k == NULL)
		return err == CC_OK ? PyLong_FromLong(0) : NULL;
	return PyLong_FromLongLong(k->held);
}

static PyObject *conc_queued(ConcObject *self, PyObject *args, PyObject *kwds)
{
	int err;
	cc_key *k = conc_lookup(self, args, kwds, "|O:queued", &err);
	if (k == NULL)
		return err == CC_OK ? PyLong_FromLong(0) : NULL;
	return PyLong_FromLongLong(k->queued);
}

static PyObject *conc_stats(ConcObject *self, PyObject *unused)
{
	(void)unused;
	if (conc_check_ready(self) < 0)
		return NULL;
	return Py_BuildValue(
	    "{s:n,s:n,s:L,s:L,s:n}", "keys", (Py_ssize_t)self->t.table.count,
	    "max_keys", (Py_ssize_t)self->t.table.max, "in_flight",
	    (long long)self->t.held, "queued", (long long)self->t.queued,
	    "memory_bytes", (Py_ssize_t)cc_memory(&self->t));
}

static PyObject *conc_get_limit(ConcObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->t.limit);
}

static PyObject *conc_get_queue(ConcObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->t.queue);
}

static PyObject *conc_get_timeout(ConcObject *self, void *c)
{
	(void)c;
	if (self->timeout < 0.0)
		Py_RETURN_NONE;
	return PyFloat_FromDouble(self->timeout);
}

static PyObject *conc_get_priorities(ConcObject *self, void *c)
{
	(void)c;
	return PyLong_FromLong(self->t.nlanes);
}

static PyObject *conc_get_reserve(ConcObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->t.reserve);
}

static PyObject *conc_get_max_keys(ConcObject *self, void *c)
{
	(void)c;
	return PyLong_FromSize_t(self->t.table.max);
}

PyDoc_STRVAR(conc_hold_doc,
             "hold($self, key=None, /, *, priority=0, timeout=...)\n--\n\n"
             "A Hold on one slot for `key` (str or bytes; None: one limit "
             "for everything):\n`with c.hold(key): ...`. `priority` is a "
             "lane from 0 (least important)\nto priorities - 1; `timeout` "
             "overrides the default wait (seconds, None: as\nlong as the "
             "queue allows, 0: never wait).");

PyDoc_STRVAR(conc_ahold_doc,
             "ahold($self, key=None, /, *, priority=0, timeout=...)\n--\n\n"
             "hold() for asyncio code: `async with c.ahold(key): ...` (a "
             "queued task waits\nwithout blocking its event loop).");

static PyMethodDef conc_methods[] = {
    {"hold", (PyCFunction)(void (*)(void))conc_hold,
     METH_FASTCALL | METH_KEYWORDS, conc_hold_doc},
    {"ahold", (PyCFunction)(void (*)(void))conc_ahold,
     METH_FASTCALL | METH_KEYWORDS, conc_ahold_doc},
    {"try_acquire", (PyCFunction)(void (*)(void))conc_try_acquire,
     METH_FASTCALL | METH_KEYWORDS,
     "try_acquire($self, key=None, /, *, priority=0)\n--\n\n"
     "A held Hold if a slot is free to `priority` now (give it back with "
     "its\nrelease()), else None; never waits."},
    {"in_flight", (PyCFunction)(void (*)(void))conc_in_flight,
     METH_VARARGS | METH_KEYWORDS,
     "in_flight($self, /, key=None)\n--\n\nSlots held for `key` now."},
    {"queued", (PyCFunction)(void (*)(void))conc_queued,
     METH_VARARGS | METH_KEYWORDS,
     "queued($self, /, key=None)\n--\n\nWaiters queued for `key` now."},
    {"stats", (PyCFunction)conc_stats, METH_NOARGS,
     "stats($self, /)\n--\n\nA dict: keys tracked, max_keys, in_flight and "
     "queued over all keys,\nmemory_bytes."},
    {NULL},
};

static PyGetSetDef conc_getset[] = {
    {"limit", (getter)conc_get_limit, NULL, "Slots per key.", NULL},
    {"queue", (getter)conc_get_queue, NULL, "Waiters per key, at most.", NULL},
    {"timeout", (getter)conc_get_timeout, NULL,
     "The default wait in seconds (None: as long as the queue allows).", NULL},
    {"priorities", (getter)conc_get_priorities, NULL,
     "The number of priority lanes.", NULL},
    {"reserve", (getter)conc_get_reserve, NULL,
     "Slots kept per lane for the lanes above it.", NULL},
    {"max_keys", (getter)conc_get_max_keys, NULL,
     "The most keys tracked at once.", NULL},
    {NULL},
};

PyDoc_STRVAR(conc_doc,
             "Concurrency(limit, queue=0, timeout=None, priorities=1, "
             "reserve=0, max_keys=100000)\n--\n\n"
             "At most `limit` holders per key, and a queue of at most "
             "`queue` waiters per key.\nThe waiting itself is a "
             "subclass's _enter_slow (stanchion.Concurrency).");

static PyType_Slot conc_slots[] = {
    {Py_tp_doc, (void *)conc_doc},   {Py_tp_new, conc_new},
    {Py_tp_init, conc_init},         {Py_tp_dealloc, conc_dealloc},
    {Py_tp_traverse, conc_traverse}, {Py_tp_methods, conc_methods},
    {Py_tp_getset, conc_getset},     {0, NULL},
};

static PyType_Spec conc_spec = {
    .name = "stanchion._core.Concurrency",
    .basicsize = sizeof(ConcObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = conc_slots,
};

int st_conc_exec(PyObject *module, st_state *st)
{
	st->conc_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &conc_spec, NULL);
	if (st->conc_type == NULL)
		return -1;
	if (PyModule_AddType(module, st->conc_type) < 0)
		return -1;
	st->hold_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &hold_spec, NULL);
	if (st->hold_type == NULL)
		return -1;
	if (PyModule_AddType(module, st->hold_type) < 0)
		return -1;
	st->ready_type = (PyTypeObject *)PyType_FromModuleAndSpec(
	    module, &ready_spec, NULL);
	if (st->ready_type == NULL)
		return -1;
	st->ready_none = ready_new(st, Py_None);
	return st->ready_none == NULL ? -1 : 0;
}
