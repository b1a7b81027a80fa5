/* Python bindings for the cache engine: _core.Cache (cached functions
 * over it are cached_type.c).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class Cache:     # an OrderedDict with expiry times
 *         def __init__(self, maxsize=1024, ttl=None, clock=None, *,
 *                      maxweight=None, weigh=None): ...
 *         def get(self, key, /, default=None): ...   # a hit moves key
 *         def peek(self, key, /, default=None): ...  # no move, no stats
 *         def set(self, key, value, /, ttl=None): ...
 *         def pop(self, key, /, default=<raise KeyError>): ...
 *         def popitem(self): ...                     # least recent
 *         def clear(self): ...
 *         def stats(self) -> dict: ...
 *         def reset_stats(self): ...
 *         def keys(self) / values(self) / items(self) -> list: ...
 *         __getitem__, __setitem__, __delitem__, __contains__, __len__,
 *         __iter__                                   # live keys only
 *
 * Expiry: an entry lives while now < expires. Reads (get, [], in, peek,
 * pop, del) remove the expired entry they find; writes (set, []=) first
 * remove every expired entry (O(1) each, so amortised over the writes
 * that made them), as do len(), stats() and iteration. Eviction drops the
 * least recently used live entries while there are more than maxsize
 * entries or more than maxweight weight.
 *
 * Reentrancy (after CPython's lru_cache): a key's __hash__ and __eq__, a
 * value's __del__, the clock and weigh are Python code that may use or
 * clear this very cache. So: hash, weigh and the clock run before the
 * table is touched; key comparisons restart the walk if the table moved
 * under them; a reference is dropped only once the table is consistent,
 * and every loop re-reads the table after each drop. No lock of ours is
 * ever held (the GIL serialises callers).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "args.h"
#include "cache_type.h"
#include "clock.h"
#include "lru.h"
#include "module.h"
#include "pyclock.h"
#include "structmember.h"
#include "testhooks.h"

#define DEFAULT_MAXSIZE 1024

/* =========================================================================
 * Cache
 * ========================================================================= */

/* ---- small helpers ------------------------------------------------------ */

/* The key's hash; exact str reads its cached hash without a call. */
ST_INLINE Py_hash_t key_hash(PyObject *key)
{
	if (ST_LIKELY(PyUnicode_CheckExact(key))) {
		Py_hash_t h = ((PyASCIIObject *)key)->hash;
		if (ST_LIKELY(h != -1))
			return h;
	}
	return PyObject_Hash(key);
}

/* Equality of two exact str without calling out, or -1 if it cannot be
 * decided that way. */
ST_INLINE int str_eq(PyObject *a, PyObject *b)
{
	Py_ssize_t n;
	int kind;
#if PY_VERSION_HEX < 0x030C0000
	if (!PyUnicode_IS_READY(a) || !PyUnicode_IS_READY(b))
		return -1;
#endif
	n = PyUnicode_GET_LENGTH(a);
	kind = PyUnicode_KIND(a);
	return n == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b) &&
	       memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
	              (size_t)n * (size_t)kind) == 0;
}

/* Seconds to a TTL in ns: a real number, finite, > 0 and at most about
 * 36 years. */
static int parse_ttl(PyObject *v, int64_t *out)
{
	double s;

	if (PyBool_Check(v) || !(PyLong_Check(v) || PyFloat_Check(v))) {
		PyErr_Format(PyExc_TypeError,
		             "ttl must be a number of seconds or None, not "
		             "%.100s",
		             Py_TYPE(v)->tp_name);
		return -1;
	}
	s = PyFloat_AsDouble(v);
	if (s == -1.0 && PyErr_Occurred()) {
		if (!PyErr_ExceptionMatches(PyExc_OverflowError))
			return -1;
		PyErr_Clear();
		s = HUGE_VAL;
	}
	if (!isfinite(s) || !(s > 0.0) || s * 1e9 > (double)ST_MAX_SPAN_NS) {
		PyErr_Format(PyExc_ValueError,
		             "ttl must be a finite number of seconds > 0 and "
		             "at most %lld, got %R",
		             (long long)(ST_MAX_SPAN_NS / ST_NS_PER_SEC), v);
		return -1;
	}
	*out = (int64_t)ceil(s * 1e9);
	if (*out < 1)
		*out = 1;
	return 0;
}

/* The total weight as an int. It fits int64_t once evictions have run;
 * a finalizer reading it during an eviction may see more. */
static PyObject *weight_object(st_i128 w)
{
	PyObject *hi, *shift, *lo, *r;

	if (w <= INT64_MAX)
		return PyLong_FromLongLong((long long)w);
	hi = PyLong_FromLongLong((long long)(w >> 32));
	shift = PyLong_FromLong(32);
	lo = PyLong_FromUnsignedLong((unsigned long)(w & 0xFFFFFFFFu));
	r = hi && shift && lo ? PyNumber_Lshift(hi, shift) : NULL;
	Py_XSETREF(r, r ? PyNumber_Or(r, lo) : NULL);
	Py_XDECREF(hi);
	Py_XDECREF(shift);
	Py_XDECREF(lo);
	return r;
}

static PyObject *ns_to_seconds(int64_t ns)
{
	return PyFloat_FromDouble((double)ns / 1e9);
}

/* The current time in ns, never earlier than the last reading (see
 * st_clock_now). Calls the injected clock (Python code) if there is one:
 * callers do so before they look at the table. */
ST_INLINE int cache_clock(CacheObject *self, int64_t *now)
{
	return st_clock_now(self->clock, &self->fclock, &self->last_now, now);
}

/* Weight of `value` from weigh(): an int or float >= 0 (floats round up)
 * and at most maxweight. */
static int cache_weigh(CacheObject *self, PyObject *value, int64_t *out)
{
	PyObject *weigh = Py_NewRef(self->weigh), *r;
	int64_t w;

	/* Our own reference: weigh may re-initialise this cache. */
	r = PyObject_CallOneArg(weigh, value);
	Py_DECREF(weigh);
	if (r == NULL)
		return -1;
	if (PyLong_Check(r) && !PyBool_Check(r)) {
		int overflow;
		long long v = PyLong_AsLongLongAndOverflow(r, &overflow);
		if (v == -1 && PyErr_Occurred()) {
			Py_DECREF(r);
			return -1;
		}
		w = overflow > 0 ? INT64_MAX : overflow < 0 ? -1 : v;
	} else if (PyFloat_Check(r)) {
		double d = PyFloat_AS_DOUBLE(r);
		if (isnan(d))
			w = -1;
		else if (d >= 9.2e18)
			w = INT64_MAX;
		else
			w = d < 0 ? -1 : (int64_t)ceil(d);
	} else {
		PyErr_Format(PyExc_TypeError,
		             "weigh must return a number >= 0, not %.100s",
		             Py_TYPE(r)->tp_name);
		Py_DECREF(r);
		return -1;
	}
	if (w < 0) {
		PyErr_Format(PyExc_ValueError,
		             "weigh must return a number >= 0, got %R", r);
		Py_DECREF(r);
		return -1;
	}
	if (self->weigh != NULL && w > self->maxweight) {
		PyErr_Format(PyExc_ValueError,
		             "the value weighs %R, more than maxweight %lld",
		             r, (long long)self->maxweight);
		Py_DECREF(r);
		return -1;
	}
	Py_DECREF(r);
	*out = w;
	return 0;
}

