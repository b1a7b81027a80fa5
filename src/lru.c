/* The cache engine; see lru.h. */
#include "lru.h"

#include <stdlib.h>
#include <string.h>

#define MIN_CAP 8

void lru_init(lru_table *t, uint32_t max_cap, int weighted)
{
	memset(t, 0, sizeof(*t));
	t->mru = t->lru = LRU_NIL;
	t->fhead = t->ftail = LRU_NIL;
	t->max_cap = max_cap < LRU_MAX_ENTRIES ? max_cap : LRU_MAX_ENTRIES;
	t->weighted = weighted;
}

void lru_free(lru_table *t)
{
	uint64_t mutations = t->mutations;

	free(t->entries);
	free(t->ttl);
	free(t->weights);
	free(t->slots);
	free(t->heap);
	lru_init(t, t->max_cap, t->weighted);
	/* A walk in progress must still see that things moved. */
	t->mutations = mutations + 1;
}

size_t lru_memory(const lru_table *t)
{
	return (size_t)t->cap * sizeof(lru_entry) +
	       (t->ttl ? (size_t)t->cap * sizeof(lru_ttl) : 0) +
	       (t->weights ? (size_t)t->cap * sizeof(int64_t) : 0) +
	       (size_t)t->nslots * sizeof(uint32_t) +
	       (size_t)t->hcap * sizeof(uint32_t);
}

/* ---- hash index ----------------------------------------------------------
 */

/* The stored hash of entry `i`, for the shared index. */
static uint64_t entry_hash(const void *t, uint32_t i)
{
	return ((const lru_table *)t)->entries[i].hash;
}

/* The slot holding entry `i` (which must be indexed). */
static uint32_t slot_of(const lru_table *t, uint32_t i)
{
	return st_ix_slot_of(t->slots, t->nslots - 1,
	                     lru_home(t, t->entries[i].hash), i);
}

/* Indexes entry `i`. */
static void index_add(lru_table *t, uint32_t i)
{
	st_ix_put(t->slots, t->nslots - 1, lru_home(t, t->entries[i].hash), i);
}

/* Empties slot `s`, shifting its cluster back (see st_ix_delete). */
static void index_delete_slot(lru_table *t, uint32_t s)
{
	st_ix_delete(t->slots, t->nslots - 1, s, entry_hash, t);
}

/* Smallest power of two >= cap * 2 (load factor <= 1/2). */
static uint32_t slots_for(uint32_t cap)
{
	uint64_t want = (uint64_t)cap * 2, n = 8;

	while (n < want)
		n <<= 1;
	return (uint32_t)n;
}

/* Reallocates *p to n elements of `size` bytes. A failure leaves *p as
 * it was, which is only an error when growing. */
static int realloc_array(void *p, size_t n, size_t size, int growing)
{
	void **pp = p, *q = realloc(*pp, n * size);

	if (q == NULL)
		return growing ? -1 : 0;
	*pp = q;
	return 0;
}

/* Reallocates the entries and their parallel arrays to `cap` (>= count),
 * and the index to match. Returns 0, or -1 with the table unchanged (an
 * array may have grown, which is harmless). */
static int resize(lru_table *t, uint32_t cap)
{
	uint32_t nslots = slots_for(cap);
	uint32_t *slots = NULL;
	int growing = cap > t->cap;

	if (nslots != t->nslots) {
		slots = calloc(nslots, sizeof(uint32_t));
		if (slots == NULL)
			return growing ? -1 : 0;
	}
	if (realloc_array(&t->entries, cap, sizeof(lru_entry), growing) < 0 ||
	    (t->ttl != NULL &&
	     realloc_array(&t->ttl, cap, sizeof(lru_ttl), growing) < 0) ||
	    (t->weighted &&
	     realloc_array(&t->weights, cap, sizeof(int64_t), growing) < 0)) {
		free(slots);
		return -1;
	}
	t->cap = cap;
	if (slots != NULL) {
		free(t->slots);
		t->slots = slots;
		t->nslots = nslots;
		st_ix_rebuild(slots, nslots, t->count, entry_hash, t);
	}
	t->mutations++;
	return 0;
}

/* Ensures one more heap slot. */
static int reserve_heap(lru_table *t)
{
	uint64_t hcap = t->hcap < MIN_CAP ? MIN_CAP : (uint64_t)t->hcap * 2;
	uint32_t *h;

	if (t->hcount < t->hcap)
		return 0;
	if (hcap > t->max_cap)
		hcap = t->max_cap;
	if (hcap <= t->hcount)
		return -1;
	h = realloc(t->heap, (size_t)hcap * sizeof(uint32_t));
	if (h == NULL)
		return -1;
	t->heap = h;
	t->hcap = (uint32_t)hcap;
	return 0;
}

