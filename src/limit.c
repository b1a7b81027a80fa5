#include "limit.h"

#include <math.h>

void st_policy_init(st_policy *policy, st_algorithm algorithm)
{
	policy->algorithm = algorithm;
	policy->nrates = 0;
	policy->words = algorithm == ST_TOKEN_BUCKET   ? 1
	                : algorithm == ST_FIXED_WINDOW ? 2
	                                               : 3;
}

int st_policy_add(st_policy *policy, double amount, int64_t period_ns,
                  int64_t burst, const char **why)
{
	st_limit *r;

	if (policy->nrates >= ST_MAX_RATES) {
		*why = "too many rates";
		return -1;
	}
	if (!(amount > 0.0) || !isfinite(amount) || amount > 1e15) {
		*why = "the number of requests must be a positive number";
		return -1;
	}
	if (period_ns <= 0 || period_ns > ST_MAX_SPAN_NS) {
		*why = "the period must be positive and at most 36 years";
		return -1;
	}
	r = &policy->rates[policy->nrates];
	r->period_ns = period_ns;
	if (policy->algorithm == ST_TOKEN_BUCKET) {
		double interval = nearbyint((double)period_ns / amount);
		if (interval < 1.0)
			interval = 1.0;
		if (interval > (double)ST_MAX_SPAN_NS) {
			*why = "the rate is too slow to represent";
			return -1;
		}
		if (burst <= 0)
			burst = amount < 1.0 ? 1 : (int64_t)floor(amount);
		r->interval_ns = (int64_t)interval;
		if (burst > ST_MAX_SPAN_NS / r->interval_ns) {
			*why = "burst * (period / N) exceeds 36 years";
			return -1;
		}
		r->capacity = burst;
		r->tolerance_ns = burst * r->interval_ns;
		r->inv_interval = 1.0 / (double)r->interval_ns;
	} else {
		if (amount < 1.0) {
			*why =
			    "a window algorithm needs at least 1 request "
			    "per window";
			return -1;
		}
		r->capacity = (int64_t)floor(amount);
		r->interval_ns = period_ns;
		r->tolerance_ns = 0;
		r->inv_interval = 1.0 / (double)period_ns;
	}
	policy->nrates++;
	return 0;
}

int64_t st_policy_max_cost(const st_policy *policy)
{
	int64_t m = INT64_MAX;
	for (int i = 0; i < policy->nrates; i++)
		m = st_min64(m, policy->rates[i].capacity);
	return m;
}

void st_policy_fresh(const st_policy *policy, int64_t *state)
{
	for (int i = 0; i < policy->nrates; i++) {
		int64_t *s = state + i * policy->words;
		s[0] = INT64_MIN; /* tat, or window index: long past */
		for (int w = 1; w < policy->words; w++)
			s[w] = 0;
	}
}

/* One rate's verdict before anything is committed. */
typedef struct {
	int ok;
	int64_t remaining, reset_ns, retry_ns;
	int64_t next[3]; /* the state to store if every rate allows */
} st_check;

/* floor(num / r->interval_ns) for 0 <= num <= ST_MAX_SPAN_NS, by a
 * multiplication corrected to the exact quotient (a 64-bit division costs
 * more than the rest of a decision). */
ST_INLINE int64_t tb_tokens(const st_limit *r, int64_t num)
{
	int64_t q;
	if (ST_UNLIKELY(num >= (INT64_C(1) << 52)))
		return num / r->interval_ns;
	q = (int64_t)((double)num * r->inv_interval);
	if (q * r->interval_ns > num)
		q--;
	else if ((q + 1) * r->interval_ns <= num)
		q++;
	return q;
}

/* ---- token bucket (GCRA) ------------------------------------------------
 * Assumes tat - now <= tolerance (an invariant of stored state) and
 * cost * interval <= tolerance (cost <= capacity), so every sum below
 * stays under 2 * ST_MAX_SPAN_NS. */
ST_INLINE void tb_check(const st_limit *r, const int64_t *s, int64_t now,
                        int64_t cost, st_check *c)
{
	int64_t tat = st_max64(s[0], now);
	int64_t new_tat = tat + cost * r->interval_ns;

	c->ok = new_tat - now <= r->tolerance_ns;
	if (c->ok) {
		c->remaining = tb_tokens(r, r->tolerance_ns - (new_tat - now));
		c->reset_ns = new_tat - now;
		c->retry_ns = 0;
		c->next[0] = new_tat;
	} else {
		c->remaining = tb_tokens(r, r->tolerance_ns - (tat - now));
		c->reset_ns = tat - now;
		c->retry_ns = new_tat - now - r->tolerance_ns;
	}
}

