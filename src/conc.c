#include "conc.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Bytes of one key state with `nlanes` lane roots. */
static size_t cc_key_size(int nlanes)
{
	return sizeof(cc_key) + (size_t)nlanes * sizeof(cc_node);
}

/* A fresh, empty key state (from the free list when it can). */
static cc_key *cc_key_new(cc_table *t)
{
	cc_key *k;

	if (t->nfree > 0)
		k = t->freelist[--t->nfree];
	else if ((k = malloc(cc_key_size(t->nlanes))) == NULL)
		return NULL;
	k->pos = CC_NO_POS;
	k->held = 0;
	k->queued = 0;
	for (int i = 0; i < t->nlanes; i++) {
		k->lanes[i].prev = k->lanes[i].next = &k->lanes[i];
		k->lanes[i].lane = i;
	}
	return k;
}

static void cc_key_free(cc_table *t, cc_key *k)
{
	if (t->nfree < CC_FREELIST)
		t->freelist[t->nfree++] = k;
	else
		free(k);
}

int cc_init(cc_table *t, int64_t limit, int64_t queue, int nlanes,
            int64_t reserve, size_t max_keys, uint64_t seed)
{
	memset(t, 0, sizeof(*t));
	t->limit = limit;
	t->queue = queue;
	t->reserve = reserve;
	t->nlanes = nlanes;
	kt_init(&t->table, 1, max_keys, seed);
	t->global = cc_key_new(t);
	return t->global == NULL ? -1 : 0;
}

void cc_free(cc_table *t)
{
	for (size_t i = 0; i < t->table.count; i++)
		free((cc_key *)(intptr_t)kt_at(&t->table, i)->state[0]);
	kt_free(&t->table);
	while (t->nfree > 0)
		free(t->freelist[--t->nfree]);
	free(t->global);
	t->global = NULL;
}

cc_key *cc_find(const cc_table *t, uint64_t hash, uint8_t tag, const char *key,
                size_t len)
{
	kt_entry *e = kt_find(&t->table, hash, tag, key, len);
	return e ? (cc_key *)(intptr_t)e->state[0] : NULL;
}

cc_key *cc_find_or_add(cc_table *t, uint64_t hash, uint8_t tag,
                       const char *key, size_t len, int *err)
{
	kt_entry *e = kt_find(&t->table, hash, tag, key, len);
	cc_key *k;

	if (ST_LIKELY(e != NULL))
		return (cc_key *)(intptr_t)e->state[0];
	if (t->table.count >= t->table.max) {
		*err = CC_FULL;
		return NULL;
	}
	k = cc_key_new(t);
	if (k == NULL) {
		*err = CC_NOMEM;
		return NULL;
	}
	e = kt_insert(&t->table, hash, tag, key, len);
	if (e == NULL) {
		cc_key_free(t, k);
		*err = CC_NOMEM;
		return NULL;
	}
	e->state[0] = (int64_t)(intptr_t)k;
	k->pos = t->table.count - 1;
	return k;
}

/* 1 when a waiter of lane `lane` or higher is queued on `k`. */
ST_INLINE int cc_waiters_from(const cc_table *t, const cc_key *k, int lane)
{
	if (ST_LIKELY(k->queued == 0))
		return 0;
	for (int i = lane; i < t->nlanes; i++)
		if (k->lanes[i].next != &k->lanes[i])
			return 1;
	return 0;
}

int cc_try(cc_table *t, cc_key *k, int lane)
{
	if (k->held >= cc_cap(t, lane) || cc_waiters_from(t, k, lane))
		return 0;
	k->held++;
	t->held++;
	return 1;
}

static void cc_unlink(cc_table *t, cc_key *k, cc_node *node)
{
	node->prev->next = node->next;
	node->next->prev = node->prev;
	node->prev = node->next = NULL;
	k->queued--;
	t->queued--;
}

int cc_enqueue(cc_table *t, cc_key *k, cc_node *node, int lane, cc_node **shed)
{
	cc_node *root = &k->lanes[lane];

	*shed = NULL;
	if (k->queued >= t->queue) {
		for (int i = 0; i < lane && *shed == NULL; i++) {
			if (k->lanes[i].next != &k->lanes[i]) {
				*shed = k->lanes[i].prev; /* the newest */
				cc_unlink(t, k, *shed);
			}
		}
		if (*shed == NULL)
			return -1;
	}
	node->lane = lane;
	node->next = root;
	node->prev = root->prev;
	root->prev->next = node;
	root->prev = node;
	k->queued++;
	t->queued++;
	return 0;
}

void cc_cancel(cc_table *t, cc_key *k, cc_node *node)
{
	cc_unlink(t, k, node);
}

cc_node *cc_release(cc_table *t, cc_key *k)
{
	k->held--;
	t->held--;
	if (ST_LIKELY(k->queued == 0))
		return NULL;
	/* Caps grow with the lane: if the highest waiting lane cannot take
	 * the slot, no lower lane can. */
	for (int i = t->nlanes - 1; i >= 0; i--) {
		cc_node *root = &k->lanes[i];
		if (root->next == root)
			continue;
		if (k->held >= cc_cap(t, i))
			return NULL;
		cc_node *node = root->next;
		cc_unlink(t, k, node);
		k->held++;
		t->held++;
		return node;
	}
	return NULL;
}

void cc_drop_if_idle(cc_table *t, cc_key *k)
{
	size_t pos = k->pos;

	if (k->held != 0 || k->queued != 0 || pos == CC_NO_POS)
		return;
	kt_remove_at(&t->table, pos);
	if (pos < t->table.count) /* the last entry moved into `pos` */
		((cc_key *)(intptr_t)kt_at(&t->table, pos)->state[0])->pos =
		    pos;
	cc_key_free(t, k);
}

size_t cc_memory(const cc_table *t)
{
	size_t n = (size_t)t->nfree + 1 + t->table.count;
	return kt_memory(&t->table) + n * cc_key_size(t->nlanes);
}
