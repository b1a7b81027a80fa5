/* Python bindings for cached functions: _core.CachedCall and
 * _core.make_key, over a _core.Cache (cache_type.h); the CacheInfo record
 * its cache_info() returns is cache_info_type.c.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class CachedCall:    # what @stanchion.cached returns for a plain
 *         def __init__(self, func, cache, miss, typed=False, key=None)
 *         def __call__(self, *args, **kwargs):
 *             k = key(*args, **kwargs) if key else make_key(args, kwargs)
 *             v = cache.get(k, MISSING)
 *             return miss(k, args, kwargs) if v is MISSING else v
 *         def cache_info(self) -> CacheInfo: ...
 *         def cache_clear(self): ...
 *         def invalidate(self, *args, **kwargs) -> bool: ...
 *
 *     def make_key(args, kwargs=None, typed=False): ...  # lru_cache's
 */
#include "cached_type.h"

#include "cache_type.h"
#include "module.h"
#include "structmember.h"

/* =========================================================================
 * Keys for cached functions
 * ========================================================================= */

/* The cache key of a call: the lone argument itself when it is an exact
 * str or int, else a tuple of the positional arguments, then (if any)
 * the keyword mark and name, value pairs, then (if typed) every
 * argument's type. Keyword order matters, as for functools.lru_cache. */
static PyObject *make_key(st_state *st, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *const *names,
                          PyObject *const *values, Py_ssize_t nkw, int typed)
{
	PyObject *key;
	Py_ssize_t n, j = 0;

	if (!typed && nkw == 0 && nargs == 1 &&
	    (PyUnicode_CheckExact(args[0]) || PyLong_CheckExact(args[0])))
		return Py_NewRef(args[0]);
	n = nargs + (nkw ? 1 + 2 * nkw : 0) + (typed ? nargs + nkw : 0);
	key = PyTuple_New(n);
	if (key == NULL)
		return NULL;
	for (Py_ssize_t i = 0; i < nargs; i++)
		PyTuple_SET_ITEM(key, j++, Py_NewRef(args[i]));
	if (nkw) {
		PyTuple_SET_ITEM(key, j++, Py_NewRef(st->kwd_mark));
		for (Py_ssize_t i = 0; i < nkw; i++) {
			PyTuple_SET_ITEM(key, j++, Py_NewRef(names[i]));
			PyTuple_SET_ITEM(key, j++, Py_NewRef(values[i]));
		}
	}
	if (typed) {
		for (Py_ssize_t i = 0; i < nargs; i++)
			PyTuple_SET_ITEM(
			    key, j++, Py_NewRef((PyObject *)Py_TYPE(args[i])));
		for (Py_ssize_t i = 0; i < nkw; i++)
			PyTuple_SET_ITEM(
			    key, j++,
			    Py_NewRef((PyObject *)Py_TYPE(values[i])));
	}
	return key;
}

/* make_key from a FASTCALL argument vector. */
static PyObject *make_key_vector(st_state *st, PyObject *const *args,
                                 Py_ssize_t nargs, PyObject *kwnames,
                                 int typed)
{
	Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
	PyObject *const *names =
	    nkw ? &PyTuple_GET_ITEM(kwnames, 0) : (PyObject *const *)NULL;

	return make_key(st, args, nargs, names, args + nargs, nkw, typed);
}

/* make_key from an args tuple and a kwargs dict (or None). */
static PyObject *make_key_tuple(st_state *st, PyObject *args, PyObject *kwargs,
                                int typed)
{
	Py_ssize_t nkw = kwargs ? PyDict_GET_SIZE(kwargs) : 0, pos = 0, i = 0;
	PyObject **kv, *k, *v, *key;

	if (nkw == 0)
		return make_key(st, &PyTuple_GET_ITEM(args, 0),
		                PyTuple_GET_SIZE(args), NULL, NULL, 0, typed);
	kv = PyMem_Malloc((size_t)nkw * 2 * sizeof(PyObject *));
	if (kv == NULL)
		return PyErr_NoMemory();
	/* Own the names and values: building the key allocates, and a
	 * collection it triggers may run a finalizer that changes the dict
	 * and frees what it held. */
	while (i < nkw && PyDict_Next(kwargs, &pos, &k, &v)) {
		kv[i] = Py_NewRef(k);
		kv[nkw + i] = Py_NewRef(v);
		i++;
	}
	key = make_key(st, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args),
	               kv, kv + nkw, i, typed);
	for (Py_ssize_t j = 0; j < i; j++) {
		Py_DECREF(kv[j]);
		Py_DECREF(kv[nkw + j]);
	}
	PyMem_Free(kv);
	return key;
}

