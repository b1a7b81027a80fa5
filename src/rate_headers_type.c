/* Python bindings for the rate limit headers: _core.RateHeaders.
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     @final
 *     class RateHeaders:
 *         def __init__(self, policy: str, names: tuple[str, ...],
 *                      capacities: tuple[int, ...], ietf=True, x=True):
 *             # ASCII policy and names, one name per capacity
 *             ...
 *         def pairs(self, d: Decision) -> list[tuple[str, str]]:
 *             reset = ceil(d.reset_after_ns / 1e9)
 *             t = reset if d.allowed else ceil(d.retry_after_ns / 1e9)
 *             name = self.names[0]       # several rates: the first name
 *             if len(self.names) > 1 and d.limit in self.capacities:
 *                 name = self.names[self.capacities.index(d.limit)]
 *             out = []
 *             if self.ietf:
 *                 if self.policy:
 *                     out.append(("RateLimit-Policy", self.policy))
 *                 out.append(("RateLimit",
 *                             f"{name};r={d.remaining};t={t}"))
 *             if self.x:
 *                 out += [("X-RateLimit-Limit", str(d.limit)),
 *                         ("X-RateLimit-Remaining", str(d.remaining)),
 *                         ("X-RateLimit-Reset", str(reset))]
 *             return out
 *         def raw_pairs(self, d):     # ASGI: lower-case names, bytes
 *             return [(k.lower().encode(), v.encode())
 *                     for k, v in self.pairs(d)]
 *         def extend(self, d, out: list):
 *             pairs = self.pairs(d)
 *             if self.x and any(k.lower() == "x-ratelimit-limit"
 *                               for k, _ in out):   # an inner layer's
 *                 pairs = pairs[:-3]                # trio is kept
 *             out += pairs
 *         def extend_raw(self, d, out: list): the same, raw_pairs
 *         def into_store(self, d, store: dict):   # Django's header store
 *             pairs = self.pairs(d)
 *             if self.x and "x-ratelimit-limit" in store:
 *                 pairs = pairs[:-3]    # the inner layer's trio is kept
 *             for k, v in pairs:
 *                 old = store.get(k.lower())
 *                 if old and not k.startswith("X-"):
 *                     v = f"{old[1]}, {v}"
 *                 store[k.lower()] = (k, v)
 */
#include <string.h>

#include "decision_type.h"
#include "module.h"
#include "rate_headers_type.h"

/* The longest decimal int64_t, sign included. */
#define DIGITS_MAX 20

typedef struct {
	PyObject_HEAD st_state *st; /* module state: Decision, names */
	PyObject *policy;           /* str, ASCII ("" = no policy header) */
	PyObject *policy_b;         /* the same, bytes */
	PyObject *names;            /* tuple of ASCII str, one per rate */
	PyObject *capacities;       /* tuple of int, one per rate */
	int64_t *caps;              /* capacities, in C */
	Py_ssize_t n;               /* rates (>= 1) */
	int ietf;                   /* send RateLimit-Policy and RateLimit */
	int x;                      /* send the X-RateLimit-* family */
	PyObject *policy_item[2];   /* (name, policy) tuples: [raw] */
	/* The last (name, number) tuple rendered per header, [raw][which]:
	 * most requests repeat the limit and reset of the one before. The
	 * tuples hold only str or bytes, so dropping one runs no Python. */
	struct {
		int64_t value;
		PyObject *item; /* NULL until first rendered */
	} memo[2][ST_NHDR];
} RateHeadersObject;

/* ---- rendering ---------------------------------------------------------- */

/* Writes `v` in decimal to buf (at least DIGITS_MAX bytes, no NUL) and
 * returns the number of characters. */
