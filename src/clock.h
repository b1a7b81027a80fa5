/* The default clock: monotonic time in integer nanoseconds. */
#ifndef ST_CLOCK_H
#define ST_CLOCK_H

#include <stdint.h>

/* Returns CLOCK_MONOTONIC in nanoseconds. Never fails on the platforms we
 * build for (Linux, macOS, the BSDs); never runs backwards. */
int64_t st_monotonic_ns(void);

#endif /* ST_CLOCK_H */