int lru_reserve_expiry(lru_table *t, int64_t expires, int fifo)
{
	if (expires == LRU_NEVER)
		return 0;
	if (t->ttl == NULL && t->cap > 0) {
		/* The first entry that can expire: from now on every entry
		 * has expiry data. */
		t->ttl = malloc((size_t)t->cap * sizeof(lru_ttl));
		if (t->ttl == NULL)
			return -1;
		for (uint32_t i = 0; i < t->cap; i++) {
			t->ttl[i].expires = LRU_NEVER;
			t->ttl[i].tprev = t->ttl[i].tnext = LRU_NIL;
		}
	}
	return lru_needs_heap(t, expires, fifo) ? reserve_heap(t) : 0;
}

int lru_reserve(lru_table *t, int64_t expires, int fifo)
{
	if (t->count >= t->cap) {
		uint64_t cap =
		    t->cap < MIN_CAP ? MIN_CAP : (uint64_t)t->cap * 2;
		if (t->count >= t->max_cap)
			return -1;
		if (cap > t->max_cap)
			cap = t->max_cap;
		if (resize(t, (uint32_t)cap) < 0)
			return -1;
	}
	return lru_reserve_expiry(t, expires, fifo);
}

/* ---- expiry: FIFO and heap ----------------------------------------------
 */

static void heap_place(lru_table *t, uint32_t pos, uint32_t i)
{
	t->heap[pos] = i;
	t->ttl[i].tnext = pos;
}

static void heap_up(lru_table *t, uint32_t pos)
{
	uint32_t i = t->heap[pos];
	int64_t x = t->ttl[i].expires;

	while (pos > 0) {
		uint32_t parent = (pos - 1) / 2;
		if (t->ttl[t->heap[parent]].expires <= x)
			break;
		heap_place(t, pos, t->heap[parent]);
		pos = parent;
	}
	heap_place(t, pos, i);
}

static void heap_down(lru_table *t, uint32_t pos)
{
	uint32_t i = t->heap[pos], n = t->hcount;
	int64_t x = t->ttl[i].expires;

	for (;;) {
		uint32_t c = 2 * pos + 1;
		if (c >= n)
			break;
		if (c + 1 < n && t->ttl[t->heap[c + 1]].expires <
		                     t->ttl[t->heap[c]].expires)
			c++;
		if (x <= t->ttl[t->heap[c]].expires)
			break;
		heap_place(t, pos, t->heap[c]);
		pos = c;
	}
	heap_place(t, pos, i);
}

/* Takes entry `i` out of whichever expiry structure holds it. */
static void expiry_unlink(lru_table *t, uint32_t i)
{
	lru_ttl *e = t->ttl, *x;

	if (e == NULL || e[i].expires == LRU_NEVER)
		return;
	x = &e[i];
	if (x->tprev == LRU_IN_HEAP) {
		uint32_t pos = x->tnext, last = t->heap[--t->hcount];
		if (pos < t->hcount) {
			heap_place(t, pos, last);
			heap_down(t, pos);
			heap_up(t, e[last].tnext);
		}
	} else {
		if (x->tprev != LRU_NIL)
			e[x->tprev].tnext = x->tnext;
		else
			t->fhead = x->tnext;
		if (x->tnext != LRU_NIL)
			e[x->tnext].tprev = x->tprev;
		else
			t->ftail = x->tprev;
	}
	x->tprev = x->tnext = LRU_NIL;
}

/* Gives entry `i`, in no expiry structure, its expiry and links it. */
static void expiry_link(lru_table *t, uint32_t i, int64_t expires, int fifo)
{
	lru_ttl *e = t->ttl, *x;

	if (e == NULL)
		return; /* expires is LRU_NEVER: the caller reserved */
	x = &e[i];
	x->expires = expires;
	x->tprev = x->tnext = LRU_NIL;
	if (expires == LRU_NEVER)
		return;
	if (fifo && (t->ftail == LRU_NIL || e[t->ftail].expires <= expires)) {
		x->tprev = t->ftail;
		if (t->ftail != LRU_NIL)
			e[t->ftail].tnext = i;
		else
			t->fhead = i;
		t->ftail = i;
		return;
	}
	x->tprev = LRU_IN_HEAP;
	heap_place(t, t->hcount++, i);
	heap_up(t, t->hcount - 1);
}

void lru_set_expiry(lru_table *t, uint32_t i, int64_t expires, int fifo)
{
	expiry_unlink(t, i);
	expiry_link(t, i, expires, fifo);
}

