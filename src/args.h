/* Argument conversion shared by the binding files: the FASTCALL
 * keyword parser of every hot method, counts, and seconds to integer
 * nanoseconds.
 *
 * Python equivalent of the parser, for a method `f(a, b, /, kw=<absent>)`:
 *
 *     def f(*args, **kwargs):   # CPython's own TypeError wording
 *         if not nreq <= len(args) <= nreq + 1: raise TypeError(...)
 *         opt = args[nreq] if len(args) > nreq else kwargs.pop(kw, absent)
 */
#ifndef ST_ARGS_H
#define ST_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "common.h"

/* Matches a FASTCALL keyword name: by pointer against the interned name,
 * then by value. */
static inline int st_kw_is(PyObject *name, PyObject *interned)
{
	return name == interned || PyUnicode_Compare(name, interned) == 0;
}

/* The slow path of st_fast_args: any call that is not exactly `nreq`
 * positional arguments. Same contract. */
int st_fast_args_slow(const char *fname, PyObject *const *args,
                      Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t nreq,
                      PyObject *kw, PyObject **opt);

/* Parses a FASTCALL vector for `fname(<nreq positional>, /, kw=...)`:
 * `kw` is the interned name of the one optional argument, which may come
 * positionally or by keyword. Sets *opt to it (borrowed from the vector)
 * or NULL when absent, and returns 0; or returns -1 with CPython's
 * TypeError wording (too few or too many positional arguments, an
 * unexpected keyword, multiple values). Runs no Python code. The common
 * call (exactly nreq positional arguments) is inline. */
ST_INLINE int st_fast_args(const char *fname, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames,
                           Py_ssize_t nreq, PyObject *kw, PyObject **opt)
{
	if (ST_LIKELY(nargs == nreq && kwnames == NULL)) {
		*opt = NULL;
		return 0;
	}
	return st_fast_args_slow(fname, args, nargs, kwnames, nreq, kw, opt);
}

/* PyFloat_AsDouble, except that an int too large for a double gives an
 * infinity (which callers reject with a ValueError) instead of an
 * OverflowError. May run Python code (__float__, __index__). */
double st_to_double(PyObject *v);

/* An int-like count (__index__) in [0, INT64_MAX]: a TypeError for a
 * non-int, a ValueError (never an OverflowError) when out of range.
 * Returns 0 with *out set, or -1 with an exception set. */
int st_count_arg(PyObject *v, const char *what, long long *out);

/* The one seconds-to-nanoseconds conversion of clock readings and
 * durations on the clock's scale: `s` must be finite, >= 0 and below
 * ST_MAX_CLOCK_NS once in ns. Stores the nearest ns in *out and returns
 * 0, or returns -1 (no exception set: callers word their own) and leaves
 * *out alone. */
ST_INLINE int st_ns_from_seconds(double s, int64_t *out)
{
	if (!isfinite(s) || s < 0.0 || s * 1e9 >= (double)ST_MAX_CLOCK_NS)
		return -1;
	*out = (int64_t)llround(s * 1e9);
	return 0;
}

/* Seconds (a finite, non-negative number, anything with __float__) to
 * integer nanoseconds; a ValueError naming `what` when out of range.
 * Returns 0 with *out set, or -1 with an exception set. May run Python
 * code (__float__). */
int st_seconds_to_ns(PyObject *v, const char *what, int64_t *out);

#endif /* ST_ARGS_H */
