/* Property checks of the cache engine (src/lru.c), without Python.
 *
 * Built two ways, like engine_fuzz.c:
 *   - as a libFuzzer target (clang -fsanitize=fuzzer,address,undefined
 *     -DST_LIBFUZZER): LLVMFuzzerTestOneInput reads operations from the
 *     fuzzer's bytes;
 *   - as a standalone program (gcc -fsanitize=address,undefined): main()
 *     feeds the same entry point a deterministic stream of random inputs.
 *     tests/test_lru_engine_c.py builds and runs it.
 *
 * Every input drives one table through inserts, lookups, touches, expiry
 * changes, in-place replacement of the least recently used entry,
 * removals and purges, against a model (arrays in recency order), and
 * checks after every step that the hash index finds exactly the model's
 * keys, the LRU list has the model's order, the FIFO is sorted, the heap
 * is a heap and the weights add up.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lru.h"

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "%s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #cond);          \
			abort();                                     \
		}                                                    \
	} while (0)

#define NKEYS 64  /* keys are small integers, stored as pointers */
#define MAXCAP 40 /* the table's max_cap */

typedef struct {
	int n;                  /* entries, least recent first */
	uintptr_t key[NKEYS];   /* key ids (1-based) */
	int64_t expires[NKEYS]; /* expiry per position */
	int64_t weight[NKEYS];  /* weight per position */
} model;

/* A hash with many collisions so probe chains and shifts get exercised. */
static uint64_t hash_of(uintptr_t k)
{
	return (uint64_t)(k % 13) * UINT64_C(0x100000001B3);
}

static int model_find(const model *m, uintptr_t k)
{
	for (int i = 0; i < m->n; i++)
		if (m->key[i] == k)
			return i;
	return -1;
}

static void model_remove_at(model *m, int i)
{
	memmove(&m->key[i], &m->key[i + 1],
	        (size_t)(m->n - i - 1) * sizeof(m->key[0]));
	memmove(&m->expires[i], &m->expires[i + 1],
	        (size_t)(m->n - i - 1) * sizeof(m->expires[0]));
	memmove(&m->weight[i], &m->weight[i + 1],
	        (size_t)(m->n - i - 1) * sizeof(m->weight[0]));
	m->n--;
}

static void model_touch(model *m, int i)
{
	uintptr_t k = m->key[i];
	int64_t e = m->expires[i], w = m->weight[i];
	model_remove_at(m, i);
	m->key[m->n] = k;
	m->expires[m->n] = e;
	m->weight[m->n] = w;
	m->n++;
}

static uint32_t table_find(const lru_table *t, uintptr_t k)
{
	uint64_t h = hash_of(k);
	uint32_t slot, i;

	if (t->nslots == 0)
		return LRU_NIL;
	slot = lru_home(t, h);
	while ((i = lru_next_match(t, h, &slot)) != LRU_NIL)
		if ((uintptr_t)t->entries[i].key == k)
			return i;
	return LRU_NIL;
}

static void check(const lru_table *t, const model *m)
{
	uint32_t i, n = 0, prev = LRU_NIL;
	int64_t total = 0, last = INT64_MIN;

	CHECK(t->count == (uint32_t)m->n);
	CHECK(t->count <= t->cap && t->cap <= t->max_cap);
	CHECK(t->nslots == 0 || t->count < t->nslots);
	/* LRU list, least recent first, matches the model. */
	for (i = t->lru; i != LRU_NIL; i = t->entries[i].newer) {
		CHECK(n < t->count);
		CHECK(t->entries[i].older == prev);
		CHECK((uintptr_t)t->entries[i].key == m->key[n]);
		CHECK(lru_expires(t, i) == m->expires[n]);
		CHECK((uintptr_t)t->entries[i].value == m->key[n] * 3);
		if (t->weights)
			CHECK(t->weights[i] == m->weight[n]);
		total += m->weight[n];
		prev = i;
		n++;
	}
	CHECK(n == t->count && prev == t->mru);
	if (t->weights)
		CHECK(t->total_weight == total);
	/* The index finds every model key, and only those. */
	for (uintptr_t k = 1; k <= NKEYS; k++) {
		uint32_t at = table_find(t, k);
		CHECK((at != LRU_NIL) == (model_find(m, k) >= 0));
	}
	/* FIFO sorted by expiry, heap ordered, every expiring entry in one. */
	n = 0;
	prev = LRU_NIL;
	for (i = t->fhead; i != LRU_NIL; i = t->ttl[i].tnext) {
		CHECK(t->ttl[i].tprev == prev);
		CHECK(t->ttl[i].expires != LRU_NEVER);
		CHECK(t->ttl[i].expires >= last);
		last = t->ttl[i].expires;
		prev = i;
		n++;
	}
	CHECK(prev == t->ftail);
	for (uint32_t p = 0; p < t->hcount; p++) {
		uint32_t e = t->heap[p];
		CHECK(e < t->count);
		CHECK(t->ttl[e].tprev == LRU_IN_HEAP);
		CHECK(t->ttl[e].tnext == p);
		if (p > 0)
			CHECK(t->ttl[t->heap[(p - 1) / 2]].expires <=
			      t->ttl[e].expires);
	}
	/* n counted the FIFO; with the heap, that is every expiring entry. */
	{
		uint32_t expiring = 0;
		for (i = 0; i < t->count; i++) {
			if (lru_expires(t, i) == LRU_NEVER)
				CHECK(t->ttl == NULL ||
				      (t->ttl[i].tprev == LRU_NIL &&
				       t->ttl[i].tnext == LRU_NIL));
			else
				expiring++;
		}
		CHECK(n + t->hcount == expiring);
	}
}

