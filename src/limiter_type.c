/* Python bindings for the limiter engine: _core.Limiter and
 * _core.parse_rates (the Decision it answers with is decision_type.c).
 *
 * Python equivalent (the behaviour, not the speed):
 *
 *     class Limiter:
 *         def __init__(self, rates, algorithm="token_bucket", burst=None,
 *                      max_keys=1_000_000, clock=None, penalty=None,
 *                      on_ban=None): ...
 *         def hit(self, key, /, cost=1) -> Decision: ...
 *         def peek(self, key, /, cost=1) -> Decision: ...
 *         def reset(self, key=None) -> None: ...
 *         def stats(self) -> dict: ...
 *         # with a penalty (penalty.h): the ban table
 *         def lift(self, key, /) -> bool: ...
 *         def _ban_state(self, key, /) -> tuple | None: ...
 *         def _bans(self) -> list[tuple]: ...
 */
#include <math.h>
#include <stdint.h>

#include "args.h"
#include "clock.h"
#include "decision_type.h"
#include "keytable.h"
#include "limit.h"
#include "module.h"
#include "penalty.h"
#include "pyclock.h"
#include "rate.h"
#include "testhooks.h"

/* Key kinds in the table, so "a" and b"a" are different clients. */
#define KEY_STR 1
#define KEY_BYTES 2

/* Entries sampled when a full table must evict a live key. */
#define EVICT_SAMPLES 8

/* =========================================================================
 * Limiter
 * ========================================================================= */

typedef struct {
	PyObject_HEAD st_state *st; /* module state: the Decision type */
	PyObject *clock;            /* NULL = the C monotonic clock */
	st_fastclock fclock;        /* the C monotonic clock, fast */
	int64_t last_now;           /* time never runs backwards in here */
	int64_t max_cost;           /* the largest cost any hit may ask */
	st_policy policy;           /* algorithm and compiled rates */
	kt_table table;             /* key -> state */
	size_t inserts_since_sweep; /* when to look for full keys again */
	uint64_t evicted;           /* live keys dropped to make room */
	uint64_t expired;           /* full keys dropped (nothing lost) */
	int ready;                  /* __init__ succeeded */
	int has_penalty;            /* bans apply (`penalty` is set) */
	st_penalty penalty;         /* when and how long keys are banned */
	kt_table bans;              /* key -> penalty state (PN_WORDS) */
	PyObject *on_ban;           /* NULL, or called once per ban */
	size_t ban_inserts;         /* when to drop idle records again */
	uint64_t ban_evicted;       /* live penalty records dropped */
} LimiterObject;

static PyObject *limiter_new(PyTypeObject *type, PyObject *args,
                             PyObject *kwds)
{
	LimiterObject *self;
	st_state *st = st_state_from_type(type);

	(void)args;
	(void)kwds;
	if (st == NULL)
		return NULL;
	self = (LimiterObject *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->st = st;
	st_policy_init(&self->policy, ST_TOKEN_BUCKET);
	kt_init(&self->table, 1, 1, 0);
	kt_init(&self->bans, PN_WORDS, 1, 0);
	return (PyObject *)self;
}

static int limiter_traverse(LimiterObject *self, visitproc visit, void *arg)
{
	Py_VISIT(self->clock);
	Py_VISIT(self->on_ban);
	Py_VISIT(Py_TYPE(self));
	return 0;
}

static int limiter_clear(LimiterObject *self)
{
	Py_CLEAR(self->clock);
	Py_CLEAR(self->on_ban);
	return 0;
}

static void limiter_dealloc(LimiterObject *self)
{
	PyTypeObject *tp = Py_TYPE(self);
	PyObject_GC_UnTrack(self);
	limiter_clear(self);
	kt_free(&self->table);
	kt_free(&self->bans);
	tp->tp_free(self);
	Py_DECREF(tp);
}

/* ---- construction ------------------------------------------------------- */

/* Appends the rates of one argument item (a rate string, or a pair
 * (N, period_seconds) such as stanchion.Rate) to `rates`. The numbers'
 * __float__ may run Python code: the caller owns `item`, and a pair is a
 * tuple, so what is read here cannot go away. */
static int collect_rates(PyObject *item, st_rate *rates, int *n)
{
	char err[200];

	if (PyUnicode_Check(item)) {
		Py_ssize_t len;
		const char *s = PyUnicode_AsUTF8AndSize(item, &len);
		int got;
		if (s == NULL)
			return -1;
		got =
		    rate_parse(s, (size_t)len, rates + *n,
		               (size_t)(ST_MAX_RATES - *n), err, sizeof(err));
		if (got < 0) {
			PyErr_SetString(PyExc_ValueError, err);
			return -1;
		}
		*n += got;
		return 0;
	}
	if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2) {
		PyObject *a = PyTuple_GET_ITEM(item, 0);
		PyObject *p = PyTuple_GET_ITEM(item, 1);
		double amount, period;
		if (*n >= ST_MAX_RATES) {
			PyErr_Format(PyExc_ValueError,
			             "at most %d rates per limiter",
			             ST_MAX_RATES);
			return -1;
		}
		if (!PyNumber_Check(a) || !PyNumber_Check(p) ||
		    PyBool_Check(a) || PyBool_Check(p)) {
			PyErr_Format(PyExc_TypeError,
			             "a rate pair must be (N, period_seconds) "
			             "numbers, got %R",
			             item);
			return -1;
		}
		amount = st_to_double(a);
		if (amount == -1.0 && PyErr_Occurred())
			return -1;
		period = st_to_double(p);
		if (period == -1.0 && PyErr_Occurred())
			return -1;
		if (!isfinite(amount) || !(amount > 0.0)) {
			PyErr_Format(PyExc_ValueError,
			             "invalid rate %R: N must be a positive "
			             "finite number",
			             item);
			return -1;
		}
		if (!isfinite(period) || !(period * 1e9 >= 1.0) ||
		    period * 1e9 > (double)ST_MAX_SPAN_NS) {
			PyErr_Format(PyExc_ValueError,
			             "invalid rate %R: the period must be a "
			             "finite number of seconds between 1e-9 "
			             "and about 36 years",
			             item);
			return -1;
		}
		rates[*n].amount = amount;
		rates[*n].period_ns = (int64_t)llround(period * 1e9);
		(*n)++;
		return 0;
	}
	PyErr_Format(PyExc_TypeError,
	             "rates must be a rate string such as '10/second', or a "
	             "list of such strings or (N, period_seconds) pairs, not "
	             "%.100s",
	             Py_TYPE(item)->tp_name);
	return -1;
}

