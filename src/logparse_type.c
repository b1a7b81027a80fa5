/* Python bindings for the access-log engine: _core.LogParser.
 *
 * Python equivalent (stanchion.report._pyparse.PyLogParser is the
 * reference this type must agree with, summary for summary):
 *
 *     @final
 *     class LogParser:
 *         def __init__(self, log_format="combined", *, top=10_000,
 *                      windows=(1, 60), events=False): ...
 *         def feed(self, data: bytes) -> Events | None: ...
 *         def finish(self) -> Events | None: ...
 *         def summary(self) -> dict: ...
 *
 * Keys (clients, paths, templates, methods) and malformed examples are
 * decoded as latin-1: every byte sequence gives a str, one character per
 * byte, and encoding it back as latin-1 gives the log's bytes.
 *
 * feed() without events releases the GIL while it parses. A parser busy
 * in a call (parsing without the GIL, or allocating Python objects, when
 * a collection may run a finalizer that calls it) refuses other calls
 * with a RuntimeError: its state never changes under a call.
 */
#include "logparse.h"
#include "module.h"

typedef struct {
	PyObject_HEAD lp_parser p;
	int ready;    /* lp_init succeeded */
	int finished; /* finish() was called */
	int busy;     /* a call is parsing (maybe without the GIL) */
	int events;   /* feed/finish return the parsed lines */
} LogParserObject;

/* ------------------------------------------------------------------ */
/* Construction                                                         */
/* ------------------------------------------------------------------ */

static int get_int64(PyObject *o, const char *what, int64_t *out)
{
	int overflow;
	long long v;

	if (!PyLong_Check(o) || PyBool_Check(o)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s",
		             what, Py_TYPE(o)->tp_name);
		return -1;
	}
	v = PyLong_AsLongLongAndOverflow(o, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	if (overflow != 0) {
		PyErr_Format(PyExc_ValueError, "%s is out of range", what);
		return -1;
	}
	*out = v;
	return 0;
}

