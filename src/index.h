/* The open-addressing hash index shared by the limiter's key table
 * (keytable.c) and the cache engine (lru.c).
 *
 * An index is an array of 2**k uint32_t slots, each 0 (empty) or the
 * position of an entry plus one. Entries live in the owner's dense
 * array; the index only finds them. Probing is linear from the home
 * slot (k bits of a Fibonacci-multiplied hash), and deletion
 * shifts later members of the cluster back, so there are no tombstones
 * and a flood of inserts and deletes never degrades probing. The owner
 * keeps each entry's hash and hands it over through a callback, which
 * the inline functions below call directly when the owner passes a
 * static function (the compiler then inlines it).
 *
 * Plain C, no Python.h. Python equivalent: a dict from hash to position
 * that tolerates equal hashes.
 */
#ifndef ST_INDEX_H
#define ST_INDEX_H

#include <stdint.h>

#include "common.h"

/* The stored hash of the entry at dense position `pos` of `owner`. */
typedef uint64_t (*st_ix_hash_fn)(const void *owner, uint32_t pos);

/* Home slot of `hash` in an index of mask + 1 slots. Fibonacci hashing
 * spreads any hash over the index (bits 32 and up of the product). */
ST_INLINE uint32_t st_ix_home(uint64_t hash, uint32_t mask)
{
	return (uint32_t)((hash * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & mask;
}

/* Stores `pos` in the first empty slot of the probe run from `home`.
 * Requires an empty slot (the owner keeps the load below 1). */
ST_INLINE void st_ix_put(uint32_t *slots, uint32_t mask, uint32_t home,
                         uint32_t pos)
{
	uint32_t s = home;

	while (slots[s] != 0)
		s = (s + 1) & mask;
	slots[s] = pos + 1;
}

/* The slot holding `pos`, which must be in the index and whose home is
 * `home`. */
ST_INLINE uint32_t st_ix_slot_of(const uint32_t *slots, uint32_t mask,
                                 uint32_t home, uint32_t pos)
{
	uint32_t s = home;

	while (slots[s] != pos + 1)
		s = (s + 1) & mask;
	return s;
}

/* Empties slot `hole` and shifts later members of its cluster back, so
 * every entry stays reachable from its home slot. `hash_of` gives the
 * hash of an entry of `owner` by position. */
ST_INLINE void st_ix_delete(uint32_t *slots, uint32_t mask, uint32_t hole,
                            st_ix_hash_fn hash_of, const void *owner)
{
	uint32_t j = hole;

	for (;;) {
		uint32_t v, home;
		j = (j + 1) & mask;
		v = slots[j];
		if (v == 0)
			break;
		home = st_ix_home(hash_of(owner, v - 1), mask);
		/* The entry at j may move to the hole if the hole lies
		 * cyclically in [home, j). */
		if (((j - home) & mask) >= ((j - hole) & mask)) {
			slots[hole] = v;
			hole = j;
		}
	}
	slots[hole] = 0;
}

/* Fills `slots` (nslots zeroed slots, a power of two > count) with the
 * entries at positions 0 .. count - 1 of `owner`. */
void st_ix_rebuild(uint32_t *slots, uint32_t nslots, uint32_t count,
                   st_ix_hash_fn hash_of, const void *owner);

#endif /* ST_INDEX_H */