/* A (N, period_seconds) pair such as stanchion.Rate. */
static int is_rate_pair(PyObject *o)
{
	PyObject *a;
	if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 2)
		return 0;
	a = PyTuple_GET_ITEM(o, 0);
	return PyLong_Check(a) || PyFloat_Check(a);
}

/* burst: None, an int >= 1 (one rate), or one int-or-None per rate. */
static int parse_burst(PyObject *burst, int nrates, int64_t *out)
{
	for (int i = 0; i < nrates; i++)
		out[i] = 0;
	if (burst == Py_None)
		return 0;
	if (PyLong_Check(burst) && !PyBool_Check(burst)) {
		int overflow;
		long long b = PyLong_AsLongLongAndOverflow(burst, &overflow);
		if (b == -1 && PyErr_Occurred())
			return -1;
		if (overflow > 0)
			b = LLONG_MAX; /* st_policy_add says it is too large */
		if (b < 1) {
			PyErr_Format(PyExc_ValueError,
			             "burst must be >= 1, got %R", burst);
			return -1;
		}
		if (nrates != 1) {
			PyErr_SetString(
			    PyExc_ValueError,
			    "with several rates, burst must be a "
			    "list with one entry (int or None) per "
			    "rate");
			return -1;
		}
		out[0] = b;
		return 0;
	}
	if (PyList_Check(burst) || PyTuple_Check(burst)) {
		PyObject *seq = PySequence_Tuple(burst); /* our own copy */
		int rc = 0;
		if (seq == NULL)
			return -1;
		if (PyTuple_GET_SIZE(seq) != nrates) {
			PyErr_Format(PyExc_ValueError,
			             "burst has %zd entries for %d rates",
			             PyTuple_GET_SIZE(seq), nrates);
			rc = -1;
		}
		for (int i = 0; rc == 0 && i < nrates; i++) {
			PyObject *b = PyTuple_GET_ITEM(seq, i);
			int overflow;
			if (b == Py_None)
				continue;
			if (!PyLong_Check(b) || PyBool_Check(b)) {
				PyErr_Format(PyExc_TypeError,
				             "burst entries must be int or "
				             "None, not %.100s",
				             Py_TYPE(b)->tp_name);
				rc = -1;
				break;
			}
			out[i] = PyLong_AsLongLongAndOverflow(b, &overflow);
			if (overflow > 0)
				out[i] = INT64_MAX; /* too large, below */
			if (out[i] == -1 && PyErr_Occurred()) {
				rc = -1;
			} else if (out[i] < 1) {
				PyErr_Format(PyExc_ValueError,
				             "burst must be >= 1, got %R", b);
				rc = -1;
			}
		}
		Py_DECREF(seq);
		return rc;
	}
	PyErr_Format(PyExc_TypeError,
	             "burst must be None, an int or a list, not %.100s",
	             Py_TYPE(burst)->tp_name);
	return -1;
}

/* penalty: None, or (after, within_ns, ban_ns, factor, max_ban_ns) as
 * stanchion.Penalty compiles it (it checks the user's values first, with
 * messages in seconds; this check guards the engine's bounds). */
static int parse_penalty(PyObject *o, st_penalty *p)
{
	long long after, within, ban, max_ban;
	double factor;
	const char *why;

	if (o == Py_None)
		return 0;
	if (!PyTuple_Check(o)) {
		PyErr_Format(
		    PyExc_TypeError,
		    "penalty must be None or a tuple (after, within_ns, "
		    "ban_ns, factor, max_ban_ns), not %.100s",
		    Py_TYPE(o)->tp_name);
		return -1;
	}
	if (!PyArg_ParseTuple(o, "LLLdL:penalty", &after, &within, &ban,
	                      &factor, &max_ban))
		return -1;
	p->after = after;
	p->within_ns = within;
	p->ban_ns = ban;
	p->factor = factor;
	p->max_ban_ns = max_ban;
	if (pn_check(p, &why) < 0) {
		PyErr_Format(PyExc_ValueError, "penalty: %s", why);
		return -1;
	}
	return 0;
}