PyDoc_STRVAR(make_key_doc,
             "make_key(args, kwargs=None, typed=False)\n--\n\n"
             "The cache key @cached uses for a call with `args` (a tuple) and "
             "`kwargs` (a dict).");

/* _core.make_key(args, kwargs=None, typed=False): the key @cached
 * uses for a call. A TypeError unless args is a tuple and kwargs a dict
 * or None. Returns a new reference. */
static PyObject *module_make_key(PyObject *module, PyObject *args,
                                 PyObject *kwds)
{
	static char *kwlist[] = {"args", "kwargs", "typed", NULL};
	PyObject *a, *kw = Py_None;
	int typed = 0;
	st_state *st = PyModule_GetState(module);

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|Op:make_key", kwlist,
	                                 &PyTuple_Type, &a, &kw, &typed))
		return NULL;
	if (kw != Py_None && !PyDict_Check(kw)) {
		PyErr_Format(PyExc_TypeError,
		             "kwargs must be a dict or None, not %.100s",
		             Py_TYPE(kw)->tp_name);
		return NULL;
	}
	return make_key_tuple(st, a, kw == Py_None ? NULL : kw, typed);
}

/* =========================================================================
 * CachedCall
 * ========================================================================= */

typedef struct {
	PyObject_HEAD vectorcallfunc vectorcall;
	st_state *st;       /* module state: the keyword mark */
	CacheObject *cache; /* where results live */
	PyObject *func;     /* the function being cached */
	PyObject *miss;     /* miss(key, args, kwargs) computes a result */
	PyObject *key_func; /* NULL, or key(*args, **kwargs) */
	int typed;          /* keys include argument types */
	PyObject *dict;     /* __dict__: __wrapped__, __name__, ... */
	PyObject *weakreflist;
} CachedCallObject;

/* The cache key of a call: the user's key function's answer, or
 * make_key's. Returns a new reference, or NULL with an exception set.
 * A key function runs Python code. */
static PyObject *cc_key(CachedCallObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames)
{
	if (self->key_func != NULL)
		return PyObject_Vectorcall(self->key_func, args, (size_t)nargs,
		                           kwnames);
	return make_key_vector(self->st, args, nargs, kwnames, self->typed);
}

/* Calling the cached function: a hit returns the stored result (new
 * reference); a miss returns miss(key, args, kwargs). NULL with an
 * exception set on error, or RuntimeError once tp_clear has run. */
static PyObject *cc_vectorcall(CachedCallObject *self, PyObject *const *args,
                               size_t nargsf, PyObject *kwnames)
{
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
	Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
	PyObject *key, *value, *targs, *kwargs = NULL, *res = NULL;
	int r;

	if (ST_UNLIKELY(self->cache == NULL)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "this cached function has been cleared");
		return NULL;
	}
	key = cc_key(self, args, nargs, kwnames);
	if (key == NULL)
		return NULL;
	r = cache_read(self->cache, key, &value);
	if (ST_LIKELY(r > 0)) {
		Py_DECREF(key);
		return value;
	}
	if (r < 0) {
		Py_DECREF(key);
		return NULL;
	}
	/* A miss: the Python side computes, once per key at a time. */
	targs = PyTuple_New(nargs);
	if (targs == NULL)
		goto done;
	for (Py_ssize_t i = 0; i < nargs; i++)
		PyTuple_SET_ITEM(targs, i, Py_NewRef(args[i]));
	if (nkw) {
		kwargs = PyDict_New();
		if (kwargs == NULL)
			goto done;
		for (Py_ssize_t i = 0; i < nkw; i++)
			if (PyDict_SetItem(kwargs,
			                   PyTuple_GET_ITEM(kwnames, i),
			                   args[nargs + i]) < 0)
				goto done;
	}
	res = PyObject_CallFunctionObjArgs(self->miss, key, targs,
	                                   kwargs ? kwargs : Py_None, NULL);
done:
	Py_DECREF(key);
	Py_XDECREF(targs);
	Py_XDECREF(kwargs);
	return res;
}

/* CachedCall(func, cache, miss, typed=False, key=None): func, miss
 * and key (unless None) must be callable and cache a Cache (TypeError).
 * Returns a new reference, or NULL with an exception set. */
