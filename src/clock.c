#define _POSIX_C_SOURCE 200809L
#include "clock.h"

#include <string.h>
#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

int64_t st_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * INT64_C(1000000000) + (int64_t)ts.tv_nsec;
}

/* Whether the tick counter runs at a constant rate through frequency
 * changes and sleep states. */
static int st_ticks_invariant(void)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	unsigned a, b, c, d;
	if (__get_cpuid(0x80000000u, &a, &b, &c, &d) == 0 || a < 0x80000007u)
		return 0;
	__get_cpuid(0x80000007u, &a, &b, &c, &d);
	return (d >> 8) & 1; /* "invariant TSC" */
#elif defined(__aarch64__)
	return 1; /* the generic timer runs at a fixed frequency */
#else
	return 0;
#endif
}

void st_fastclock_init(st_fastclock *c)
{
	memset(c, 0, sizeof(*c));
	c->sync_ticks = 0; /* every read syncs until calibrated */
	c->base_ns = st_monotonic_ns();
	c->last_ns = c->base_ns;
	if (ST_HAVE_TICKS && st_ticks_invariant()) {
		int64_t ns0 = st_monotonic_ns(), ns1;
		uint64_t t0 = st_ticks(), t1;
		do {
			ns1 = st_monotonic_ns();
			t1 = st_ticks();
		} while (ns1 - ns0 < 200000);
		if (t1 > t0) {
			c->ns_per_tick =
			    (double)(ns1 - ns0) / (double)(t1 - t0);
			c->sync_ticks =
			    (uint64_t)((double)ST_FASTCLOCK_SYNC_NS /
			               c->ns_per_tick);
		}
		c->base_ns = ns1;
		c->base_tick = t1;
		c->last_ns = ns1;
	}
}

void st_fastclock_copy(st_fastclock *dst, const st_fastclock *calibrated)
{
	*dst = *calibrated;
	dst->base_ns = st_monotonic_ns();
	dst->base_tick = st_ticks();
	dst->last_ns = dst->base_ns;
}

int64_t st_fastclock_sync(st_fastclock *c)
{
	int64_t ns = st_monotonic_ns();
	uint64_t t = st_ticks();

	if (c->ns_per_tick > 0.0) {
		/* Refine the rate from this interval, gently, when the
		 * interval is a clean measurement (not a long pause). */
		uint64_t dt = t - c->base_tick;
		int64_t dns = ns - c->base_ns;
		if (dns > 0 && dt > 0 && dt < 4 * c->sync_ticks) {
			double r = (double)dns / (double)dt;
			if (r > 0.5 * c->ns_per_tick && r < 2 * c->ns_per_tick)
				c->ns_per_tick =
				    0.9 * c->ns_per_tick + 0.1 * r;
		}
	}
	c->base_ns = ns;
	c->base_tick = t;
	if (ns < c->last_ns)
		return c->last_ns;
	c->last_ns = ns;
	return ns;
}
