/* Python binding for the shared-memory table (shm.c):
 * _core.SharedMemoryLimiter, and _core.shm_unlink.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class SharedMemoryLimiter:
 *         def __init__(self, name, template, clock=None, on_ban=None):
 *             # name: a shm_open name ("/stanchion.myapp"); template: a
 *             # _core.Limiter whose rates, algorithm and max_keys the
 *             # segment holds (ValueError when the segment holds others)
 *         def hit(self, key, /, cost=1) -> Decision: ...
 *         def peek(self, key, /, cost=1) -> Decision: ...
 *         def reset(self, key=None) -> None: ...
 *         def stats(self) -> dict: ...
 *         # with the template's penalty (penalty.h), in the segment:
 *         def lift(self, key, /) -> bool: ...
 *         def _ban_state(self, key, /) -> tuple | None: ...
 *         def _bans(self) -> list[tuple]: ...        # keys not stored
 *
 * The decisions are the in-process Limiter's, field for field; the state
 * is shared by every process that opens the same name.
 */
#include <errno.h>
#include <stdint.h>

#include "args.h"
#include "clock.h"
#include "decision_type.h"
#include "limit.h"
#include "module.h"
#include "pyclock.h"
#include "shm.h"
#include "testhooks.h"

/* Key kinds, so "a" and b"a" are different clients. */
#define KEY_STR 1
#define KEY_BYTES 2

typedef struct {
	PyObject_HEAD st_state *st; /* module state: the Decision type */
	PyObject *clock;            /* NULL = the C monotonic clock */
	PyObject *name;             /* the segment's name (str) */
	st_fastclock fclock;        /* the C monotonic clock, fast */
	int64_t last_now;           /* time never runs backwards in here */
	int64_t max_cost;           /* the largest cost any hit may ask */
	st_shm shm;                 /* the mapping and the policy */
	int ready;                  /* __init__ succeeded */
	PyObject *on_ban;           /* NULL, or called once per ban */
} ShmLimiterObject;

static PyObject *shm_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	ShmLimiterObject *self;
	st_state *st = st_state_from_type(type);

	(void)args;
	(void)kwds;
	if (st == NULL)
		return NULL;
	self = (ShmLimiterObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->st = st;
	return (PyObject *)self;
}

static int shm_traverse(ShmLimiterObject *self, visitproc visit, void *arg)
{
	Py_VISIT(self->clock);
	Py_VISIT(self->on_ban);
	Py_VISIT(Py_TYPE(self));
	return 0;
}

static int shm_clear(ShmLimiterObject *self)
{
	Py_CLEAR(self->clock);
	Py_CLEAR(self->on_ban);
	return 0;
}

static void shm_dealloc(ShmLimiterObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	shm_clear(self);
	Py_CLEAR(self->name);
	st_shm_close(&self->shm);
	tp->tp_free(self);
	Py_DECREF(tp);
}