static int limiter_init(LimiterObject *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"rates", "algorithm", "burst",  "max_keys",
	                         "clock", "penalty",   "on_ban", NULL};
	PyObject *rates_arg, *burst = Py_None, *clock = Py_None;
	PyObject *penalty_o = Py_None, *on_ban = Py_None;
	st_penalty penalty = {0};
	PyObject *max_keys_o = NULL;
	const char *algorithm = "token_bucket";
	long long max_keys = 1000000;
	st_rate rates[ST_MAX_RATES];
	int64_t bursts[ST_MAX_RATES];
	int nrates = 0;
	st_policy policy;
	st_algorithm alg;

	if (!PyArg_ParseTupleAndKeywords(
	        args, kwds, "O|sOOOOO:Limiter", kwlist, &rates_arg, &algorithm,
	        &burst, &max_keys_o, &clock, &penalty_o, &on_ban))
		return -1;
	if (strcmp(algorithm, "token_bucket") == 0) {
		alg = ST_TOKEN_BUCKET;
	} else if (strcmp(algorithm, "fixed_window") == 0) {
		alg = ST_FIXED_WINDOW;
	} else if (strcmp(algorithm, "sliding_window") == 0) {
		alg = ST_SLIDING_WINDOW;
	} else {
		PyErr_Format(PyExc_ValueError,
		             "unknown algorithm '%s' (use 'token_bucket', "
		             "'fixed_window' or 'sliding_window')",
		             algorithm);
		return -1;
	}
	if (PyUnicode_Check(rates_arg) || is_rate_pair(rates_arg)) {
		if (collect_rates(rates_arg, rates, &nrates) < 0)
			return -1;
	} else if (PyList_Check(rates_arg) || PyTuple_Check(rates_arg)) {
		/* Our own tuple: a rate's __float__ may change the list. */
		PyObject *items = PySequence_Tuple(rates_arg);
		Py_ssize_t n;
		if (items == NULL)
			return -1;
		n = PyTuple_GET_SIZE(items);
		if (n == 0) {
			Py_DECREF(items);
			PyErr_SetString(PyExc_ValueError,
			                "a limiter needs at least one rate");
			return -1;
		}
		for (Py_ssize_t i = 0; i < n; i++) {
			if (collect_rates(PyTuple_GET_ITEM(items, i), rates,
			                  &nrates) < 0) {
				Py_DECREF(items);
				return -1;
			}
		}
		Py_DECREF(items);
	} else {
		PyErr_Format(PyExc_TypeError,
		             "rates must be a rate string such as "
		             "'10/second', or a list of such strings or "
		             "(N, period_seconds) pairs, not %.100s",
		             Py_TYPE(rates_arg)->tp_name);
		return -1;
	}
	if (parse_burst(burst, nrates, bursts) < 0)
		return -1;
	if (max_keys_o != NULL) {
		int overflow;
		if (!PyLong_Check(max_keys_o) || PyBool_Check(max_keys_o)) {
			PyErr_Format(PyExc_TypeError,
			             "max_keys must be an int, not %.100s",
			             Py_TYPE(max_keys_o)->tp_name);
			return -1;
		}
		max_keys = PyLong_AsLongLongAndOverflow(max_keys_o, &overflow);
		if (max_keys == -1 && PyErr_Occurred())
			return -1;
		if (overflow != 0)
			max_keys = overflow > 0 ? LLONG_MAX : LLONG_MIN;
	}
	if (max_keys < 1 || max_keys > INT32_MAX) {
		PyErr_Format(PyExc_ValueError,
		             "max_keys must be between 1 and %d, got %R",
		             INT32_MAX, max_keys_o);
		return -1;
	}
	if (clock != Py_None && !PyCallable_Check(clock)) {
		PyErr_Format(PyExc_TypeError,
		             "clock must be a callable returning seconds, or "
		             "None, not %.100s",
		             Py_TYPE(clock)->tp_name);
		return -1;
	}
	if (parse_penalty(penalty_o, &penalty) < 0)
		return -1;
	if (on_ban != Py_None && !PyCallable_Check(on_ban)) {
		PyErr_Format(PyExc_TypeError,
		             "on_ban must be a callable or None, not %.100s",
		             Py_TYPE(on_ban)->tp_name);
		return -1;
	}
	st_policy_init(&policy, alg);
	for (int i = 0; i < nrates; i++) {
		const char *why;
		if (st_policy_add(&policy, rates[i].amount, rates[i].period_ns,
		                  bursts[i], &why) < 0) {
			char buf[96];
			PyOS_snprintf(buf, sizeof(buf), "%g per %.9g seconds",
			              rates[i].amount,
			              (double)rates[i].period_ns / 1e9);
			PyErr_Format(PyExc_ValueError, "rate %d (%s): %s",
			             i + 1, buf, why);
			return -1;
		}
	}

	/* Everything is valid: only now replace the state. */
	kt_free(&self->table);
	kt_init(&self->table, (size_t)st_policy_words(&policy),
	        (size_t)max_keys,
	        (uint64_t)(uintptr_t)self ^ st_monotonic_ns());
	self->policy = policy;
	self->max_cost = st_policy_max_cost(&policy);
	self->last_now = INT64_MIN;
	st_fastclock_copy(&self->fclock, &self->st->clock);
	self->evicted = self->expired = 0;
	self->inserts_since_sweep = 0;
	kt_free(&self->bans);
	kt_init(&self->bans, PN_WORDS, (size_t)max_keys,
	        self->table.rng * UINT64_C(0x9E3779B97F4A7C15) + 1);
	self->has_penalty = penalty_o != Py_None;
	self->penalty = penalty;
	self->ban_evicted = 0;
	self->ban_inserts = 0;
	Py_XSETREF(self->clock, clock == Py_None ? NULL : Py_NewRef(clock));
	Py_XSETREF(self->on_ban, on_ban == Py_None ? NULL : Py_NewRef(on_ban));
	self->ready = 1;
	st_track(self->st, (PyObject *)self);
	return 0;
}

/* ---- the hot path -------------------------------------------------------
 */

/* A ValueError for a key the table cannot store (see KT_MAX_KEY). */
static int key_too_long(Py_ssize_t len)
{
	PyErr_Format(PyExc_ValueError,
	             "key must be at most %llu bytes, got %zd",
	             (unsigned long long)KT_MAX_KEY, len);
	return -1;
}

/* Reads the key's bytes and hash without running Python code: str
 * subclasses are hashed as str (their __hash__ is not called). A key
 * longer than the table stores is a ValueError. */
