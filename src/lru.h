/* The cache engine: a hash index over a dense array of entries, an LRU list
 * threaded through the entries, and expiry order.
 *
 * Plain C on opaque key and value pointers: the binding hashes and compares
 * keys (which may run Python code) and owns their references. The engine
 * never calls out, so every function here leaves the table consistent
 * when it returns, and nothing can observe it half-way.
 *
 *   entries   dense array [0, count) of 32 bytes each (two per cache
 *             line); removing an entry moves the last one into its place,
 *             so iteration and memory stay compact. Expiry data lives in a
 *             parallel array allocated only once an entry can expire.
 *   slots     open addressing with linear probing over 2**k slots holding
 *             entry index + 1 (0 = empty); deletion shifts back, so there
 *             are no tombstones. The home slot comes from the stored hash,
 *             which is computed once per key and reused for every resize.
 *   LRU list  `newer`/`older` links; `mru` is the most recently used.
 *   expiry    entries that share the cache's default TTL expire in the
 *             order they were written, so a FIFO list keeps them sorted
 *             for free; entries with their own TTL go to a binary min-heap.
 *             Either way the next entry to expire is found in O(1).
 */
#ifndef ST_LRU_H
#define ST_LRU_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "index.h"

/* No entry. */
#define LRU_NIL UINT32_MAX
/* In tprev: the entry is in the heap, at position tnext. */
#define LRU_IN_HEAP (UINT32_MAX - 1)
/* In expires: the entry never expires. */
#define LRU_NEVER INT64_MAX
/* The most entries a table can hold. */
#define LRU_MAX_ENTRIES (UINT32_C(1) << 30)

typedef struct {
	uint64_t hash;  /* the key's hash, computed once */
	void *key;      /* owned by the caller */
	void *value;    /* owned by the caller */
	uint32_t newer; /* LRU list: towards mru, LRU_NIL at mru */
	uint32_t older; /* LRU list: towards lru, LRU_NIL at lru */
} lru_entry;

typedef struct {
	int64_t expires; /* ns; LRU_NEVER when the entry never expires */
	uint32_t tprev;  /* FIFO links, or LRU_IN_HEAP; LRU_NIL if none */
	uint32_t tnext;  /* FIFO link, or the entry's heap index */
} lru_ttl;

typedef struct {
	lru_entry *entries;   /* dense, `cap` allocated, `count` used */
	lru_ttl *ttl;         /* parallel to entries, or NULL: none expires */
	int64_t *weights;     /* parallel to entries, or NULL if unweighted */
	uint32_t *slots;      /* hash index: entry index + 1, 0 = empty */
	uint32_t *heap;       /* entry indices ordered by expires */
	uint32_t count;       /* entries in use */
	uint32_t cap;         /* entries allocated */
	uint32_t nslots;      /* 0 or a power of two >= 2 * cap */
	uint32_t hcount;      /* entries in the heap */
	uint32_t hcap;        /* heap slots allocated */
	int weighted;         /* keep weights */
	uint32_t mru, lru;    /* LRU list ends */
	uint32_t fhead;       /* FIFO: the next to expire */
	uint32_t ftail;       /* FIFO: the last written */
	uint32_t max_cap;     /* never allocate more entries than this */
	st_i128 total_weight; /* sum of weights: 2**30 of 2**63 fit */
	uint64_t mutations;   /* bumped whenever entries or slots move */
} lru_table;

/* When entry `i` expires (LRU_NEVER if it does not). */
ST_INLINE int64_t lru_expires(const lru_table *t, uint32_t i)
{
	return t->ttl != NULL ? t->ttl[i].expires : LRU_NEVER;
}

/* Initialises an empty table that owns no memory and will never hold
 * more than `max_cap` (<= LRU_MAX_ENTRIES) entries. */
void lru_init(lru_table *t, uint32_t max_cap, int weighted);

/* Frees the table's arrays (not the keys and values, which the caller
 * owns) and leaves it empty, as after lru_init but with `mutations`
 * bumped. */
void lru_free(lru_table *t);

/* Home slot of `hash`. Requires nslots > 0. */
ST_INLINE uint32_t lru_home(const lru_table *t, uint64_t hash)
{
	return st_ix_home(hash, t->nslots - 1);
}

/* Walks the probe sequence of `hash` from *slot (start at lru_home) and
 * returns the index of the next entry whose stored hash equals `hash`, or
 * LRU_NIL at the end of the sequence. Advances *slot past the match, so
 * calling again continues the walk. The walk is valid only while
 * `mutations` is unchanged. */
