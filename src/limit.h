/* The rate-limiting algorithms: pure time math on plain int64_t state.
 *
 * A policy is one algorithm and 1..ST_MAX_RATES compiled rates. Each key
 * owns `st_policy_words(policy)` int64_t words of state, laid out rate after
 * rate. All times are integer nanoseconds on one monotonic clock.
 *
 *   token bucket (GCRA)  state: tat                 (theoretical arrival)
 *   fixed window         state: window, count
 *   sliding window       state: window, prev, cur   (previous-window weight)
 *
 * A decision checks every rate first and commits only if all allow: a
 * denied hit consumes nothing, and several rates are charged together or
 * not at all.
 */
#ifndef ST_LIMIT_H
#define ST_LIMIT_H

#include <stdint.h>

#include "common.h"

#define ST_MAX_RATES 8

typedef enum {
	ST_TOKEN_BUCKET = 0,
	ST_FIXED_WINDOW = 1,
	ST_SLIDING_WINDOW = 2,
} st_algorithm;

typedef struct {
	int64_t period_ns;    /* the rate's period, > 0 */
	int64_t capacity;     /* burst (token bucket) or N per window */
	int64_t interval_ns;  /* token bucket: ns to earn one token, >= 1 */
	int64_t tolerance_ns; /* token bucket: capacity * interval_ns */
	double inv_interval;  /* 1.0 / interval_ns, to divide by multiplying */
} st_limit;

typedef struct {
	st_algorithm algorithm;
	int nrates; /* 1..ST_MAX_RATES */
	int words;  /* state words per rate (1, 2 or 3) */
	st_limit rates[ST_MAX_RATES];
} st_policy;

typedef struct {
	int allowed;            /* 1 when every rate allowed */
	int binding;            /* index of the rate the fields come from */
	int64_t limit;          /* that rate's capacity */
	int64_t remaining;      /* cost-1 hits it still allows now */
	int64_t reset_after_ns; /* until that rate is back to full */
	int64_t retry_after_ns; /* 0 when allowed; else until this hit fits */
	int banned;             /* refused by a ban (penalty.h), not a rate */
} st_decision;

/* Compiles one rate into `policy->rates[policy->nrates++]`.
 *
 * `amount` is N per `period_ns`; `burst` is the token bucket capacity
 * (<= 0 picks the default, max(1, floor(N))) and is ignored by window
 * algorithms, whose capacity is floor(N). Returns 0, or -1 with a static
 * message in *why when the rate cannot be represented (N below 1 for a
 * window algorithm, spans beyond ST_MAX_SPAN_NS, too many rates). */
int st_policy_add(st_policy *policy, double amount, int64_t period_ns,
                  int64_t burst, const char **why);

/* Sets `policy` to an empty policy of `algorithm`. */
void st_policy_init(st_policy *policy, st_algorithm algorithm);

/* Number of int64_t state words per key. */
static inline int st_policy_words(const st_policy *policy)
{
	return policy->nrates * policy->words;
}

/* The smallest capacity over all rates: the largest cost that can ever be
 * allowed. */
int64_t st_policy_max_cost(const st_policy *policy);

/* Writes the "full" state (nothing consumed) into `state`. */
void st_policy_fresh(const st_policy *policy, int64_t *state);

/* Decides a hit of `cost` (1 <= cost <= st_policy_max_cost) at `now`.
 * When every rate allows and `commit` is nonzero, charges all of them in
 * `state`; otherwise `state` is untouched. Never fails. */
void st_policy_decide(const st_policy *policy, int64_t *state, int64_t now,
                      int64_t cost, int commit, st_decision *out);

/* Nanoseconds from `now` until `state` is back to full on every rate;
 * 0 means it is full (forgetting it loses nothing). */
int64_t st_policy_full_in(const st_policy *policy, const int64_t *state,
                          int64_t now);

#endif /* ST_LIMIT_H */