/* Removes, as the binding's purge does, every entry expired at `now`. */
static void purge(lru_table *t, model *m, int64_t now)
{
	uint32_t i;
	while ((i = lru_expired(t, now)) != LRU_NIL) {
		int at = model_find(m, (uintptr_t)t->entries[i].key);
		CHECK(at >= 0 && m->expires[at] <= now);
		CHECK(lru_expires(t, i) <= now);
		lru_remove(t, i);
		model_remove_at(m, at);
	}
	for (int j = 0; j < m->n; j++)
		CHECK(m->expires[j] > now);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	lru_table t;
	model m;
	int64_t now = 1000, ttl = 50;
	int weighted = size > 0 && (data[0] & 1);

	memset(&m, 0, sizeof(m));
	lru_init(&t, MAXCAP, weighted);
	for (size_t p = 1; p + 2 < size; p += 3) {
		uint8_t op = data[p] % 8;
		uintptr_t k = (uintptr_t)(data[p + 1] % NKEYS) + 1;
		uint8_t arg = data[p + 2];
		int at = model_find(&m, k);
		uint32_t i = table_find(&t, k);
		CHECK((at >= 0) == (i != LRU_NIL));
		switch (op) {
		case 0: /* insert or update with the default ttl (FIFO) */
		case 1: /* ... with no expiry or an own ttl (heap) */
		case 2: {
			int fifo = op == 0;
			int64_t exp = op == 0        ? now + ttl
			              : arg % 3 == 0 ? LRU_NEVER
			                             : now + (arg % 97);
			int64_t w = weighted ? arg % 5 : 0;
			if (i != LRU_NIL) {
				CHECK(lru_reserve_expiry(&t, exp, fifo) == 0);
				lru_set_expiry(&t, i, exp, fifo);
				lru_set_weight(&t, i, w);
				lru_touch(&t, i);
				model_touch(&m, at);
				m.expires[m.n - 1] = exp;
				m.weight[m.n - 1] = weighted ? w : 0;
			} else if (t.count >= MAXCAP - 1 && t.count > 0) {
				void *ok, *ov;
				CHECK(lru_reserve_expiry(&t, exp, fifo) == 0);
				lru_replace_lru(&t, hash_of(k), (void *)k,
				                (void *)(k * 3), exp, fifo, w,
				                &ok, &ov);
				CHECK((uintptr_t)ok == m.key[0]);
				CHECK((uintptr_t)ov == m.key[0] * 3);
				model_remove_at(&m, 0);
				m.key[m.n] = k;
				m.expires[m.n] = exp;
				m.weight[m.n] = weighted ? w : 0;
				m.n++;
			} else {
				CHECK(lru_reserve(&t, exp, fifo) == 0);
				lru_insert(&t, hash_of(k), (void *)k,
				           (void *)(k * 3), exp, fifo, w);
				m.key[m.n] = k;
				m.expires[m.n] = exp;
				m.weight[m.n] = weighted ? w : 0;
				m.n++;
			}
			break;
		}
		case 3: /* read: touch */
			if (i != LRU_NIL) {
				lru_touch(&t, i);
				model_touch(&m, at);
			}
			break;
		case 4: /* delete */
			if (i != LRU_NIL) {
				lru_remove(&t, i);
				model_remove_at(&m, at);
			}
			break;
		case 5: /* time passes; a write purges */
			now += arg % 40;
			purge(&t, &m, now);
			break;
		case 6: /* evict the least recent few */
			for (int n = arg % 4; n > 0 && t.count > 0; n--) {
				lru_remove(&t, t.lru);
				model_remove_at(&m, 0);
			}
			break;
		case 7: /* clear now and then */
			if (arg < 8) {
				lru_free(&t);
				m.n = 0;
			}
			break;
		}
		check(&t, &m);
	}
	lru_free(&t);
	return 0;
}

#ifndef ST_LIBFUZZER
int main(int argc, char **argv)
{
	long runs = argc > 1 ? atol(argv[1]) : 20000;
	uint64_t x = UINT64_C(0x9E3779B97F4A7C15);
	uint8_t buf[600];

	for (long r = 0; r < runs; r++) {
		size_t size = 1 + (size_t)(r % (long)(sizeof(buf) - 1));
		for (size_t i = 0; i < size; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			buf[i] = (uint8_t)x;
		}
		LLVMFuzzerTestOneInput(buf, size);
	}
	printf("%ld inputs ok\n", runs);
	return 0;
}
#endif