/* ---- the table -------------------------------------------------------- */

/* Finds `key`, whose hash is `hash`. Returns 1 and sets *idx, 0 if it is
 * absent, -1 on error. A comparison may run Python code that changes
 * this cache; the walk then starts over, so the answer holds for the
 * table as it is when this returns. */
static int cache_lookup(CacheObject *self, PyObject *key, Py_hash_t hash,
                        uint32_t *idx)
{
	lru_table *t = &self->table;
	uint64_t h = (uint64_t)hash;

	for (;;) {
		uint64_t m = t->mutations;
		uint32_t slot, i;
		int moved = 0;

		if (t->nslots == 0)
			return 0;
		slot = lru_home(t, h);
		while ((i = lru_next_match(t, h, &slot)) != LRU_NIL) {
			PyObject *k = (PyObject *)t->entries[i].key;
			int cmp;
			if (ST_LIKELY(k == key)) {
				*idx = i;
				return 1;
			}
			if (PyUnicode_CheckExact(k) &&
			    PyUnicode_CheckExact(key)) {
				cmp = str_eq(k, key);
				if (cmp > 0) {
					*idx = i;
					return 1;
				}
				if (cmp == 0)
					continue;
			}
			Py_INCREF(k);
			cmp = PyObject_RichCompareBool(k, key, Py_EQ);
			Py_DECREF(k);
			if (cmp < 0)
				return -1;
			if (t->mutations != m) {
				moved = 1;
				break;
			}
			if (cmp > 0) {
				*idx = i;
				return 1;
			}
		}
		if (!moved)
			return 0;
	}
}

/* Tells on_evict (when set) that `k` -> `v` left the cache for room or
 * by expiry. Runs where a dropped reference could run a finalizer: the
 * table is consistent and every caller re-reads it afterwards, so the
 * callback may use this cache freely. An exception from it is reported
 * as unraisable: the entry is gone either way. */
static void cache_notify(CacheObject *self, PyObject *k, PyObject *v)
{
	PyObject *cb = self->on_evict, *r;

	if (cb == NULL)
		return;
	Py_INCREF(cb); /* the callback may re-initialise this cache */
	r = PyObject_CallFunctionObjArgs(cb, k, v, NULL);
	if (r == NULL)
		PyErr_WriteUnraisable(cb);
	Py_XDECREF(r);
	Py_DECREF(cb);
}

/* Removes entry `i` (evicted or expired), tells on_evict, and drops its
 * references afterwards. */
static void cache_drop(CacheObject *self, uint32_t i)
{
	PyObject *k = (PyObject *)self->table.entries[i].key;
	PyObject *v = (PyObject *)self->table.entries[i].value;

	lru_remove(&self->table, i);
	cache_notify(self, k, v);
	Py_DECREF(k);
	Py_DECREF(v);
}

/* Removes every entry that has expired at `now`. */
static void cache_purge(CacheObject *self, int64_t now)
{
	uint32_t i;

	while ((i = lru_expired(&self->table, now)) != LRU_NIL) {
		self->expirations++;
		cache_drop(self, i);
	}
}

/* Reads the clock and purges, when anything can expire. */
int cache_purge_now(CacheObject *self)
{
	int64_t now;

	if (!lru_has_expiry(&self->table))
		return 0;
	if (cache_clock(self, &now) < 0)
		return -1;
	cache_purge(self, now);
	return 0;
}

/* Evicts least recently used entries while over a bound. */
static void cache_evict(CacheObject *self)
{
	lru_table *t = &self->table;

	while (t->count > 0 &&
	       (t->count > self->maxsize ||
	        (t->weights != NULL && t->total_weight > self->maxweight))) {
		self->evictions++;
		cache_drop(self, t->lru);
	}
}

/* Drops the references of a table already detached from its cache, then
 * frees it. Python code may run; it sees the cache's new table. */
static void drop_table(lru_table *old)
{
	for (uint32_t i = 0; i < old->count; i++) {
		Py_DECREF((PyObject *)old->entries[i].key);
		Py_DECREF((PyObject *)old->entries[i].value);
	}
	lru_free(old);
}

/* Detaches the table, leaving an empty one with the given shape, and
 * returns the old one for drop_table. */
static lru_table detach_table(CacheObject *self, uint32_t max_cap,
                              int weighted)
{
	lru_table old = self->table;

	lru_init(&self->table, max_cap, weighted);
	self->table.mutations = old.mutations + 1;
	return old;
}

/* Empties the table, dropping the references once it is empty. */
void cache_clear_table(CacheObject *self)
{
	lru_table old =
	    detach_table(self, self->table.max_cap, self->table.weighted);
	drop_table(&old);
}

/* Finds the live entry for `key`. An expired one is removed (counted)
 * and reported absent. Returns 1 and sets *idx, 0, or -1 on error. The
 * index is valid until Python code runs. */
static int cache_find_live(CacheObject *self, PyObject *key, uint32_t *idx)
{
	lru_table *t = &self->table;
	Py_hash_t hash = key_hash(key);
	int64_t now = 0;
	int have_now = 0, r;
	uint32_t i;

	if (ST_UNLIKELY(hash == -1))
		return -1;
	if (self->clock != NULL && lru_has_expiry(t)) {
		if (cache_clock(self, &now) < 0)
			return -1;
		have_now = 1;
	}
	r = cache_lookup(self, key, hash, &i);
	if (r <= 0)
		return r;
	if (t->ttl != NULL && t->ttl[i].expires != LRU_NEVER) {
		if (!have_now) {
			/* The injected clock was not read (nothing could
			 * expire before the lookup ran Python code): use its
			 * last reading rather than run it now. */
			if (self->clock == NULL)
				(void)cache_clock(self, &now);
			else
				now = self->last_now;
		}
		if (t->ttl[i].expires <= now) {
			self->expirations++;
			cache_drop(self, i);
			return 0;
		}
	}
	*idx = i;
	return 1;
}

/* A read that counts: a hit makes the entry the most recently used and
 * sets *value (new reference). Returns 1, 0 on a miss, -1 on error. */
int cache_read(CacheObject *self, PyObject *key, PyObject **value)
{
	uint32_t i;
	int r = cache_find_live(self, key, &i);

	if (ST_LIKELY(r > 0)) {
		lru_touch(&self->table, i);
		self->hits++;
		*value = Py_NewRef((PyObject *)self->table.entries[i].value);
		return 1;
	}
	if (r == 0)
		self->misses++;
	return r;
}

/* Stores key -> value. `ttl` is NULL or None for the cache's default, or
 * seconds. */
