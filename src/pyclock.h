/* The clock of a Limiter or a Cache: an injected Python clock, or the C
 * monotonic clock, under one policy.
 *
 * Python equivalent:
 *
 *     def now_ns(self):                 # self.clock: None or a callable
 *         if self.clock is None:
 *             ns = time.monotonic_ns()
 *         else:
 *             s = self.clock()          # TypeError unless a real number
 *             if not (math.isfinite(s) and 0 <= s < 2**62 / 1e9):
 *                 raise ValueError(...)
 *             ns = round(s * 1e9)
 *         self.last_ns = max(self.last_ns, ns)   # never runs backwards
 *         return self.last_ns
 */
#ifndef ST_PYCLOCK_H
#define ST_PYCLOCK_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "clock.h"
#include "common.h"

/* The clock policy of every Limiter and Cache given clock=: calls the
 * user's clock (a callable returning seconds) and converts the reading to
 * integer nanoseconds. A reading must be a real number (TypeError
 * otherwise), finite, >= 0 and below ST_MAX_CLOCK_NS (ValueError
 * otherwise). A reading earlier than *last_ns is taken as *last_ns: time
 * never runs backwards for one object, whether the clock stepped back or
 * another thread's later reading was stored first (the comparison and the
 * store run under the GIL once the clock has returned). Stores the result
 * in *now and *last_ns and returns 0, or returns -1 with an exception set
 * (the clock's own, or the above) and changes nothing.
 *
 * Runs Python code: call it before touching any structure, and re-check
 * whatever the clock could have changed (it may even re-initialise the
 * object that owns it: the call holds its own reference to `clock`). */
int st_read_clock(PyObject *clock, int64_t *last_ns, int64_t *now);

/* The current time of one object in ns: `clock` is its injected clock
 * (read as st_read_clock says) or NULL for the C monotonic clock `fc`.
 * Either way the result is never below *last_ns, and is stored there.
 * Returns 0, or -1 with an exception set (only an injected clock fails).
 * Runs Python code exactly when `clock` is not NULL. */
ST_INLINE int st_clock_now(PyObject *clock, st_fastclock *fc, int64_t *last_ns,
                           int64_t *now)
{
	int64_t ns;

	if (ST_UNLIKELY(clock != NULL))
		return st_read_clock(clock, last_ns, now);
	ns = st_fastclock_now(fc);
	if (ns > *last_ns)
		*last_ns = ns;
	else
		ns = *last_ns;
	*now = ns;
	return 0;
}

#endif /* ST_PYCLOCK_H */