ST_INLINE uint32_t lru_next_match(const lru_table *t, uint64_t hash,
                                  uint32_t *slot)
{
	uint32_t mask = t->nslots - 1, s = *slot;

	if (ST_UNLIKELY(t->nslots == 0))
		return LRU_NIL;
	for (;;) {
		uint32_t v = t->slots[s];
		s = (s + 1) & mask;
		if (v == 0) {
			*slot = s;
			return LRU_NIL;
		}
		if (t->entries[v - 1].hash == hash) {
			*slot = s;
			return v - 1;
		}
	}
}

/* Ensures one more entry fits without allocating, and that an entry with
 * `expires` and `fifo` (as for lru_insert) can be stored. Returns 0, or
 * -1 when out of memory or when the table holds max_cap entries already
 * (the table is unchanged either way). */
int lru_reserve(lru_table *t, int64_t expires, int fifo);

/* Ensures an existing entry can be given `expires` and `fifo` (as for
 * lru_set_expiry) without allocating. Returns 0, or -1 when out of
 * memory (the table is unchanged). */
int lru_reserve_expiry(lru_table *t, int64_t expires, int fifo);

/* Appends an entry as most recently used. `expires` is LRU_NEVER or a
 * time in ns; `fifo` says it expires no earlier than every entry already
 * in the FIFO (the default TTL under a monotonic clock), otherwise it
 * goes to the heap. Requires a successful lru_reserve and that no entry
 * with an equal key exists. Returns the entry's index. */
uint32_t lru_insert(lru_table *t, uint64_t hash, void *key, void *value,
                    int64_t expires, int fifo, int64_t weight);

/* Replaces the least recently used entry (the table must not be empty)
 * by a new one, in place: what lru_remove(t, t->lru) then lru_insert
 * would do, without moving any other entry. Stores the old key and value
 * in *old_key and *old_value for the caller to release. Same
 * requirements as lru_insert, except that only lru_reserve_expiry is
 * needed.
 * Returns the entry's index. */
uint32_t lru_replace_lru(lru_table *t, uint64_t hash, void *key, void *value,
                         int64_t expires, int fifo, int64_t weight,
                         void **old_key, void **old_value);

/* Starts loading what replacing the least recently used entry will
 * touch, so the loads overlap the caller's lookup of the new key. */
ST_INLINE void lru_prefetch_victim(const lru_table *t)
{
#if defined(__GNUC__) || defined(__clang__)
	if (t->lru != LRU_NIL && t->nslots > 0)
		__builtin_prefetch(
		    &t->slots[lru_home(t, t->entries[t->lru].hash)], 1);
#else
	(void)t;
#endif
}

/* Removes entry `i` from every structure; the last entry moves into its
 * place. The caller must have taken the key and value first. May shrink
 * the arrays when the table has become mostly empty. */
void lru_remove(lru_table *t, uint32_t i);

/* Makes entry `i` the most recently used. */
ST_INLINE void lru_touch(lru_table *t, uint32_t i)
{
	lru_entry *e = t->entries, *x = &e[i];

	if (i == t->mru)
		return;
	/* Unlink: x has a newer entry since it is not the mru. */
	e[x->newer].older = x->older;
	if (x->older != LRU_NIL)
		e[x->older].newer = x->newer;
	else
		t->lru = x->newer;
	/* Link at the mru end. */
	x->older = t->mru;
	x->newer = LRU_NIL;
	e[t->mru].newer = i;
	t->mru = i;
}

/* Gives entry `i` a new expiry (same meaning as in lru_insert). */
void lru_set_expiry(lru_table *t, uint32_t i, int64_t expires, int fifo);

/* True when an entry given `expires` and `fifo` would go to the heap. */
ST_INLINE int lru_needs_heap(const lru_table *t, int64_t expires, int fifo)
{
	return expires != LRU_NEVER &&
	       (!fifo ||
	        (t->ftail != LRU_NIL && t->ttl[t->ftail].expires > expires));
}

/* Sets entry `i`'s weight, keeping the total. */
ST_INLINE void lru_set_weight(lru_table *t, uint32_t i, int64_t weight)
{
	if (t->weights != NULL) {
		t->total_weight += weight - t->weights[i];
		t->weights[i] = weight;
	}
}

/* True when some entry can expire. */
ST_INLINE int lru_has_expiry(const lru_table *t)
{
	return t->fhead != LRU_NIL || t->hcount > 0;
}

/* An entry with expires <= now, or LRU_NIL if none has expired. */
ST_INLINE uint32_t lru_expired(const lru_table *t, int64_t now)
{
	if (t->fhead != LRU_NIL && t->ttl[t->fhead].expires <= now)
		return t->fhead;
	if (t->hcount > 0 && t->ttl[t->heap[0]].expires <= now)
		return t->heap[0];
	return LRU_NIL;
}

/* Bytes of memory the table's arrays hold. */
size_t lru_memory(const lru_table *t);

#endif /* ST_LRU_H */