static int cache_write(CacheObject *self, PyObject *key, PyObject *value,
                       PyObject *ttl)
{
	lru_table *t = &self->table;
	int64_t ttl_ns = self->ttl_ns, weight = 0, now = 0, expires;
	int fifo = 1, r;
	Py_hash_t hash;
	uint32_t i;
	void *old_key = NULL, *old_value = NULL;

	/* Everything that can fail or run Python code comes first. */
	if (ttl != NULL && ttl != Py_None) {
		if (parse_ttl(ttl, &ttl_ns) < 0)
			return -1;
		fifo = ttl_ns == self->ttl_ns;
	}
	hash = key_hash(key);
	if (hash == -1)
		return -1;
	if (self->weigh != NULL && cache_weigh(self, value, &weight) < 0)
		return -1;
	if (self->maxsize == 0)
		return 0; /* keeps nothing */
	if (ttl_ns > 0 || lru_has_expiry(t)) {
		if (cache_clock(self, &now) < 0)
			return -1;
		cache_purge(self, now);
	}
	if (t->count >= self->maxsize)
		lru_prefetch_victim(t); /* likely replaced below */
	r = cache_lookup(self, key, hash, &i);
	if (r < 0)
		return -1;
	/* From here on no Python code runs until the table is consistent. */
	expires = ttl_ns > 0 ? now + ttl_ns : LRU_NEVER;
	if (r > 0) {
		if (lru_reserve_expiry(t, expires, fifo) < 0) {
			PyErr_NoMemory();
			return -1;
		}
		old_value = t->entries[i].value;
		t->entries[i].value = Py_NewRef(value);
		lru_set_expiry(t, i, expires, fifo);
		lru_set_weight(t, i, weight);
		lru_touch(t, i);
	} else if (t->count >= self->maxsize && t->weights == NULL &&
	           t->count > 0 && lru_reserve_expiry(t, expires, fifo) == 0) {
		/* Full: the new entry takes the least recently used one's
		 * place, as lru_cache reuses its oldest link. */
		lru_replace_lru(t, (uint64_t)hash, Py_NewRef(key),
		                Py_NewRef(value), expires, fifo, 0, &old_key,
		                &old_value);
		self->evictions++;
	} else {
		if (lru_reserve(t, expires, fifo) < 0) {
			PyErr_NoMemory();
			return -1;
		}
		lru_insert(t, (uint64_t)hash, Py_NewRef(key), Py_NewRef(value),
		           expires, fifo, weight);
	}
	/* The bounds hold before any reference we let go of can run a
	 * finalizer that uses this cache. */
	cache_evict(self);
	if (old_key != NULL) /* the least recently used one, replaced */
		cache_notify(self, (PyObject *)old_key, (PyObject *)old_value);
	Py_XDECREF((PyObject *)old_key);
	Py_XDECREF((PyObject *)old_value);
	return 0;
}

/* Removes `key`. Returns 1 and its value (new reference) in *value if it
 * was live, 0 if absent or expired (an expired one is removed), -1 on
 * error. */
int cache_take(CacheObject *self, PyObject *key, PyObject **value)
{
	uint32_t i;
	int r = cache_find_live(self, key, &i);
	PyObject *k;

	if (r <= 0)
		return r;
	k = (PyObject *)self->table.entries[i].key;
	*value = (PyObject *)self->table.entries[i].value;
	lru_remove(&self->table, i);
	Py_DECREF(k);
	return 1;
}

static void set_key_error(PyObject *key)
{
	PyObject *tup = PyTuple_Pack(1, key);
	if (tup != NULL) {
		PyErr_SetObject(PyExc_KeyError, tup);
		Py_DECREF(tup);
	}
}

/* ---- construction -------------------------------------------------------
 */

static PyObject *cache_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	CacheObject *self;
	st_state *st = st_state_from_type(type);

	(void)args;
	(void)kwds;
	if (st == NULL)
		return NULL;
	self = (CacheObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->st = st;
	self->maxsize = DEFAULT_MAXSIZE;
	self->bounded = 1;
	self->last_now = INT64_MIN;
	st_fastclock_copy(&self->fclock, &st->clock);
	lru_init(&self->table, DEFAULT_MAXSIZE + 1, 0);
	return (PyObject *)self;
}

static int cache_init(CacheObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"maxsize", "ttl",      "clock", "maxweight",
	                         "weigh",   "on_evict", NULL};
	PyObject *maxsize_o = NULL, *ttl_o = Py_None, *clock = Py_None;
	PyObject *maxweight_o = Py_None, *weigh = Py_None, *on_evict = Py_None;
	long long maxsize = DEFAULT_MAXSIZE, maxweight = 0;
	int bounded = 1;
	int64_t ttl_ns = 0;
	lru_table old;
	PyObject *old_clock, *old_weigh, *old_on_evict;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOO$OOO:Cache", kwlist,
	                                 &maxsize_o, &ttl_o, &clock,
	                                 &maxweight_o, &weigh, &on_evict))
		return -1;
	if (maxsize_o == Py_None) {
		bounded = 0;
		maxsize = LRU_MAX_ENTRIES - 1;
	} else if (maxsize_o != NULL) {
		if (!PyLong_Check(maxsize_o) || PyBool_Check(maxsize_o)) {
			PyErr_Format(PyExc_TypeError,
			             "maxsize must be an int or None, not "
			             "%.100s",
			             Py_TYPE(maxsize_o)->tp_name);
			return -1;
		}
		maxsize = PyLong_AsLongLong(maxsize_o);
		if (maxsize == -1 && PyErr_Occurred()) {
			if (!PyErr_ExceptionMatches(PyExc_OverflowError))
				return -1;
			PyErr_Clear();
			maxsize = LLONG_MAX;
		}
		if (maxsize < 0 || maxsize >= (long long)LRU_MAX_ENTRIES) {
			PyErr_Format(PyExc_ValueError,
			             "maxsize must be between 0 and %lld, got "
			             "%R",
			             (long long)LRU_MAX_ENTRIES - 1,
			             maxsize_o);
			return -1;
		}
	}
	if (ttl_o != Py_None && parse_ttl(ttl_o, &ttl_ns) < 0)
		return -1;
	if (clock != Py_None && !PyCallable_Check(clock)) {
		PyErr_Format(PyExc_TypeError,
		             "clock must be a callable returning seconds, or "
		             "None, not %.100s",
		             Py_TYPE(clock)->tp_name);
		return -1;
	}
	if ((maxweight_o == Py_None) != (weigh == Py_None)) {
		PyErr_SetString(PyExc_TypeError,
		                "maxweight and weigh go together: give both "
		                "or neither");
		return -1;
	}
	if (on_evict != Py_None && !PyCallable_Check(on_evict)) {
		PyErr_Format(PyExc_TypeError,
		             "on_evict must be a callable or None, not %.100s",
		             Py_TYPE(on_evict)->tp_name);
		return -1;
	}
	if (weigh != Py_None && !PyCallable_Check(weigh)) {
		PyErr_Format(PyExc_TypeError,
		             "weigh must be a callable, not %.100s",
		             Py_TYPE(weigh)->tp_name);
		return -1;
	}
	if (maxweight_o != Py_None) {
		if (!PyLong_Check(maxweight_o) || PyBool_Check(maxweight_o)) {
			PyErr_Format(PyExc_TypeError,
			             "maxweight must be an int, not %.100s",
			             Py_TYPE(maxweight_o)->tp_name);
			return -1;
		}
		int overflow;
		maxweight =
		    PyLong_AsLongLongAndOverflow(maxweight_o, &overflow);
		if (maxweight == -1 && PyErr_Occurred())
			return -1;
		if (overflow != 0 || maxweight < 1) {
			PyErr_Format(PyExc_ValueError,
			             "maxweight must be between 1 and %lld, "
			             "got %R",
			             (long long)INT64_MAX, maxweight_o);
			return -1;
		}
	}

	/* Valid: take the new settings with an empty table, then drop what
	 * the old one held. */
	old = detach_table(self, (uint32_t)maxsize + 1, weigh != Py_None);
	self->maxsize = (uint32_t)maxsize;
	self->bounded = bounded;
	self->ttl_ns = ttl_ns;
	self->maxweight = maxweight;
	self->last_now = INT64_MIN;
	self->hits = self->misses = self->evictions = self->expirations = 0;
	old_clock = self->clock;
	old_weigh = self->weigh;
	old_on_evict = self->on_evict;
	self->clock = clock == Py_None ? NULL : Py_NewRef(clock);
	self->weigh = weigh == Py_None ? NULL : Py_NewRef(weigh);
	self->on_evict = on_evict == Py_None ? NULL : Py_NewRef(on_evict);
	drop_table(&old);
	Py_XDECREF(old_clock);
	Py_XDECREF(old_weigh);
	Py_XDECREF(old_on_evict);
	st_track(self->st, (PyObject *)self);
	return 0;
}