ST_INLINE int limiter_key(PyObject *key, const char **buf, Py_ssize_t *len,
                          uint8_t *tag, Py_hash_t *hash)
{
	if (ST_LIKELY(PyUnicode_CheckExact(key) &&
	              PyUnicode_IS_COMPACT_ASCII(key) &&
	              ((PyASCIIObject *)key)->hash != -1)) {
		/* ASCII str with its hash cached: the bytes follow the
		 * header, as PyUnicode_DATA gives them. */
		*hash = ((PyASCIIObject *)key)->hash;
		*buf = (const char *)PyUnicode_DATA(key);
		*len = PyUnicode_GET_LENGTH(key);
		*tag = KEY_STR;
		if (ST_UNLIKELY((size_t)*len > KT_MAX_KEY))
			return key_too_long(*len);
		return 0;
	}
	if (PyUnicode_Check(key)) {
		*buf = PyUnicode_AsUTF8AndSize(key, len);
		*tag = KEY_STR;
		if (*buf == NULL)
			return -1;
		if ((size_t)*len > KT_MAX_KEY)
			return key_too_long(*len);
		*hash = PyUnicode_Type.tp_hash(key);
		return *hash == -1 ? -1 : 0;
	}
	if (PyBytes_Check(key)) {
		*buf = PyBytes_AS_STRING(key);
		*len = PyBytes_GET_SIZE(key);
		*tag = KEY_BYTES;
		if ((size_t)*len > KT_MAX_KEY)
			return key_too_long(*len);
		*hash = PyBytes_Type.tp_hash(key);
		return *hash == -1 ? -1 : 0;
	}
	PyErr_Format(PyExc_TypeError, "key must be str or bytes, not %.100s",
	             Py_TYPE(key)->tp_name);
	return -1;
}

/* After an injected clock ran: the clock is Python code that may have
 * re-initialised this limiter, and `cost` was checked against the old
 * rates, so it is checked again. Returns 0, or -1 with a ValueError. */
static int limiter_recheck_cost(LimiterObject *self, int64_t cost)
{
	if (ST_UNLIKELY(cost > self->max_cost)) {
		PyErr_Format(PyExc_ValueError,
		             "cost %lld can never be allowed: the smallest "
		             "capacity of this limiter's rates is %lld (the "
		             "limiter was re-initialised)",
		             (long long)cost, (long long)self->max_cost);
		return -1;
	}
	return 0;
}

/* Parses (key, /, cost=1). */
static int limiter_args(LimiterObject *self, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames, const char *fname,
                        int64_t *cost)
{
	PyObject *c;

	if (ST_UNLIKELY(!self->ready)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Limiter.__init__ was not called");
		return -1;
	}
	if (st_fast_args(fname, args, nargs, kwnames, 1, self->st->str_cost,
	                 &c) < 0)
		return -1;
	if (ST_LIKELY(c == NULL)) {
		*cost = 1;
		return 0;
	}
	if (!PyLong_Check(c) || PyBool_Check(c)) {
		PyErr_Format(PyExc_TypeError,
		             "cost must be an int, not %.100s",
		             Py_TYPE(c)->tp_name);
		return -1;
	}
	{
		int overflow;
		*cost = PyLong_AsLongLongAndOverflow(c, &overflow);
		if (*cost == -1 && PyErr_Occurred())
			return -1;
		if (overflow != 0) /* too large, or too small: said below */
			*cost = overflow > 0 ? INT64_MAX : -1;
	}
	if (*cost < 1) {
		PyErr_Format(PyExc_ValueError, "cost must be >= 1, got %R", c);
		return -1;
	}
	if (*cost > self->max_cost) {
		PyErr_Format(PyExc_ValueError,
		             "cost %R can never be allowed: the smallest "
		             "capacity of this limiter's rates is %lld",
		             c, (long long)self->max_cost);
		return -1;
	}
	return 0;
}

/* Makes room for one key in a full table: first drops keys that are back
 * to full (nothing is lost), amortised over inserts; otherwise evicts the
 * sampled key closest to full, so blocked clients stay blocked. */
static void limiter_make_room(LimiterObject *self, int64_t now)
{
	kt_table *t = &self->table;
	size_t best = 0;
	int64_t best_full_in = INT64_MAX;

	if (self->inserts_since_sweep >= t->count / 4 + 16) {
		self->inserts_since_sweep = 0;
		for (size_t i = t->count; i-- > 0;) {
			if (st_policy_full_in(&self->policy,
			                      kt_at(t, i)->state, now) == 0) {
				kt_remove_at(t, i);
				self->expired++;
			}
		}
		if (t->count < t->max)
			return;
	}
	for (int k = 0; k < EVICT_SAMPLES; k++) {
		size_t i = kt_random(t);
		int64_t f =
		    st_policy_full_in(&self->policy, kt_at(t, i)->state, now);
		if (f < best_full_in) {
			best_full_in = f;
			best = i;
			if (f == 0)
				break;
		}
	}
	kt_remove_at(t, best);
	if (best_full_in == 0)
		self->expired++;
	else
		self->evicted++;
}

/* ---- the penalty box ---------------------------------------------------- */

/* What a penalty record is worth keeping, for eviction: a ban outranks
 * every record that is not one (a record holds at most about 2**61 ns of
 * memory), and a longer one a shorter one. 0: dropping it loses nothing. */
static int64_t ban_worth(const LimiterObject *self, const int64_t *s,
                         int64_t now)
{
	int64_t left = pn_banned_for(s, now);
	if (left > 0)
		return (INT64_C(1) << 62) + left;
	return pn_idle_in(&self->penalty, s, now);
}

/* Makes room for one record in a full ban table: first drops records that
 * hold nothing (amortised over inserts), otherwise the sampled record
 * worth least, so a flood of refused keys displaces refusal counts before
 * bans. */