static int shm_init(ShmLimiterObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"name", "template", "clock", "on_ban", NULL};
	PyObject *name, *template, *clock = Py_None, *on_ban = Py_None;
	st_policy policy;
	st_penalty penalty;
	int has_penalty;
	size_t max_keys;
	const char *cname;
	char err[1024];
	st_shm shm;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwds,
	                                 "UO|OO:SharedMemoryLimiter", kwlist,
	                                 &name, &template, &clock, &on_ban))
		return -1;
	if (on_ban != Py_None && !PyCallable_Check(on_ban)) {
		PyErr_Format(PyExc_TypeError,
		             "on_ban must be a callable or None, not %.100s",
		             Py_TYPE(on_ban)->tp_name);
		return -1;
	}
	if (clock != Py_None && !PyCallable_Check(clock)) {
		PyErr_Format(PyExc_TypeError,
		             "clock must be a callable returning seconds, or "
		             "None, not %.100s",
		             Py_TYPE(clock)->tp_name);
		return -1;
	}
	if (st_limiter_policy(self->st, template, &policy, &max_keys) < 0)
		return -1;
	has_penalty = st_limiter_penalty(template, &penalty);
	if (max_keys > ST_SHM_MAX_KEYS) {
		PyErr_Format(PyExc_ValueError,
		             "max_keys must be at most %lu in shared memory, "
		             "got %zu",
		             (unsigned long)ST_SHM_MAX_KEYS, max_keys);
		return -1;
	}
	cname = PyUnicode_AsUTF8(name);
	if (cname == NULL)
		return -1;
	/* ASCII, and no NUL inside (with non-ASCII characters, a NUL could
	 * make the byte count match the character count). */
	if (!PyUnicode_IS_ASCII(name) ||
	    (Py_ssize_t)strlen(cname) != PyUnicode_GET_LENGTH(name)) {
		PyErr_Format(PyExc_ValueError,
		             "invalid shared memory name %R (ASCII, no NUL)",
		             name);
		return -1;
	}
	Py_BEGIN_ALLOW_THREADS;
	rc = st_shm_open_penalty(&shm, cname, &policy,
	                         has_penalty ? &penalty : NULL,
	                         (uint32_t)max_keys, err, sizeof(err));
	Py_END_ALLOW_THREADS;
	if (rc == ST_SHM_EMISMATCH) {
		PyErr_SetString(PyExc_ValueError, err);
		return -1;
	}
	if (rc != ST_SHM_OK) {
		if (errno == EINVAL) {
			PyErr_SetString(PyExc_ValueError, err);
		} else {
			PyObject *exc = PyObject_CallFunction(
			    PyExc_OSError, "is", errno, err);
			if (exc != NULL) {
				PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
				Py_DECREF(exc);
			}
		}
		return -1;
	}
	/* Everything is valid: only now replace the state. */
	st_shm_close(&self->shm);
	self->shm = shm;
	self->max_cost = st_policy_max_cost(&policy);
	self->last_now = INT64_MIN;
	st_fastclock_copy(&self->fclock, &self->st->clock);
	Py_XSETREF(self->name, Py_NewRef(name));
	Py_XSETREF(self->clock, clock == Py_None ? NULL : Py_NewRef(clock));
	Py_XSETREF(self->on_ban, on_ban == Py_None ? NULL : Py_NewRef(on_ban));
	self->ready = 1;
	return 0;
}

/* ---- the hot path -------------------------------------------------------
 */

/* The key's bytes and kind, without running Python code. */
ST_INLINE int shm_key(PyObject *key, const char **buf, Py_ssize_t *len,
                      uint8_t *kind)
{
	if (ST_LIKELY(PyUnicode_Check(key))) {
		*buf = PyUnicode_AsUTF8AndSize(key, len);
		*kind = KEY_STR;
		return *buf == NULL ? -1 : 0;
	}
	if (PyBytes_Check(key)) {
		*buf = PyBytes_AS_STRING(key);
		*len = PyBytes_GET_SIZE(key);
		*kind = KEY_BYTES;
		return 0;
	}
	PyErr_Format(PyExc_TypeError, "key must be str or bytes, not %.100s",
	             Py_TYPE(key)->tp_name);
	return -1;
}

static int shm_ready(ShmLimiterObject *self)
{
	if (ST_UNLIKELY(!self->ready)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "SharedMemoryLimiter.__init__ was not called");
		return -1;
	}
	return 0;
}

/* Parses (key, /, cost=1). */
static int shm_args(ShmLimiterObject *self, PyObject *const *args,
                    Py_ssize_t nargs, PyObject *kwnames, const char *fname,
                    int64_t *cost)
{
	PyObject *c;

	if (shm_ready(self) < 0)
		return -1;
	if (st_fast_args(fname, args, nargs, kwnames, 1, self->st->str_cost,
	                 &c) < 0)
		return -1;
	if (ST_LIKELY(c == NULL)) {
		*cost = 1;
		return 0;
	}
	if (!PyLong_Check(c) || PyBool_Check(c)) {
		PyErr_Format(PyExc_TypeError,
		             "cost must be an int, not %.100s",
		             Py_TYPE(c)->tp_name);
		return -1;
	}
	{
		int overflow;
		*cost = PyLong_AsLongLongAndOverflow(c, &overflow);
		if (*cost == -1 && PyErr_Occurred())
			return -1;
		if (overflow != 0)
			*cost = overflow > 0 ? INT64_MAX : -1;
	}
	if (*cost < 1) {
		PyErr_Format(PyExc_ValueError, "cost must be >= 1, got %R", c);
		return -1;
	}
	if (*cost > self->max_cost) {
		PyErr_Format(PyExc_ValueError,
		             "cost %R can never be allowed: the smallest "
		             "capacity of this limiter's rates is %lld",
		             c, (long long)self->max_cost);
		return -1;
	}
	return 0;
}