static int cache_traverse(CacheObject *self, visitproc visit, void *arg)
{
	for (uint32_t i = 0; i < self->table.count; i++) {
		Py_VISIT((PyObject *)self->table.entries[i].key);
		Py_VISIT((PyObject *)self->table.entries[i].value);
	}
	Py_VISIT(self->clock);
	Py_VISIT(self->weigh);
	Py_VISIT(self->on_evict);
	Py_VISIT(Py_TYPE(self));
	return 0;
}

static int cache_tp_clear(CacheObject *self)
{
	cache_clear_table(self);
	Py_CLEAR(self->clock);
	Py_CLEAR(self->weigh);
	Py_CLEAR(self->on_evict);
	return 0;
}

static void cache_dealloc(CacheObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);

	PyObject_GC_UnTrack(self);
	if (self->weakreflist != NULL)
		PyObject_ClearWeakRefs((PyObject *)self);
	cache_tp_clear(self);
	lru_free(&self->table);
	tp->tp_free(self);
	Py_DECREF(tp);
}

/* ---- mapping protocol ---------------------------------------------------
 */

/* A miss of cache[key] in a subclass that defines __missing__ (as dict
 * and cachetools do): its answer, or NULL with an exception set. Sets
 * *found to 0 when the subclass has no __missing__. */
static PyObject *cache_missing(CacheObject *self, PyObject *key, int *found)
{
	PyObject *missing, *r;

	*found = 0;
	missing =
	    PyObject_GetAttrString((PyObject *)Py_TYPE(self), "__missing__");
	if (missing == NULL) {
		if (PyErr_ExceptionMatches(PyExc_AttributeError))
			PyErr_Clear();
		return NULL;
	}
	*found = 1;
	r = PyObject_CallFunctionObjArgs(missing, (PyObject *)self, key, NULL);
	Py_DECREF(missing);
	return r;
}

static PyObject *cache_subscript(CacheObject *self, PyObject *key)
{
	PyObject *value;
	int r = cache_read(self, key, &value);

	if (ST_LIKELY(r > 0))
		return value;
	if (r == 0) {
		if (Py_TYPE(self) != self->st->cache_type) {
			int found;
			value = cache_missing(self, key, &found);
			if (found || PyErr_Occurred())
				return value;
		}
		set_key_error(key);
	}
	return NULL;
}

static int cache_ass_subscript(CacheObject *self, PyObject *key,
                               PyObject *value)
{
	PyObject *old;
	int r;

	if (value != NULL)
		return cache_write(self, key, value, NULL);
	r = cache_take(self, key, &old);
	if (r > 0) {
		Py_DECREF(old);
		return 0;
	}
	if (r == 0)
		set_key_error(key);
	return -1;
}

static int cache_contains(CacheObject *self, PyObject *key)
{
	uint32_t i;
	return cache_find_live(self, key, &i);
}

static Py_ssize_t cache_length(CacheObject *self)
{
	if (cache_purge_now(self) < 0)
		return -1;
	return (Py_ssize_t)self->table.count;
}

/* What a snapshot holds. */
enum { SNAP_KEYS, SNAP_VALUES, SNAP_ITEMS };

/* A list of the live keys, values or (key, value) pairs, least recently
 * used first.
 *
 * As CPython's dict views do: size, allocate, then re-check. Allocating
 * can run the cyclic garbage collector (on 3.10 and 3.11 inside the
 * allocation itself), whose finalizers may use this cache; if the table
 * changed meanwhile the allocation starts over. The copy itself then
 * allocates nothing and runs no Python code. */
static PyObject *cache_snapshot(CacheObject *self, int what)
{
	lru_table *t = &self->table;

	for (;;) {
		PyObject *list;
		uint32_t n, j = 0;
		uint64_t m;

		if (cache_purge_now(self) < 0)
			return NULL;
		n = t->count;
		m = t->mutations;
		list = PyList_New((Py_ssize_t)n);
		if (list == NULL)
			return NULL;
		for (uint32_t k = 0; what == SNAP_ITEMS && k < n; k++) {
			PyObject *pair = PyTuple_New(2);
			if (pair == NULL) {
				Py_DECREF(list);
				return NULL;
			}
			PyList_SET_ITEM(list, k, pair);
		}
		if (t->mutations != m || t->count != n ||
		    lru_expired(t, self->last_now) != LRU_NIL) {
			/* Holds no key or value yet: dropping it runs no
			 * Python code. */
			Py_DECREF(list);
			continue;
		}
		for (uint32_t i = t->lru; i != LRU_NIL;
		     i = t->entries[i].newer) {
			PyObject *k = (PyObject *)t->entries[i].key;
			PyObject *v = (PyObject *)t->entries[i].value;
			if (what == SNAP_KEYS) {
				PyList_SET_ITEM(list, j, Py_NewRef(k));
			} else if (what == SNAP_VALUES) {
				PyList_SET_ITEM(list, j, Py_NewRef(v));
			} else {
				PyObject *pair = PyList_GET_ITEM(list, j);
				PyTuple_SET_ITEM(pair, 0, Py_NewRef(k));
				PyTuple_SET_ITEM(pair, 1, Py_NewRef(v));
			}
			j++;
		}
		assert(j == n);
		return list;
	}
}

static PyObject *cache_iter(CacheObject *self)
{
	PyObject *keys = cache_snapshot(self, SNAP_KEYS), *it;

	if (keys == NULL)
		return NULL;
	it = PyObject_GetIter(keys);
	Py_DECREF(keys);
	return it;
}

/* ---- methods ------------------------------------------------------------
 */

static PyObject *cache_get(CacheObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *dflt, *value;
	int r;

	if (st_fast_args("get", args, nargs, kwnames, 1, self->st->str_default,
	                 &dflt) < 0)
		return NULL;
	r = cache_read(self, args[0], &value);
	if (ST_LIKELY(r > 0))
		return value;
	if (r < 0)
		return NULL;
	return Py_NewRef(dflt ? dflt : Py_None);
}

