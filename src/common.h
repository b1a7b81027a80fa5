/* Shared macros and small helpers for the stanchion C engine.
 *
 * Nothing here includes Python.h: the engine (time math, tables, parsers)
 * is plain C so it can be unit-tested and fuzzed without an interpreter.
 */
#ifndef ST_COMMON_H
#define ST_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define ST_LIKELY(x) __builtin_expect(!!(x), 1)
#define ST_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ST_INLINE static inline __attribute__((always_inline))
#else
#define ST_LIKELY(x) (x)
#define ST_UNLIKELY(x) (x)
#define ST_INLINE static inline
#endif

/* Nanoseconds per unit. */
#define ST_NS_PER_SEC INT64_C(1000000000)

/* The largest span (ns) one rate may cover (period, burst * interval):
 * about 36 years. Clock readings stay within +-2**62 ns, so now plus two
 * spans never overflows int64_t. */
#define ST_MAX_SPAN_NS (INT64_C(1) << 60)
#define ST_MAX_CLOCK_NS (INT64_C(1) << 62)

/* 128-bit products for the sliding-window weighting (count * ns). */
#if defined(__SIZEOF_INT128__)
typedef __int128 st_i128;
#else
#error "stanchion needs a compiler with __int128 (gcc or clang)"
#endif

ST_INLINE int64_t st_max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}
ST_INLINE int64_t st_min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

/* floor(a / b) for b > 0 and any sign of a. */
ST_INLINE int64_t st_floordiv(int64_t a, int64_t b)
{
	int64_t q = a / b;
	return (a % b != 0 && a < 0) ? q - 1 : q;
}

#endif /* ST_COMMON_H */
