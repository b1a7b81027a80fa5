/* Parsing of the rate notation users already write for limits,
 * flask-limiter and slowapi:
 *
 *     "10/second"  "10 per minute"  "100 per 2 hours"  "5/s;1000/day"
 *
 * Rates are separated by ';', ',' or '|' (limits takes all three). Units:
 * second, minute, hour, day, month (30 days), year (365 days), in singular or
 * plural, with the shorthands s/sec, m/min, h/hr, d, mo, y/yr. N may be
 * fractional
 * ("0.5/second"); K ("per 2 hours") is a positive number too.
 */
#ifndef ST_RATE_H
#define ST_RATE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
	double amount;     /* N: requests (or cost units) per period, > 0 */
	int64_t period_ns; /* the period in nanoseconds, > 0 */
} st_rate;

/* Parses `n` bytes at `s` into at most `max` rates stored in `out`.
 *
 * Returns the number of rates parsed (>= 1) on success. On failure returns
 * -1 and writes a NUL-terminated message of at most `errlen` bytes into
 * `err` naming the bad part. Never reads past s[n-1]; `s` need not be
 * NUL-terminated. Too many rates (> max) is an error. */
int rate_parse(const char *s, size_t n, st_rate *out, size_t max, char *err,
               size_t errlen);

#endif /* ST_RATE_H */
