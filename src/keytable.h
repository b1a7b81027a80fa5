/* A bounded hash table from byte-string keys to fixed-size int64_t state.
 *
 * Entries live in one dense array (so a random entry can be sampled in
 * O(1) for eviction) and are found through an open-addressing index of
 * uint32_t slots probed linearly, with backward-shift deletion (no
 * tombstones, so a flood of inserts and deletes never degrades probing).
 * Keys of up to KT_INLINE bytes are stored in the entry itself; longer
 * keys get one heap copy. The caller supplies the hash (a keyed hash, so
 * attackers cannot force collisions) and a one-byte tag that keeps keys
 * of different kinds (str vs bytes) apart.
 *
 * Not thread-safe: callers serialise access (the GIL, or a lock).
 */
#ifndef ST_KEYTABLE_H
#define ST_KEYTABLE_H

#include <stddef.h>
#include <stdint.h>

#define KT_INLINE 16
/* The longest key the table stores (entries record lengths in 32 bits). */
#define KT_MAX_KEY UINT32_MAX

typedef struct {
	uint64_t hash; /* caller's hash of the key */
	uint32_t len;  /* key length in bytes */
	uint8_t tag;   /* caller's key kind */
	uint8_t pad[3];
	union {
		char small[KT_INLINE]; /* len <= KT_INLINE */
		char *big;             /* len > KT_INLINE: malloc'd copy */
	} key;
	int64_t state[]; /* `words` words of caller state */
} kt_entry;

typedef struct {
	size_t words;     /* state words per entry */
	size_t stride;    /* bytes per entry */
	size_t count;     /* live entries */
	size_t cap;       /* entries allocated */
	size_t max;       /* never more than this many entries */
	size_t mask;      /* index slots - 1 (0 when no index yet) */
	uint32_t *index;  /* 0 = empty, else entry position + 1 */
	char *entries;    /* cap * stride bytes */
	size_t key_bytes; /* bytes held by heap key copies */
	uint64_t rng;     /* xorshift state for kt_random */
} kt_table;

/* Initialises an empty table for at most `max` (>= 1, < 2**31) keys with
 * `words` state words each. Allocates nothing yet. */
void kt_init(kt_table *t, size_t words, size_t max, uint64_t seed);

/* Frees everything; `t` is then empty and can be reused. Accepts a table
 * that kt_init set up and nothing more. */
void kt_free(kt_table *t);

/* The entry at dense position `i` (< count). */
static inline kt_entry *kt_at(const kt_table *t, size_t i)
{
	return (kt_entry *)(t->entries + i * t->stride);
}

/* Finds the key; returns its entry or NULL (always for a key longer than
 * KT_MAX_KEY, which no entry can hold). */
kt_entry *kt_find(const kt_table *t, uint64_t hash, uint8_t tag,
                  const char *key, size_t len);

/* Inserts a key known to be absent, with count < max. Returns the new
 * entry, whose state the caller must initialise, or NULL when memory
 * runs out or the key is longer than KT_MAX_KEY (the table is unchanged
 * then). */
kt_entry *kt_insert(kt_table *t, uint64_t hash, uint8_t tag, const char *key,
                    size_t len);

/* Removes the entry at dense position `i`; the last entry moves into its
 * place, so entry pointers and positions are invalid afterwards. */
void kt_remove_at(kt_table *t, size_t i);

/* Removes entry `e` (from kt_find or kt_at); as kt_remove_at. */
static inline void kt_remove_entry(kt_table *t, kt_entry *e)
{
	kt_remove_at(t, (size_t)((char *)e - t->entries) / t->stride);
}

/* Empties the table, keeping its shape (words, max) and random state. */
void kt_clear(kt_table *t);

/* A uniformly random dense position; count must be > 0. */
size_t kt_random(kt_table *t);

/* Bytes of memory the table holds (arrays and key copies). */
size_t kt_memory(const kt_table *t);

#endif /* ST_KEYTABLE_H */
