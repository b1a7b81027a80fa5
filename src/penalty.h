/* The penalty box: bans for keys that keep being refused, as plain time
 * math on int64_t state words (no Python), shared by the in-process
 * limiter and mirrored by the Redis scripts.
 *
 * A key refused more than `after` times within `within_ns` is banned for
 * `ban_ns`; its n-th ban lasts ban_ns * factor**(n - 1), at most
 * `max_ban_ns`. Refusals are counted in a window that opens at the first
 * refusal counted and lasts `within_ns` (mod_evasive's interval): the
 * (after + 1)-th refusal inside it bans, and a refusal after it opens a
 * new window. Refusals while banned are not counted.
 *
 * Escalation memory: the ban count is forgotten when a key is not banned
 * again within max(its last ban, within_ns) after that ban ended; its
 * next ban is then a first ban again.
 *
 * State per key (PN_WORDS words, all 0 when fresh): the window's start,
 * the refusals counted in it, the end of the ban, the ban count and the
 * last ban's length. Times are ns on one monotonic clock, in
 * [0, ST_MAX_CLOCK_NS]; spans are at most ST_MAX_SPAN_NS, so no sum below
 * overflows.
 */
#ifndef ST_PENALTY_H
#define ST_PENALTY_H

#include <stdint.h>

#include "common.h"

enum {
	PN_WINDOW = 0,  /* start of the refusal-counting window */
	PN_STRIKES = 1, /* refusals counted in it (0: no window) */
	PN_UNTIL = 2,   /* banned while now < this */
	PN_BANS = 3,    /* bans remembered for escalation */
	PN_LAST = 4,    /* length of the last ban (ns) */
	PN_WORDS = 5
};

typedef struct {
	int64_t after;      /* refusals tolerated per window, >= 1 */
	int64_t within_ns;  /* the window, 1..ST_MAX_SPAN_NS */
	int64_t ban_ns;     /* the first ban, 1..max_ban_ns */
	int64_t max_ban_ns; /* the longest ban, <= ST_MAX_SPAN_NS */
	double factor;      /* each further ban multiplied by this, >= 1 */
} st_penalty;

/* Checks a configuration; returns 0, or -1 with a static message. */
int pn_check(const st_penalty *p, const char **why);

/* Time left on the ban at `now` (ns), 0 when not banned. */
ST_INLINE int64_t pn_banned_for(const int64_t *s, int64_t now)
{
	return s[PN_UNTIL] > now ? s[PN_UNTIL] - now : 0;
}

/* Length of the n-th ban (n >= 1) in ns: ban_ns * factor**(n - 1),
 * capped at max_ban_ns. */
int64_t pn_duration(const st_penalty *p, int64_t n);

/* Records one refusal at `now` (the key is not banned). Returns the
 * length of the ban it starts, or 0 when it starts none. */
int64_t pn_strike(const st_penalty *p, int64_t *s, int64_t now);

/* Nanoseconds from `now` until the state holds nothing worth keeping (no
 * ban, no ban count to remember, no open window); 0 means dropping it
 * loses nothing. */
int64_t pn_idle_in(const st_penalty *p, const int64_t *s, int64_t now);

/* The ban count remembered at `now` (0 once forgotten). */
int64_t pn_bans(const st_penalty *p, const int64_t *s, int64_t now);

/* The refusals counted in the window open at `now` (0 when none is). */
int64_t pn_strikes(const st_penalty *p, const int64_t *s, int64_t now);

#endif /* ST_PENALTY_H */
