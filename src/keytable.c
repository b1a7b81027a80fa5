#include "keytable.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "index.h"

/* What a heap copy of `len` bytes costs, counting the allocator's header
 * and rounding (glibc: 8 bytes, 16-byte granules, 32 at least), so
 * kt_memory() matches what the process really spends. */
static size_t kt_heap_size(size_t len)
{
	size_t n = (len + 8 + 15) & ~(size_t)15;
	return n < 32 ? 32 : n;
}

void kt_init(kt_table *t, size_t words, size_t max, uint64_t seed)
{
	memset(t, 0, sizeof(*t));
	t->words = words;
	t->stride = sizeof(kt_entry) + words * sizeof(int64_t);
	t->max = max;
	t->rng = seed ? seed : UINT64_C(0x9E3779B97F4A7C15);
}

static void kt_free_keys(kt_table *t)
{
	for (size_t i = 0; i < t->count; i++) {
		kt_entry *e = kt_at(t, i);
		if (e->len > KT_INLINE)
			free(e->key.big);
	}
}

void kt_free(kt_table *t)
{
	kt_free_keys(t);
	free(t->index);
	free(t->entries);
	t->index = NULL;
	t->entries = NULL;
	t->count = t->cap = t->mask = t->key_bytes = 0;
}

void kt_clear(kt_table *t)
{
	size_t words = t->words, max = t->max;
	uint64_t rng = t->rng;

	kt_free(t);
	kt_init(t, words, max, rng);
}

/* Home slot of `hash` (see st_ix_home). Requires an index. */
ST_INLINE size_t kt_home(const kt_table *t, uint64_t hash)
{
	return st_ix_home(hash, (uint32_t)t->mask);
}

/* The stored hash of the entry at `pos`, for the shared index. */
static uint64_t kt_entry_hash(const void *t, uint32_t pos)
{
	return kt_at((const kt_table *)t, pos)->hash;
}

ST_INLINE const char *kt_key(const kt_entry *e)
{
	return e->len > KT_INLINE ? e->key.big : e->key.small;
}

/* Key equality for equal lengths, with word loads instead of a memcmp
 * call for the short keys that dominate (client ids, addresses). */
ST_INLINE int kt_key_eq(const char *a, const char *b, size_t len)
{
	uint64_t x, y, u, v;
	uint32_t p, q, r, s;

	if (len >= 8 && len <= 16) {
		memcpy(&x, a, 8);
		memcpy(&y, b, 8);
		memcpy(&u, a + len - 8, 8);
		memcpy(&v, b + len - 8, 8);
		return ((x ^ y) | (u ^ v)) == 0;
	}
	if (len >= 4 && len < 8) {
		memcpy(&p, a, 4);
		memcpy(&q, b, 4);
		memcpy(&r, a + len - 4, 4);
		memcpy(&s, b + len - 4, 4);
		return ((p ^ q) | (r ^ s)) == 0;
	}
	return memcmp(a, b, len) == 0;
}

kt_entry *kt_find(const kt_table *t, uint64_t hash, uint8_t tag,
                  const char *key, size_t len)
{
	size_t i;
	uint32_t v;

	if (ST_UNLIKELY(t->mask == 0 || len > KT_MAX_KEY))
		return NULL;
	for (i = kt_home(t, hash); (v = t->index[i]) != 0;
	     i = (i + 1) & t->mask) {
		kt_entry *e = kt_at(t, v - 1);
		if (e->hash == hash && e->len == len && e->tag == tag &&
		    kt_key_eq(kt_key(e), key, len))
			return e;
	}
	return NULL;
}

/* Places dense position `pos` (whose entry holds `hash`) in the index. */
static void kt_index_put(kt_table *t, uint64_t hash, size_t pos)
{
	st_ix_put(t->index, (uint32_t)t->mask, (uint32_t)kt_home(t, hash),
	          (uint32_t)pos);
}

/* Resizes the index to hold `count + 1` entries at <= 2/3 load. */
static int kt_index_grow(kt_table *t, size_t need)
{
	size_t slots = 8;
	uint32_t *index;

	while (slots * 2 < need * 3)
		slots *= 2;
	if (slots - 1 == t->mask)
		return 0;
	index = calloc(slots, sizeof(uint32_t));
	if (index == NULL)
		return -1;
	free(t->index);
	t->index = index;
	t->mask = slots - 1;
	st_ix_rebuild(index, (uint32_t)slots, (uint32_t)t->count,
	              kt_entry_hash, t);
	return 0;
}

kt_entry *kt_insert(kt_table *t, uint64_t hash, uint8_t tag, const char *key,
                    size_t len)
{
	kt_entry *e;
	char *big = NULL;

	if (len > KT_MAX_KEY)
		return NULL;
	if (t->count + 1 > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 16;
		char *entries;
		if (cap > t->max)
			cap = t->max;
		entries = realloc(t->entries, cap * t->stride);
		if (entries == NULL)
			return NULL;
		t->entries = entries;
		t->cap = cap;
	}
	if ((t->mask + 1) * 2 < (t->count + 1) * 3 || t->mask == 0) {
		if (kt_index_grow(t, t->count + 1) < 0)
			return NULL;
	}
	if (len > KT_INLINE) {
		big = malloc(len);
		if (big == NULL)
			return NULL;
		memcpy(big, key, len);
		t->key_bytes += kt_heap_size(len);
	}
	e = kt_at(t, t->count);
	e->hash = hash;
	e->len = (uint32_t)len;
	e->tag = tag;
	memset(e->pad, 0, sizeof(e->pad));
	if (big != NULL)
		e->key.big = big;
	else
		memcpy(e->key.small, key, len);
	kt_index_put(t, hash, t->count);
	t->count++;
	return e;
}

/* Finds the index slot holding dense position `pos`. */
static size_t kt_slot_of(const kt_table *t, size_t pos)
{
	return st_ix_slot_of(t->index, (uint32_t)t->mask,
	                     (uint32_t)kt_home(t, kt_at(t, pos)->hash),
	                     (uint32_t)pos);
}

/* Empties index slot `hole`, shifting back later entries of the same
 * probe run so every entry stays reachable from its home slot. */
static void kt_index_delete(kt_table *t, size_t hole)
{
	st_ix_delete(t->index, (uint32_t)t->mask, (uint32_t)hole,
	             kt_entry_hash, t);
}

void kt_remove_at(kt_table *t, size_t i)
{
	kt_entry *e = kt_at(t, i);
	size_t last = t->count - 1;

	kt_index_delete(t, kt_slot_of(t, i));
	if (e->len > KT_INLINE) {
		t->key_bytes -= kt_heap_size(e->len);
		free(e->key.big);
	}
	if (i != last) {
		t->index[kt_slot_of(t, last)] = (uint32_t)(i + 1);
		memcpy(e, kt_at(t, last), t->stride);
	}
	t->count--;
}

size_t kt_random(kt_table *t)
{
	/* xorshift64*: plenty for sampling eviction candidates. */
	uint64_t x = t->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	t->rng = x;
	return (size_t)(((x * UINT64_C(0x2545F4914F6CDD1D)) >> 32) % t->count);
}

size_t kt_memory(const kt_table *t)
{
	return sizeof(*t) + t->cap * t->stride +
	       (t->mask ? (t->mask + 1) * sizeof(uint32_t) : 0) + t->key_bytes;
}
