/* Concurrency slots shared by the processes of one host: leases in a
 * named POSIX shared-memory segment.
 *
 * Plain C, no Python.h; Linux only (elsewhere cs_open fails with ENOSYS).
 *
 * Segment layout (CS_LAYOUT): a 4 KiB header (magic, layout, settings,
 * a random 128-bit secret for the keyed hash of keys, a ticket counter),
 * then `nbuckets` buckets (room for twice max_keys keys, so a key finds
 * its bucket full only near max_keys live keys). A bucket is a lock word
 * (shm.c's: 0 when free, else its holder's pid and start time, taken over when
 * the holder is gone) and CS_WAYS key entries. An entry is the key's 128-bit
 * keyed hash (lo == 0: empty), `limit` lease slots and `queue` queue slots.
 *
 * A lease slot holds its owner word (0: free), the lease id the caller
 * chose, its expiry (CLOCK_MONOTONIC ns) and the priority lane. A lease
 * is free once it expires, or once its owner process is gone (checked
 * only when the key's slots are all taken, since it costs system calls):
 * a holder killed with SIGKILL frees its slots at the next attempt of
 * another process, a stopped or stuck one when its lease expires.
 *
 * A queue slot holds its owner word, the waiter's id, its order (lane
 * offset plus a ticket from the header's counter: higher lanes first,
 * then arrival) and an expiry that the waiter renews at each poll, so a
 * waiter that died leaves the queue within its patience.
 *
 * Writes that a process killed mid-way could leave half done publish
 * last: a slot's owner word (a key's hash's lo word) is stored after the
 * rest, and freeing is one store of 0.
 */
#ifndef ST_CONC_SHM_H
#define ST_CONC_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define CS_MAGIC UINT64_C(0x43436863616e7473) /* "stanchCC" */
#define CS_LAYOUT 1
#define CS_WAYS 8
#define CS_HEADER_SIZE 4096
#define CS_MAX_LANES 16
/* Queue orders: lane offset (CS_LANE_SPAN per lane step) + ticket. */
#define CS_LANE_SPAN (UINT64_C(1) << 48)

/* Results of cs_open. */
#define CS_OK 0
#define CS_EOS -1       /* a system call failed: errno is set */
#define CS_EMISMATCH -2 /* the segment holds other settings */

/* Results of cs_acquire. */
#define CS_TAKEN 1   /* a lease is ours */
#define CS_WAITING 0 /* queued (or, for a try, nothing changed) */
#define CS_FULL -1   /* the queue is full and nothing could be shed */
#define CS_LOST -2   /* we were queued, and are not any more (shed) */
#define CS_KEYS -3   /* no entry free for a new key */

/* Modes of cs_acquire. */
#define CS_TRY 0  /* take a free slot or change nothing */
#define CS_JOIN 1 /* take one, or join the queue */
#define CS_POLL 2 /* already queued: take one, or renew our place */

typedef struct {
	uint64_t lo, hi;
} cs_hash;

typedef struct {
	int64_t limit, queue, reserve;
	int32_t nlanes;
	uint32_t max_keys;
} cs_settings;

typedef struct {
	char *base;         /* the mapping */
	size_t size;        /* its bytes */
	cs_settings set;    /* as opened */
	uint32_t nbuckets;  /* buckets after the header */
	size_t entry_size;  /* bytes per key entry */
	size_t bucket_size; /* bytes per bucket */
	uint64_t k0, k1;    /* the segment's secret */
} cs_shm;

/* Opens (creating if needed) the segment `name` (a shm_open name) for
 * `set` (limit >= 1, queue >= 0, 1 <= nlanes <= CS_MAX_LANES, reserve *
 * (nlanes - 1) < limit, max_keys >= 1, and a segment under 2**40 bytes).
 * Returns CS_OK and fills `h`; CS_EOS with errno set and a message in
 * `err`; or CS_EMISMATCH with a message naming both settings. */
int cs_open(cs_shm *h, const char *name, const cs_settings *set, char *err,
            size_t errlen);

/* Unmaps; `h` may be half-built. */
void cs_close(cs_shm *h);

/* The keyed hash of (kind, key) under the segment's secret. */
cs_hash cs_hash_key(const cs_shm *h, uint8_t kind, const void *key,
                    size_t len);

/* One attempt of waiter `id` (nonzero) of lane `lane` on key `kh` at
 * `now`: takes a lease of `lease_ns` when the lane's cap allows and no
 * waiter is ahead; else, by `mode`, changes nothing (CS_TRY), joins the
 * queue (CS_JOIN; shedding the newest waiter of the lowest lane below
 * when the queue is full) or renews its place (CS_POLL) for
 * `patience_ns`. Sets *held and *queued to the key's counts after it.
 * May wait for another process's bucket lock. */
int cs_acquire(cs_shm *h, cs_hash kh, uint64_t id, int lane, int64_t lease_ns,
               int64_t patience_ns, int mode, int64_t now, int64_t *held,
               int64_t *queued);

/* Frees the lease and the queue place of `id` on `kh` (either may be
 * absent); drops the key's entry when nothing is left in it. */
void cs_release(cs_shm *h, cs_hash kh, uint64_t id);

/* Renews the lease of `id` to now + lease_ns. Returns 1, or 0 when it
 * has no lease any more. */
int cs_extend(cs_shm *h, cs_hash kh, uint64_t id, int64_t lease_ns,
              int64_t now);

/* The key's live leases and waiters at `now`. */
void cs_count(cs_shm *h, cs_hash kh, int64_t now, int64_t *held,
              int64_t *queued);

#endif /* ST_CONC_SHM_H */