static PyObject *cache_peek(CacheObject *self, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *dflt;
	uint32_t i;
	int r;

	if (st_fast_args("peek", args, nargs, kwnames, 1,
	                 self->st->str_default, &dflt) < 0)
		return NULL;
	r = cache_find_live(self, args[0], &i);
	if (r > 0)
		return Py_NewRef((PyObject *)self->table.entries[i].value);
	if (r < 0)
		return NULL;
	return Py_NewRef(dflt ? dflt : Py_None);
}

static PyObject *cache_set(CacheObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *ttl;

	if (st_fast_args("set", args, nargs, kwnames, 2, self->st->str_ttl,
	                 &ttl) < 0)
		return NULL;
	if (cache_write(self, args[0], args[1], ttl) < 0)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *cache_pop(CacheObject *self, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *dflt, *value;
	int r;

	if (st_fast_args("pop", args, nargs, kwnames, 1, self->st->str_default,
	                 &dflt) < 0)
		return NULL;
	r = cache_take(self, args[0], &value);
	if (r > 0)
		return value;
	if (r < 0)
		return NULL;
	if (dflt != NULL)
		return Py_NewRef(dflt);
	set_key_error(args[0]);
	return NULL;
}

/* KeyError('popitem(): cache is empty') with __suppress_context__ set, as
 * MutableMapping.popitem raises it (`raise KeyError from None`). */
static void set_empty_error(void)
{
	PyObject *exc = PyObject_CallFunction(PyExc_KeyError, "s",
	                                      "popitem(): cache is empty");
	if (exc == NULL)
		return;
	PyException_SetCause(exc, NULL); /* also suppresses the context */
	PyErr_SetObject(PyExc_KeyError, exc);
	Py_DECREF(exc);
}

static PyObject *cache_popitem(CacheObject *self, PyObject *unused)
{
	lru_table *t = &self->table;
	PyObject *pair;
	uint32_t i;

	(void)unused;
	/* Allocate first: a collection it triggers may run finalizers that
	 * use this cache. Purging may run Python code too (a dropped
	 * value's __del__); after it nothing does until the entry is out. */
	pair = PyTuple_New(2);
	if (pair == NULL)
		return NULL;
	if (cache_purge_now(self) < 0) {
		Py_DECREF(pair);
		return NULL;
	}
	if (t->count == 0) {
		Py_DECREF(pair);
		set_empty_error();
		return NULL;
	}
	/* The table's references move into the pair. */
	i = t->lru;
	PyTuple_SET_ITEM(pair, 0, (PyObject *)t->entries[i].key);
	PyTuple_SET_ITEM(pair, 1, (PyObject *)t->entries[i].value);
	lru_remove(t, i);
	return pair;
}

static PyObject *cache_clear(CacheObject *self, PyObject *unused)
{
	(void)unused;
	cache_clear_table(self);
	Py_RETURN_NONE;
}

static PyObject *cache_keys(CacheObject *self, PyObject *unused)
{
	(void)unused;
	return cache_snapshot(self, SNAP_KEYS);
}

static PyObject *cache_values(CacheObject *self, PyObject *unused)
{
	(void)unused;
	return cache_snapshot(self, SNAP_VALUES);
}

static PyObject *cache_items(CacheObject *self, PyObject *unused)
{
	(void)unused;
	return cache_snapshot(self, SNAP_ITEMS);
}

PyObject *maxsize_object(CacheObject *self)
{
	if (!self->bounded)
		Py_RETURN_NONE;
	return PyLong_FromUnsignedLong(self->maxsize);
}

static PyObject *cache_stats(CacheObject *self, PyObject *unused)
{
	PyObject *d, *maxsize;

	(void)unused;
	if (cache_purge_now(self) < 0)
		return NULL;
	maxsize = maxsize_object(self);
	if (maxsize == NULL)
		return NULL;
	d = Py_BuildValue("{s:K,s:K,s:K,s:K,s:k,s:N}", "hits",
	                  (unsigned long long)self->hits, "misses",
	                  (unsigned long long)self->misses, "evictions",
	                  (unsigned long long)self->evictions, "expirations",
	                  (unsigned long long)self->expirations, "size",
	                  (unsigned long)self->table.count, "maxsize",
	                  maxsize);
	if (d != NULL && self->weigh != NULL) {
		PyObject *w = weight_object(self->table.total_weight);
		PyObject *mw = PyLong_FromLongLong(self->maxweight);
		if (w == NULL || mw == NULL ||
		    PyDict_SetItemString(d, "weight", w) < 0 ||
		    PyDict_SetItemString(d, "maxweight", mw) < 0)
			Py_CLEAR(d);
		Py_XDECREF(w);
		Py_XDECREF(mw);
	}
	return d;
}

PyObject *cache_reset_stats(CacheObject *self, PyObject *unused)
{
	(void)unused;
	self->hits = self->misses = self->evictions = self->expirations = 0;
	Py_RETURN_NONE;
}

static PyObject *cache_sizeof(CacheObject *self, PyObject *unused)
{
	(void)unused;
	return PyLong_FromSize_t((size_t)Py_TYPE(self)->tp_basicsize +
	                         lru_memory(&self->table));
}

static PyObject *cache_repr(CacheObject *self)
{
	PyObject *maxsize = maxsize_object(self), *ttl, *r;

	if (maxsize == NULL)
		return NULL;
	ttl = self->ttl_ns ? ns_to_seconds(self->ttl_ns) : Py_NewRef(Py_None);
	if (ttl == NULL) {
		Py_DECREF(maxsize);
		return NULL;
	}
	r = PyUnicode_FromFormat("<%s maxsize=%R ttl=%R entries=%u>",
	                         Py_TYPE(self)->tp_name, maxsize, ttl,
	                         (unsigned)self->table.count);
	Py_DECREF(maxsize);
	Py_DECREF(ttl);
	return r;
}

static PyObject *cache_get_maxsize(CacheObject *self, void *c)
{
	(void)c;
	return maxsize_object(self);
}

static PyObject *cache_get_ttl(CacheObject *self, void *c)
{
	(void)c;
	if (self->ttl_ns == 0)
		Py_RETURN_NONE;
	return ns_to_seconds(self->ttl_ns);
}

static PyObject *cache_get_maxweight(CacheObject *self, void *c)
{
	(void)c;
	if (self->weigh == NULL)
		Py_RETURN_NONE;
	return PyLong_FromLongLong(self->maxweight);
}

static PyObject *cache_get_weight(CacheObject *self, void *c)
{
	(void)c;
	return weight_object(self->table.total_weight);
}

static PyObject *cache_get_clock(CacheObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->clock != NULL ? self->clock : Py_None);
}

static PyObject *cache_get_on_evict(CacheObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->on_evict != NULL ? self->on_evict : Py_None);
}

/* cachetools' currsize: the total weight when the cache weighs its
 * values, else the number of live entries. */
static PyObject *cache_get_currsize(CacheObject *self, void *c)
{
	(void)c;
	if (cache_purge_now(self) < 0)
		return NULL;
	if (self->weigh != NULL)
		return weight_object(self->table.total_weight);
	return PyLong_FromUnsignedLong(self->table.count);
}

/* Swaps the clock of a live cache (stanchion.testing's fake clock). The
 * expiry times stored count in the old clock's time: the caller clears
 * the cache first. */