static void limiter_ban_room(LimiterObject *self, int64_t now)
{
	kt_table *t = &self->bans;
	size_t best = 0;
	int64_t best_worth = INT64_MAX;

	if (self->ban_inserts >= t->count / 4 + 16) {
		self->ban_inserts = 0;
		for (size_t i = t->count; i-- > 0;) {
			if (ban_worth(self, kt_at(t, i)->state, now) == 0)
				kt_remove_at(t, i);
		}
		if (t->count < t->max)
			return;
	}
	for (int k = 0; k < EVICT_SAMPLES; k++) {
		size_t i = kt_random(t);
		int64_t w = ban_worth(self, kt_at(t, i)->state, now);
		if (w < best_worth) {
			best_worth = w;
			best = i;
			if (w == 0)
				break;
		}
	}
	kt_remove_at(t, best);
	if (best_worth > 0)
		self->ban_evicted++;
}

/* Counts one refusal of a key that is not banned; `b` is its record or
 * NULL (one is made). Returns the length of the ban this refusal starts
 * (0: none) and sets *count to the key's ban count, or returns -1 when
 * memory runs out (nothing changed). Runs no Python code. */
static int64_t limiter_strike(LimiterObject *self, kt_entry *b, uint64_t hash,
                              uint8_t tag, const char *key, size_t len,
                              int64_t now, int64_t *count)
{
	int64_t dur;

	if (b == NULL) {
		if (self->bans.count >= self->bans.max)
			limiter_ban_room(self, now);
		b = kt_insert(&self->bans, hash, tag, key, len);
		if (b == NULL)
			return -1;
		memset(b->state, 0, sizeof(int64_t) * PN_WORDS);
		self->ban_inserts++;
	}
	dur = pn_strike(&self->penalty, b->state, now);
	*count = b->state[PN_BANS];
	return dur;
}

/* The refusal of a banned key: nothing charged, retry when the ban ends;
 * the limit reported is the smallest capacity. */
ST_INLINE void banned_decision(const LimiterObject *self, int64_t left,
                               st_decision *d)
{
	d->allowed = 0;
	d->banned = 1;
	d->binding = 0;
	d->limit = self->max_cost;
	d->remaining = 0;
	d->reset_after_ns = left;
	d->retry_after_ns = left;
}

/* Tells on_ban (when set) of a ban that just started: on_ban(key,
 * seconds, count). The tables are consistent; an exception from it is
 * reported as unraisable, since the ban already holds. */
static void limiter_report_ban(LimiterObject *self, PyObject *key, int64_t dur,
                               int64_t count)
{
	PyObject *cb = self->on_ban, *r;

	if (cb == NULL)
		return;
	Py_INCREF(cb); /* the callback may re-initialise this limiter */
	r = PyObject_CallFunction(cb, "OdL", key, (double)dur / 1e9,
	                          (long long)count);
	if (r == NULL)
		PyErr_WriteUnraisable(cb);
	Py_XDECREF(r);
	Py_DECREF(cb);
}

/* Decides for `key` (checked as limiter_key does) at `cost` (already
 * checked against max_cost), committing the hit when `commit`. Returns
 * 0 with *d filled, or -1 with an exception set. Python code runs only
 * in an injected clock, before the tables are touched, and in on_ban,
 * once they are consistent. */
static int limiter_decide_key(LimiterObject *self, PyObject *keyobj,
                              int64_t cost, int commit, st_decision *d)
{
	const char *key;
	Py_ssize_t len;
	uint8_t tag;
	Py_hash_t hash;
	int64_t now;
	kt_entry *e, *b = NULL;

	if (limiter_key(keyobj, &key, &len, &tag, &hash) < 0)
		return -1;
	if (st_is_disabled(self->st)) {
		st_allow_all(self->max_cost, d);
		return 0;
	}
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, &now) <
	    0)
		return -1;
	if (ST_UNLIKELY(self->clock != NULL) &&
	    limiter_recheck_cost(self, cost) < 0)
		return -1;
	/* From here on no Python code runs until the table is consistent. */
	if (ST_UNLIKELY(self->bans.count != 0)) {
		b = kt_find(&self->bans, (uint64_t)hash, tag, key,
		            (size_t)len);
		if (b != NULL) {
			int64_t left = pn_banned_for(b->state, now);
			if (left > 0) {
				banned_decision(self, left, d);
				return 0;
			}
		}
	}
	e = kt_find(&self->table, (uint64_t)hash, tag, key, (size_t)len);
	if (ST_LIKELY(e != NULL)) {
		st_policy_decide(&self->policy, e->state, now, cost, commit,
		                 d);
	} else {
		/* An unknown key is full. Only an allowed, committed hit
		 * stores it: peeks and denials never grow the table. */
		int64_t fresh[ST_MAX_RATES * 3];
		st_policy_fresh(&self->policy, fresh);
		st_policy_decide(&self->policy, fresh, now, cost, commit, d);
		if (d->allowed && commit) {
			if (self->table.count >= self->table.max)
				limiter_make_room(self, now);
			e = kt_insert(&self->table, (uint64_t)hash, tag, key,
			              (size_t)len);
			if (e == NULL) {
				PyErr_NoMemory();
				return -1;
			}
			memcpy(e->state, fresh,
			       sizeof(int64_t) *
			           (size_t)st_policy_words(&self->policy));
			self->inserts_since_sweep++;
		}
	}
	if (ST_UNLIKELY(!d->allowed) && commit && self->has_penalty) {
		int64_t count = 0;
		int64_t dur = limiter_strike(self, b, (uint64_t)hash, tag, key,
		                             (size_t)len, now, &count);
		if (dur < 0) {
			PyErr_NoMemory();
			return -1;
		}
		if (dur > 0) {
			banned_decision(self, dur, d);
			limiter_report_ban(self, keyobj, dur, count);
		}
	}
	return 0;
}

