/* Clocks: monotonic time in integer nanoseconds.
 *
 * st_monotonic_ns() reads CLOCK_MONOTONIC (about 30 ns through the vDSO on
 * a virtual machine). The hot path uses st_fastclock, which extrapolates
 * CLOCK_MONOTONIC from the CPU's invariant time-stamp counter (x86-64
 * RDTSC, aarch64 CNTVCT_EL0; about 10 ns) and re-reads CLOCK_MONOTONIC at
 * least every ST_FASTCLOCK_SYNC_NS, so it never drifts from it by more
 * than the counter's rate error over that interval (well under a
 * microsecond). Where no invariant counter exists it falls back to
 * CLOCK_MONOTONIC on every read.
 */
#ifndef ST_CLOCK_H
#define ST_CLOCK_H

#include <stdint.h>

#include "common.h"

/* Re-read CLOCK_MONOTONIC at least this often (ns). */
#define ST_FASTCLOCK_SYNC_NS INT64_C(1000000)

/* Returns CLOCK_MONOTONIC in nanoseconds. Never runs backwards. */
int64_t st_monotonic_ns(void);

typedef struct {
	int64_t base_ns;     /* CLOCK_MONOTONIC at the last sync */
	uint64_t base_tick;  /* counter at the last sync */
	uint64_t sync_ticks; /* sync again after this many ticks */
	double ns_per_tick;  /* counter period; 0 = no usable counter */
	int64_t last_ns;     /* the last value returned */
} st_fastclock;

/* Measures the counter against CLOCK_MONOTONIC (spins about 200 us) and
 * initialises `c`. Safe on every platform: without an invariant counter,
 * st_fastclock_now() simply reads CLOCK_MONOTONIC. */
void st_fastclock_init(st_fastclock *c);

/* Copies a calibrated clock's rate into a fresh one (no spinning). */
void st_fastclock_copy(st_fastclock *dst, const st_fastclock *calibrated);

/* Slow path of st_fastclock_now: re-reads CLOCK_MONOTONIC. */
int64_t st_fastclock_sync(st_fastclock *c);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <x86intrin.h>
#define ST_HAVE_TICKS 1
ST_INLINE uint64_t st_ticks(void)
{
	return __rdtsc();
}
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define ST_HAVE_TICKS 1
ST_INLINE uint64_t st_ticks(void)
{
	uint64_t v;
	__asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(v));
	return v;
}
#else
#define ST_HAVE_TICKS 0
ST_INLINE uint64_t st_ticks(void)
{
	return 0;
}
#endif

/* Monotonic nanoseconds, never less than the previous value from `c`.
 * Not thread-safe: one clock per structure that is itself serialised. */
ST_INLINE int64_t st_fastclock_now(st_fastclock *c)
{
	uint64_t d = st_ticks() - c->base_tick;
	int64_t ns;

	if (ST_UNLIKELY(d >= c->sync_ticks))
		return st_fastclock_sync(c);
	ns = c->base_ns + (int64_t)((double)d * c->ns_per_tick);
	if (ST_UNLIKELY(ns < c->last_ns))
		return c->last_ns;
	c->last_ns = ns;
	return ns;
}

#endif /* ST_CLOCK_H */