static PyObject *logparser_new(PyTypeObject *type, PyObject *args,
                               PyObject *kwds)
{
	static char *kwlist[] = {"log_format", "top", "windows", "events",
	                         NULL};
	PyObject *fmt_obj = NULL, *top_obj = NULL, *win_obj = NULL;
	PyObject *ev_obj = NULL;
	int64_t top = 10000, windows[LP_MAX_WINDOWS] = {1, 60};
	int nwin = 2, events = 0;
	const char *spec = "combined", *err = NULL;
	Py_ssize_t spec_len = 8;
	PyObject *spec_bytes = NULL;
	LogParserObject *self;
	lp_format fmt;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$OOO:LogParser",
	                                 kwlist, &fmt_obj, &top_obj, &win_obj,
	                                 &ev_obj))
		return NULL;
	if (fmt_obj != NULL) {
		if (!PyUnicode_Check(fmt_obj)) {
			PyErr_Format(PyExc_TypeError,
			             "log_format must be a str, not %.100s",
			             Py_TYPE(fmt_obj)->tp_name);
			return NULL;
		}
		/* latin-1, as the lines are read: a literal byte of the
		 * format is one character (UnicodeEncodeError is a
		 * ValueError) */
		spec_bytes = PyUnicode_AsLatin1String(fmt_obj);
		if (spec_bytes == NULL)
			return NULL;
		spec = PyBytes_AS_STRING(spec_bytes);
		spec_len = PyBytes_GET_SIZE(spec_bytes);
	}
	/* the format first, as the reference parser checks it */
	rc = lp_format_compile(&fmt, spec, (size_t)spec_len, &err);
	Py_XDECREF(spec_bytes);
	if (rc < 0) {
		if (err != NULL && strcmp(err, "out of memory") == 0)
			return PyErr_NoMemory();
		PyErr_Format(PyExc_ValueError, "%s: %R", err,
		             fmt_obj ? fmt_obj : Py_None);
		return NULL;
	}
	if (top_obj != NULL) {
		if (get_int64(top_obj, "top", &top) < 0)
			goto bad;
		if (top < 1 || top > LP_MAX_TOP) {
			PyErr_Format(PyExc_ValueError,
			             "top must be from 1 to %d, not %lld",
			             LP_MAX_TOP, (long long)top);
			goto bad;
		}
	}
	if (win_obj != NULL) {
		Py_ssize_t n;
		if (!PyTuple_Check(win_obj) && !PyList_Check(win_obj)) {
			PyErr_Format(PyExc_TypeError,
			             "windows must be a tuple of ints, not "
			             "%.100s",
			             Py_TYPE(win_obj)->tp_name);
			goto bad;
		}
		n = PySequence_Fast_GET_SIZE(win_obj);
		if (n < 1 || n > LP_MAX_WINDOWS) {
			PyErr_Format(PyExc_ValueError,
			             "windows must hold 1 to %d window sizes, "
			             "not %zd",
			             LP_MAX_WINDOWS, n);
			goto bad;
		}
		for (Py_ssize_t i = 0; i < n; i++) {
			PyObject *w = PySequence_Fast_GET_ITEM(win_obj, i);
			if (get_int64(w, "a window", &windows[i]) < 0)
				goto bad;
			if (windows[i] < 1 || windows[i] > 0x7fffffff) {
				PyErr_Format(PyExc_ValueError,
				             "a window must be from 1 to "
				             "2**31 - 1 seconds, not %lld",
				             (long long)windows[i]);
				goto bad;
			}
			for (Py_ssize_t j = 0; j < i; j++)
				if (windows[j] == windows[i]) {
					PyErr_Format(
					    PyExc_ValueError,
					    "windows must be distinct: "
					    "%lld appears twice",
					    (long long)windows[i]);
					goto bad;
				}
		}
		nwin = (int)n;
	}
	if (ev_obj != NULL) {
		if (!PyBool_Check(ev_obj)) {
			PyErr_Format(PyExc_TypeError,
			             "events must be a bool, not %.100s",
			             Py_TYPE(ev_obj)->tp_name);
			goto bad;
		}
		events = ev_obj == Py_True;
	}
	self = (LogParserObject *)type->tp_alloc(type, 0);
	if (self == NULL) {
		lp_format_free(&fmt);
		return NULL;
	}
	self->events = events;
	if (lp_init(&self->p, &fmt, (int32_t)top, windows, nwin) < 0) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	self->ready = 1;
	return (PyObject *)self;
bad:
	lp_format_free(&fmt);
	return NULL;
}

static void logparser_dealloc(LogParserObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	lp_free(&self->p);
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
}

static int logparser_traverse(LogParserObject *self, visitproc visit,
                              void *arg)
{
	Py_VISIT(Py_TYPE(self));
	return 0;
}

/* ------------------------------------------------------------------ */
/* Events                                                               */
/* ------------------------------------------------------------------ */

typedef struct {
	PyObject *lists[4]; /* ts_ns, clients, paths, statuses */
	int failed;         /* an append failed: exception set */
} events_ctx;

static int append_new(PyObject *list, PyObject *item)
{
	int rc;
	if (item == NULL)
		return -1;
	rc = PyList_Append(list, item);
	Py_DECREF(item);
	return rc;
}

static void on_line(void *ctx, const lp_line *ln)
{
	events_ctx *ev = ctx;
	if (ev->failed)
		return;
	if (append_new(ev->lists[0], PyLong_FromLongLong(ln->ts_ns)) < 0 ||
	    append_new(ev->lists[1],
	               PyUnicode_DecodeLatin1((const char *)ln->client,
	                                      (Py_ssize_t)ln->client_len,
	                                      NULL)) < 0 ||
	    append_new(
	        ev->lists[2],
	        PyUnicode_DecodeLatin1((const char *)ln->path,
	                               (Py_ssize_t)ln->path_len, NULL)) < 0 ||
	    append_new(ev->lists[3], PyLong_FromLong(ln->status)) < 0)
		ev->failed = 1;
}

