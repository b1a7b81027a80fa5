/* Concurrency slots: at most `limit` holders in flight per key, and a
 * bounded wait queue per key served in priority order, FIFO within a
 * priority (a "lane").
 *
 * Plain C, no Python: a waiter is an intrusive cc_node that the caller
 * embeds in its own object; the engine links, unlinks and hands slots
 * to nodes, and the caller wakes whoever owns a node that got one.
 *
 * Lanes: lane 0 is the least important, lane nlanes-1 the most. Lane p
 * may take a slot only while fewer than cc_cap(t, p) = limit - reserve *
 * (nlanes - 1 - p) slots are in flight, so the top lane always has
 * `reserve` slots per lane below it that lower lanes cannot take. A
 * release hands its slot to the head of the highest non-empty lane (if
 * that lane's cap allows), so waiters of a higher lane go first, FIFO
 * within a lane. When the queue is full, an arrival of a higher lane
 * sheds the newest waiter of the lowest lane below it and takes its
 * place: lower priority traffic is refused first.
 *
 * Memory: a key's state (cc_key) exists only while something holds or
 * waits on it, and at most `max_keys` keys exist at once; freed states
 * are kept on a short free list so a free-slot hold allocates nothing.
 *
 * Not thread-safe: callers serialise access (the GIL, or a lock).
 */
#ifndef ST_CONC_H
#define ST_CONC_H

#include <stddef.h>
#include <stdint.h>

#include "keytable.h"

/* Lanes per limiter, at most. */
#define CC_MAX_LANES 16
/* Dense position of a key state that is not in the table (the global
 * key). */
#define CC_NO_POS SIZE_MAX
/* Key states kept for reuse. */
#define CC_FREELIST 32

typedef struct cc_node {
	struct cc_node *prev; /* circular list through the lane's root */
	struct cc_node *next;
	int lane; /* lane of the waiter, set by cc_enqueue */
} cc_node;

typedef struct cc_key {
	size_t pos;      /* dense position in the table, or CC_NO_POS */
	int64_t held;    /* slots in flight */
	int64_t queued;  /* waiters in all lanes */
	cc_node lanes[]; /* one root per lane; empty when root.next == root */
} cc_key;

typedef struct {
	int64_t limit;   /* slots per key */
	int64_t queue;   /* waiters per key, all lanes together */
	int64_t reserve; /* slots kept per lane step for higher lanes */
	int nlanes;      /* 1..CC_MAX_LANES */
	kt_table table;  /* key -> one word: the cc_key pointer */
	cc_key *global;  /* the key-less state, always allocated */
	int64_t held;    /* slots in flight over all keys */
	int64_t queued;  /* waiters over all keys */
	int nfree;       /* entries used in `freelist` */
	cc_key *freelist[CC_FREELIST];
} cc_table;

/* Initialises `t` (limit >= 1, queue >= 0, 1 <= nlanes <= CC_MAX_LANES,
 * reserve >= 0 with reserve * (nlanes - 1) < limit, 1 <= max_keys <
 * 2**31). Returns 0, or -1 when memory runs out (then `t` needs no
 * cc_free). */
int cc_init(cc_table *t, int64_t limit, int64_t queue, int nlanes,
            int64_t reserve, size_t max_keys, uint64_t seed);

/* Frees every key state and the table. Waiters still linked are
 * forgotten (their nodes are the caller's memory). */
void cc_free(cc_table *t);

/* The slots lane `lane` may see in flight before it must wait. */
static inline int64_t cc_cap(const cc_table *t, int lane)
{
	return t->limit - t->reserve * (int64_t)(t->nlanes - 1 - lane);
}

/* Results of cc_find_or_add. */
#define CC_OK 0
#define CC_FULL (-1)  /* max_keys keys already exist */
#define CC_NOMEM (-2) /* out of memory */

/* The state of a key, created (empty) when absent. Returns it, or NULL
 * with *err = CC_FULL or CC_NOMEM (the table is unchanged then). */
cc_key *cc_find_or_add(cc_table *t, uint64_t hash, uint8_t tag,
                       const char *key, size_t len, int *err);

/* The state of a key, or NULL when nothing holds or waits on it. */
cc_key *cc_find(const cc_table *t, uint64_t hash, uint8_t tag, const char *key,
                size_t len);

/* Takes a slot for lane `lane` if one is free to it and no waiter of
 * this lane or a higher one is queued (arrivals never jump the queue).
 * Returns 1 (taken) or 0 (nothing changed). */
int cc_try(cc_table *t, cc_key *k, int lane);

/* Queues `node` at the tail of lane `lane`. When the key's queue is
 * full, sheds the newest waiter of the lowest non-empty lane below
 * `lane` (unlinked; *shed points to it, for the caller to refuse) to
 * make room. Returns 0 (queued), or -1 when the queue is full and
 * nothing could be shed (nothing changed). */
int cc_enqueue(cc_table *t, cc_key *k, cc_node *node, int lane,
               cc_node **shed);

/* Unlinks a queued `node` of key `k` (a waiter that gave up). */
void cc_cancel(cc_table *t, cc_key *k, cc_node *node);

/* Gives back one slot of `k` and hands it on: returns the waiter that
 * now holds it (unlinked, counted as a holder), or NULL. */
cc_node *cc_release(cc_table *t, cc_key *k);

/* Drops `k` when nothing holds or waits on it (never the global key);
 * `k` must not be used afterwards then. */
void cc_drop_if_idle(cc_table *t, cc_key *k);

/* Bytes of memory held (table, key states, free list). */
size_t cc_memory(const cc_table *t);

#endif /* ST_CONC_H */
