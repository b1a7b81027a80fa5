/* Python bindings for _core.CacheInfo: what cache_info() of a cached
 * function (cached_type.c) returns.
 *
 * Python equivalent:
 *
 *     CacheInfo = namedtuple("CacheInfo", "hits misses maxsize currsize")
 */
#include "module.h"

static PyStructSequence_Field cache_info_fields[] = {
    {"hits", "calls answered from the cache"},
    {"misses", "calls that were not"},
    {"maxsize", "the most entries kept; None when unbounded"},
    {"currsize", "the live entries"},
    {NULL, NULL},
};

static PyStructSequence_Desc cache_info_desc = {
    "stanchion._core.CacheInfo",
    "What cache_info() of a cached function returns, as functools does.",
    cache_info_fields,
    4,
};

/* See module.h. */
int st_cache_info_exec(PyObject *module, st_state *st)
{
	st->cache_info_type = PyStructSequence_NewType(&cache_info_desc);
	if (st->cache_info_type == NULL)
		return -1;
	return PyModule_AddType(module, st->cache_info_type);
}
