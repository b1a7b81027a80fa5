#define _POSIX_C_SOURCE 200809L
#include "clock.h"

#include <time.h>

int64_t st_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * INT64_C(1000000000) + (int64_t)ts.tv_nsec;
}
