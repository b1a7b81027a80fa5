/* Python bindings for the wrappers that add rate limit headers as a
 * response starts: _core.HeaderSend (an ASGI send) and _core.HeaderStart
 * (a WSGI start_response).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     def _with(headers, extra):
 *         # An inner layer's X-RateLimit-* are kept (see
 *         # stanchion._adapt.outer_headers): ours are dropped then.
 *         if any(k.lower() == "x-ratelimit-limit" for k, _ in headers):
 *             extra = [(k, v) for k, v in extra
 *                      if not k.lower().startswith("x-ratelimit-")]
 *         return [*headers, *extra]     # names: bytes or str
 *
 *     @final
 *     class HeaderSend:
 *         def __init__(self, send, *what):
 *             # what: (extra,), a list of (bytes, bytes) pairs, copied;
 *             # or (render, decision): render.raw_pairs(decision), made
 *             # when the response starts.
 *             ...
 *         def __call__(self, message):
 *             if message["type"] == "http.response.start":
 *                 if type(message) is dict:
 *                     message = dict(message)   # the app's is left alone
 *                 message["headers"] = _with(
 *                     list(message.get("headers") or ()), self.extra())
 *             return self.send(message)
 *
 *     @final
 *     class HeaderStart:
 *         def __init__(self, start_response, *what):
 *             # what: (extra,), a list of (str, str) pairs read when
 *             # the response starts (it may be filled until then); or
 *             # (render, decision): render.pairs(decision).
 *             ...
 *         def __call__(self, status, headers, /, *exc_info, **named):
 *             # exc_info, positional or named (nothing else)
 *             exc_info += tuple(named.values())
 *             return self.start_response(
 *                 status, _with(list(headers), self.extra()), *exc_info)
 *
 * The headers are always a new list, never extended in place: an app may
 * send the same list (a response object's) again. Every Python call they
 * make (the message's and the headers' methods, send) runs with the
 * wrapper holding its own references, so any code it runs, this
 * wrapper's own calls included, finds it whole.
 */
#include <stddef.h>
#include <string.h>

#include "decision_type.h"
#include "module.h"
#include "rate_headers_type.h"
#include "structmember.h"

typedef struct {
	PyObject_HEAD st_state *st; /* module state: the interned names */
	PyObject *target;           /* the server's send or start_response */
	PyObject *extra;            /* list of pairs, or NULL */
	PyObject *render;           /* RateHeaders, or NULL (then `extra`) */
	PyObject *decision;         /* its Decision */
	vectorcallfunc vectorcall;
} HeaderSendObject;

/* Appends to `out` the n pairs of items[], leaving out the X-RateLimit-*
 * ones when `out` already has X-RateLimit-Limit (the inner layer's quota
 * is kept). which[] says which header each pair is, when rendered here;
 * NULL when the pairs come from elsewhere (the names are read then).
 * Returns 0, or -1 with an exception set. */
static int append_pairs(PyObject *out, PyObject *const *items,
                        const int *which, Py_ssize_t n)
{
	int inner = -1; /* not looked at yet */

	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *item = items[i];
		int x = which != NULL
		            ? which[i] >= ST_HDR_X_LIMIT
		            : st_is_x_header(PyTuple_GET_ITEM(item, 0));
		if (x) {
			if (inner < 0)
				inner = st_has_x_limit(out);
			if (inner)
				continue;
		}
		if (PyList_Append(out, item) < 0)
			return -1;
	}
	return 0;
}

/* Whether every item of the list `extra` is a (name, value) tuple of
 * bytes (`raw`) or of str; else a TypeError naming `what`. */
static int check_pairs(PyObject *extra, int raw, const char *what)
{
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(extra); i++) {
		PyObject *item = PyList_GET_ITEM(extra, i);
		int ok = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2;
		for (Py_ssize_t j = 0; ok && j < 2; j++) {
			PyObject *o = PyTuple_GET_ITEM(item, j);
			ok = raw ? PyBytes_Check(o) : PyUnicode_Check(o);
		}
		if (!ok) {
			PyErr_Format(PyExc_TypeError,
			             "%s must hold (%s, %s) pairs", what,
			             raw ? "bytes" : "str",
			             raw ? "bytes" : "str");
			return -1;
		}
	}
	return 0;
}

/* A new list: `headers` (any iterable, or NULL/None for none) followed
 * by the wrapper's pairs (bytes when `raw`), by the rule above. Returns
 * NULL with an exception set on failure. */
