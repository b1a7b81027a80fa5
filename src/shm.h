/* Rate-limit state shared by the processes of one host: a fixed-capacity
 * table in a named POSIX shared-memory segment.
 *
 * Plain C, no Python.h. The decisions are st_policy_decide's (limit.c), so
 * a key decides exactly as in the in-process table, field for field.
 *
 * Segment layout (ST_SHM_LAYOUT): a 4 KiB header, then `nbuckets` buckets
 * of ST_SHM_WAYS slots. The header holds a magic number, the layout
 * version, the settings (max_keys, algorithm, every rate's compiled
 * parameters) and a random 128-bit secret. A key's identity is a 128-bit
 * SipHash-2-4 of its bytes keyed by that secret (and by the key's kind,
 * str or bytes), so a client cannot choose collisions; the key itself is
 * not stored. Two different keys share state only if their 128-bit hashes
 * are equal: for n live keys that happens with probability below
 * n^2 / 2^129 (about 2e-27 at a million keys), which we accept.
 *
 * A key lives in one of two buckets (one from each hash word), in any of
 * their slots; a new key goes to the emptier of the two, which keeps the
 * buckets even, so evictions start only when the segment is nearly full.
 * Each bucket has a lock word: 0 when free, else the pid of the process
 * holding it and its start time. A waiter that finds the holder gone
 * (kill(pid, 0) fails with ESRCH, the holder is a zombie, or the pid now
 * names a process started at another time) takes the lock over, so a process
 * killed with SIGKILL at any instruction never blocks the others. Each
 * slot keeps two copies of its state and a selector byte: an update writes
 * the spare copy and then flips the selector with one store, and a new
 * key is published by storing its hash's first word last, so a process
 * killed mid-update leaves either the old state or the new one, never a
 * mix (several rates of a key stay all-or-nothing). All processes must
 * share one pid namespace.
 *
 * When a new key finds both its buckets full, the slot to reuse is the
 * one whose state is closest to full (a full one first: nothing is lost),
 * which is the in-process table's sampled least-loss eviction with the two
 * buckets' 2 * ST_SHM_WAYS slots as the sample: a blocked client outlasts
 * a flood of fresh keys.
 *
 * Penalty box (penalty.h): a segment made with a penalty keeps PN_WORDS
 * more words per state copy after the rates' words, updated with them
 * (both copies, one selector), and stores the penalty in its header. A
 * banned key is refused from its slot without reading its rates; a
 * refused hit is counted there and may start a ban. Eviction ranks a ban
 * above any rate state, so a flood of fresh keys displaces bans last.
 * Segments without a penalty are laid out as before (the header's
 * penalty fields are zero).
 *
 * Lifetime: the first process to open a name creates and sizes the
 * segment (under flock, so concurrent openers wait and a creator that
 * dies mid-way is redone); later ones validate the header. The segment
 * outlives every process until st_shm_unlink() (or a reboot, which clears
 * /dev/shm and restarts CLOCK_MONOTONIC together). Times stored are the
 * callers' clock readings: CLOCK_MONOTONIC, common to all processes.
 */
#ifndef ST_SHM_H
#define ST_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "limit.h"
#include "penalty.h"

#define ST_SHM_MAGIC UINT64_C(0x4d5368636e617473) /* "stanchSM" */
#define ST_SHM_LAYOUT 3
#define ST_SHM_WAYS 8           /* slots per bucket */
#define ST_SHM_HEADER_SIZE 4096 /* bytes before the first bucket */
#define ST_SHM_MAX_KEYS (UINT32_C(1) << 30)

/* Results of st_shm_open. */
#define ST_SHM_OK 0
#define ST_SHM_EOS -1       /* a system call failed: errno is set */
#define ST_SHM_EMISMATCH -2 /* the segment holds other settings */

typedef struct {
	uint64_t lo, hi; /* never both 0: lo == 0 marks an empty slot */
} st_shm_hash;

typedef struct {
	char *base;         /* the mapping */
	size_t size;        /* its length in bytes */
	st_policy policy;   /* this process's copy, equal to the header's */
	int has_penalty;    /* keys are banned as `penalty` says */
	st_penalty penalty; /* (zero without a penalty) */
	int words;          /* state words per copy: rates', then penalty's */
	uint32_t nbuckets;  /* buckets in the segment */
	size_t bucket_size; /* bytes per bucket */
	uint64_t k0, k1;    /* the segment's secret */
} st_shm;