static int64_t tb_full_in(const int64_t *s, int64_t now)
{
	return s[0] > now ? s[0] - now : 0;
}

/* The window index floor(now / P), without a division when `hint` (the
 * window a key's state was last written in) is the current or the
 * previous window: the common case for an active key. */
ST_INLINE int64_t window_of(int64_t now, int64_t P, int64_t hint)
{
	if (ST_LIKELY(hint != INT64_MIN)) {
		int64_t start = hint * P;
		if (now >= start) {
			/* Unsigned: the true difference always fits. */
			uint64_t d = (uint64_t)now - (uint64_t)start;
			if (d < (uint64_t)P)
				return hint;
			if (d < 2 * (uint64_t)P)
				return hint + 1;
		}
	}
	return st_floordiv(now, P);
}

/* ---- fixed window -------------------------------------------------------
 * Windows are aligned on multiples of the period. */
ST_INLINE void fw_check(const st_limit *r, const int64_t *s, int64_t now,
                        int64_t cost, st_check *c)
{
	int64_t idx = window_of(now, r->period_ns, s[0]);
	int64_t count = s[0] == idx ? s[1] : 0;
	int64_t end_in = (idx + 1) * r->period_ns - now;

	c->ok = count + cost <= r->capacity;
	if (c->ok) {
		count += cost;
		c->retry_ns = 0;
		c->next[0] = idx;
		c->next[1] = count;
	} else {
		c->retry_ns = end_in;
	}
	c->remaining = r->capacity - count;
	c->reset_ns = count > 0 ? end_in : 0;
}

static int64_t fw_full_in(const st_limit *r, const int64_t *s, int64_t now)
{
	int64_t idx = window_of(now, r->period_ns, s[0]);
	if (s[0] != idx || s[1] == 0)
		return 0;
	return (idx + 1) * r->period_ns - now;
}

/* ---- sliding window counter ---------------------------------------------
 * The estimate at elapsed time e into window w is
 *     prev * (P - e) / P + cur
 * compared exactly in 128-bit integers as prev * (P - e) + cur * P. */
static void sw_load(const st_limit *r, const int64_t *s, int64_t now,
                    int64_t *idx, int64_t *prev, int64_t *cur, int64_t *e)
{
	*idx = window_of(now, r->period_ns, s[0]);
	if (s[0] == *idx) {
		*prev = s[1];
		*cur = s[2];
	} else if (s[0] != INT64_MIN && s[0] == *idx - 1) {
		*prev = s[2];
		*cur = 0;
	} else {
		*prev = 0;
		*cur = 0;
	}
	*e = now - *idx * r->period_ns;
}

static int64_t sw_reset_in(const st_limit *r, int64_t prev, int64_t cur,
                           int64_t e)
{
	if (cur > 0)
		return (r->period_ns - e) + r->period_ns;
	if (prev > 0)
		return r->period_ns - e;
	return 0;
}

/* ceil(w / P) for 0 <= w <= ST_MAX_SPAN_NS * 1e15 whose quotient is at
 * most a window's capacity: a multiplication corrected to the exact value,
 * since a 128-bit division is a slow library call. */
ST_INLINE int64_t sw_ceil_div(st_i128 w, const st_limit *r)
{
	const int64_t P = r->period_ns;
	int64_t q = (int64_t)((double)w * r->inv_interval);
	while ((st_i128)q * P > w)
		q--;
	while ((st_i128)(q + 1) * P <= w)
		q++;
	return (st_i128)q * P == w ? q : q + 1;
}

/* a * b / d for a, b >= 0 and d > 0: in 64 bits when the product fits (a
 * 128-bit division is a slow library call), else in 128. */
ST_INLINE st_i128 sw_div(int64_t a, int64_t b, int64_t d)
{
	int64_t ab;
	if (!__builtin_mul_overflow(a, b, &ab))
		return ab / d;
	return (st_i128)a * b / d;
}