static PyObject *limiter_decide(LimiterObject *self, PyObject *const *args,
                                Py_ssize_t nargs, PyObject *kwnames,
                                int commit, const char *fname)
{
	int64_t cost;
	st_decision d;

	if (limiter_args(self, args, nargs, kwnames, fname, &cost) < 0)
		return NULL;
	if (limiter_decide_key(self, args[0], cost, commit, &d) < 0)
		return NULL;
	return st_decision_make(self->st, &d);
}

static PyObject *limiter_hit(LimiterObject *self, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
	return limiter_decide(self, args, nargs, kwnames, 1, "hit");
}

static PyObject *limiter_peek(LimiterObject *self, PyObject *const *args,
                              Py_ssize_t nargs, PyObject *kwnames)
{
	return limiter_decide(self, args, nargs, kwnames, 0, "peek");
}

static PyObject *limiter_reset(LimiterObject *self, PyObject *args,
                               PyObject *kwds)
{
	static char *kwlist[] = {"key", NULL};
	PyObject *key = Py_None;
	const char *buf;
	Py_ssize_t len;
	uint8_t tag;
	Py_hash_t hash;
	kt_entry *e;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:reset", kwlist, &key))
		return NULL;
	if (key == Py_None) {
		kt_clear(&self->table);
		kt_clear(&self->bans);
		Py_RETURN_NONE;
	}
	if (limiter_key(key, &buf, &len, &tag, &hash) < 0)
		return NULL;
	e = kt_find(&self->table, (uint64_t)hash, tag, buf, (size_t)len);
	if (e != NULL)
		kt_remove_entry(&self->table, e);
	e = kt_find(&self->bans, (uint64_t)hash, tag, buf, (size_t)len);
	if (e != NULL)
		kt_remove_entry(&self->bans, e);
	Py_RETURN_NONE;
}

/* The key an entry holds, as the str or bytes it was given as. */
static PyObject *entry_key(const kt_entry *e)
{
	const char *buf = e->len > KT_INLINE ? e->key.big : e->key.small;
	if (e->tag == KEY_BYTES)
		return PyBytes_FromStringAndSize(buf, (Py_ssize_t)e->len);
	return PyUnicode_DecodeUTF8(buf, (Py_ssize_t)e->len, NULL);
}

/* The key's penalty record (NULL when it has none) at *now. Reads the
 * clock (Python code when injected) before looking. */
static int ban_lookup(LimiterObject *self, PyObject *key, kt_entry **out,
                      int64_t *now)
{
	const char *buf;
	Py_ssize_t len;
	uint8_t tag;
	Py_hash_t hash;

	if (ST_UNLIKELY(!self->ready)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Limiter.__init__ was not called");
		return -1;
	}
	if (limiter_key(key, &buf, &len, &tag, &hash) < 0)
		return -1;
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, now) < 0)
		return -1;
	*out = kt_find(&self->bans, (uint64_t)hash, tag, buf, (size_t)len);
	return 0;
}

static PyObject *limiter_lift(LimiterObject *self, PyObject *key)
{
	kt_entry *b;
	int64_t now;
	int was;

	if (ban_lookup(self, key, &b, &now) < 0)
		return NULL;
	if (b == NULL)
		Py_RETURN_FALSE;
	was = pn_banned_for(b->state, now) > 0;
	kt_remove_entry(&self->bans, b);
	return PyBool_FromLong(was);
}

static PyObject *limiter_ban_state(LimiterObject *self, PyObject *key)
{
	kt_entry *b;
	int64_t now, left, bans, strikes;

	if (ban_lookup(self, key, &b, &now) < 0)
		return NULL;
	if (b == NULL)
		Py_RETURN_NONE;
	left = pn_banned_for(b->state, now);
	bans = pn_bans(&self->penalty, b->state, now);
	strikes = pn_strikes(&self->penalty, b->state, now);
	if (left == 0 && bans == 0 && strikes == 0)
		Py_RETURN_NONE;
	return Py_BuildValue("(LLL)", (long long)left, (long long)bans,
	                     (long long)strikes);
}

static PyObject *limiter_bans_list(LimiterObject *self, PyObject *unused)
{
	PyObject *out;
	int64_t now;

	(void)unused;
	if (ST_UNLIKELY(!self->ready)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Limiter.__init__ was not called");
		return NULL;
	}
	if (st_clock_now(self->clock, &self->fclock, &self->last_now, &now) <
	    0)
		return NULL;
	out = PyList_New(0);
	if (out == NULL)
		return NULL;
	/* Building the items allocates, and a collection may run Python
	 * code that changes the table: the bound is re-read every time, and
	 * an entry is read only before anything is allocated for it. */
	for (size_t i = 0; i < self->bans.count; i++) {
		const kt_entry *b = kt_at(&self->bans, i);
		int64_t left = pn_banned_for(b->state, now);
		int64_t bans = b->state[PN_BANS];
		PyObject *k, *item;
		if (left == 0)
			continue;
		k = entry_key(b);
		if (k == NULL)
			goto fail;
		item = Py_BuildValue("(NLL)", k, (long long)left,
		                     (long long)bans);
		if (item == NULL || PyList_Append(out, item) < 0) {
			Py_XDECREF(item);
			goto fail;
		}
		Py_DECREF(item);
	}
	return out;
fail:
	Py_DECREF(out);
	return NULL;
}