static PyObject *cc_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"func",  "cache", "miss",
	                         "typed", "key",   NULL};
	PyObject *func, *cache, *miss, *key_func = Py_None;
	int typed = 0;
	CachedCallObject *self;
	st_state *st = st_state_from_type(type);

	if (st == NULL)
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O|pO:CachedCall",
	                                 kwlist, &func, st->cache_type, &cache,
	                                 &miss, &typed, &key_func))
		return NULL;
	if (!PyCallable_Check(func) || !PyCallable_Check(miss) ||
	    (key_func != Py_None && !PyCallable_Check(key_func))) {
		PyErr_SetString(PyExc_TypeError,
		                "func, miss and key (unless None) must be "
		                "callable");
		return NULL;
	}
	self = (CachedCallObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->vectorcall = (vectorcallfunc)cc_vectorcall;
	self->st = st;
	self->cache = (CacheObject *)Py_NewRef(cache);
	self->func = Py_NewRef(func);
	self->miss = Py_NewRef(miss);
	self->key_func = key_func == Py_None ? NULL : Py_NewRef(key_func);
	self->typed = typed;
	return (PyObject *)self;
}

/* Visits every object this one owns, and its heap type. */
static int cc_traverse(CachedCallObject *self, visitproc visit, void *arg)
{
	Py_VISIT(self->cache);
	Py_VISIT(self->func);
	Py_VISIT(self->miss);
	Py_VISIT(self->key_func);
	Py_VISIT(self->dict);
	Py_VISIT(Py_TYPE(self));
	return 0;
}

/* Drops every owned reference; later calls raise RuntimeError. */
static int cc_clear(CachedCallObject *self)
{
	Py_CLEAR(self->cache);
	Py_CLEAR(self->func);
	Py_CLEAR(self->miss);
	Py_CLEAR(self->key_func);
	Py_CLEAR(self->dict);
	return 0;
}

/* Untracks, clears weak references and owned ones, frees, then drops
 * the type. */
static void cc_dealloc(CachedCallObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	if (self->weakreflist != NULL)
		PyObject_ClearWeakRefs((PyObject *)self);
	cc_clear(self);
	tp->tp_free(self);
	Py_DECREF(tp);
}

/* The cache must still be there (tp_clear may have run in a cycle). */
static int cc_ready(CachedCallObject *self)
{
	if (self->cache == NULL) {
		PyErr_SetString(PyExc_RuntimeError,
		                "this cached function has been cleared");
		return -1;
	}
	return 0;
}

/* Binds like a function: through an instance, a bound method. */
static PyObject *cc_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
	(void)type;
	if (obj == NULL || obj == Py_None)
		return Py_NewRef(self);
	return PyMethod_New(self, obj);
}

/* cache_info(): CacheInfo(hits, misses, maxsize, currsize) after
 * purging expired entries. Returns a new reference, or NULL with an
 * exception set (the injected clock may fail). */
static PyObject *cc_cache_info(CachedCallObject *self, PyObject *unused)
{
	CacheObject *c = self->cache;
	PyObject *info, *maxsize;

	(void)unused;
	if (cc_ready(self) < 0 || cache_purge_now(c) < 0)
		return NULL;
	maxsize = maxsize_object(c);
	if (maxsize == NULL)
		return NULL;
	info = PyStructSequence_New(self->st->cache_info_type);
	if (info == NULL) {
		Py_DECREF(maxsize);
		return NULL;
	}
	PyStructSequence_SetItem(info, 0,
	                         PyLong_FromUnsignedLongLong(c->hits));
	PyStructSequence_SetItem(info, 1,
	                         PyLong_FromUnsignedLongLong(c->misses));
	PyStructSequence_SetItem(info, 2, maxsize);
	PyStructSequence_SetItem(info, 3,
	                         PyLong_FromUnsignedLong(c->table.count));
	for (Py_ssize_t i = 0; i < 4; i++) {
		if (PyStructSequence_GetItem(info, i) == NULL) {
			Py_DECREF(info);
			return NULL;
		}
	}
	return info;
}

/* cache_clear(): forgets every result and resets the statistics.
 * Returns None. */
static PyObject *cc_cache_clear(CachedCallObject *self, PyObject *unused)
{
	(void)unused;
	if (cc_ready(self) < 0)
		return NULL;
	cache_clear_table(self->cache);
	return cache_reset_stats(self->cache, NULL);
}

/* invalidate(*args, **kwargs): forgets the result of that call.
 * Returns True if there was a live one, False if not, NULL on error. */