typedef struct {
	uint64_t keys;     /* live slots (a scan, not a snapshot) */
	uint64_t max_keys; /* as opened */
	uint64_t slots;    /* nbuckets * ST_SHM_WAYS */
	uint64_t evicted;  /* live keys dropped to make room */
	uint64_t expired;  /* full keys whose slot was reused */
	uint64_t memory;   /* segment bytes */
} st_shm_stats;

/* Opens (creating if needed) the segment `name` (a shm_open name: "/"
 * then at most 250 bytes without "/") for `policy` and `max_keys` (1 ..
 * ST_SHM_MAX_KEYS). The segment gets max_keys * 5 / 4 slots, rounded up to
 * whole buckets. Returns ST_SHM_OK and fills `h`; ST_SHM_EOS with errno
 * set and a message in `err`; or ST_SHM_EMISMATCH with a message naming
 * the segment's settings or version and the requested ones. */
int st_shm_open(st_shm *h, const char *name, const st_policy *policy,
                uint32_t max_keys, char *err, size_t errlen);

/* st_shm_open for a limiter with a penalty (`penalty` checked by
 * pn_check), or without one when `penalty` is NULL. A segment's penalty
 * is one of its settings: opening it with another one is
 * ST_SHM_EMISMATCH. */
int st_shm_open_penalty(st_shm *h, const char *name, const st_policy *policy,
                        const st_penalty *penalty, uint32_t max_keys,
                        char *err, size_t errlen);

/* Unmaps; `h` may be half-built (base NULL). The segment stays. */
void st_shm_close(st_shm *h);

/* Removes the name (mappings stay valid). Returns 0 or -1 with errno. */
int st_shm_unlink(const char *name);

/* The keyed 128-bit hash of (kind, key) under the segment's secret. */
st_shm_hash st_shm_hash_key(const st_shm *h, uint8_t kind, const void *key,
                            size_t len);

/* Decides a hit of `cost` (1 <= cost <= st_policy_max_cost) at `now` for
 * the key whose hash is `kh`, as st_policy_decide does on the key's state
 * (a key not in the table is full). Only an allowed committed hit stores a
 * new key. Never fails; may wait for another process's lock. */
void st_shm_decide(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                   int commit, st_decision *out);

/* st_shm_decide with the penalty box: a banned key is refused (`out`'s
 * retry the time left, `limit` the smallest capacity, remaining 0), and
 * a refused hit is counted. Sets *ban_count to the key's ban count when
 * this hit started a ban (out->retry_after_ns is then its length), else
 * to 0. */
void st_shm_decide_ban(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                       int commit, st_decision *out, int64_t *ban_count);

/* The penalty words of `kh` copied to `pn` (PN_WORDS): 1 when the key is
 * in the table, else 0. */
int st_shm_penalty_state(st_shm *h, st_shm_hash kh, int64_t *pn);

/* Zeroes the penalty words of `kh` (its ban, ban count and refusals),
 * keeping its rates' state. Returns 1 when it was banned at `now`. */
int st_shm_lift(st_shm *h, st_shm_hash kh, int64_t now);

/* Calls `fn(arg, time_left_ns, ban_count)` for each key banned at `now`
 * (a scan, bucket by bucket; the keys themselves are not stored). Stops
 * and returns -1 when `fn` does; else 0. `fn` runs without any lock. */
int st_shm_each_ban(st_shm *h, int64_t now,
                    int (*fn)(void *arg, int64_t left, int64_t count),
                    void *arg);

/* Forgets one key (back to full). */
void st_shm_reset(st_shm *h, st_shm_hash kh);

/* Forgets every key, bucket by bucket. */
void st_shm_reset_all(st_shm *h);

/* Counters and a scan of the live slots (no locks taken). */
void st_shm_get_stats(const st_shm *h, st_shm_stats *out);

/* The lock of the bucket of `kh`, taken and left held: for tests that kill
 * a process while it holds a lock. */
void st_shm_hold_lock(st_shm *h, st_shm_hash kh);

/* Lock words named by their owner, for other shared-memory engines
 * (conc_shm.c): the caller's owner word (pid and start time; refreshed
 * in a fork's child), whether an owner can no longer release anything
 * (gone, a zombie, or its pid reused), and a lock taken over from such
 * an owner. */
uint64_t st_shm_owner_self(void);
int st_shm_owner_gone(uint64_t owner);
void st_shm_lock_word(uint64_t *lock);
void st_shm_unlock_word(uint64_t *lock);

/* SipHash-2-4 with a 128-bit result, exposed for tests. */
st_shm_hash st_siphash128(uint64_t k0, uint64_t k1, const void *data,
                          size_t len);

#endif /* ST_SHM_H */