static PyObject *limiter_stats(LimiterObject *self, PyObject *unused)
{
	(void)unused;
	if (!self->has_penalty)
		return Py_BuildValue(
		    "{s:n,s:n,s:K,s:K,s:n}", "keys",
		    (Py_ssize_t)self->table.count, "max_keys",
		    (Py_ssize_t)self->table.max, "evicted",
		    (unsigned long long)self->evicted, "expired",
		    (unsigned long long)self->expired, "memory_bytes",
		    (Py_ssize_t)kt_memory(&self->table));
	return Py_BuildValue(
	    "{s:n,s:n,s:K,s:K,s:n,s:n,s:K}", "keys",
	    (Py_ssize_t)self->table.count, "max_keys",
	    (Py_ssize_t)self->table.max, "evicted",
	    (unsigned long long)self->evicted, "expired",
	    (unsigned long long)self->expired, "memory_bytes",
	    (Py_ssize_t)(kt_memory(&self->table) + kt_memory(&self->bans)),
	    "penalty_keys", (Py_ssize_t)self->bans.count, "penalty_evicted",
	    (unsigned long long)self->ban_evicted);
}

static PyObject *limiter_get_algorithm(LimiterObject *self, void *c)
{
	static const char *names[] = {"token_bucket", "fixed_window",
	                              "sliding_window"};
	(void)c;
	return PyUnicode_FromString(names[self->policy.algorithm]);
}

static PyObject *limiter_get_max_keys(LimiterObject *self, void *c)
{
	(void)c;
	return PyLong_FromSize_t(self->table.max);
}

static PyObject *limiter_get_max_cost(LimiterObject *self, void *c)
{
	(void)c;
	return PyLong_FromLongLong(self->max_cost);
}

/* The compiled rates, for engines elsewhere (the Redis scripts) that must
 * decide exactly as this one: a tuple of (capacity, period_ns,
 * interval_ns, tolerance_ns) per rate, in order. */
static PyObject *limiter_get_limits(LimiterObject *self, void *c)
{
	const st_policy *policy = &self->policy;
	PyObject *out;

	(void)c;
	out = PyTuple_New(policy->nrates);
	if (out == NULL)
		return NULL;
	for (int i = 0; i < policy->nrates; i++) {
		const st_limit *r = &policy->rates[i];
		PyObject *item = Py_BuildValue(
		    "(LLLL)", (long long)r->capacity, (long long)r->period_ns,
		    (long long)r->interval_ns, (long long)r->tolerance_ns);
		if (item == NULL) {
			Py_DECREF(out);
			return NULL;
		}
		PyTuple_SET_ITEM(out, i, item);
	}
	return out;
}

PyDoc_STRVAR(limiter_hit_doc,
             "hit($self, key, /, cost=1)\n--\n\n"
             "Consume `cost` from every rate for `key` (str or bytes) if all "
             "of them allow it;\notherwise consume nothing. Returns a "
             "Decision.");
PyDoc_STRVAR(limiter_peek_doc,
             "peek($self, key, /, cost=1)\n--\n\n"
             "The Decision hit() would return now, consuming nothing.");
PyDoc_STRVAR(limiter_reset_doc,
             "reset($self, /, key=None)\n--\n\n"
             "Forget one key (back to full), or every key when key is None.");
PyDoc_STRVAR(limiter_lift_doc,
             "lift($self, key, /)\n--\n\n"
             "Forget the key's ban, its ban count and its counted refusals. "
             "Returns True\nwhen the key was banned.");
PyDoc_STRVAR(limiter_ban_state_doc,
             "_ban_state($self, key, /)\n--\n\n"
             "(ban_left_ns, ban_count, refusals_counted) of the key, or None "
             "when it has\nno penalty state.");
PyDoc_STRVAR(limiter_bans_doc,
             "_bans($self, /)\n--\n\n"
             "[(key, ban_left_ns, ban_count), ...] of the keys banned now.");
PyDoc_STRVAR(limiter_stats_doc,
             "stats($self, /)\n--\n\n"
             "A dict: keys tracked, max_keys, evicted (live keys dropped to "
             "make room),\nexpired (full keys dropped, nothing lost) and "
             "memory_bytes;\nwith a penalty, penalty_keys (keys with "
             "penalty state) and penalty_evicted\n(penalty records dropped "
             "to make room).");

static PyObject *limiter_get_clock(LimiterObject *self, void *c)
{
	(void)c;
	return Py_NewRef(self->clock != NULL ? self->clock : Py_None);
}

/* Swaps the clock of a live limiter (stanchion.testing's fake clock).
 * Time restarts from the new clock's first reading: the caller resets
 * the keys, whose state counts in the old clock's time. */
static PyObject *limiter_set_clock(LimiterObject *self, PyObject *clock)
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

static PyMethodDef limiter_methods[] = {
    {"hit", (PyCFunction)(void (*)(void))limiter_hit,
     METH_FASTCALL | METH_KEYWORDS, limiter_hit_doc},
    {"peek", (PyCFunction)(void (*)(void))limiter_peek,
     METH_FASTCALL | METH_KEYWORDS, limiter_peek_doc},
    {"reset", (PyCFunction)(void (*)(void))limiter_reset,
     METH_VARARGS | METH_KEYWORDS, limiter_reset_doc},
    {"_set_clock", (PyCFunction)limiter_set_clock, METH_O,
     "_set_clock($self, clock, /)\n--\n\nReplace the clock (None: the "
     "monotonic one); reset the keys first."},
    {"stats", (PyCFunction)limiter_stats, METH_NOARGS, limiter_stats_doc},
    {"lift", (PyCFunction)limiter_lift, METH_O, limiter_lift_doc},
    {"_ban_state", (PyCFunction)limiter_ban_state, METH_O,
     limiter_ban_state_doc},
    {"_bans", (PyCFunction)limiter_bans_list, METH_NOARGS, limiter_bans_doc},
    {NULL},
};

