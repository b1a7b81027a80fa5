/* Python bindings for the ASGI send wrapper: _core.HeaderSend.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     @final
 *     class HeaderSend:
 *         def __init__(self, send, extra: list[tuple[bytes, bytes]]):
 *             self.send, self.extra = send, extra
 *         def __call__(self, message):
 *             if message["type"] == "http.response.start":
 *                 headers = list(message.get("headers") or ())
 *                 extra = self.extra
 *                 # An inner layer's X-RateLimit-* trio is kept (see
 *                 # stanchion._adapt.outer_headers).
 *                 if (extra and extra[-1][0] == b"x-ratelimit-reset"
 *                         and any(len(k) == 17
 *                                 and k.lower() == b"x-ratelimit-limit"
 *                                 for k, _ in headers)):
 *                     extra = extra[:-3]
 *                 message["headers"] = headers + extra
 *             return self.send(message)
 *
 * The message's headers are replaced by a new list, never extended in
 * place: an app may send the same list (a response object's) again.
 * Every Python call it makes (the message's and the headers' methods,
 * send) runs with the wrapper holding its own references, so any code
 * they run, this wrapper's own calls included, finds it whole.
 */
#include <stddef.h>
#include <string.h>

#include "module.h"
#include "structmember.h"

typedef struct {
	PyObject_HEAD st_state *st; /* module state: the interned names */
	PyObject *send;             /* the server's send */
	PyObject *extra;            /* list of (bytes, bytes) */
	vectorcallfunc vectorcall;
} HeaderSendObject;

static const char X_LIMIT[] = "x-ratelimit-limit";
static const char X_RESET[] = "x-ratelimit-reset";
#define X_LEN 17

/* Whether `name` (a header name of any type) is X-RateLimit-Limit in any
 * case. Non-bytes names (not ASGI) compare as str would, ASCII only. */
static int is_x_limit(PyObject *name)
{
	const char *s;
	Py_ssize_t n;

	if (PyBytes_Check(name)) {
		s = PyBytes_AS_STRING(name);
		n = PyBytes_GET_SIZE(name);
	} else if (PyUnicode_Check(name) && PyUnicode_IS_ASCII(name)) {
		s = (const char *)PyUnicode_DATA(name);
		n = PyUnicode_GET_LENGTH(name);
	} else {
		return 0;
	}
	if (n != X_LEN)
		return 0;
	for (Py_ssize_t i = 0; i < X_LEN; i++) {
		char c = s[i];
		if (c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c != X_LIMIT[i])
			return 0;
	}
	return 1;
}

/* How many of `extra`'s pairs to send after `headers` (a list): all, or
 * all but the X-RateLimit-* trio when the inner layer sent its own. */
static Py_ssize_t extra_to_send(PyObject *extra, PyObject *headers)
{
	Py_ssize_t n = PyList_GET_SIZE(extra);
	PyObject *last, *name;

	if (n < 3)
		return n;
	last = PyList_GET_ITEM(extra, n - 1);
	if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 2)
		return n;
	name = PyTuple_GET_ITEM(last, 0);
	if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) != X_LEN ||
	    memcmp(PyBytes_AS_STRING(name), X_RESET, X_LEN) != 0)
		return n;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
		PyObject *item = PyList_GET_ITEM(headers, i);
		if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) >= 1 &&
		    is_x_limit(PyTuple_GET_ITEM(item, 0)))
			return n - 3;
		if (PyList_Check(item) && PyList_GET_SIZE(item) >= 1 &&
		    is_x_limit(PyList_GET_ITEM(item, 0)))
			return n - 3;
	}
	return n;
}

/* Sets message["headers"] to its headers followed by the extra pairs.
 * Returns 0, or -1 with an exception set. */