static int events_start(events_ctx *ev)
{
	ev->failed = 0;
	for (int i = 0; i < 4; i++)
		ev->lists[i] = NULL;
	for (int i = 0; i < 4; i++) {
		ev->lists[i] = PyList_New(0);
		if (ev->lists[i] == NULL)
			return -1;
	}
	return 0;
}

static void events_clear(events_ctx *ev)
{
	for (int i = 0; i < 4; i++)
		Py_CLEAR(ev->lists[i]);
}

static PyObject *events_tuple(events_ctx *ev)
{
	PyObject *t = PyTuple_New(4);
	if (t == NULL) {
		events_clear(ev);
		return NULL;
	}
	for (int i = 0; i < 4; i++) {
		PyTuple_SET_ITEM(t, i, ev->lists[i]);
		ev->lists[i] = NULL;
	}
	return t;
}

static int check_usable(LogParserObject *self, const char *what)
{
	if (!self->ready) {
		PyErr_SetString(PyExc_RuntimeError,
		                "LogParser is not initialised");
		return -1;
	}
	if (self->busy) {
		PyErr_Format(PyExc_RuntimeError,
		             "LogParser.%s() called while the parser is busy "
		             "in another call",
		             what);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Methods                                                              */
/* ------------------------------------------------------------------ */

static PyObject *logparser_feed(LogParserObject *self, PyObject *data)
{
	Py_buffer view;
	events_ctx ev;
	int rc;

	if (check_usable(self, "feed") < 0)
		return NULL;
	if (PyUnicode_Check(data) ||
	    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
		PyErr_Clear();
		PyErr_Format(PyExc_TypeError, "feed() takes bytes, not %.100s",
		             Py_TYPE(data)->tp_name);
		return NULL;
	}
	if (self->finished) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError,
		                "feed() after finish(): the parser is done");
		return NULL;
	}
	self->busy = 1;
	if (self->events) {
		if (events_start(&ev) < 0) {
			events_clear(&ev);
			self->busy = 0;
			PyBuffer_Release(&view);
			return NULL;
		}
		rc = lp_feed(&self->p, view.buf, (size_t)view.len, on_line,
		             &ev);
	} else {
		Py_BEGIN_ALLOW_THREADS;
		rc = lp_feed(&self->p, view.buf, (size_t)view.len, NULL, NULL);
		Py_END_ALLOW_THREADS;
	}
	self->busy = 0;
	PyBuffer_Release(&view);
	if (rc < 0 || (self->events && ev.failed)) {
		if (self->events)
			events_clear(&ev);
		if (rc < 0)
			PyErr_NoMemory();
		return NULL;
	}
	if (self->events)
		return events_tuple(&ev);
	Py_RETURN_NONE;
}