static Py_ssize_t fmt_int(int64_t v, char *buf)
{
	char tmp[DIGITS_MAX];
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
	Py_ssize_t n = 0, len = 0;

	do {
		tmp[n++] = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		buf[len++] = '-';
	while (n > 0)
		buf[len++] = tmp[--n];
	return len;
}

/* ceil(ns / 1e9) for any sign of ns, as Python's -(-ns // 10**9). */
static int64_t ceil_seconds(int64_t ns)
{
	return -st_floordiv(-ns, ST_NS_PER_SEC);
}

/* An ASCII text of `len` characters: a str, or bytes when `raw`. Its
 * characters are written through *data. Returns a new reference, or NULL
 * with MemoryError set. */
static PyObject *new_text(Py_ssize_t len, int raw, char **data)
{
	PyObject *o;

	if (raw) {
		o = PyBytes_FromStringAndSize(NULL, len);
		if (o != NULL)
			*data = PyBytes_AS_STRING(o);
	} else {
		o = PyUnicode_New(len, 127);
		if (o != NULL)
			*data = (char *)PyUnicode_1BYTE_DATA(o);
	}
	return o;
}

/* The text of the decimal number `v`. Returns a new reference, or NULL
 * with MemoryError set. */
static PyObject *int_text(int64_t v, int raw)
{
	char buf[DIGITS_MAX], *data;
	Py_ssize_t len = fmt_int(v, buf);
	PyObject *o = new_text(len, raw, &data);

	if (o != NULL)
		memcpy(data, buf, (size_t)len);
	return o;
}

/* The policy item name for a decision's limit: with several rates, the
 * first whose capacity it is; otherwise (or with no such rate) the
 * first. A borrowed ASCII str. */
static PyObject *name_for(RateHeadersObject *self, int64_t limit)
{
	for (Py_ssize_t i = 0; self->n > 1 && i < self->n; i++)
		if (self->caps[i] == limit)
			return PyTuple_GET_ITEM(self->names, i);
	return PyTuple_GET_ITEM(self->names, 0);
}

/* The RateLimit value "<name>;r=<remaining>;t=<t>". Returns a new
 * reference, or NULL with MemoryError set. */
static PyObject *ratelimit_text(RateHeadersObject *self,
                                const DecisionObject *d, int64_t t, int raw)
{
	PyObject *name = name_for(self, d->limit), *o;
	char r[DIGITS_MAX], tb[DIGITS_MAX], *p;
	Py_ssize_t nlen = PyUnicode_GET_LENGTH(name);
	Py_ssize_t rlen = fmt_int(d->remaining, r), tlen = fmt_int(t, tb);

	o = new_text(nlen + 3 + rlen + 3 + tlen, raw, &p);
	if (o == NULL)
		return NULL;
	memcpy(p, PyUnicode_1BYTE_DATA(name), (size_t)nlen);
	p += nlen;
	memcpy(p, ";r=", 3);
	p += 3;
	memcpy(p, r, (size_t)rlen);
	p += rlen;
	memcpy(p, ";t=", 3);
	p += 3;
	memcpy(p, tb, (size_t)tlen);
	return o;
}

/* A new (name, value) tuple taking the reference to `value`, or NULL
 * with MemoryError set (the reference is dropped). */
static PyObject *pair(PyObject *name, PyObject *value)
{
	PyObject *t;

	if (value == NULL)
		return NULL;
	t = PyTuple_New(2);
	if (t == NULL) {
		Py_DECREF(value);
		return NULL;
	}
	PyTuple_SET_ITEM(t, 0, Py_NewRef(name));
	PyTuple_SET_ITEM(t, 1, value);
	return t;
}

/* The (header `which`, decimal `v`) tuple, reused when `v` is the value
 * this header had last time. Returns a new reference, or NULL with
 * MemoryError set. Runs no Python code. */
static PyObject *number_item(RateHeadersObject *self, int raw, int which,
                             int64_t v)
{
	PyObject *item;

	if (self->memo[raw][which].item != NULL &&
	    self->memo[raw][which].value == v)
		return Py_NewRef(self->memo[raw][which].item);
	item =
	    pair(raw ? self->st->hdr_bytes[which] : self->st->hdr_str[which],
	         int_text(v, raw));
	if (item != NULL) {
		Py_XSETREF(self->memo[raw][which].item, Py_NewRef(item));
		self->memo[raw][which].value = v;
	}
	return item;
}

/* See rate_headers_type.h. */
Py_ssize_t st_rate_headers_render(PyObject *rh, PyObject *d, int raw,
                                  PyObject **out, int *which)
{
	RateHeadersObject *self = (RateHeadersObject *)rh;
	st_state *st = self->st;
	Py_ssize_t n = 0;
	const DecisionObject *dec;
	int64_t reset, t;

	if (ST_UNLIKELY(!st_decision_check(st, d))) {
		PyErr_Format(PyExc_TypeError,
		             "expected a Decision, not %.100s",
		             Py_TYPE(d)->tp_name);
		return -1;
	}
	dec = (const DecisionObject *)d;
	reset = ceil_seconds(dec->reset_after_ns);
	t = dec->allowed ? reset : ceil_seconds(dec->retry_after_ns);
	if (self->ietf) {
		if (self->policy_item[raw] != NULL) {
			which[n] = ST_HDR_POLICY;
			out[n++] = Py_NewRef(self->policy_item[raw]);
		}
		which[n] = ST_HDR_RATELIMIT;
		out[n] = pair(raw ? st->hdr_bytes[ST_HDR_RATELIMIT]
		                  : st->hdr_str[ST_HDR_RATELIMIT],
		              ratelimit_text(self, dec, t, raw));
		if (out[n++] == NULL)
			goto error;
	}
	if (self->x) {
		static const int x[3] = {ST_HDR_X_LIMIT, ST_HDR_X_REMAIN,
		                         ST_HDR_X_RESET};
		const int64_t v[3] = {dec->limit, dec->remaining, reset};
		for (int i = 0; i < 3; i++) {
			which[n] = x[i];
			out[n] = number_item(self, raw, x[i], v[i]);
			if (out[n++] == NULL)
				goto error;
		}
	}
	return n;
error:
	for (Py_ssize_t i = 0; i < n - 1; i++)
		Py_DECREF(out[i]);
	return -1;
}

/* st_rate_headers_render without the header kinds. */
static Py_ssize_t render(RateHeadersObject *self, PyObject *d, int raw,
                         PyObject **out)
{
	int which[ST_NHDR];

	return st_rate_headers_render((PyObject *)self, d, raw, out, which);
}

/* The lower-case ASCII text of a header name (bytes, or an ASCII str)
 * into buf (`cap` bytes); its length, or -1 when it is neither or
 * longer than `cap`. */
static Py_ssize_t lower_name(PyObject *name, char *buf, Py_ssize_t cap)
{
	const char *s;
	Py_ssize_t n;

	if (PyBytes_Check(name)) {
		s = PyBytes_AS_STRING(name);
		n = PyBytes_GET_SIZE(name);
	} else if (PyUnicode_Check(name) && PyUnicode_IS_ASCII(name)) {
		s = (const char *)PyUnicode_DATA(name);
		n = PyUnicode_GET_LENGTH(name);
	} else {
		return -1;
	}
	if (n > cap)
		return -1;
	for (Py_ssize_t i = 0; i < n; i++) {
		char c = s[i];
		buf[i] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
	}
	return n;
}

/* The length of a header name (bytes or str), or -1 for anything else. */
static Py_ssize_t name_length(PyObject *name)
{
	if (PyBytes_Check(name))
		return PyBytes_GET_SIZE(name);
	if (PyUnicode_Check(name))
		return PyUnicode_GET_LENGTH(name);
	return -1;
}

/* See rate_headers_type.h. */
int st_is_x_header(PyObject *name)
{
	static const char *x[3] = {
	    "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"};
	char buf[24];
	Py_ssize_t len = name_length(name), n;

	if (len != 17 && len != 21) /* none of the three */
		return 0;
	n = lower_name(name, buf, (Py_ssize_t)sizeof(buf));

	for (int i = 0; i < 3 && n > 0; i++)
		if ((size_t)n == strlen(x[i]) &&
		    memcmp(buf, x[i], (size_t)n) == 0)
			return 1;
	return 0;
}

/* See rate_headers_type.h. */
int st_has_x_limit(PyObject *headers)
{
	char buf[17];

	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
		PyObject *item = PyList_GET_ITEM(headers, i), *name;
		if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) >= 1)
			name = PyTuple_GET_ITEM(item, 0);
		else if (PyList_Check(item) && PyList_GET_SIZE(item) >= 1)
			name = PyList_GET_ITEM(item, 0);
		else
			continue;
		/* Most names are of another length: no need to read them. */
		if (name_length(name) == 17 &&
		    lower_name(name, buf, 17) == 17 &&
		    memcmp(buf, "x-ratelimit-limit", 17) == 0)
			return 1;
	}
	return 0;
}