static int add_headers(HeaderSendObject *self, PyObject *message,
                       PyObject *key)
{
	PyObject *headers, *out, *extra;
	Py_ssize_t m;
	int rc;

	headers = PyObject_GetItem(message, key);
	if (headers == NULL) {
		if (!PyErr_ExceptionMatches(PyExc_KeyError))
			return -1;
		PyErr_Clear();
		out = PyList_New(0);
	} else if (headers == Py_None) {
		Py_DECREF(headers);
		out = PyList_New(0);
	} else {
		out = PySequence_List(headers);
		Py_DECREF(headers);
	}
	if (out == NULL)
		return -1;
	/* A list of our own now: the extra list is ours too (never handed
	 * out), so neither changes under the loop below. */
	extra = self->extra;
	Py_INCREF(extra);
	m = extra_to_send(extra, out);
	rc = 0;
	for (Py_ssize_t i = 0; i < m && rc == 0; i++)
		rc = PyList_Append(out, PyList_GET_ITEM(extra, i));
	Py_DECREF(extra);
	if (rc == 0)
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
	message = args[0];
	Py_INCREF(message);
	type = PyObject_GetItem(message, st->str_type);
	if (type == NULL) {
		Py_DECREF(message);
		return NULL;
	}
	/* Servers and frameworks send the literal, interned: a pointer test
	 * answers nearly always. */
	start = type == st->str_response_start ||
	        (PyUnicode_Check(type) &&
	         PyUnicode_Compare(type, st->str_response_start) == 0);
	Py_DECREF(type);
	if (start && add_headers(self, message, st->str_headers) < 0) {
		Py_DECREF(message);
		return NULL;
	}
	send = self->send;
	Py_INCREF(send);
	result = PyObject_CallOneArg(send, message);
	Py_DECREF(send);
	Py_DECREF(message);
	return result;
}

static PyObject *hs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	HeaderSendObject *self;
	PyObject *send, *extra, *copy;
	st_state *st = st_state_from_type(type);

	if (st == NULL)
		return NULL;
	if (kwds != NULL && PyDict_GET_SIZE(kwds) != 0) {
		PyErr_SetString(PyExc_TypeError,
		                "HeaderSend() takes no keyword arguments");
		return NULL;
	}
	if (!PyArg_ParseTuple(args, "OO:HeaderSend", &send, &extra))
		return NULL;
	if (!PyCallable_Check(send)) {
		PyErr_Format(PyExc_TypeError,
		             "send must be callable, not %.100s",
		             Py_TYPE(send)->tp_name);
		return NULL;
	}
	copy = PySequence_List(extra);
	if (copy == NULL)
		return NULL;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(copy); i++) {
		PyObject *item = PyList_GET_ITEM(copy, i);
		if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
		    !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
		    !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
			PyErr_SetString(
			    PyExc_TypeError,
			    "extra must hold (bytes, bytes) pairs");
			Py_DECREF(copy);
			return NULL;
		}
	}
	self = (HeaderSendObject *)type->tp_alloc(type, 0);
	if (self == NULL) {
		Py_DECREF(copy);
		return NULL;
	}
	Py_INCREF(send);
	self->st = st;
	self->send = send;
	self->extra = copy;
	self->vectorcall = hs_vectorcall;
	return (PyObject *)self;
}

static int hs_traverse(HeaderSendObject *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->send);
	Py_VISIT(self->extra);
	return 0;
}

static int hs_clear(HeaderSendObject *self)
{
	Py_CLEAR(self->send);
	Py_CLEAR(self->extra);
	return 0;
}

static void hs_dealloc(HeaderSendObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	hs_clear(self);
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
}

static PyMemberDef hs_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(HeaderSendObject, vectorcall), READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(hs_doc,
             "HeaderSend(send, extra)\n"
             "--\n\n"
             "An ASGI send that adds the `extra` (name, value) byte pairs "
             "to the headers of\nthe http.response.start message (a new "
             "list; an X-RateLimit-* trio at the\nend of `extra` is dropped "
             "when the app sent X-RateLimit-Limit), then calls\n`send`.");

static PyType_Slot hs_slots[] = {
    {Py_tp_doc, (void *)hs_doc}, {Py_tp_new, hs_new},
    {Py_tp_dealloc, hs_dealloc}, {Py_tp_traverse, hs_traverse},
    {Py_tp_clear, hs_clear},     {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, hs_members}, {0, NULL},
};

static PyType_Spec hs_spec = {
    .name = "stanchion._core.HeaderSend",
    .basicsize = sizeof(HeaderSendObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = hs_slots,
};

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
	st->header_send_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &hs_spec, NULL);
	if (st->header_send_type == NULL)
		return -1;
	return PyModule_AddType(module, st->header_send_type);
}