/* ---- entries -------------------------------------------------------------
 */

uint32_t lru_insert(lru_table *t, uint64_t hash, void *key, void *value,
                    int64_t expires, int fifo, int64_t weight)
{
	uint32_t i = t->count++;
	lru_entry *x = &t->entries[i];

	x->hash = hash;
	x->key = key;
	x->value = value;
	x->newer = LRU_NIL;
	x->older = t->mru;
	if (t->mru != LRU_NIL)
		t->entries[t->mru].newer = i;
	else
		t->lru = i;
	t->mru = i;
	expiry_link(t, i, expires, fifo);
	if (t->weights != NULL) {
		t->weights[i] = weight;
		t->total_weight += weight;
	}
	index_add(t, i);
	t->mutations++;
	return i;
}

uint32_t lru_replace_lru(lru_table *t, uint64_t hash, void *key, void *value,
                         int64_t expires, int fifo, int64_t weight,
                         void **old_key, void **old_value)
{
	uint32_t i = t->lru;
	lru_entry *e = t->entries, *x = &e[i];

	*old_key = x->key;
	*old_value = x->value;
	index_delete_slot(t, slot_of(t, i));
	expiry_unlink(t, i);
	/* Move from the lru end to the mru end (a no-op for one entry). */
	if (t->mru != i) {
		t->lru = x->newer;
		e[x->newer].older = LRU_NIL;
		x->older = t->mru;
		x->newer = LRU_NIL;
		e[t->mru].newer = i;
		t->mru = i;
	}
	x->hash = hash;
	x->key = key;
	x->value = value;
	expiry_link(t, i, expires, fifo);
	if (t->weights != NULL) {
		t->total_weight += weight - t->weights[i];
		t->weights[i] = weight;
	}
	index_add(t, i);
	t->mutations++;
#if defined(__GNUC__) || defined(__clang__)
	/* The next replacement starts from the new least recent entry. */
	__builtin_prefetch(&e[t->lru]);
	if (t->ttl != NULL)
		__builtin_prefetch(&t->ttl[t->lru], 1);
#endif
	return i;
}

/* Moves entry `from` (the last one) into the free place `to`, fixing
 * every link that points at it. */
static void move_entry(lru_table *t, uint32_t from, uint32_t to)
{
	lru_entry *e = t->entries, *x;

	t->slots[slot_of(t, from)] = to + 1;
	e[to] = e[from];
	x = &e[to];
	if (x->newer != LRU_NIL)
		e[x->newer].older = to;
	else
		t->mru = to;
	if (x->older != LRU_NIL)
		e[x->older].newer = to;
	else
		t->lru = to;
	if (t->ttl != NULL) {
		lru_ttl *d = t->ttl, *y = &d[to];
		*y = d[from];
		if (y->expires == LRU_NEVER) {
			/* in no expiry structure */
		} else if (y->tprev == LRU_IN_HEAP) {
			t->heap[y->tnext] = to;
		} else {
			if (y->tprev != LRU_NIL)
				d[y->tprev].tnext = to;
			else
				t->fhead = to;
			if (y->tnext != LRU_NIL)
				d[y->tnext].tprev = to;
			else
				t->ftail = to;
		}
	}
	if (t->weights != NULL)
		t->weights[to] = t->weights[from];
}

void lru_remove(lru_table *t, uint32_t i)
{
	lru_entry *e = t->entries, *x = &e[i];
	uint32_t last;

	/* LRU list. */
	if (x->newer != LRU_NIL)
		e[x->newer].older = x->older;
	else
		t->mru = x->older;
	if (x->older != LRU_NIL)
		e[x->older].newer = x->newer;
	else
		t->lru = x->newer;
	expiry_unlink(t, i);
	if (t->weights != NULL)
		t->total_weight -= t->weights[i];
	index_delete_slot(t, slot_of(t, i));
	last = --t->count;
	if (i != last)
		move_entry(t, last, i);
	t->mutations++;
	/* Give memory back once the table is mostly empty. A failed shrink
	 * just keeps the larger arrays. */
	if (t->cap > 4 * MIN_CAP && t->count < t->cap / 4)
		(void)resize(t, t->cap / 2);
	if (t->hcap > 4 * MIN_CAP && t->hcount < t->hcap / 4) {
		uint32_t *h =
		    realloc(t->heap, (size_t)(t->hcap / 2) * sizeof(uint32_t));
		if (h != NULL) {
			t->heap = h;
			t->hcap /= 2;
		}
	}
	if (t->count == 0 && t->cap > 0)
		lru_free(t);
}