/* pairs()/raw_pairs(): a new list of the rendered tuples, or NULL with an
 * exception set. */
static PyObject *rh_list(RateHeadersObject *self, PyObject *d, int raw)
{
	PyObject *items[ST_NHDR], *list;
	Py_ssize_t n = render(self, d, raw, items);

	if (n < 0)
		return NULL;
	list = PyList_New(n);
	if (list == NULL) {
		for (Py_ssize_t i = 0; i < n; i++)
			Py_DECREF(items[i]);
		return NULL;
	}
	for (Py_ssize_t i = 0; i < n; i++)
		PyList_SET_ITEM(list, i, items[i]);
	return list;
}

/* extend()/extend_raw() with a FASTCALL vector (decision, list): appends
 * the rendered tuples to the list, but the X-RateLimit-* trio when the
 * list has X-RateLimit-Limit already (an inner layer's, which is kept).
 * Returns None, or NULL with an exception set (TypeError for a wrong argument
 * count or a non-list; then the list is left as it was). */
static PyObject *rh_extend(RateHeadersObject *self, PyObject *const *args,
                           Py_ssize_t nargs, int raw, const char *fname)
{
	PyObject *items[ST_NHDR], *list;
	Py_ssize_t n, send, i;
	int rc = 0;

	if (ST_UNLIKELY(nargs != 2)) {
		PyErr_Format(PyExc_TypeError,
		             "%s() takes exactly 2 positional arguments (%zd "
		             "given)",
		             fname, nargs);
		return NULL;
	}
	list = args[1];
	if (ST_UNLIKELY(!PyList_Check(list))) {
		PyErr_Format(PyExc_TypeError,
		             "%s() needs a list to extend, not %.100s", fname,
		             Py_TYPE(list)->tp_name);
		return NULL;
	}
	n = render(self, args[0], raw, items);
	if (n < 0)
		return NULL;
	/* The list's items are looked at, and it grows, with no Python code
	 * run in between: it cannot change under the loop. */
	send = n;
	if (self->x && st_has_x_limit(list))
		send -= 3; /* the trio is last */
	for (i = 0; i < send && rc == 0; i++)
		rc = PyList_Append(list, items[i]);
	for (i = 0; i < n; i++)
		Py_DECREF(items[i]);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* pairs(decision): the headers as (str, str) tuples. */
static PyObject *rh_pairs(RateHeadersObject *self, PyObject *d)
{
	return rh_list(self, d, 0);
}

/* raw_pairs(decision): the headers as ASGI (bytes, bytes) tuples. */
static PyObject *rh_raw_pairs(RateHeadersObject *self, PyObject *d)
{
	return rh_list(self, d, 1);
}

/* extend(decision, list): list.extend(self.pairs(decision)). */
static PyObject *rh_extend_str(RateHeadersObject *self, PyObject *const *args,
                               Py_ssize_t nargs)
{
	return rh_extend(self, args, nargs, 0, "extend");
}

/* extend_raw(decision, list): list.extend(self.raw_pairs(decision)). */
static PyObject *rh_extend_raw(RateHeadersObject *self, PyObject *const *args,
                               Py_ssize_t nargs)
{
	return rh_extend(self, args, nargs, 1, "extend_raw");
}

/* into_store(decision, store): writes the headers into a Django
 * response's header store, a dict of lower-case name -> (name, value):
 * RateLimit and RateLimit-Policy already there are joined with ", " (one
 * list field), and the X-RateLimit-* trio is left out when the store has
 * X-RateLimit-Limit (the inner layer's quota is kept). */
static PyObject *rh_into_store(RateHeadersObject *self, PyObject *const *args,
                               Py_ssize_t nargs)
{
	st_state *st = self->st;
	PyObject *items[ST_NHDR], *store;
	int which[ST_NHDR];
	Py_ssize_t n, send, i;
	int rc = 0;

	if (ST_UNLIKELY(nargs != 2)) {
		PyErr_Format(
		    PyExc_TypeError,
		    "into_store() takes exactly 2 positional arguments "
		    "(%zd given)",
		    nargs);
		return NULL;
	}
	store = args[1];
	if (ST_UNLIKELY(!PyDict_CheckExact(store))) {
		PyErr_Format(PyExc_TypeError,
		             "into_store() needs a dict, not %.100s",
		             Py_TYPE(store)->tp_name);
		return NULL;
	}
	n = st_rate_headers_render((PyObject *)self, args[0], 0, items, which);
	if (n < 0)
		return NULL;
	/* The dict's keys are exact str (Django's store), and so are ours:
	 * looking them up and storing runs no Python code. */
	send = n;
	if (self->x) {
		int has =
		    PyDict_Contains(store, st->hdr_lower[ST_HDR_X_LIMIT]);
		if (has < 0)
			rc = -1;
		else if (has)
			send -= 3;
	}
	for (i = 0; i < send && rc == 0; i++) {
		PyObject *lower = st->hdr_lower[which[i]], *item = items[i];
		PyObject *old = NULL;

		if (which[i] == ST_HDR_POLICY ||
		    which[i] == ST_HDR_RATELIMIT) {
			old = PyDict_GetItemWithError(store, lower);
			if (old == NULL && PyErr_Occurred())
				rc = -1;
		}
		if (old != NULL && PyTuple_Check(old) &&
		    PyTuple_GET_SIZE(old) == 2 &&
		    PyUnicode_Check(PyTuple_GET_ITEM(old, 1))) {
			/* One list field: the values joined. */
			PyObject *t =
			    pair(PyTuple_GET_ITEM(item, 0),
			         PyUnicode_FromFormat(
			             "%U, %U", PyTuple_GET_ITEM(old, 1),
			             PyTuple_GET_ITEM(item, 1)));
			if (t == NULL) {
				rc = -1;
				break;
			}
			rc = PyDict_SetItem(store, lower, t);
			Py_DECREF(t);
		} else if (rc == 0) {
			rc = PyDict_SetItem(store, lower, item);
		}
	}
	for (i = 0; i < n; i++)
		Py_DECREF(items[i]);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* ---- construction ------------------------------------------------------- */

/* An ASCII str, or a TypeError/ValueError naming `what`. */
static int check_ascii(PyObject *s, const char *what)
{
	if (!PyUnicode_Check(s)) {
		PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s",
		             what, Py_TYPE(s)->tp_name);
		return -1;
	}
	if (!PyUnicode_IS_ASCII(s)) {
		PyErr_Format(PyExc_ValueError, "%s must be ASCII, got %R",
		             what, s);
		return -1;
	}
	return 0;
}

/* RateHeaders(policy, names, capacities, ietf=True, x=True): checks
 * everything (TypeError for a wrong type, ValueError for non-ASCII text,
 * no names, or a count of names unlike that of capacities) before it
 * builds anything. Returns a new reference, or NULL with an exception
 * set. Runs no Python code beyond the sequences' own iteration and
 * __bool__ of the flags. */
static PyObject *rh_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"policy", "names", "capacities",
	                         "ietf",   "x",     NULL};
	PyObject *policy, *names_o, *caps_o, *names = NULL, *caps = NULL;
	int ietf = 1, x = 1;
	RateHeadersObject *self = NULL;
	st_state *st = st_state_from_type(type);
	Py_ssize_t n;

	if (st == NULL)
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "UOO|pp:RateHeaders",
	                                 kwlist, &policy, &names_o, &caps_o,
	                                 &ietf, &x))
		return NULL;
	if (check_ascii(policy, "policy") < 0)
		return NULL;
	if (!PyTuple_Check(names_o) || !PyTuple_Check(caps_o)) {
		PyErr_Format(PyExc_TypeError,
		             "names and capacities must be tuples, not "
		             "%.100s and %.100s",
		             Py_TYPE(names_o)->tp_name,
		             Py_TYPE(caps_o)->tp_name);
		return NULL;
	}
	names = Py_NewRef(names_o);
	caps = Py_NewRef(caps_o);
	n = PyTuple_GET_SIZE(names);
	if (n == 0 || n != PyTuple_GET_SIZE(caps)) {
		PyErr_Format(PyExc_ValueError,
		             "one name per capacity, and at least one: got "
		             "%zd names and %zd capacities",
		             n, PyTuple_GET_SIZE(caps));
		goto error;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *c = PyTuple_GET_ITEM(caps, i);
		if (check_ascii(PyTuple_GET_ITEM(names, i), "a name") < 0)
			goto error;
		if (!PyLong_Check(c) || PyBool_Check(c)) {
			PyErr_Format(PyExc_TypeError,
			             "capacities must be ints, not %.100s",
			             Py_TYPE(c)->tp_name);
			goto error;
		}
	}
	self = (RateHeadersObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		goto error;
	self->st = st;
	self->n = n;
	self->ietf = ietf;
	self->x = x;
	self->names = names;
	self->capacities = caps;
	names = caps = NULL;
	self->policy = Py_NewRef(policy);
	self->policy_b = PyBytes_FromStringAndSize(
	    (const char *)PyUnicode_1BYTE_DATA(policy),
	    PyUnicode_GET_LENGTH(policy));
	self->caps = PyMem_Malloc((size_t)n * sizeof(int64_t));
	if (self->policy_b == NULL || self->caps == NULL) {
		if (self->caps == NULL)
			PyErr_NoMemory();
		goto error;
	}
	if (PyUnicode_GET_LENGTH(policy) > 0) {
		self->policy_item[0] =
		    pair(st->hdr_str[ST_HDR_POLICY], Py_NewRef(policy));
		self->policy_item[1] = pair(st->hdr_bytes[ST_HDR_POLICY],
		                            Py_NewRef(self->policy_b));
		if (self->policy_item[0] == NULL ||
		    self->policy_item[1] == NULL)
			goto error;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		int overflow;
		long long v = PyLong_AsLongLongAndOverflow(
		    PyTuple_GET_ITEM(self->capacities, i), &overflow);
		if (v == -1 && PyErr_Occurred())
			goto error;
		/* A capacity beyond int64_t matches no Decision's limit. */
		self->caps[i] = overflow ? -1 : v;
	}
	return (PyObject *)self;
error:
	Py_XDECREF(names);
	Py_XDECREF(caps);
	Py_XDECREF(self);
	return NULL;
}

