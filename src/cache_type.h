/* _core.Cache: the instance layout and the operations that
 * _core.CachedCall (cached_type.c) runs on a cache.
 *
 * Python equivalent: see the header of cache_type.c.
 */
#ifndef ST_CACHE_TYPE_H
#define ST_CACHE_TYPE_H

#include "clock.h"
#include "lru.h"
#include "module.h"

typedef struct {
	PyObject_HEAD st_state *st; /* module state */
	lru_table table;      /* the entries; keys and values are owned */
	uint32_t maxsize;     /* most entries kept */
	int bounded;          /* maxsize was given (not None) */
	int64_t ttl_ns;       /* default TTL, 0 = entries never expire */
	int64_t maxweight;    /* most total weight kept, when weigh is set */
	PyObject *clock;      /* NULL = the C monotonic clock */
	st_fastclock fclock;  /* the C monotonic clock, fast */
	PyObject *weigh;      /* NULL = unweighted */
	PyObject *on_evict;   /* NULL, or called (key, value) per eviction */
	int64_t last_now;     /* time never runs backwards in here */
	uint64_t hits;        /* reads that found a live entry */
	uint64_t misses;      /* reads that did not */
	uint64_t evictions;   /* live entries dropped to make room */
	uint64_t expirations; /* expired entries removed */
	PyObject *weakreflist;
} CacheObject;

/* A read that counts: a hit makes the entry the most recently used,
 * counts a hit and sets *value (new reference) and returns 1; a miss
 * counts a miss and returns 0; -1 with an exception set on error. May run
 * Python code (the key's __hash__/__eq__, the injected clock, a dropped
 * expired value's __del__). */
int cache_read(CacheObject *self, PyObject *key, PyObject **value);

/* Removes `key`. Returns 1 and its value (new reference, now owned by the
 * caller) in *value if it was live, 0 if absent or expired (an expired
 * one is removed), -1 with an exception set on error. May run Python
 * code, as cache_read. */
int cache_take(CacheObject *self, PyObject *key, PyObject **value);

/* Reads the clock and removes every expired entry, when anything can
 * expire. Returns 0, or -1 with an exception set (the injected clock's). */
int cache_purge_now(CacheObject *self);

/* maxsize as Python sees it: an int, or None when unbounded. Returns a
 * new reference, or NULL with an exception set. */
PyObject *maxsize_object(CacheObject *self);

/* Empties the table, dropping the references once it is empty (their
 * finalizers see an empty cache). Never fails. */
void cache_clear_table(CacheObject *self);

/* Cache.reset_stats(): zeroes the hit, miss, eviction and expiration
 * counts. Returns None (new reference); `unused` is ignored. */
PyObject *cache_reset_stats(CacheObject *self, PyObject *unused);

#endif /* ST_CACHE_TYPE_H */
