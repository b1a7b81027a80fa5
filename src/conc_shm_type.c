/* Python binding for the shared-memory concurrency segment (conc_shm.c):
 * _core.SharedMemoryConcurrency, the primitives under
 * stanchion.SharedMemoryConcurrency (which adds the holds and waiting).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class SharedMemoryConcurrency:
 *         def __init__(self, name, limit, queue=0, priorities=1,
 *                      reserve=0, max_keys=1000): ...
 *         def _acquire(self, key, id, lane, lease_ns, patience_ns, mode)
 *             -> (status, held, queued): ...
 *         def _release(self, key, id) -> None: ...
 *         def _extend(self, key, id, lease_ns) -> bool: ...
 *         def _count(self, key) -> (held, queued): ...
 *
 * Keys are None (one global limit), str or bytes. Calls may wait (with
 * the GIL held, spinning) while another process holds the bucket's lock:
 * well under a microsecond, unless that process is stopped.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "args.h"
#include "clock.h"
#include "conc_shm.h"
#include "module.h"

#define KEY_STR 1
#define KEY_BYTES 2
#define KEY_NONE 3

typedef struct {
	PyObject_HEAD PyObject *name; /* the segment's name (str) */
	cs_shm shm;                   /* the mapping and settings */
	int ready;                    /* __init__ succeeded */
} CsObject;

static PyObject *cs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	(void)args;
	(void)kwds;
	return type->tp_alloc(type, 0);
}

static int cs_traverse(CsObject *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	return 0;
}

static void cs_dealloc(CsObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	Py_CLEAR(self->name);
	cs_close(&self->shm);
	tp->tp_free(self);
	Py_DECREF(tp);
}

static int cs_int(PyObject *v, const char *what, long long lo, long long hi,
                  long long *out)
{
	int overflow;

	if (!PyLong_Check(v) || PyBool_Check(v)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s",
		             what, Py_TYPE(v)->tp_name);
		return -1;
	}
	*out = PyLong_AsLongLongAndOverflow(v, &overflow);
	if (*out == -1 && PyErr_Occurred())
		return -1;
	if (overflow != 0 || *out < lo || *out > hi) {
		PyErr_Format(PyExc_ValueError,
		             "%s must be between %lld and %lld, got %R", what,
		             lo, hi, v);
		return -1;
	}
	return 0;
}

static int cs_init(CsObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"name",    "limit",    "queue", "priorities",
	                         "reserve", "max_keys", NULL};
	PyObject *name, *limit_o, *queue_o = NULL, *prio_o = NULL;
	PyObject *reserve_o = NULL, *max_keys_o = NULL;
	long long limit, queue = 0, prios = 1, reserve = 0, max_keys = 1000;
	cs_settings set;
	cs_shm shm;
	const char *cname;
	char err[600];
	int rc;

	if (!PyArg_ParseTupleAndKeywords(
	        args, kwds, "UO|OOOO:SharedMemoryConcurrency", kwlist, &name,
	        &limit_o, &queue_o, &prio_o, &reserve_o, &max_keys_o))
		return -1;
	if (cs_int(limit_o, "limit", 1, 1 << 20, &limit) < 0 ||
	    (queue_o && cs_int(queue_o, "queue", 0, 1 << 20, &queue) < 0) ||
	    (prio_o &&
	     cs_int(prio_o, "priorities", 1, CS_MAX_LANES, &prios) < 0) ||
	    (reserve_o &&
	     cs_int(reserve_o, "reserve", 0, 1 << 20, &reserve) < 0) ||
	    (max_keys_o &&
	     cs_int(max_keys_o, "max_keys", 1, 1 << 30, &max_keys) < 0))
		return -1;
	if (reserve * (prios - 1) >= limit) {
		PyErr_Format(PyExc_ValueError,
		             "reserve * (priorities - 1) must be below limit "
		             "(got reserve=%lld, priorities=%lld, limit=%lld)",
		             reserve, prios, limit);
		return -1;
	}
	cname = PyUnicode_AsUTF8(name);
	if (cname == NULL)
		return -1;
	if (!PyUnicode_IS_ASCII(name) ||
	    (Py_ssize_t)strlen(cname) != PyUnicode_GET_LENGTH(name)) {
		PyErr_Format(PyExc_ValueError,
		             "invalid shared memory name %R (ASCII, no NUL)",
		             name);
		return -1;
	}
	if (self->ready) {
		PyErr_SetString(
		    PyExc_RuntimeError,
		    "SharedMemoryConcurrency.__init__ may run only "
		    "once");
		return -1;
	}
	set.limit = limit;
	set.queue = queue;
	set.reserve = reserve;
	set.nlanes = (int32_t)prios;
	set.max_keys = (uint32_t)max_keys;
	Py_BEGIN_ALLOW_THREADS;
	rc = cs_open(&shm, cname, &set, err, sizeof(err));
	Py_END_ALLOW_THREADS;
	if (rc == CS_EMISMATCH || (rc != CS_OK && errno == EINVAL)) {
		PyErr_SetString(PyExc_ValueError, err);
		return -1;
	}
	if (rc != CS_OK) {
		PyObject *exc =
		    PyObject_CallFunction(PyExc_OSError, "is", errno, err);
		if (exc != NULL) {
			PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
			Py_DECREF(exc);
		}
		return -1;
	}
	self->shm = shm;
	self->name = Py_NewRef(name);
	self->ready = 1;
	return 0;
}