static PyObject *cc_invalidate(CachedCallObject *self, PyObject *const *args,
                               size_t nargsf, PyObject *kwnames)
{
	PyObject *key, *value;
	int r;

	if (cc_ready(self) < 0)
		return NULL;
	key = cc_key(self, args, PyVectorcall_NARGS(nargsf), kwnames);
	if (key == NULL)
		return NULL;
	r = cache_take(self->cache, key, &value);
	Py_DECREF(key);
	if (r < 0)
		return NULL;
	if (r > 0)
		Py_DECREF(value);
	return PyBool_FromLong(r);
}

/* Pickles by qualified name, as functions do. */
static PyObject *cc_reduce(PyObject *self, PyObject *unused)
{
	(void)unused;
	return PyObject_GetAttrString(self, "__qualname__");
}

/* <cached FUNC>, or a note once cleared. */
static PyObject *cc_repr(CachedCallObject *self)
{
	if (self->func == NULL)
		return PyUnicode_FromString("<cached function (cleared)>");
	return PyUnicode_FromFormat("<cached %R>", self->func);
}

PyDoc_STRVAR(cc_cache_info_doc,
             "cache_info($self, /)\n--\n\n"
             "CacheInfo(hits, misses, maxsize, currsize), as "
             "functools.lru_cache gives.");
PyDoc_STRVAR(cc_cache_clear_doc,
             "cache_clear($self, /)\n--\n\n"
             "Forget every result and reset the statistics.");
PyDoc_STRVAR(cc_invalidate_doc,
             "invalidate($self, /, *args, **kwargs)\n--\n\n"
             "Forget the result of the call with these arguments (for a "
             "method, the instance\ncomes first). Returns True if there was "
             "one.");

static PyMethodDef cc_methods[] = {
    {"cache_info", (PyCFunction)cc_cache_info, METH_NOARGS, cc_cache_info_doc},
    {"cache_clear", (PyCFunction)cc_cache_clear, METH_NOARGS,
     cc_cache_clear_doc},
    {"invalidate", (PyCFunction)(void (*)(void))cc_invalidate,
     METH_FASTCALL | METH_KEYWORDS, cc_invalidate_doc},
    {"__reduce__", (PyCFunction)cc_reduce, METH_NOARGS, NULL},
    {NULL},
};

static PyMemberDef cc_members[] = {
    {"__dictoffset__", T_PYSSIZET, offsetof(CachedCallObject, dict), READONLY,
     NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CachedCallObject, weakreflist),
     READONLY, NULL},
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(CachedCallObject, vectorcall), READONLY, NULL},
    {"cache", T_OBJECT, offsetof(CachedCallObject, cache), READONLY,
     "The Cache holding the results."},
    {NULL},
};

static PyGetSetDef cc_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL},
};

PyDoc_STRVAR(cc_doc,
             "CachedCall(func, cache, miss, typed=False, key=None)\n--\n\n"
             "Calls `func` through `cache`: a hit returns the stored result; "
             "a miss returns\nmiss(key, args, kwargs). Built by "
             "stanchion.cached.");

static PyType_Slot cc_slots[] = {
    {Py_tp_doc, (void *)cc_doc},     {Py_tp_new, cc_new},
    {Py_tp_dealloc, cc_dealloc},     {Py_tp_traverse, cc_traverse},
    {Py_tp_clear, cc_clear},         {Py_tp_call, PyVectorcall_Call},
    {Py_tp_descr_get, cc_descr_get}, {Py_tp_repr, cc_repr},
    {Py_tp_methods, cc_methods},     {Py_tp_members, cc_members},
    {Py_tp_getset, cc_getset},       {0, NULL},
};

static PyType_Spec cc_spec = {
    .name = "stanchion._core.CachedCall",
    .basicsize = sizeof(CachedCallObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_METHOD_DESCRIPTOR,
    .slots = cc_slots,
};

/* =========================================================================
 * Module hook
 * ========================================================================= */

static PyMethodDef cached_module_methods[] = {
    {"make_key", (PyCFunction)(void (*)(void))module_make_key,
     METH_VARARGS | METH_KEYWORDS, make_key_doc},
    {NULL},
};

/* See cached_type.h. */
int st_cached_exec(PyObject *module, st_state *st)
{
	st->kwd_mark = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
	if (st->kwd_mark == NULL)
		return -1;
	st->cached_call_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &cc_spec, NULL);
	if (st->cached_call_type == NULL ||
	    PyModule_AddType(module, st->cached_call_type) < 0)
		return -1;
	return PyModule_AddFunctions(module, cached_module_methods);
}
