/* stanchion.testing's switches in the C core.
 *
 * Python equivalent:
 *
 *     _disabled = 0      # open disabled() blocks, process-wide
 *     _tracker = None    # told of each Limiter and Cache at __init__
 *
 *     def _testing_disable(delta):      # +1 enter, -1 exit, 0 ask
 *         _disabled += delta; return _disabled
 *     def _testing_set_tracker(fn):     # None to stop telling
 *         _tracker = fn
 *
 * While `_disabled` is above zero, every in-process and shared-memory
 * limiter allows every hit and charges nothing (the key is still
 * checked). The tracker lets reset_all() and the fake clock reach the
 * objects an app made before they ran. Both cost nothing while unused:
 * the limiters read one int of their module state, and only
 * constructors look at the tracker.
 */
#ifndef ST_TESTHOOKS_H
#define ST_TESTHOOKS_H

#include "limit.h"
#include "module.h"

/* Whether a disabled() block is open. */
ST_INLINE int st_is_disabled(const st_state *st)
{
	return ST_UNLIKELY(st->disabled > 0);
}

/* The decision of a disabled limiter: allowed, nothing charged, full. */
ST_INLINE void st_allow_all(int64_t limit, st_decision *d)
{
	d->allowed = 1;
	d->banned = 0;
	d->binding = 0;
	d->limit = limit;
	d->remaining = limit;
	d->reset_after_ns = 0;
	d->retry_after_ns = 0;
}

/* Tells the tracker (when set) of `obj`, just initialised. Runs Python
 * code; an exception from the tracker is reported as unraisable, since
 * the object is valid either way. Call with no exception set. */
void st_track(st_state *st, PyObject *obj);

int st_testhooks_exec(PyObject *module, st_state *st);

#endif /* ST_TESTHOOKS_H */