static PyObject *with_extra(HeaderSendObject *self, PyObject *headers, int raw)
{
	PyObject *out, *items[ST_NHDR], *extra = NULL;
	PyObject *const *src;
	int which[ST_NHDR], *kinds = NULL;
	Py_ssize_t n, i;
	int rc;

	if (headers == NULL || headers == Py_None)
		out = PyList_New(0);
	else
		out = PySequence_List(headers);
	if (out == NULL)
		return NULL;
	/* A list of our own now; the pairs are ours too (rendered here, or
	 * a snapshot of the extra list), so nothing changes under the loop
	 * below. */
	if (self->render != NULL) {
		n = st_rate_headers_render(self->render, self->decision, raw,
		                           items, which);
		if (n < 0) {
			Py_DECREF(out);
			return NULL;
		}
		src = items;
		kinds = which;
	} else {
		extra = PyList_GetSlice(self->extra, 0,
		                        PyList_GET_SIZE(self->extra));
		if (extra == NULL || check_pairs(extra, raw, "extra") < 0) {
			Py_XDECREF(extra);
			Py_DECREF(out);
			return NULL;
		}
		n = PyList_GET_SIZE(extra);
		src = &PyList_GET_ITEM(extra, 0);
	}
	rc = append_pairs(out, src, kinds, n);
	if (extra != NULL) {
		Py_DECREF(extra);
	} else {
		for (i = 0; i < n; i++)
			Py_DECREF(items[i]);
	}
	if (rc < 0)
		Py_CLEAR(out);
	return out;
}

/* Sets message["headers"] to its headers followed by the pairs. Returns
 * 0, or -1 with an exception set. */
static int add_headers(HeaderSendObject *self, PyObject *message,
                       PyObject *key)
{
	PyObject *headers, *out;
	int rc;

	headers = PyObject_GetItem(message, key);
	if (headers == NULL) {
		if (!PyErr_ExceptionMatches(PyExc_KeyError))
			return -1;
		PyErr_Clear();
	}
	out = with_extra(self, headers, 1);
	Py_XDECREF(headers);
	if (out == NULL)
		return -1;
	rc = PyObject_SetItem(message, key, out);
	Py_DECREF(out);
	return rc;
}

static PyObject *hs_vectorcall(PyObject *op, PyObject *const *args,
                               size_t nargsf, PyObject *kwnames)
{
	HeaderSendObject *self = (HeaderSendObject *)op;
	st_state *st = self->st;
	PyObject *message, *type, *send, *result;
	int start;

	if (PyVectorcall_NARGS(nargsf) != 1 ||
	    (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
		PyErr_SetString(PyExc_TypeError,
		                "HeaderSend() takes one message");
		return NULL;
	}
	Py_INCREF(self);
	message = args[0];
	Py_INCREF(message);
	type = PyObject_GetItem(message, st->str_type);
	if (type == NULL) {
		result = NULL;
		goto done;
	}
	/* Servers and frameworks send the literal, interned: a pointer test
	 * answers nearly always. */
	start = type == st->str_response_start ||
	        (PyUnicode_Check(type) &&
	         PyUnicode_Compare(type, st->str_response_start) == 0);
	Py_DECREF(type);
	if (start && PyDict_CheckExact(message)) {
		/* A copy is sent: an app may send the same start message
		 * again (a module-level dict), which must not collect the
		 * headers of every request. */
		PyObject *copy = PyDict_Copy(message);
		Py_SETREF(message, copy);
		if (message == NULL) {
			result = NULL;
			goto done_self;
		}
	}
	if (start && add_headers(self, message, st->str_headers) < 0) {
		result = NULL;
		goto done;
	}
	send = self->target;
	Py_INCREF(send);
	/* A chain of wrappers is a chain of C calls, counted as calls of
	 * Python functions are. */
	if (Py_EnterRecursiveCall(" in HeaderSend") == 0) {
		result = PyObject_CallOneArg(send, message);
		Py_LeaveRecursiveCall();
	} else {
		result = NULL;
	}
	Py_DECREF(send);
done:
	Py_DECREF(message);
done_self:
	Py_DECREF(self);
	return result;
}

/* HeaderStart(status, headers, exc_info=None): exc_info may be named
 * (PEP 3333's signature); the server's start_response gets it
 * positionally. */
static PyObject *hst_vectorcall(PyObject *op, PyObject *const *args,
                                size_t nargsf, PyObject *kwnames)
{
	HeaderSendObject *self = (HeaderSendObject *)op;
	Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
	Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
	PyObject *call[3], *start, *result = NULL;

	if (nkw == 1 && nargs == 2 &&
	    PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) &&
	    PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0),
	                                     "exc_info") == 0) {
		nargs = 3; /* args[2] is the named exc_info */
	} else if (nargs < 2 || nargs > 3 || nkw != 0) {
		PyErr_SetString(PyExc_TypeError,
		                "start_response() takes status, headers and "
		                "an optional exc_info");
		return NULL;
	}
	Py_INCREF(self);
	call[0] = Py_NewRef(args[0]);
	call[1] = with_extra(self, args[1], 0);
	call[2] = nargs == 3 ? Py_NewRef(args[2]) : NULL;
	if (call[1] != NULL && Py_EnterRecursiveCall(" in HeaderStart") == 0) {
		start = Py_NewRef(self->target);
		result = PyObject_Vectorcall(start, call, (size_t)nargs, NULL);
		Py_DECREF(start);
		Py_LeaveRecursiveCall();
	}
	Py_DECREF(call[0]);
	Py_XDECREF(call[1]);
	Py_XDECREF(call[2]);
	Py_DECREF(self);
	return result;
}