static PyObject *logparser_finish(LogParserObject *self,
                                  PyObject *Py_UNUSED(ignored))
{
	events_ctx ev;
	int rc;

	if (check_usable(self, "finish") < 0)
		return NULL;
	if (self->finished) {
		PyErr_SetString(PyExc_ValueError,
		                "finish() called twice: the parser is done");
		return NULL;
	}
	if (self->events && events_start(&ev) < 0) {
		events_clear(&ev);
		return NULL;
	}
	self->finished = 1;
	self->busy = 1;
	rc = lp_finish(&self->p, self->events ? on_line : NULL, &ev);
	self->busy = 0;
	if (rc < 0 || (self->events && ev.failed)) {
		if (self->events)
			events_clear(&ev);
		if (rc < 0)
			PyErr_NoMemory();
		return NULL;
	}
	if (self->events)
		return events_tuple(&ev);
	Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* Summary                                                              */
/* ------------------------------------------------------------------ */

static PyObject *latin1(const unsigned char *s, size_t n)
{
	return PyUnicode_DecodeLatin1((const char *)s, (Py_ssize_t)n, NULL);
}

/* Times are whole seconds: exact as a double. */
static PyObject *ts_float(int64_t ns)
{
	return PyFloat_FromDouble((double)(ns / 1000000000));
}

/* d[key] = value, stealing value. */
static int set_new(PyObject *d, const char *key, PyObject *value)
{
	int rc;
	if (value == NULL)
		return -1;
	rc = PyDict_SetItemString(d, key, value);
	Py_DECREF(value);
	return rc;
}

static int set_int(PyObject *d, const char *key, int64_t v)
{
	return set_new(d, key, PyLong_FromLongLong(v));
}

static PyObject *int_list(const int64_t *v, int n)
{
	PyObject *l = PyList_New(n);
	if (l == NULL)
		return NULL;
	for (int i = 0; i < n; i++) {
		PyObject *x = PyLong_FromLongLong(v[i]);
		if (x == NULL) {
			Py_DECREF(l);
			return NULL;
		}
		PyList_SET_ITEM(l, i, x);
	}
	return l;
}

/* kind: 0 clients, 1 paths, 2 templates */
static PyObject *table_list(const lp_parser *p, const lp_table *t, int kind)
{
	int32_t *order = PyMem_Malloc(((size_t)t->n + 1) * sizeof(*order));
	PyObject *list = NULL, *d = NULL;

	if (order == NULL)
		return PyErr_NoMemory();
	if (lp_table_order(t, order) < 0) {
		PyErr_NoMemory();
		goto fail;
	}
	list = PyList_New(t->n);
	if (list == NULL)
		goto fail;
	for (int32_t i = 0; i < t->n; i++) {
		const lp_entry *e = &t->entries[order[i]];
		d = PyDict_New();
		if (d == NULL)
			goto fail;
		if (set_new(d, "key", latin1(lp_key(e), e->klen)) < 0 ||
		    set_int(d, "requests", e->requests) < 0)
			goto fail;
		if (kind != 2 && (set_int(d, "bytes", e->bytes) < 0 ||
		                  set_int(d, "n4xx", e->n4xx) < 0 ||
		                  set_int(d, "n5xx", e->n5xx) < 0))
			goto fail;
		if (kind == 0 &&
		    (set_new(d, "first_ts", ts_float(e->first_ns)) < 0 ||
		     set_new(d, "last_ts", ts_float(e->last_ns)) < 0))
			goto fail;
		if (set_int(d, "error", e->error) < 0)
			goto fail;
		if (kind == 0) {
			PyObject *rates = PyDict_New();
			if (set_new(d, "rates", rates) < 0)
				goto fail;
			for (int w = 0; w < p->nwin; w++) {
				int64_t out[4];
				char name[24];
				lp_client_rates(p, order[i], w, out);
				PyOS_snprintf(name, sizeof(name), "%lld",
				              (long long)p->windows[w]);
				if (set_new(rates, name, int_list(out, 4)) < 0)
					goto fail;
			}
		}
		PyList_SET_ITEM(list, i, d);
		d = NULL;
	}
	PyMem_Free(order);
	return list;
fail:
	Py_XDECREF(d);
	Py_XDECREF(list);
	PyMem_Free(order);
	return NULL;
}

static PyObject *seconds_list(const lp_parser *p)
{
	size_t *order = PyMem_Malloc((p->nsecs + 1) * sizeof(*order));
	PyObject *list = NULL;

	if (order == NULL)
		return PyErr_NoMemory();
	if (lp_seconds_order(p, order) < 0) {
		PyErr_NoMemory();
		goto fail;
	}
	list = PyList_New((Py_ssize_t)p->nsecs);
	if (list == NULL)
		goto fail;
	for (size_t i = 0; i < p->nsecs; i++) {
		const lp_second *s = &p->secs[order[i]];
		int64_t v[5] = {s->sec, s->requests, s->bytes, s->n4xx,
		                s->n5xx};
		PyObject *row = int_list(v, 5);
		if (row == NULL)
			goto fail;
		PyList_SET_ITEM(list, (Py_ssize_t)i, row);
	}
	PyMem_Free(order);
	return list;
fail:
	Py_XDECREF(list);
	PyMem_Free(order);
	return NULL;
}

static PyObject *examples_list(const lp_parser *p)
{
	PyObject *list = PyList_New(p->nexamples);
	if (list == NULL)
		return NULL;
	for (int i = 0; i < p->nexamples; i++) {
		const lp_example *ex = &p->examples[i];
		PyObject *row = Py_BuildValue("[LN]", (long long)ex->line_no,
		                              latin1(ex->text, ex->len));
		if (row == NULL) {
			Py_DECREF(list);
			return NULL;
		}
		PyList_SET_ITEM(list, i, row);
	}
	return list;
}

static PyObject *status_dict(const lp_parser *p)
{
	PyObject *d = PyDict_New();
	char name[8];
	if (d == NULL)
		return NULL;
	for (int s = 0; s < 1000; s++) {
		if (p->status[s] == 0)
			continue;
		PyOS_snprintf(name, sizeof(name), "%03d", s);
		if (set_int(d, name, p->status[s]) < 0) {
			Py_DECREF(d);
			return NULL;
		}
	}
	return d;
}

static PyObject *methods_dict(const lp_parser *p)
{
	PyObject *d = PyDict_New();
	if (d == NULL)
		return NULL;
	for (int i = 0; i < p->nmethods; i++) {
		PyObject *k = latin1(p->method[i], p->method_len[i]);
		PyObject *v = PyLong_FromLongLong(p->method_count[i]);
		int rc = k && v ? PyDict_SetItem(d, k, v) : -1;
		Py_XDECREF(k);
		Py_XDECREF(v);
		if (rc < 0) {
			Py_DECREF(d);
			return NULL;
		}
	}
	if (p->method_other > 0) {
		/* added to a method named OTHER, if one was counted */
		PyObject *k = PyUnicode_FromString("OTHER"), *v = NULL;
		PyObject *old = k ? PyDict_GetItemWithError(d, k) : NULL;
		long long n = old ? PyLong_AsLongLong(old) : 0;
		int rc = -1;
		if (k != NULL && !PyErr_Occurred())
			v = PyLong_FromLongLong(n + p->method_other);
		if (v != NULL)
			rc = PyDict_SetItem(d, k, v);
		Py_XDECREF(k);
		Py_XDECREF(v);
		if (rc < 0) {
			Py_DECREF(d);
			return NULL;
		}
	}
	return d;
}

static PyObject *logparser_build_summary(LogParserObject *self);

static PyObject *logparser_summary(LogParserObject *self,
                                   PyObject *Py_UNUSED(ignored))
{
	PyObject *d;

	if (check_usable(self, "summary") < 0)
		return NULL;
	/* Building the dict allocates: a collection may run a finalizer
	 * that calls this parser, which must not change under us. */
	self->busy = 1;
	d = logparser_build_summary(self);
	self->busy = 0;
	return d;
}

static PyObject *logparser_build_summary(LogParserObject *self)
{
	const lp_parser *p = &self->p;
	PyObject *d = PyDict_New();

	if (d == NULL)
		return NULL;
	if (set_int(d, "lines", p->lines) < 0 ||
	    set_int(d, "parsed", p->parsed) < 0 ||
	    set_int(d, "malformed", p->malformed) < 0 ||
	    set_new(d, "malformed_examples", examples_list(p)) < 0 ||
	    set_int(d, "bytes", p->bytes) < 0 ||
	    set_new(d, "first_ts",
	            p->parsed ? ts_float(p->first_ns) : Py_NewRef(Py_None)) <
	        0 ||
	    set_new(d, "last_ts",
	            p->parsed ? ts_float(p->last_ns) : Py_NewRef(Py_None)) <
	        0 ||
	    set_new(d, "per_second", seconds_list(p)) < 0 ||
	    set_new(d, "status", status_dict(p)) < 0 ||
	    set_new(d, "methods", methods_dict(p)) < 0 ||
	    set_new(d, "clients", table_list(p, &p->clients, 0)) < 0 ||
	    set_new(d, "paths", table_list(p, &p->paths, 1)) < 0 ||
	    set_new(d, "templates", table_list(p, &p->templates, 2)) < 0 ||
	    set_new(d, "distinct_exact",
	            PyBool_FromLong(!p->clients.evicted && !p->paths.evicted &&
	                            !p->templates.evicted)) < 0) {
		Py_DECREF(d);
		return NULL;
	}
	return d;
}

/* ------------------------------------------------------------------ */
/* Type                                                                 */
/* ------------------------------------------------------------------ */

PyDoc_STRVAR(feed_doc,
             "feed(self, data, /)\n"
             "--\n\n"
             "Parses and counts the complete lines of `data` (bytes); a "
             "tail without\n'\\n' waits for the next call. With "
             "events=True, returns the parsed\nlines of this call as "
             "(ts_ns, clients, paths, statuses) lists, else None.\n"
             "ValueError after finish().");

PyDoc_STRVAR(finish_doc,
             "finish(self, /)\n"
             "--\n\n"
             "Parses the waiting tail, if any, as the last line. Returns "
             "its events\n(events=True) or None. The parser takes no "
             "more data after this.");

PyDoc_STRVAR(summary_doc,
             "summary(self, /)\n"
             "--\n\n"
             "The counts so far as a dict (complete after finish()): "
             "lines, parsed,\nmalformed, malformed_examples, bytes, "
             "first_ts, last_ts, per_second,\nstatus, methods, clients, "
             "paths, templates, distinct_exact.");

static PyMethodDef logparser_methods[] = {
    {"feed", (PyCFunction)logparser_feed, METH_O, feed_doc},
    {"finish", (PyCFunction)logparser_finish, METH_NOARGS, finish_doc},
    {"summary", (PyCFunction)logparser_summary, METH_NOARGS, summary_doc},
    {NULL},
};

PyDoc_STRVAR(
    logparser_doc,
    "LogParser(log_format='combined', *, top=10000, windows=(1, 60), "
    "events=False)\n"
    "--\n\n"
    "A streaming access-log parser and traffic counter.\n\n"
    "log_format: 'common', 'combined', 'nginx' (nginx's default: combined "
    "with a\nliteral '-' where combined has %l), an nginx log_format "
    "string\n('$remote_addr - ...') or an Apache LogFormat string "
    "('%h %l %u %t ...');\nunknown variables and directives are opaque "
    "fields. top: the capacity of\nthe client, path and template tables "
    "(space-saving top-K, 1 to 2**31 - 1).\nwindows: 1 to 4 distinct "
    "window sizes in seconds for each client's rate\npercentiles. events: "
    "feed() and finish() return the parsed lines.\n\n"
    "The format, keys and malformed examples are latin-1: any bytes give "
    "a str\nthat encodes back to them. A line over 65536 bytes is "
    "malformed. The\nmatching rules are those of "
    "stanchion.report._pyparse.PyLogParser, and the\nsummaries are "
    "equal.");

static PyType_Slot logparser_slots[] = {
    {Py_tp_doc, (void *)logparser_doc}, {Py_tp_new, logparser_new},
    {Py_tp_dealloc, logparser_dealloc}, {Py_tp_traverse, logparser_traverse},
    {Py_tp_methods, logparser_methods}, {0, NULL},
};

static PyType_Spec logparser_spec = {
    .name = "stanchion._core.LogParser",
    .basicsize = sizeof(LogParserObject),
    .flags =
        Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = logparser_slots,
};

/* See module.h. */
int st_logparser_exec(PyObject *module, st_state *st)
{
	st->logparser_type = (PyTypeObject *)PyType_FromModuleAndSpec(
	    module, &logparser_spec, NULL);
	if (st->logparser_type == NULL)
		return -1;
	return PyModule_AddType(module, st->logparser_type);
}
