/* Argument conversion shared by the binding files (see args.h). */
#include "args.h"

int st_fast_args_slow(const char *fname, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t nreq,
                      PyObject *kw, PyObject **opt)
{
	Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

	*opt = NULL;
	if (nargs < nreq || nargs > nreq + 1) {
		/* The wording of CPython's getargs.c. */
		Py_ssize_t n = nargs < nreq ? nreq : nreq + 1;
		PyErr_Format(PyExc_TypeError,
		             "%s() takes at %s %zd positional argument%s (%zd "
		             "given)",
		             fname, nargs < nreq ? "least" : "most", n,
		             n == 1 ? "" : "s", nargs);
		return -1;
	}
	if (nargs == nreq + 1)
		*opt = args[nreq];
	for (Py_ssize_t i = 0; i < nkw; i++) {
		PyObject *name = PyTuple_GET_ITEM(kwnames, i);
		if (!st_kw_is(name, kw)) {
			PyErr_Format(PyExc_TypeError,
			             "%s() got an unexpected keyword argument "
			             "'%U'",
			             fname, name);
			return -1;
		}
		if (*opt != NULL) {
			PyErr_Format(PyExc_TypeError,
			             "%s() got multiple values for argument "
			             "'%U'",
			             fname, kw);
			return -1;
		}
		*opt = args[nargs + i];
	}
	return 0;
}

double st_to_double(PyObject *v)
{
	double d = PyFloat_AsDouble(v);

	if (d == -1.0 && PyErr_Occurred() &&
	    PyErr_ExceptionMatches(PyExc_OverflowError)) {
		PyErr_Clear();
		d = HUGE_VAL;
	}
	return d;
}

int st_count_arg(PyObject *v, const char *what, long long *out)
{
	PyObject *i = PyNumber_Index(v);
	int overflow;

	if (i == NULL)
		return -1;
	*out = PyLong_AsLongLongAndOverflow(i, &overflow);
	Py_DECREF(i);
	if (*out == -1 && PyErr_Occurred())
		return -1;
	if (overflow != 0 || *out < 0) {
		PyErr_Format(PyExc_ValueError,
		             "%s must be between 0 and %lld, got %R", what,
		             (long long)INT64_MAX, v);
		return -1;
	}
	return 0;
}

int st_seconds_to_ns(PyObject *v, const char *what, int64_t *out)
{
	double s = st_to_double(v);

	if (s == -1.0 && PyErr_Occurred())
		return -1;
	if (st_ns_from_seconds(s, out) < 0) {
		PyErr_Format(PyExc_ValueError,
		             "%s must be a finite number of seconds >= 0, "
		             "got %R",
		             what, v);
		return -1;
	}
	return 0;
}
