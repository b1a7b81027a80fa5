/* _core.CachedCall, _core.CacheInfo and _core.make_key: calls of a
 * function answered from a _core.Cache (see cached_type.c).
 */
#ifndef ST_CACHED_TYPE_H
#define ST_CACHED_TYPE_H

#include "module.h"

/* Creates the types into the state (and the keyword mark of cache keys)
 * and adds them and make_key to the module. Needs st->cache_type: run
 * after st_cache_exec. Returns 0, or -1 with an exception set. */
int st_cached_exec(PyObject *module, st_state *st);

#endif /* ST_CACHED_TYPE_H */