static PyObject *shm_decide(ShmLimiterObject *self, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames, int commit,
                            const char *fname)
{
	const char *key;
	Py_ssize_t len;
	uint8_t kind;
	int64_t cost, now, ban_count;
	st_decision d;

	if (shm_args(self, args, nargs, kwnames, fname, &cost) < 0)
		return NULL;
	if (shm_key(args[0], &key, &len, &kind) < 0)
		return NULL;
	if (st_is_disabled(self->st)) {
		st_allow_all(self->max_cost, &d);
		return st_decision_make(self->st, &d);
	}
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, &now) <
	    0)
		return NULL;
	/* An injected clock is Python code: it may have re-initialised this
	 * object with other rates. */
	if (ST_UNLIKELY(self->clock != NULL) && cost > self->max_cost) {
		PyErr_Format(PyExc_ValueError,
		             "cost %lld can never be allowed: the smallest "
		             "capacity of this limiter's rates is %lld (the "
		             "limiter was re-initialised)",
		             (long long)cost, (long long)self->max_cost);
		return NULL;
	}
	st_shm_decide_ban(&self->shm,
	                  st_shm_hash_key(&self->shm, kind, key, (size_t)len),
	                  now, cost, commit, &d, &ban_count);
	if (ST_UNLIKELY(ban_count > 0) && self->on_ban != NULL) {
		/* A ban started by this hit: told once, by this process. */
		PyObject *cb = Py_NewRef(self->on_ban);
		PyObject *r = PyObject_CallFunction(
		    cb, "OdL", args[0], (double)d.retry_after_ns / 1e9,
		    (long long)ban_count);
		if (r == NULL)
			PyErr_WriteUnraisable(cb);
		Py_XDECREF(r);
		Py_DECREF(cb);
	}
	return st_decision_make(self->st, &d);
}

/* The hash of a key, with the clock read (an injected clock is Python
 * code, and may re-initialise this object: read it first). */
static int shm_key_now(ShmLimiterObject *self, PyObject *key, st_shm_hash *kh,
                       int64_t *now)
{
	const char *buf;
	Py_ssize_t len;
	uint8_t kind;

	if (shm_ready(self) < 0)
		return -1;
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, now) < 0)
		return -1;
	if (shm_key(key, &buf, &len, &kind) < 0)
		return -1;
	*kh = st_shm_hash_key(&self->shm, kind, buf, (size_t)len);
	return 0;
}

static PyObject *shm_lift(ShmLimiterObject *self, PyObject *key)
{
	st_shm_hash kh;
	int64_t now;

	if (shm_key_now(self, key, &kh, &now) < 0)
		return NULL;
	return PyBool_FromLong(st_shm_lift(&self->shm, kh, now));
}

static PyObject *shm_ban_state(ShmLimiterObject *self, PyObject *key)
{
	st_shm_hash kh;
	int64_t now, pn[PN_WORDS], left, bans, strikes;
	const st_penalty *p = &self->shm.penalty;

	if (shm_key_now(self, key, &kh, &now) < 0)
		return NULL;
	if (!st_shm_penalty_state(&self->shm, kh, pn))
		Py_RETURN_NONE;
	left = pn_banned_for(pn, now);
	bans = pn_bans(p, pn, now);
	strikes = pn_strikes(p, pn, now);
	if (left == 0 && bans == 0 && strikes == 0)
		Py_RETURN_NONE;
	return Py_BuildValue("(LLL)", (long long)left, (long long)bans,
	                     (long long)strikes);
}

/* st_shm_each_ban's callback: appends (None, left_ns, count). */
static int append_ban(void *arg, int64_t left, int64_t count)
{
	PyObject *item =
	    Py_BuildValue("(OLL)", Py_None, (long long)left, (long long)count);
	int rc;
	if (item == NULL)
		return -1;
	rc = PyList_Append((PyObject *)arg, item);
	Py_DECREF(item);
	return rc;
}

static PyObject *shm_bans_list(ShmLimiterObject *self, PyObject *unused)
{
	PyObject *out;
	int64_t now;

	(void)unused;
	if (shm_ready(self) < 0)
		return NULL;
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, &now) <
	    0)
		return NULL;
	out = PyList_New(0);
	if (out == NULL)
		return NULL;
	if (st_shm_each_ban(&self->shm, now, append_ban, out) < 0) {
		Py_DECREF(out);
		return NULL;
	}
	return out;
}

static PyObject *shm_hit(ShmLimiterObject *self, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
	return shm_decide(self, args, nargs, kwnames, 1, "hit");
}

static PyObject *shm_peek(ShmLimiterObject *self, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames)
{
	return shm_decide(self, args, nargs, kwnames, 0, "peek");
}