static PyObject *cache_set_clock(CacheObject *self, PyObject *clock)
{
	if (clock != Py_None && !PyCallable_Check(clock)) {
		PyErr_Format(PyExc_TypeError,
		             "clock must be a callable returning seconds, or "
		             "None, not %.100s",
		             Py_TYPE(clock)->tp_name);
		return NULL;
	}
	Py_XSETREF(self->clock, clock == Py_None ? NULL : Py_NewRef(clock));
	self->last_now = INT64_MIN;
	st_fastclock_copy(&self->fclock, &self->st->clock);
	Py_RETURN_NONE;
}

/* cache[k] = v for each pair of `pairs` (an iterable of pairs). */
static int cache_update_pairs(CacheObject *self, PyObject *pairs)
{
	PyObject *it = PyObject_GetIter(pairs), *item;

	if (it == NULL)
		return -1;
	while ((item = PyIter_Next(it)) != NULL) {
		PyObject *seq = PySequence_Fast(
		    item,
		    "Cache.update() takes a mapping or (key, value) "
		    "pairs");
		int r = -1;
		Py_DECREF(item);
		if (seq == NULL)
			break;
		if (PySequence_Fast_GET_SIZE(seq) != 2)
			PyErr_Format(
			    PyExc_ValueError,
			    "Cache.update() takes (key, value) pairs, "
			    "got a sequence of length %zd",
			    PySequence_Fast_GET_SIZE(seq));
		else
			r = cache_write(self, PySequence_Fast_GET_ITEM(seq, 0),
			                PySequence_Fast_GET_ITEM(seq, 1),
			                NULL);
		Py_DECREF(seq);
		if (r < 0)
			break;
	}
	Py_DECREF(it);
	return PyErr_Occurred() ? -1 : 0;
}

/* cache[k] = mapping[k] for each key of `mapping` (it has keys()). */
static int cache_update_mapping(CacheObject *self, PyObject *mapping)
{
	PyObject *keys = PyMapping_Keys(mapping), *it, *k;

	if (keys == NULL)
		return -1;
	it = PyObject_GetIter(keys);
	Py_DECREF(keys);
	if (it == NULL)
		return -1;
	while ((k = PyIter_Next(it)) != NULL) {
		PyObject *v = PyObject_GetItem(mapping, k);
		int r = v == NULL ? -1 : cache_write(self, k, v, NULL);
		Py_XDECREF(v);
		Py_DECREF(k);
		if (r < 0)
			break;
	}
	Py_DECREF(it);
	return PyErr_Occurred() ? -1 : 0;
}

/* MutableMapping.update: a mapping (anything with keys()) or pairs,
 * then keyword arguments; each stored as cache[k] = v, in order. */
static PyObject *cache_update(CacheObject *self, PyObject *args,
                              PyObject *kwds)
{
	PyObject *other = NULL;
	int has_keys, r = 0;

	if (!PyArg_UnpackTuple(args, "update", 0, 1, &other))
		return NULL;
	if (other != NULL) {
		if (PyDict_Check(other)) {
			r = cache_update_mapping(self, other);
		} else {
			PyObject *keys = PyObject_GetAttrString(other, "keys");
			if (keys == NULL) {
				if (!PyErr_ExceptionMatches(
				        PyExc_AttributeError))
					return NULL;
				PyErr_Clear();
			}
			has_keys = keys != NULL;
			Py_XDECREF(keys);
			r = has_keys ? cache_update_mapping(self, other)
			             : cache_update_pairs(self, other);
		}
	}
	if (r == 0 && kwds != NULL)
		r = cache_update_mapping(self, kwds);
	if (r < 0)
		return NULL;
	Py_RETURN_NONE;
}

/* MutableMapping.setdefault: the live value of `key` (a hit, as
 * cache[key]), or stores `default` and returns it. */
static PyObject *cache_setdefault(CacheObject *self, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames)
{
	PyObject *dflt, *value;
	int r;

	if (st_fast_args("setdefault", args, nargs, kwnames, 1,
	                 self->st->str_default, &dflt) < 0)
		return NULL;
	r = cache_read(self, args[0], &value);
	if (r > 0)
		return value;
	if (r < 0)
		return NULL;
	dflt = dflt ? dflt : Py_None;
	Py_INCREF(dflt); /* ours: storing it may run Python code */
	if (cache_write(self, args[0], dflt, NULL) < 0) {
		Py_DECREF(dflt);
		return NULL;
	}
	return dflt;
}

/* Adds the items of mapping `m` to dict `d`: a Cache's live items
 * (read without counting hits or moving keys), else m.items(). */
static int cache_update_mapping_into(PyObject *d, PyObject *m,
                                     PyTypeObject *cache_type)
{
	PyObject *items;
	int r;

	if (PyObject_TypeCheck(m, cache_type))
		items = cache_snapshot((CacheObject *)m, SNAP_ITEMS);
	else
		items = PyMapping_Items(m);
	if (items == NULL)
		return -1;
	r = PyDict_MergeFromSeq2(d, items, 1);
	Py_DECREF(items);
	return r;
}

/* Mapping.__eq__: equal to any Mapping (a dict, another Cache, ...) with
 * the same live items; NotImplemented for anything else. */
static PyObject *cache_richcompare(PyObject *self, PyObject *other, int op)
{
	PyObject *abc, *mapping_abc, *mine = NULL, *theirs = NULL, *r = NULL;
	st_state *st = ((CacheObject *)self)->st;
	int is_mapping;

	if (op != Py_EQ && op != Py_NE)
		Py_RETURN_NOTIMPLEMENTED;
	if (PyDict_Check(other) || PyObject_TypeCheck(other, Py_TYPE(self)) ||
	    PyObject_TypeCheck(self, Py_TYPE(other))) {
		is_mapping = 1;
	} else {
		abc = PyImport_ImportModule("collections.abc");
		if (abc == NULL)
			return NULL;
		mapping_abc = PyObject_GetAttrString(abc, "Mapping");
		Py_DECREF(abc);
		if (mapping_abc == NULL)
			return NULL;
		is_mapping = PyObject_IsInstance(other, mapping_abc);
		Py_DECREF(mapping_abc);
		if (is_mapping < 0)
			return NULL;
	}
	if (!is_mapping)
		Py_RETURN_NOTIMPLEMENTED;
	mine = PyDict_New();
	if (mine == NULL ||
	    cache_update_mapping_into(mine, self, st->cache_type) < 0)
		goto done;
	if (PyDict_Check(other)) {
		theirs = Py_NewRef(other);
	} else {
		theirs = PyDict_New();
		if (theirs == NULL || cache_update_mapping_into(
		                          theirs, other, st->cache_type) < 0)
			goto done;
	}
	r = PyObject_RichCompare(mine, theirs, op);
done:
	Py_XDECREF(mine);
	Py_XDECREF(theirs);
	return r;
}

/* ---- copy and pickle ----------------------------------------------------
 */

typedef struct {
	PyObject *key, *value; /* strong */
	int64_t expires;       /* LRU_NEVER: never */
} snap_entry;

/* __getstate__: the settings and the live entries, least recently used
 * first, each with the seconds it has left (None: no expiry), so that a
 * copy or an unpickled cache in another process expires them on time by
 * its own clock. A Python subclass's instance __dict__ comes along. */
