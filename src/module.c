/* stanchion._core: module definition, state and multi-phase init. */
#include "module.h"

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
	st_state *st = PyModule_GetState(module);
	Py_VISIT(st->limiter_type);
	Py_VISIT(st->decision_type);
	Py_VISIT(st->cache_type);
	Py_VISIT(st->cached_call_type);
	Py_VISIT(st->cache_info_type);
	Py_VISIT(st->rate_headers_type);
	Py_VISIT(st->header_send_type);
	Py_VISIT(st->header_start_type);
	Py_VISIT(st->gate_type);
	Py_VISIT(st->shm_limiter_type);
	Py_VISIT(st->conc_type);
	Py_VISIT(st->hold_type);
	Py_VISIT(st->ready_type);
	Py_VISIT(st->conc_shm_type);
	Py_VISIT(st->logparser_type);
	Py_VISIT(st->ready_none);
	Py_VISIT(st->tracker);
	for (int i = 0; i < 5; i++) {
		Py_VISIT(st->hdr_str[i]);
		Py_VISIT(st->hdr_bytes[i]);
		Py_VISIT(st->hdr_lower[i]);
	}
	Py_VISIT(st->kwd_mark);
	Py_VISIT(st->str_cost);
	Py_VISIT(st->str_default);
	Py_VISIT(st->str_ttl);
	Py_VISIT(st->str_type);
	Py_VISIT(st->str_headers);
	Py_VISIT(st->str_response_start);
	return 0;
}

static int module_clear(PyObject *module)
{
	st_state *st = PyModule_GetState(module);
	while (st->ndecisions > 0)
		PyObject_Free(st->decisions[--st->ndecisions]);
	while (st->nholds > 0)
		PyObject_GC_Del(st->holds[--st->nholds]);
	Py_CLEAR(st->limiter_type);
	Py_CLEAR(st->decision_type);
	Py_CLEAR(st->cache_type);
	Py_CLEAR(st->cached_call_type);
	Py_CLEAR(st->cache_info_type);
	Py_CLEAR(st->rate_headers_type);
	Py_CLEAR(st->header_send_type);
	Py_CLEAR(st->header_start_type);
	Py_CLEAR(st->gate_type);
	Py_CLEAR(st->shm_limiter_type);
	Py_CLEAR(st->conc_type);
	Py_CLEAR(st->ready_none);
	Py_CLEAR(st->tracker);
	Py_CLEAR(st->hold_type);
	Py_CLEAR(st->ready_type);
	Py_CLEAR(st->conc_shm_type);
	Py_CLEAR(st->logparser_type);
	for (int i = 0; i < 5; i++) {
		Py_CLEAR(st->hdr_str[i]);
		Py_CLEAR(st->hdr_bytes[i]);
		Py_CLEAR(st->hdr_lower[i]);
	}
	Py_CLEAR(st->kwd_mark);
	Py_CLEAR(st->str_cost);
	Py_CLEAR(st->str_default);
	Py_CLEAR(st->str_ttl);
	Py_CLEAR(st->str_type);
	Py_CLEAR(st->str_headers);
	Py_CLEAR(st->str_response_start);
	return 0;
}

static void module_free(void *module)
{
	module_clear((PyObject *)module);
}

st_state *st_state_from_type(PyTypeObject *type)
{
#if PY_VERSION_HEX >= 0x030B0000
	PyObject *module = PyType_GetModuleByDef(type, &st_module_def);
	return module ? PyModule_GetState(module) : NULL;
#else
	/* 3.10: walk the bases to the first type created by this module. */
	for (PyTypeObject *t = type; t != NULL; t = t->tp_base) {
		if (PyType_HasFeature(t, Py_TPFLAGS_HEAPTYPE)) {
			PyObject *module = PyType_GetModule(t);
			if (module != NULL &&
			    PyModule_GetDef(module) == &st_module_def)
				return PyModule_GetState(module);
			PyErr_Clear();
		}
	}
	PyErr_Format(PyExc_TypeError, "%s is not a stanchion type",
	             type->tp_name);
	return NULL;
#endif
}

static int module_exec(PyObject *module)
{
	st_state *st = PyModule_GetState(module);

	st_fastclock_init(&st->clock);
	st->str_cost = PyUnicode_InternFromString("cost");
	st->str_default = PyUnicode_InternFromString("default");
	st->str_ttl = PyUnicode_InternFromString("ttl");
	if (!st->str_cost || !st->str_default || !st->str_ttl)
		return -1;
	if (st_decision_exec(module, st) < 0)
		return -1;
	if (st_limiter_exec(module, st) < 0)
		return -1;
	if (st_cache_exec(module, st) < 0)
		return -1;
	if (st_cached_exec(module, st) < 0)
		return -1;
	if (st_cache_info_exec(module, st) < 0)
		return -1;
	if (st_rate_headers_exec(module, st) < 0)
		return -1;
	if (st_header_send_exec(module, st) < 0)
		return -1;
	if (st_shm_limiter_exec(module, st) < 0)
		return -1;
	if (st_gate_exec(module, st) < 0)
		return -1;
	if (st_conc_exec(module, st) < 0)
		return -1;
	if (st_conc_shm_exec(module, st) < 0)
		return -1;
	if (st_logparser_exec(module, st) < 0)
		return -1;
	if (st_testhooks_exec(module, st) < 0)
		return -1;
	return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "The C core of stanchion: rate limiters and an LRU/TTL cache.");

PyModuleDef st_module_def = {
    PyModuleDef_HEAD_INIT,   .m_name = "stanchion._core",
    .m_doc = module_doc,     .m_size = sizeof(st_state),
    .m_slots = module_slots, .m_traverse = module_traverse,
    .m_clear = module_clear, .m_free = module_free,
};

PyMODINIT_FUNC PyInit__core(void)
{
	return PyModuleDef_Init(&st_module_def);
}