static PyObject *shm_reset(ShmLimiterObject *self, PyObject *args,
                           PyObject *kwds)
{
	static char *kwlist[] = {"key", NULL};
	PyObject *key = Py_None;
	const char *buf;
	Py_ssize_t len;
	uint8_t kind;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:reset", kwlist, &key))
		return NULL;
	if (shm_ready(self) < 0)
		return NULL;
	if (key == Py_None) {
		st_shm_reset_all(&self->shm);
		Py_RETURN_NONE;
	}
	if (shm_key(key, &buf, &len, &kind) < 0)
		return NULL;
	st_shm_reset(&self->shm,
	             st_shm_hash_key(&self->shm, kind, buf, (size_t)len));
	Py_RETURN_NONE;
}

static PyObject *shm_stats(ShmLimiterObject *self, PyObject *unused)
{
	st_shm_stats s;

	(void)unused;
	if (shm_ready(self) < 0)
		return NULL;
	st_shm_get_stats(&self->shm, &s);
	return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "keys",
	                     (unsigned long long)s.keys, "max_keys",
	                     (unsigned long long)s.max_keys, "slots",
	                     (unsigned long long)s.slots, "evicted",
	                     (unsigned long long)s.evicted, "expired",
	                     (unsigned long long)s.expired, "memory_bytes",
	                     (unsigned long long)s.memory);
}

/* Takes the lock of `key`'s bucket and keeps it: for tests that kill a
 * process holding a lock. Any later use of that bucket by this process
 * waits forever. */
static PyObject *shm_hold_lock(ShmLimiterObject *self, PyObject *key)
{
	const char *buf;
	Py_ssize_t len;
	uint8_t kind;

	if (shm_ready(self) < 0 || shm_key(key, &buf, &len, &kind) < 0)
		return NULL;
	st_shm_hold_lock(&self->shm,
	                 st_shm_hash_key(&self->shm, kind, buf, (size_t)len));
	Py_RETURN_NONE;
}

static PyObject *shm_get_algorithm(ShmLimiterObject *self, void *c)
{
	static const char *names[] = {"token_bucket", "fixed_window",
	                              "sliding_window"};
	(void)c;
	if (shm_ready(self) < 0)
		return NULL;
	return PyUnicode_FromString(names[self->shm.policy.algorithm]);
}

static PyObject *shm_get_name(ShmLimiterObject *self, void *c)
{
	(void)c;
	if (shm_ready(self) < 0)
		return NULL;
	return Py_NewRef(self->name);
}

static PyObject *shm_get_max_cost(ShmLimiterObject *self, void *c)
{
	(void)c;
	if (shm_ready(self) < 0)
		return NULL;
	return PyLong_FromLongLong(self->max_cost);
}

PyDoc_STRVAR(shm_hit_doc,
             "hit($self, key, /, cost=1)\n--\n\n"
             "Consume `cost` from every rate for `key` (str or bytes) if all "
             "of them allow it;\notherwise consume nothing. Returns a "
             "Decision.");
PyDoc_STRVAR(shm_peek_doc,
             "peek($self, key, /, cost=1)\n--\n\n"
             "The Decision hit() would return now, consuming nothing.");
PyDoc_STRVAR(shm_reset_doc,
             "reset($self, /, key=None)\n--\n\n"
             "Forget one key (back to full), or every key when key is None, "
             "for every\nprocess sharing the segment.");
PyDoc_STRVAR(shm_stats_doc,
             "stats($self, /)\n--\n\n"
             "A dict: keys tracked, max_keys, slots, evicted (live keys "
             "dropped to make\nroom), expired (full keys whose slot was "
             "reused) and memory_bytes (the\nsegment's size).");
PyDoc_STRVAR(shm_lift_doc,
             "lift($self, key, /)\n--\n\n"
             "Forget the key's ban, its ban count and its counted refusals, "
             "for every\nprocess. Returns True when the key was banned.");
PyDoc_STRVAR(shm_ban_state_doc,
             "_ban_state($self, key, /)\n--\n\n"
             "(ban_left_ns, ban_count, refusals_counted) of the key, or None "
             "when it has\nno penalty state.");
PyDoc_STRVAR(shm_bans_doc,
             "_bans($self, /)\n--\n\n"
             "[(None, ban_left_ns, ban_count), ...] of the keys banned now "
             "(the segment\nstores hashes of keys, not keys).");
PyDoc_STRVAR(shm_hold_lock_doc,
             "_hold_lock($self, key, /)\n--\n\n"
             "Tests only: take the lock of key's bucket and never release "
             "it.");