static PyObject *cache_getstate(CacheObject *self, PyObject *unused)
{
	lru_table *t = &self->table;
	snap_entry *snap = NULL;
	PyObject *entries = NULL, *state = NULL, *maxsize = NULL, *ttl = NULL;
	PyObject *maxweight = NULL, *dict = NULL;
	uint32_t n = 0, j;
	int64_t now;

	(void)unused;
	if (cache_purge_now(self) < 0)
		return NULL;
	now = self->last_now;
	/* Copy the references out with no Python code running (PyMem
	 * does not collect), then build the objects at leisure. */
	n = t->count;
	snap = PyMem_Calloc(n ? n : 1, sizeof(*snap));
	if (snap == NULL)
		return PyErr_NoMemory();
	j = 0;
	for (uint32_t i = t->lru; i != LRU_NIL; i = t->entries[i].newer) {
		snap[j].key = Py_NewRef((PyObject *)t->entries[i].key);
		snap[j].value = Py_NewRef((PyObject *)t->entries[i].value);
		snap[j].expires = lru_expires(t, i);
		j++;
	}
	entries = PyList_New((Py_ssize_t)n);
	if (entries == NULL)
		goto done;
	for (j = 0; j < n; j++) {
		PyObject *left, *item;
		if (snap[j].expires == LRU_NEVER)
			left = Py_NewRef(Py_None);
		else
			left = ns_to_seconds(snap[j].expires - now > 0
			                         ? snap[j].expires - now
			                         : 1);
		item = left ? PyTuple_Pack(3, snap[j].key, snap[j].value, left)
		            : NULL;
		Py_XDECREF(left);
		if (item == NULL)
			goto done;
		PyList_SET_ITEM(entries, j, item);
	}
	maxsize = maxsize_object(self);
	ttl = self->ttl_ns ? ns_to_seconds(self->ttl_ns) : Py_NewRef(Py_None);
	maxweight = self->weigh ? PyLong_FromLongLong(self->maxweight)
	                        : Py_NewRef(Py_None);
	if (maxsize == NULL || ttl == NULL || maxweight == NULL)
		goto done;
	dict = PyObject_GetAttrString((PyObject *)self, "__dict__");
	if (dict == NULL) {
		if (!PyErr_ExceptionMatches(PyExc_AttributeError))
			goto done;
		PyErr_Clear();
		dict = Py_NewRef(Py_None);
	}
	state = Py_BuildValue(
	    "{s:O,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "maxsize", maxsize, "ttl",
	    ttl, "clock", self->clock ? self->clock : Py_None, "maxweight",
	    maxweight, "weigh", self->weigh ? self->weigh : Py_None,
	    "on_evict", self->on_evict ? self->on_evict : Py_None, "entries",
	    entries, "dict", dict);
done:
	for (j = 0; j < n; j++) {
		Py_XDECREF(snap[j].key);
		Py_XDECREF(snap[j].value);
	}
	PyMem_Free(snap);
	Py_XDECREF(entries);
	Py_XDECREF(maxsize);
	Py_XDECREF(ttl);
	Py_XDECREF(maxweight);
	Py_XDECREF(dict);
	return state;
}

static const char *const state_settings[] = {
    "maxsize", "ttl", "clock", "maxweight", "weigh", "on_evict", NULL};

/* __setstate__: re-initialises the cache from what __getstate__ gave,
 * then stores the entries in their order with the time they had left. */
static PyObject *cache_setstate(CacheObject *self, PyObject *state)
{
	PyObject *kwargs = NULL, *noargs = NULL, *entries = NULL, *dict = NULL;
	PyObject *r = NULL;

	if (!PyDict_Check(state)) {
		PyErr_Format(PyExc_TypeError,
		             "Cache state must be a dict, not %.100s",
		             Py_TYPE(state)->tp_name);
		return NULL;
	}
	state = Py_NewRef(state); /* ours: the code below may run Python */
	kwargs = PyDict_New();
	noargs = PyTuple_New(0);
	if (kwargs == NULL || noargs == NULL)
		goto done;
	for (int i = 0; state_settings[i] != NULL; i++) {
		PyObject *v = PyDict_GetItemString(state, state_settings[i]);
		if (v == NULL) {
			PyErr_Format(PyExc_ValueError,
			             "not a Cache state: no %s",
			             state_settings[i]);
			goto done;
		}
		if (PyDict_SetItemString(kwargs, state_settings[i], v) < 0)
			goto done;
	}
	entries = PyDict_GetItemString(state, "entries");
	dict = PyDict_GetItemString(state, "dict");
	if (entries == NULL || dict == NULL) {
		PyErr_SetString(PyExc_ValueError,
		                "not a Cache state: no entries or dict");
		goto done;
	}
	entries = PySequence_Fast(entries,
	                          "Cache state: entries must be a "
	                          "sequence");
	Py_XINCREF(dict);
	if (entries == NULL)
		goto done;
	if (cache_init(self, noargs, kwargs) < 0)
		goto done;
	if (dict != Py_None) {
		PyObject *mine =
		    PyObject_GetAttrString((PyObject *)self, "__dict__");
		int u = mine ? PyDict_Update(mine, dict) : -1;
		Py_XDECREF(mine);
		if (u < 0)
			goto done;
	}
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(entries); i++) {
		PyObject *e = PySequence_Fast_GET_ITEM(entries, i);
		if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 3) {
			PyErr_SetString(PyExc_ValueError,
			                "Cache state: an entry must be a "
			                "(key, value, ttl) tuple");
			goto done;
		}
		Py_INCREF(e);
		if (cache_write(self, PyTuple_GET_ITEM(e, 0),
		                PyTuple_GET_ITEM(e, 1),
		                PyTuple_GET_ITEM(e, 2)) < 0) {
			Py_DECREF(e);
			goto done;
		}
		Py_DECREF(e);
	}
	r = Py_NewRef(Py_None);
done:
	Py_XDECREF(kwargs);
	Py_XDECREF(noargs);
	Py_XDECREF(entries);
	Py_XDECREF(dict);
	Py_DECREF(state);
	return r;
}

PyDoc_STRVAR(cache_get_doc,
             "get($self, key, /, default=None)\n--\n\n"
             "The value for `key` if it is live, else `default`. A hit makes "
             "the key the most\nrecently used.");
PyDoc_STRVAR(cache_peek_doc,
             "peek($self, key, /, default=None)\n--\n\n"
             "Like get(), but leaves the recency order and the hit/miss "
             "counts alone.");
PyDoc_STRVAR(cache_set_doc,
             "set($self, key, value, /, ttl=None)\n--\n\n"
             "Store `value` under `key`, living `ttl` seconds (None: the "
             "cache's default TTL),\nand evict the least recently used "
             "entries beyond maxsize or maxweight.");
PyDoc_STRVAR(cache_pop_doc,
             "pop($self, key, /, default=<unset>)\n--\n\n"
             "Remove `key` and return its value; if it is not live, return "
             "`default` or raise\nKeyError.");
PyDoc_STRVAR(cache_popitem_doc,
             "popitem($self, /)\n--\n\n"
             "Remove and return the least recently used (key, value) pair.");