static void sw_check(const st_limit *r, const int64_t *s, int64_t now,
                     int64_t cost, st_check *c)
{
	const int64_t P = r->period_ns, L = r->capacity;
	int64_t idx, prev, cur, e;
	st_i128 weighted, budget;

	sw_load(r, s, now, &idx, &prev, &cur, &e);
	weighted = (st_i128)prev * (P - e);
	budget = (st_i128)L * P;
	c->ok = weighted + (st_i128)(cur + cost) * P <= budget;
	if (c->ok) {
		cur += cost;
		c->retry_ns = 0;
		c->next[0] = idx;
		c->next[1] = prev;
		c->next[2] = cur;
	} else if (cur + cost <= L) {
		/* Wait in this window until prev's weight has shrunk:
		 * prev * (P - e') <= (L - cur - cost) * P. */
		st_i128 q = sw_div(L - cur - cost, P, prev);
		c->retry_ns = (P - (int64_t)q) - e;
	} else {
		/* Wait for the next window, where cur becomes prev:
		 * cur * (P - e2) <= (L - cost) * P. */
		st_i128 q = sw_div(L - cost, P, cur);
		int64_t e2 = q >= P ? 0 : P - (int64_t)q;
		c->retry_ns = (P - e) + e2;
	}
	/* floor((L*P - weighted - cur*P) / P) = L - cur - ceil(weighted / P)
	 */
	c->remaining = L - cur - sw_ceil_div(weighted, r);
	if (c->remaining < 0)
		c->remaining = 0;
	c->reset_ns = sw_reset_in(r, prev, cur, e);
}

static int64_t sw_full_in(const st_limit *r, const int64_t *s, int64_t now)
{
	int64_t idx, prev, cur, e;
	sw_load(r, s, now, &idx, &prev, &cur, &e);
	return sw_reset_in(r, prev, cur, e);
}

/* ---- the policy ---------------------------------------------------------
 */
ST_INLINE void check_one(const st_policy *policy, int i, const int64_t *state,
                         int64_t now, int64_t cost, st_check *c)
{
	const st_limit *r = &policy->rates[i];
	const int64_t *s = state + i * policy->words;

	switch (policy->algorithm) {
	case ST_TOKEN_BUCKET:
		tb_check(r, s, now, cost, c);
		break;
	case ST_FIXED_WINDOW:
		fw_check(r, s, now, cost, c);
		break;
	default:
		sw_check(r, s, now, cost, c);
		break;
	}
}

void st_policy_decide(const st_policy *policy, int64_t *state, int64_t now,
                      int64_t cost, int commit, st_decision *out)
{
	st_check checks[ST_MAX_RATES];
	int allowed = 1, binding = -1;

	if (ST_LIKELY(policy->nrates == 1)) {
		st_check *c = &checks[0];
		check_one(policy, 0, state, now, cost, c);
		if (c->ok && commit) {
			for (int w = 0; w < policy->words; w++)
				state[w] = c->next[w];
		}
		out->allowed = c->ok;
		out->banned = 0;
		out->binding = 0;
		out->limit = policy->rates[0].capacity;
		out->remaining = c->remaining;
		out->reset_after_ns = c->reset_ns;
		out->retry_after_ns = c->retry_ns;
		return;
	}

	for (int i = 0; i < policy->nrates; i++) {
		check_one(policy, i, state, now, cost, &checks[i]);
		allowed &= checks[i].ok;
	}
	/* The fields come from the most restrictive rate: when denied, the
	 * denying rate with the longest wait; when allowed, the rate with
	 * the fewest hits left (then the longest reset). */
	for (int i = 0; i < policy->nrates; i++) {
		const st_check *c = &checks[i], *b;
		if (binding < 0) {
			if (allowed || !c->ok)
				binding = i;
			continue;
		}
		b = &checks[binding];
		if (allowed) {
			if (c->remaining < b->remaining ||
			    (c->remaining == b->remaining &&
			     c->reset_ns > b->reset_ns))
				binding = i;
		} else if (!c->ok && c->retry_ns > b->retry_ns) {
			binding = i;
		}
	}
	if (allowed && commit) {
		for (int i = 0; i < policy->nrates; i++) {
			int64_t *s = state + i * policy->words;
			for (int w = 0; w < policy->words; w++)
				s[w] = checks[i].next[w];
		}
	}
	out->allowed = allowed;
	out->banned = 0;
	out->binding = binding;
	out->limit = policy->rates[binding].capacity;
	out->remaining = checks[binding].remaining;
	out->reset_after_ns = checks[binding].reset_ns;
	out->retry_after_ns = checks[binding].retry_ns;
}

int64_t st_policy_full_in(const st_policy *policy, const int64_t *state,
                          int64_t now)
{
	int64_t m = 0;
	for (int i = 0; i < policy->nrates; i++) {
		const st_limit *r = &policy->rates[i];
		const int64_t *s = state + i * policy->words;
		int64_t t;
		switch (policy->algorithm) {
		case ST_TOKEN_BUCKET:
			t = tb_full_in(s, now);
			break;
		case ST_FIXED_WINDOW:
			t = fw_full_in(r, s, now);
			break;
		default:
			t = sw_full_in(r, s, now);
			break;
		}
		m = st_max64(m, t);
	}
	return m;
}