/* Frees what the instance owns (a half-built one too), then the type. */
static void rh_dealloc(RateHeadersObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	Py_XDECREF(self->policy);
	Py_XDECREF(self->policy_b);
	Py_XDECREF(self->names);
	Py_XDECREF(self->capacities);
	PyMem_Free(self->caps);
	for (int raw = 0; raw < 2; raw++) {
		Py_XDECREF(self->policy_item[raw]);
		for (int i = 0; i < ST_NHDR; i++)
			Py_XDECREF(self->memo[raw][i].item);
	}
	tp->tp_free(self);
	Py_DECREF(tp);
}

/* The getters return what the constructor was given (new references). */
static PyObject *rh_get_policy(RateHeadersObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->policy);
}

static PyObject *rh_get_names(RateHeadersObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->names);
}

static PyObject *rh_get_capacities(RateHeadersObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->capacities);
}

static PyObject *rh_get_ietf(RateHeadersObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->ietf);
}

static PyObject *rh_get_x(RateHeadersObject *self, void *c)
{
	(void)c;
	return PyBool_FromLong(self->x);
}

/* RateHeaders(policy=..., names=..., capacities=..., ietf=..., x=...). */
static PyObject *rh_repr(RateHeadersObject *self)
{
	return PyUnicode_FromFormat(
	    "RateHeaders(policy=%R, names=%R, capacities=%R, ietf=%s, x=%s)",
	    self->policy, self->names, self->capacities,
	    self->ietf ? "True" : "False", self->x ? "True" : "False");
}