PyDoc_STRVAR(cache_clear_doc,
             "clear($self, /)\n--\n\n"
             "Remove every entry. The statistics are kept (see "
             "reset_stats).");
PyDoc_STRVAR(cache_keys_doc,
             "keys($self, /)\n--\n\n"
             "A list of the live keys, least recently used "
             "first.");
PyDoc_STRVAR(cache_values_doc,
             "values($self, /)\n--\n\n"
             "A list of the live values, least recently used first.");
PyDoc_STRVAR(cache_items_doc,
             "items($self, /)\n--\n\n"
             "A list of the live (key, value) pairs, least recently used "
             "first.");
PyDoc_STRVAR(cache_stats_doc,
             "stats($self, /)\n--\n\n"
             "A dict: hits, misses, evictions (live entries dropped for "
             "room), expirations,\nsize and maxsize; weight and maxweight "
             "too when the cache weighs its values.");
PyDoc_STRVAR(cache_update_doc,
             "update($self, other=(), /, **kwargs)\n--\n\n"
             "cache[k] = v for each item of a mapping or (key, value) pairs, "
             "then of kwargs.");
PyDoc_STRVAR(cache_setdefault_doc,
             "setdefault($self, key, /, default=None)\n--\n\n"
             "cache[key] if it is live (a hit), else store `default` and "
             "return it.");
PyDoc_STRVAR(cache_getstate_doc,
             "__getstate__($self, /)\n--\n\n"
             "The settings and the live entries, each with the seconds it "
             "has left, for\ncopy and pickle (the callables must be "
             "picklable to pickle).");
PyDoc_STRVAR(cache_reset_stats_doc,
             "reset_stats($self, /)\n--\n\n"
             "Set the hit, miss, eviction and "
             "expiration counts to 0.");

static PyMethodDef cache_methods[] = {
    {"get", (PyCFunction)(void (*)(void))cache_get,
     METH_FASTCALL | METH_KEYWORDS, cache_get_doc},
    {"peek", (PyCFunction)(void (*)(void))cache_peek,
     METH_FASTCALL | METH_KEYWORDS, cache_peek_doc},
    {"set", (PyCFunction)(void (*)(void))cache_set,
     METH_FASTCALL | METH_KEYWORDS, cache_set_doc},
    {"pop", (PyCFunction)(void (*)(void))cache_pop,
     METH_FASTCALL | METH_KEYWORDS, cache_pop_doc},
    {"popitem", (PyCFunction)cache_popitem, METH_NOARGS, cache_popitem_doc},
    {"clear", (PyCFunction)cache_clear, METH_NOARGS, cache_clear_doc},
    {"keys", (PyCFunction)cache_keys, METH_NOARGS, cache_keys_doc},
    {"values", (PyCFunction)cache_values, METH_NOARGS, cache_values_doc},
    {"items", (PyCFunction)cache_items, METH_NOARGS, cache_items_doc},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS, cache_stats_doc},
    {"reset_stats", (PyCFunction)cache_reset_stats, METH_NOARGS,
     cache_reset_stats_doc},
    {"update", (PyCFunction)(void (*)(void))cache_update,
     METH_VARARGS | METH_KEYWORDS, cache_update_doc},
    {"setdefault", (PyCFunction)(void (*)(void))cache_setdefault,
     METH_FASTCALL | METH_KEYWORDS, cache_setdefault_doc},
    {"_set_clock", (PyCFunction)cache_set_clock, METH_O,
     "_set_clock($self, clock, /)\n--\n\nReplace the clock (None: the "
     "monotonic one); clear the cache first."},
    {"__getstate__", (PyCFunction)cache_getstate, METH_NOARGS,
     cache_getstate_doc},
    {"__setstate__", (PyCFunction)cache_setstate, METH_O, NULL},
    {"__sizeof__", (PyCFunction)cache_sizeof, METH_NOARGS, NULL},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585."},
    {NULL},
};

static PyGetSetDef cache_getset[] = {
    {"maxsize", (getter)cache_get_maxsize, NULL,
     "The most entries kept; None when unbounded.", NULL},
    {"ttl", (getter)cache_get_ttl, NULL,
     "The default time to live in seconds; None when entries never "
     "expire.",
     NULL},
    {"maxweight", (getter)cache_get_maxweight, NULL,
     "The most total weight kept; None when unweighted.", NULL},
    {"currsize", (getter)cache_get_currsize, NULL,
     "cachetools' currsize: the total weight with weigh, else len(cache).",
     NULL},
    {"clock", (getter)cache_get_clock, NULL,
     "The injected clock, or None for the monotonic clock.", NULL},
    {"on_evict", (getter)cache_get_on_evict, NULL,
     "The eviction callback, or None.", NULL},
    {"weight", (getter)cache_get_weight, NULL,
     "The total weight of the entries (0 when unweighted).", NULL},
    {NULL},
};

static PyMemberDef cache_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CacheObject, weakreflist),
     READONLY, NULL},
    {NULL},
};

PyDoc_STRVAR(cache_doc,
             "Cache(maxsize=1024, ttl=None, clock=None, *, maxweight=None, "
             "weigh=None, on_evict=None)\n--\n\n"
             "A mapping that keeps the `maxsize` most recently used entries "
             "(None: no bound),\neach living `ttl` seconds (None: forever). "
             "`clock` is a callable returning\nseconds, for tests (default: "
             "the monotonic clock); a reading earlier than the\nlast one "
             "counts as the last one, and a reading that is not a finite "
             "number\nof seconds >= 0 raises ValueError. With `weigh`, a "
             "callable\ngiving each "
             "value's weight (an int or float >= 0), the entries' total "
             "weight\nstays within `maxweight` too. `on_evict(key, value)` is "
             "called for each entry\ndropped for room or by expiry (an "
             "exception it raises is reported as\nunraisable).");

static PyType_Slot cache_slots[] = {
    {Py_tp_doc, (void *)cache_doc},
    {Py_tp_new, cache_new},
    {Py_tp_init, cache_init},
    {Py_tp_dealloc, cache_dealloc},
    {Py_tp_traverse, cache_traverse},
    {Py_tp_clear, cache_tp_clear},
    {Py_tp_repr, cache_repr},
    {Py_tp_richcompare, cache_richcompare},
    {Py_tp_iter, cache_iter},
    {Py_tp_methods, cache_methods},
    {Py_tp_getset, cache_getset},
    {Py_tp_members, cache_members},
    {Py_mp_subscript, cache_subscript},
    {Py_mp_ass_subscript, cache_ass_subscript},
    {Py_mp_length, cache_length},
    {Py_sq_contains, cache_contains},
    {Py_tp_hash, PyObject_HashNotImplemented},
    {0, NULL},
};

static PyType_Spec cache_spec = {
    .name = "stanchion._core.Cache",
    .basicsize = sizeof(CacheObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = cache_slots,
};

/* =========================================================================
 * Module hook
 * ========================================================================= */

int st_cache_exec(PyObject *module, st_state *st)
{
	st->cache_type = (PyTypeObject *)PyType_FromModuleAndSpec(
	    module, &cache_spec, NULL);
	if (st->cache_type == NULL ||
	    PyModule_AddType(module, st->cache_type) < 0)
		return -1;
	return 0;
}