static PyGetSetDef limiter_getset[] = {
    {"clock", (getter)limiter_get_clock, NULL,
     "The injected clock, or None for the monotonic clock.", NULL},
    {"algorithm", (getter)limiter_get_algorithm, NULL,
     "'token_bucket', 'fixed_window' or 'sliding_window'.", NULL},
    {"max_keys", (getter)limiter_get_max_keys, NULL,
     "The most keys tracked at once.", NULL},
    {"max_cost", (getter)limiter_get_max_cost, NULL,
     "The largest cost a hit can ever be allowed.", NULL},
    {"limits", (getter)limiter_get_limits, NULL,
     "The compiled rates: (capacity, period_ns, interval_ns, tolerance_ns) "
     "per rate\n(interval and tolerance: token bucket only, else the "
     "period and 0).",
     NULL},
    {NULL},
};

PyDoc_STRVAR(limiter_doc,
             "Limiter(rates, algorithm='token_bucket', burst=None, "
             "max_keys=1000000, clock=None, penalty=None, "
             "on_ban=None)\n--\n\n"
             "An in-process rate limiter keyed by client. `clock` is a "
             "callable returning\nseconds (default: the monotonic clock); a "
             "reading earlier than the last one\ncounts as the last one, "
             "and a reading that is not a finite number of seconds\n>= 0 "
             "raises ValueError.");

static PyType_Slot limiter_slots[] = {
    {Py_tp_doc, (void *)limiter_doc},
    {Py_tp_new, limiter_new},
    {Py_tp_init, limiter_init},
    {Py_tp_dealloc, limiter_dealloc},
    {Py_tp_traverse, limiter_traverse},
    {Py_tp_clear, limiter_clear},
    {Py_tp_methods, limiter_methods},
    {Py_tp_getset, limiter_getset},
    {0, NULL},
};

static PyType_Spec limiter_spec = {
    .name = "stanchion._core.Limiter",
    .basicsize = sizeof(LimiterObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_IMMUTABLETYPE,
    .slots = limiter_slots,
};

/* =========================================================================
 * parse_rates
 * ========================================================================= */

PyDoc_STRVAR(parse_rates_doc,
             "parse_rates(text, /)\n--\n\n"
             "Parse '10/second;1000/day' into a list of (N, period_ns) "
             "tuples; N is an int\nwhen whole. Raises ValueError naming the "
             "bad part.");

static PyObject *parse_rates(PyObject *module, PyObject *text)
{
	st_rate rates[ST_MAX_RATES];
	char err[200];
	const char *s;
	Py_ssize_t len;
	int n;
	PyObject *list;

	(void)module;
	if (!PyUnicode_Check(text)) {
		PyErr_Format(PyExc_TypeError,
		             "rates must be a str such as '10/second', not "
		             "%.100s",
		             Py_TYPE(text)->tp_name);
		return NULL;
	}
	s = PyUnicode_AsUTF8AndSize(text, &len);
	if (s == NULL)
		return NULL;
	n = rate_parse(s, (size_t)len, rates, ST_MAX_RATES, err, sizeof(err));
	if (n < 0) {
		PyErr_SetString(PyExc_ValueError, err);
		return NULL;
	}
	list = PyList_New(n);
	if (list == NULL)
		return NULL;
	for (int i = 0; i < n; i++) {
		double a = rates[i].amount;
		PyObject *item;
		if (a == floor(a) && a < 9007199254740992.0)
			item = Py_BuildValue("(LL)", (long long)a,
			                     (long long)rates[i].period_ns);
		else
			item = Py_BuildValue("(dL)", a,
			                     (long long)rates[i].period_ns);
		if (item == NULL) {
			Py_DECREF(list);
			return NULL;
		}
		PyList_SET_ITEM(list, i, item);
	}
	return list;
}

static PyMethodDef limiter_module_methods[] = {
    {"parse_rates", parse_rates, METH_O, parse_rates_doc},
    {NULL},
};

int st_limiter_policy(st_state *st, PyObject *obj, st_policy *policy,
                      size_t *max_keys)
{
	LimiterObject *lim = (LimiterObject *)obj;

	if (!PyObject_TypeCheck(obj, st->limiter_type)) {
		PyErr_Format(PyExc_TypeError,
		             "expected a stanchion._core.Limiter, not %.100s",
		             Py_TYPE(obj)->tp_name);
		return -1;
	}
	if (!lim->ready) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Limiter.__init__ was not called");
		return -1;
	}
	*policy = lim->policy;
	*max_keys = lim->table.max;
	return 0;
}

int st_limiter_hit(st_state *st, PyObject *obj, PyObject *key, int64_t cost,
                   st_decision *d)
{
	LimiterObject *lim = (LimiterObject *)obj;

	if (!PyObject_TypeCheck(obj, st->limiter_type)) {
		PyErr_Format(PyExc_TypeError,
		             "expected a stanchion._core.Limiter, not %.100s",
		             Py_TYPE(obj)->tp_name);
		return -1;
	}
	if (ST_UNLIKELY(!lim->ready)) {
		PyErr_SetString(PyExc_RuntimeError,
		                "Limiter.__init__ was not called");
		return -1;
	}
	if (ST_UNLIKELY(cost < 1 || cost > lim->max_cost)) {
		PyErr_Format(
		    PyExc_ValueError,
		    "cost %lld is out of range for this limiter (1 to "
		    "%lld)",
		    (long long)cost, (long long)lim->max_cost);
		return -1;
	}
	return limiter_decide_key(lim, key, cost, 1, d);
}

int st_limiter_penalty(PyObject *obj, st_penalty *penalty)
{
	LimiterObject *lim = (LimiterObject *)obj;

	if (!lim->has_penalty)
		return 0;
	*penalty = lim->penalty;
	return 1;
}

int st_limiter_exec(PyObject *module, st_state *st)
{
	st->limiter_type = (PyTypeObject *)PyType_FromModuleAndSpec(
	    module, &limiter_spec, NULL);
	if (st->limiter_type == NULL)
		return -1;
	if (PyModule_AddType(module, st->limiter_type) < 0)
		return -1;
	return PyModule_AddFunctions(module, limiter_module_methods);
}
