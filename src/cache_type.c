/* Python bindings for the LRU/TTL cache: _core.Cache (issue 3). */
#include "module.h"

int st_cache_exec(PyObject *module, st_state *st)
{
	(void)module;
	(void)st;
	return 0;
}
