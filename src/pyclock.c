/* The clock policy of Limiter and Cache (see pyclock.h). */
#include "pyclock.h"

#include "args.h"

int st_read_clock(PyObject *clock, int64_t *last_ns, int64_t *now)
{
	PyObject *r;
	double s;
	int64_t ns;

	Py_INCREF(clock);
	r = PyObject_CallNoArgs(clock);
	Py_DECREF(clock);
	if (r == NULL)
		return -1;
	/* Any real number: int, float, or a type with __float__ (Fraction,
	 * Decimal, numpy scalars); bool is a flag, not a time. */
	if (PyBool_Check(r) ||
	    !(PyFloat_Check(r) || PyLong_Check(r) ||
	      (Py_TYPE(r)->tp_as_number != NULL &&
	       Py_TYPE(r)->tp_as_number->nb_float != NULL))) {
		PyErr_Format(PyExc_TypeError,
		             "clock must return a number of seconds, not "
		             "%.100s",
		             Py_TYPE(r)->tp_name);
		Py_DECREF(r);
		return -1;
	}
	/* An int too large for a double is out of range too. */
	s = st_to_double(r);
	Py_DECREF(r);
	if (s == -1.0 && PyErr_Occurred())
		return -1;
	if (st_ns_from_seconds(s, &ns) < 0) {
		char buf[64];
		PyOS_snprintf(buf, sizeof(buf), "%g", s);
		PyErr_Format(PyExc_ValueError,
		             "clock returned %s seconds: it must be finite, "
		             ">= 0 and within %lld seconds",
		             buf,
		             (long long)(ST_MAX_CLOCK_NS / ST_NS_PER_SEC));
		return -1;
	}
	if (ns < *last_ns)
		ns = *last_ns;
	*last_ns = ns;
	*now = ns;
	return 0;
}
