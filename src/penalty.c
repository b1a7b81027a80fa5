#include "penalty.h"

#include <math.h>

int pn_check(const st_penalty *p, const char **why)
{
	if (p->after < 1) {
		*why = "after must be >= 1";
		return -1;
	}
	if (p->within_ns < 1 || p->within_ns > ST_MAX_SPAN_NS) {
		*why = "within must be between 1 ns and about 36 years";
		return -1;
	}
	if (p->ban_ns < 1 || p->max_ban_ns > ST_MAX_SPAN_NS) {
		*why =
		    "ban and max_ban must be between 1 ns and about 36 years";
		return -1;
	}
	if (p->max_ban_ns < p->ban_ns) {
		*why = "max_ban must be >= ban";
		return -1;
	}
	if (!isfinite(p->factor) || !(p->factor >= 1.0)) {
		*why = "factor must be a finite number >= 1";
		return -1;
	}
	return 0;
}

int64_t pn_duration(const st_penalty *p, int64_t n)
{
	double d = (double)p->ban_ns * pow(p->factor, (double)(n - 1));

	/* pow may give inf: the comparison is then false too. */
	if (!(d < (double)p->max_ban_ns))
		return p->max_ban_ns;
	return st_max64(p->ban_ns, (int64_t)llround(d));
}

/* When the ban count is forgotten: max(last ban, within) after the ban's
 * end. */
ST_INLINE int64_t pn_forget_at(const st_penalty *p, const int64_t *s)
{
	return s[PN_UNTIL] + st_max64(s[PN_LAST], p->within_ns);
}

/* True while the window holds counted refusals. */
ST_INLINE int pn_window_open(const st_penalty *p, const int64_t *s,
                             int64_t now)
{
	return s[PN_STRIKES] > 0 && now - s[PN_WINDOW] < p->within_ns;
}

int64_t pn_bans(const st_penalty *p, const int64_t *s, int64_t now)
{
	return s[PN_BANS] > 0 && now < pn_forget_at(p, s) ? s[PN_BANS] : 0;
}

int64_t pn_strikes(const st_penalty *p, const int64_t *s, int64_t now)
{
	return pn_window_open(p, s, now) ? s[PN_STRIKES] : 0;
}

int64_t pn_strike(const st_penalty *p, int64_t *s, int64_t now)
{
	int64_t dur, bans;

	if (!pn_window_open(p, s, now)) {
		s[PN_WINDOW] = now;
		s[PN_STRIKES] = 0;
	}
	s[PN_STRIKES]++;
	if (s[PN_STRIKES] <= p->after)
		return 0;
	bans = pn_bans(p, s, now);
	if (bans < INT32_MAX)
		bans++;
	dur = pn_duration(p, bans);
	s[PN_BANS] = bans;
	s[PN_UNTIL] = now + dur;
	s[PN_LAST] = dur;
	s[PN_STRIKES] = 0; /* the window closes with the ban */
	return dur;
}

int64_t pn_idle_in(const st_penalty *p, const int64_t *s, int64_t now)
{
	int64_t left = 0;

	if (s[PN_BANS] > 0)
		left = pn_forget_at(p, s) - now;
	if (s[PN_STRIKES] > 0)
		left = st_max64(left, s[PN_WINDOW] + p->within_ns - now);
	return st_max64(left, 0);
}