PyDoc_STRVAR(rh_pairs_doc,
             "pairs($self, decision, /)\n--\n\n"
             "The rate limit headers for `decision`, as (name, value) str "
             "pairs.");
PyDoc_STRVAR(rh_raw_pairs_doc,
             "raw_pairs($self, decision, /)\n--\n\n"
             "The same as ASGI (name, value) byte pairs, names in lower "
             "case.");
PyDoc_STRVAR(rh_extend_doc,
             "extend($self, decision, headers, /)\n--\n\n"
             "Append pairs(decision) to the list `headers`, without the "
             "X-RateLimit-* trio\nwhen `headers` has X-RateLimit-Limit "
             "already (an inner layer's).");
PyDoc_STRVAR(rh_extend_raw_doc,
             "extend_raw($self, decision, headers, /)\n--\n\n"
             "Append raw_pairs(decision) to the list `headers`, by the "
             "rule of extend().");

PyDoc_STRVAR(rh_into_store_doc,
             "into_store($self, decision, store, /)\n--\n\n"
             "Write the headers into `store`, a dict of lower-case name -> "
             "(name, value)\n(Django's response header store): RateLimit "
             "and RateLimit-Policy already\nthere are joined with ', '; the "
             "X-RateLimit-* trio is left out when the\nstore has "
             "X-RateLimit-Limit.");

