/* Python bindings for a rule's fast path: _core.Gate.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     @final
 *     class Gate:
 *         def __init__(self, limiter: Limiter, plans: dict):
 *             self.limiter, self.plans = limiter, plans
 *         def __call__(self, peer):
 *             plan = self.plans.get(peer)  # (info, key, cost, ...)
 *             if plan is None:
 *                 return None          # no plan kept: the rule decides
 *             return _core.Limiter.hit(self.limiter, plan[1], plan[2])
 *
 * A rule whose decision depends on the client address alone keeps a plan
 * per address (the bucket key and cost); the adapters ask the gate first,
 * so a known client costs one dict lookup and one hit, with no Python
 * frame. The limiter's own hit is called even on a subclass (whose Python
 * methods are not), as the rule only builds a gate for stanchion.Limiter.
 * The plan is held while the limiter decides: an injected clock may run
 * any Python code, this gate's own calls included.
 */
#include <stddef.h>

#include "decision_type.h"
#include "module.h"
#include "structmember.h"

typedef struct {
	PyObject_HEAD st_state *st; /* module state: Decision, Limiter */
	PyObject *limiter;          /* a _core.Limiter */
	PyObject *plans;            /* dict: peer -> (info, key, cost, ...) */
	vectorcallfunc vectorcall;
} GateObject;

/* The cost of a plan: an int of at least 1. Returns 0, or -1 with an
 * exception set. */
static int plan_cost(PyObject *o, int64_t *cost)
{
	int overflow;
	long long v;

	if (!PyLong_Check(o) || PyBool_Check(o)) {
		PyErr_Format(PyExc_TypeError,
		             "a plan's cost must be an int, "
		             "not %.100s",
		             Py_TYPE(o)->tp_name);
		return -1;
	}
	v = PyLong_AsLongLongAndOverflow(o, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	*cost = overflow > 0 ? INT64_MAX : overflow < 0 ? -1 : v;
	return 0;
}

static PyObject *gate_vectorcall(PyObject *op, PyObject *const *args,
                                 size_t nargsf, PyObject *kwnames)
{
	GateObject *self = (GateObject *)op;
	PyObject *plan, *plans, *limiter, *result = NULL;
	st_decision d;
	int64_t cost;

	if (PyVectorcall_NARGS(nargsf) != 1 ||
	    (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
		PyErr_SetString(PyExc_TypeError, "Gate() takes one peer");
		return NULL;
	}
	/* Our own references: a peer's __hash__ or __eq__, or the clock,
	 * may run Python code that drops the gate's. */
	plans = Py_NewRef(self->plans);
	limiter = Py_NewRef(self->limiter);
	plan = PyDict_GetItemWithError(plans, args[0]);
	if (plan == NULL) {
		if (!PyErr_Occurred())
			result = Py_NewRef(Py_None);
		goto done;
	}
	Py_INCREF(plan);
	if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) < 3) {
		PyErr_Format(PyExc_TypeError,
		             "a plan must be a tuple (info, key, cost, ...), "
		             "not %.100s",
		             Py_TYPE(plan)->tp_name);
	} else if (plan_cost(PyTuple_GET_ITEM(plan, 2), &cost) == 0 &&
	           st_limiter_hit(self->st, limiter, PyTuple_GET_ITEM(plan, 1),
	                          cost, &d) == 0) {
		result = st_decision_make(self->st, &d);
	}
	Py_DECREF(plan);
done:
	Py_DECREF(limiter);
	Py_DECREF(plans);
	return result;
}

static PyObject *gate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"limiter", "plans", NULL};
	st_state *st = st_state_from_type(type);
	PyObject *limiter, *plans;
	GateObject *self;

	if (st == NULL)
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!:Gate", kwlist,
	                                 &limiter, &PyDict_Type, &plans))
		return NULL;
	if (!PyObject_TypeCheck(limiter, st->limiter_type)) {
		PyErr_Format(PyExc_TypeError,
		             "limiter must be a stanchion.Limiter, not %.100s",
		             Py_TYPE(limiter)->tp_name);
		return NULL;
	}
	self = (GateObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->st = st;
	self->limiter = Py_NewRef(limiter);
	self->plans = Py_NewRef(plans);
	self->vectorcall = gate_vectorcall;
	return (PyObject *)self;
}

static int gate_traverse(GateObject *self, visitproc visit, void *arg)
{
	Py_VISIT(Py_TYPE(self));
	Py_VISIT(self->limiter);
	Py_VISIT(self->plans);
	return 0;
}

static int gate_clear(GateObject *self)
{
	Py_CLEAR(self->limiter);
	Py_CLEAR(self->plans);
	return 0;
}

static void gate_dealloc(GateObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	gate_clear(self);
	tp->tp_free((PyObject *)self);
	Py_DECREF(tp);
}

static PyObject *gate_get_limiter(GateObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->limiter);
}

static PyObject *gate_get_plans(GateObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->plans);
}

static PyMemberDef gate_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(GateObject, vectorcall),
     READONLY, NULL},
    {NULL},
};

static PyGetSetDef gate_getset[] = {
    {"limiter", (getter)gate_get_limiter, NULL, "The limiter it hits.", NULL},
    {"plans", (getter)gate_get_plans, NULL,
     "The rule's plans: peer -> (info, key, cost, ...).", NULL},
    {NULL},
};

PyDoc_STRVAR(gate_doc,
             "Gate(limiter, plans)\n"
             "--\n\n"
             "gate(peer): None when `plans` (a dict) has no plan for "
             "`peer`; otherwise\nlimiter.hit(plan[1], plan[2]) of the C "
             "limiter, the plan being a tuple\n(info, key, cost, ...).");

static PyType_Slot gate_slots[] = {
    {Py_tp_doc, (void *)gate_doc},
    {Py_tp_new, gate_new},
    {Py_tp_dealloc, gate_dealloc},
    {Py_tp_traverse, gate_traverse},
    {Py_tp_clear, gate_clear},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, gate_members},
    {Py_tp_getset, gate_getset},
    {0, NULL},
};

static PyType_Spec gate_spec = {
    .name = "stanchion._core.Gate",
    .basicsize = sizeof(GateObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = gate_slots,
};

/* See module.h. */
int st_gate_exec(PyObject *module, st_state *st)
{
	st->gate_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &gate_spec, NULL);
	if (st->gate_type == NULL)
		return -1;
	return PyModule_AddType(module, st->gate_type);
}