/* The constructors' common part: (target, extra) or (target, render,
 * decision), checked before anything is built. `raw`: HeaderSend (bytes
 * pairs, copied) rather than HeaderStart (str pairs, read when called). */
static PyObject *make(PyTypeObject *type, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames, int raw)
{
	const char *name = raw ? "HeaderSend" : "HeaderStart";
	st_state *st = st_state_from_type(type);
	HeaderSendObject *self;
	PyObject *extra = NULL;

	if (st == NULL)
		return NULL;
	if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
		PyErr_Format(PyExc_TypeError,
		             "%s() takes no keyword arguments", name);
		return NULL;
	}
	if (nargs != 2 && nargs != 3) {
		PyErr_Format(
		    PyExc_TypeError,
		    "%s() takes (%s, extra) or (%s, render, decision), "
		    "got %zd arguments",
		    name, raw ? "send" : "start_response",
		    raw ? "send" : "start_response", nargs);
		return NULL;
	}
	if (!PyCallable_Check(args[0])) {
		PyErr_Format(PyExc_TypeError,
		             "%s must be callable, not %.100s",
		             raw ? "send" : "start_response",
		             Py_TYPE(args[0])->tp_name);
		return NULL;
	}
	if (nargs == 3) {
		if (!PyObject_TypeCheck(args[1], st->rate_headers_type)) {
			PyErr_Format(
			    PyExc_TypeError,
			    "render must be a RateHeaders, not %.100s",
			    Py_TYPE(args[1])->tp_name);
			return NULL;
		}
		if (!st_decision_check(st, args[2])) {
			PyErr_Format(PyExc_TypeError,
			             "decision must be a Decision, not %.100s",
			             Py_TYPE(args[2])->tp_name);
			return NULL;
		}
	} else if (raw) {
		extra = PySequence_List(args[1]);
		if (extra == NULL || check_pairs(extra, 1, "extra") < 0) {
			Py_XDECREF(extra);
			return NULL;
		}
	} else {
		if (!PyList_Check(args[1])) {
			PyErr_Format(PyExc_TypeError,
			             "extra must be a list, not %.100s",
			             Py_TYPE(args[1])->tp_name);
			return NULL;
		}
		extra = Py_NewRef(args[1]);
	}
	self = PyObject_GC_New(HeaderSendObject, type);
	if (self == NULL) {
		Py_XDECREF(extra);
		return NULL;
	}
	self->st = st;
	self->target = Py_NewRef(args[0]);
	self->extra = extra;
	self->render = nargs == 3 ? Py_NewRef(args[1]) : NULL;
	self->decision = nargs == 3 ? Py_NewRef(args[2]) : NULL;
	self->vectorcall = raw ? hs_vectorcall : hst_vectorcall;
	PyObject_GC_Track(self);
	return (PyObject *)self;
}

static PyObject *hs_new_vc(PyObject *type, PyObject *const *args,
                           size_t nargsf, PyObject *kwnames)
{
	return make((PyTypeObject *)type, args, PyVectorcall_NARGS(nargsf),
	            kwnames, 1);
}

static PyObject *hst_new_vc(PyObject *type, PyObject *const *args,
                            size_t nargsf, PyObject *kwnames)
{
	return make((PyTypeObject *)type, args, PyVectorcall_NARGS(nargsf),
	            kwnames, 0);
}