static PyMethodDef rh_methods[] = {
    {"pairs", (PyCFunction)rh_pairs, METH_O, rh_pairs_doc},
    {"raw_pairs", (PyCFunction)rh_raw_pairs, METH_O, rh_raw_pairs_doc},
    {"extend", (PyCFunction)(void (*)(void))rh_extend_str, METH_FASTCALL,
     rh_extend_doc},
    {"extend_raw", (PyCFunction)(void (*)(void))rh_extend_raw, METH_FASTCALL,
     rh_extend_raw_doc},
    {"into_store", (PyCFunction)(void (*)(void))rh_into_store, METH_FASTCALL,
     rh_into_store_doc},
    {NULL},
};

static PyGetSetDef rh_getset[] = {
    {"policy", (getter)rh_get_policy, NULL,
     "The RateLimit-Policy value ('' sends none).", NULL},
    {"names", (getter)rh_get_names, NULL, "The policy item name of each rate.",
     NULL},
    {"capacities", (getter)rh_get_capacities, NULL,
     "The capacity of each rate, which names a decision's rate.", NULL},
    {"ietf", (getter)rh_get_ietf, NULL,
     "Whether RateLimit-Policy and RateLimit are sent.", NULL},
    {"x", (getter)rh_get_x, NULL,
     "Whether the X-RateLimit-* headers are sent.", NULL},
    {NULL},
};