static PyMethodDef shm_methods[] = {
    {"hit", (PyCFunction)(void (*)(void))shm_hit,
     METH_FASTCALL | METH_KEYWORDS, shm_hit_doc},
    {"peek", (PyCFunction)(void (*)(void))shm_peek,
     METH_FASTCALL | METH_KEYWORDS, shm_peek_doc},
    {"reset", (PyCFunction)(void (*)(void))shm_reset,
     METH_VARARGS | METH_KEYWORDS, shm_reset_doc},
    {"stats", (PyCFunction)shm_stats, METH_NOARGS, shm_stats_doc},
    {"_hold_lock", (PyCFunction)shm_hold_lock, METH_O, shm_hold_lock_doc},
    {"lift", (PyCFunction)shm_lift, METH_O, shm_lift_doc},
    {"_ban_state", (PyCFunction)shm_ban_state, METH_O, shm_ban_state_doc},
    {"_bans", (PyCFunction)shm_bans_list, METH_NOARGS, shm_bans_doc},
    {NULL},
};

static PyGetSetDef shm_getset[] = {
    {"algorithm", (getter)shm_get_algorithm, NULL,
     "'token_bucket', 'fixed_window' or 'sliding_window'.", NULL},
    {"name", (getter)shm_get_name, NULL, "The segment's shm_open name.", NULL},
    {"max_cost", (getter)shm_get_max_cost, NULL,
     "The largest cost a hit can ever be allowed.", NULL},
    {NULL},
};

PyDoc_STRVAR(shm_doc,
             "SharedMemoryLimiter(name, template, clock=None, "
             "on_ban=None)\n--\n\n"
             "A rate limiter whose state lives in the shared-memory segment "
             "`name` (a\nshm_open name such as '/stanchion.myapp'), created "
             "on first use with the\nrates, algorithm and max_keys of "
             "`template` (a Limiter); opening a segment\nthat holds other "
             "settings raises ValueError naming both. Decides exactly\nas "
             "the in-process Limiter. `clock`: as Limiter's (tests); every "
             "process\nsharing a segment must use the same clock. The "
             "template's penalty, if\nany, is kept in the segment; "
             "`on_ban(key, seconds, count)` is called once\nper ban, by "
             "the process whose hit started it.");

static PyType_Slot shm_slots[] = {
    {Py_tp_doc, (void *)shm_doc},
    {Py_tp_new, shm_new},
    {Py_tp_init, shm_init},
    {Py_tp_dealloc, shm_dealloc},
    {Py_tp_traverse, shm_traverse},
    {Py_tp_clear, shm_clear},
    {Py_tp_methods, shm_methods},
    {Py_tp_getset, shm_getset},
    {0, NULL},
};

static PyType_Spec shm_spec = {
    .name = "stanchion._core.SharedMemoryLimiter",
    .basicsize = sizeof(ShmLimiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = shm_slots,
};

PyDoc_STRVAR(shm_unlink_doc,
             "shm_unlink(name, /)\n--\n\n"
             "Remove the shared-memory segment `name`; processes that "
             "mapped it keep\nusing it. Raises FileNotFoundError when it "
             "does not exist.");

static PyObject *shm_unlink_fn(PyObject *module, PyObject *name)
{
	const char *cname;
	Py_ssize_t len;

	(void)module;
	if (!PyUnicode_Check(name)) {
		PyErr_Format(PyExc_TypeError, "name must be a str, not %.100s",
		             Py_TYPE(name)->tp_name);
		return NULL;
	}
	cname = PyUnicode_AsUTF8AndSize(name, &len);
	if (cname == NULL)
		return NULL;
	/* A NUL inside would remove the segment of the name cut there. */
	if ((Py_ssize_t)strlen(cname) != len) {
		PyErr_Format(PyExc_ValueError,
		             "invalid shared memory name %R (no NUL)", name);
		return NULL;
	}
	if (st_shm_unlink(cname) < 0)
		return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError,
		                                            name);
	Py_RETURN_NONE;
}

static PyMethodDef shm_module_methods[] = {
    {"shm_unlink", shm_unlink_fn, METH_O, shm_unlink_doc},
    {NULL},
};

int st_shm_limiter_exec(PyObject *module, st_state *st)
{
	st->shm_limiter_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &shm_spec, NULL);
	if (st->shm_limiter_type == NULL)
		return -1;
	if (PyModule_AddType(module, st->shm_limiter_type) < 0)
		return -1;
	return PyModule_AddFunctions(module, shm_module_methods);
}