/* tp_new, for calls that do not go through vectorcall. */
static PyObject *new_from_tuple(PyTypeObject *type, PyObject *args,
                                PyObject *kwds, int raw)
{
	if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
		PyErr_Format(PyExc_TypeError,
		             "%s() takes no keyword arguments",
		             raw ? "HeaderSend" : "HeaderStart");
		return NULL;
	}
	return make(type, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args),
	            NULL, raw);
}

static PyObject *hs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	return new_from_tuple(type, args, kwds, 1);
}

static PyObject *hst_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	return new_from_tuple(type, args, kwds, 0);
}

static int hs_traverse(HeaderSendObject *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->target);
	Py_VISIT(self->extra);
	return 0;
}

static int hs_clear(HeaderSendObject *self)
{
	Py_CLEAR(self->target);
	Py_CLEAR(self->extra);
	Py_CLEAR(self->render);
	Py_CLEAR(self->decision);
	return 0;
}

static void hs_dealloc(HeaderSendObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	/* A chain of wrappers is freed without one C frame per link. */
	Py_TRASHCAN_BEGIN(self, hs_dealloc);
	hs_clear(self);
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
	Py_TRASHCAN_END;
}

static PyMemberDef hs_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(HeaderSendObject, vectorcall), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(hs_doc,
             "HeaderSend(send, extra) or HeaderSend(send, render, decision)\n"
             "--\n\n"
             "An ASGI send that adds rate limit headers to the headers of "
             "the\nhttp.response.start message (a new list), then calls "
             "`send`. The headers\nare `extra`, (name, value) byte pairs "
             "copied now, or render.raw_pairs(decision),\nmade as the "
             "response starts. Their X-RateLimit-* trio is dropped when the "
             "app\nsent X-RateLimit-Limit.");

PyDoc_STRVAR(hst_doc,
             "HeaderStart(start_response, extra) or "
             "HeaderStart(start_response, render, decision)\n"
             "--\n\n"
             "A WSGI start_response that adds rate limit headers to the "
             "app's (a new list),\nthen calls `start_response`. The headers "
             "are the (name, value) str pairs in\nthe list `extra` when the "
             "response starts (it may be filled until then), or\n"
             "render.pairs(decision). Their X-RateLimit-* trio is dropped "
             "when the app sent\nX-RateLimit-Limit.");

static PyType_Slot hs_slots[] = {
    {Py_tp_doc, (void *)hs_doc}, {Py_tp_new, hs_new},
    {Py_tp_dealloc, hs_dealloc}, {Py_tp_traverse, hs_traverse},
    {Py_tp_clear, hs_clear},     {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, hs_members}, {0, NULL},
};

static PyType_Slot hst_slots[] = {
    {Py_tp_doc, (void *)hst_doc}, {Py_tp_new, hst_new},
    {Py_tp_dealloc, hs_dealloc},  {Py_tp_traverse, hs_traverse},
    {Py_tp_clear, hs_clear},      {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, hs_members},  {0, NULL},
};

static PyType_Spec hs_spec = {
    .name = "stanchion._core.HeaderSend",
    .basicsize = sizeof(HeaderSendObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = hs_slots,
};

static PyType_Spec hst_spec = {
    .name = "stanchion._core.HeaderStart",
    .basicsize = sizeof(HeaderSendObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = hst_slots,
};

/* Creates the type of `spec`, constructed by vectorcall (`new_vc`: no
 * argument tuple per request), and adds it to the module. */
static PyTypeObject *add_type(PyObject *module, PyType_Spec *spec,
                              vectorcallfunc new_vc)
{
	PyTypeObject *tp =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, NULL);

	if (tp == NULL)
		return NULL;
	tp->tp_vectorcall = new_vc;
	if (PyModule_AddType(module, tp) < 0) {
		Py_DECREF(tp);
		return NULL;
	}
	return tp;
}

/* See module.h. */
int st_header_send_exec(PyObject *module, st_state *st)
{
	st->str_type = PyUnicode_InternFromString("type");
	st->str_headers = PyUnicode_InternFromString("headers");
	st->str_response_start =
	    PyUnicode_InternFromString("http.response.start");
	if (st->str_type == NULL || st->str_headers == NULL ||
	    st->str_response_start == NULL)
		return -1;
	st->header_send_type = add_type(module, &hs_spec, hs_new_vc);
	if (st->header_send_type == NULL)
		return -1;
	st->header_start_type = add_type(module, &hst_spec, hst_new_vc);
	return st->header_start_type == NULL ? -1 : 0;
}