PyDoc_STRVAR(rh_doc,
             "RateHeaders(policy, names, capacities, ietf=True, x=True)\n"
             "--\n\n"
             "The rate limit headers of one limiter, rendered for a "
             "Decision: RateLimit-Policy\n(the `policy` text, omitted when "
             "empty) and RateLimit when `ietf`, the\nX-RateLimit-* family "
             "when `x`. With several rates, a decision's rate is the\nfirst "
             "whose capacity is decision.limit (else the first).");

static PyType_Slot rh_slots[] = {
    {Py_tp_doc, (void *)rh_doc},
    {Py_tp_new, rh_new},
    {Py_tp_dealloc, rh_dealloc},
    {Py_tp_repr, rh_repr},
    {Py_tp_methods, rh_methods},
    {Py_tp_getset, rh_getset},
    {0, NULL},
};

static PyType_Spec rh_spec = {
    .name = "stanchion._core.RateHeaders",
    .basicsize = sizeof(RateHeadersObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rh_slots,
};

/* See rate_headers_type.h. */
int st_rate_headers_exec(PyObject *module, st_state *st)
{
	static const char *names[ST_NHDR] = {
	    "RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
	    "X-RateLimit-Remaining", "X-RateLimit-Reset"};
	static const char *lower[ST_NHDR] = {
	    "ratelimit-policy", "ratelimit", "x-ratelimit-limit",
	    "x-ratelimit-remaining", "x-ratelimit-reset"};

	for (int i = 0; i < ST_NHDR; i++) {
		st->hdr_str[i] = PyUnicode_InternFromString(names[i]);
		st->hdr_bytes[i] = PyBytes_FromString(lower[i]);
		st->hdr_lower[i] = PyUnicode_InternFromString(lower[i]);
		if (st->hdr_str[i] == NULL || st->hdr_bytes[i] == NULL ||
		    st->hdr_lower[i] == NULL)
			return -1;
	}
	st->rate_headers_type =
	    (PyTypeObject *)PyType_FromModuleAndSpec(module, &rh_spec, NULL);
	if (st->rate_headers_type == NULL)
		return -1;
	return PyModule_AddType(module, st->rate_headers_type);
}
