/* stanchion.testing's switches in the C core (see testhooks.h). */
#include "testhooks.h"

void st_track(st_state *st, PyObject *obj)
{
	PyObject *tracker = st->tracker, *r;

	if (tracker == NULL)
		return;
	Py_INCREF(tracker); /* the tracker may replace itself */
	r = PyObject_CallOneArg(tracker, obj);
	if (r == NULL)
		PyErr_WriteUnraisable(tracker);
	Py_XDECREF(r);
	Py_DECREF(tracker);
}

static PyObject *testing_disable(PyObject *module, PyObject *arg)
{
	st_state *st = PyModule_GetState(module);
	long delta = PyLong_AsLong(arg);

	if (delta == -1 && PyErr_Occurred())
		return NULL;
	if (delta < -1 || delta > 1) {
		PyErr_SetString(PyExc_ValueError,
		                "delta must be 1, -1 or 0 (ask)");
		return NULL;
	}
	if (delta < 0 && st->disabled == 0) {
		PyErr_SetString(PyExc_RuntimeError,
		                "no disabled() block is open");
		return NULL;
	}
	st->disabled += delta;
	return PyLong_FromSsize_t(st->disabled);
}

static PyObject *testing_set_tracker(PyObject *module, PyObject *fn)
{
	st_state *st = PyModule_GetState(module);

	if (fn != Py_None && !PyCallable_Check(fn)) {
		PyErr_Format(PyExc_TypeError,
		             "tracker must be a callable or None, not %.100s",
		             Py_TYPE(fn)->tp_name);
		return NULL;
	}
	Py_XSETREF(st->tracker, fn == Py_None ? NULL : Py_NewRef(fn));
	Py_RETURN_NONE;
}

PyDoc_STRVAR(testing_disable_doc,
             "_testing_disable(delta, /)\n--\n\n"
             "Open (1) or close (-1) a disabled() block, or ask (0); "
             "returns how many\nare open.");
PyDoc_STRVAR(testing_set_tracker_doc,
             "_testing_set_tracker(fn, /)\n--\n\n"
             "Call fn(obj) as each Limiter and Cache is initialised (None: "
             "stop).");

static PyMethodDef testhooks_methods[] = {
    {"_testing_disable", testing_disable, METH_O, testing_disable_doc},
    {"_testing_set_tracker", testing_set_tracker, METH_O,
     testing_set_tracker_doc},
    {NULL},
};

int st_testhooks_exec(PyObject *module, st_state *st)
{
	(void)st;
	return PyModule_AddFunctions(module, testhooks_methods);
}