/* The keyed hash of a key (None, str or bytes); -1 with an exception. */
static int cs_key(CsObject *self, PyObject *key, cs_hash *out)
{
	const char *buf;
	Py_ssize_t len;
	uint8_t kind;

	if (!self->ready) {
		PyErr_SetString(
		    PyExc_RuntimeError,
		    "SharedMemoryConcurrency.__init__ was not called");
		return -1;
	}
	if (key == Py_None) {
		buf = "";
		len = 0;
		kind = KEY_NONE;
	} else if (PyUnicode_Check(key)) {
		buf = PyUnicode_AsUTF8AndSize(key, &len);
		if (buf == NULL)
			return -1;
		kind = KEY_STR;
	} else if (PyBytes_Check(key)) {
		buf = PyBytes_AS_STRING(key);
		len = PyBytes_GET_SIZE(key);
		kind = KEY_BYTES;
	} else {
		PyErr_Format(PyExc_TypeError,
		             "key must be None, str or bytes, not %.100s",
		             Py_TYPE(key)->tp_name);
		return -1;
	}
	*out = cs_hash_key(&self->shm, kind, buf, (size_t)len);
	return 0;
}

static PyObject *cs_acquire_m(CsObject *self, PyObject *args)
{
	PyObject *key;
	unsigned long long id;
	int lane, mode;
	long long lease_ns, patience_ns;
	int64_t held, queued;
	cs_hash kh;
	int rc;

	if (!PyArg_ParseTuple(args, "OKiLLi:_acquire", &key, &id, &lane,
	                      &lease_ns, &patience_ns, &mode))
		return NULL;
	if (cs_key(self, key, &kh) < 0)
		return NULL;
	if (id == 0 || lane < 0 || lane >= self->shm.set.nlanes ||
	    lease_ns < 1 || patience_ns < 1 || lease_ns > ST_MAX_SPAN_NS ||
	    patience_ns > ST_MAX_SPAN_NS || mode < CS_TRY || mode > CS_POLL) {
		PyErr_SetString(PyExc_ValueError, "bad _acquire arguments");
		return NULL;
	}
	rc = cs_acquire(&self->shm, kh, id, lane, lease_ns, patience_ns, mode,
	                st_monotonic_ns(), &held, &queued);
	return Py_BuildValue("(iLL)", rc, (long long)held, (long long)queued);
}

static PyObject *cs_release_m(CsObject *self, PyObject *args)
{
	PyObject *key;
	unsigned long long id;
	cs_hash kh;

	if (!PyArg_ParseTuple(args, "OK:_release", &key, &id))
		return NULL;
	if (cs_key(self, key, &kh) < 0)
		return NULL;
	cs_release(&self->shm, kh, id);
	Py_RETURN_NONE;
}

static PyObject *cs_extend_m(CsObject *self, PyObject *args)
{
	PyObject *key;
	unsigned long long id;
	long long lease_ns;
	cs_hash kh;

	if (!PyArg_ParseTuple(args, "OKL:_extend", &key, &id, &lease_ns))
		return NULL;
	if (cs_key(self, key, &kh) < 0)
		return NULL;
	if (lease_ns < 1 || lease_ns > ST_MAX_SPAN_NS) {
		PyErr_SetString(PyExc_ValueError, "bad _extend arguments");
		return NULL;
	}
	return PyBool_FromLong(
	    cs_extend(&self->shm, kh, id, lease_ns, st_monotonic_ns()));
}

static PyObject *cs_count_m(CsObject *self, PyObject *key)
{
	int64_t held, queued;
	cs_hash kh;

	if (cs_key(self, key, &kh) < 0)
		return NULL;
	cs_count(&self->shm, kh, st_monotonic_ns(), &held, &queued);
	return Py_BuildValue("(LL)", (long long)held, (long long)queued);
}

static PyObject *cs_get_name(CsObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->name ? self->name : Py_None);
}

static PyMethodDef cs_methods[] = {
    {"_acquire", (PyCFunction)cs_acquire_m, METH_VARARGS,
     "_acquire($self, key, id, lane, lease_ns, patience_ns, mode, /)\n--\n\n"
     "One attempt: (status, held, queued); status 1 taken, 0 waiting (or "
     "not\ntaken, mode 0), -1 queue full, -2 no longer queued, -3 no key "
     "entry free."},
    {"_release", (PyCFunction)cs_release_m, METH_VARARGS,
     "_release($self, key, id, /)\n--\n\nFree the lease and queue place of "
     "`id`."},
    {"_extend", (PyCFunction)cs_extend_m, METH_VARARGS,
     "_extend($self, key, id, lease_ns, /)\n--\n\nRenew the lease of `id`; "
     "False if it has none."},
    {"_count", (PyCFunction)cs_count_m, METH_O,
     "_count($self, key, /)\n--\n\n(held, queued) for `key` now."},
    {NULL},
};

static PyGetSetDef cs_getset[] = {
    {"name", (getter)cs_get_name, NULL, "The segment's shm_open name.", NULL},
    {NULL},
};

static PyType_Slot cs_slots[] = {
    {Py_tp_doc,
     (void *)"SharedMemoryConcurrency(name, limit, queue=0, priorities=1, "
             "reserve=0, max_keys=1000)\n--\n\n"
             "Leases and a queue per key in a named shared-memory segment."},
    {Py_tp_new, cs_new},
    {Py_tp_init, cs_init},
    {Py_tp_dealloc, cs_dealloc},
    {Py_tp_traverse, cs_traverse},
    {Py_tp_methods, cs_methods},
    {Py_tp_getset, cs_getset},
    {0, NULL},
};

static PyType_Spec cs_spec = {
    .name = "stanchion._core.SharedMemoryConcurrency",
    .basicsize = sizeof(CsObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = cs_slots,
};

int st_conc_shm_exec(PyObject *module, st_state *st)
{
	st->conc_shm_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &cs_spec, NULL);
	if (st->conc_shm_type == NULL)
		return -1;
	return PyModule_AddType(module, st->conc_shm_type);
}
