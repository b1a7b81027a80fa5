/* Property checks of the concurrency engine (src/conc.c), without Python.
 *
 * Built two ways, like lru_fuzz.c:
 *   - as a libFuzzer target (clang -fsanitize=fuzzer,address,undefined
 *     -DST_LIBFUZZER): LLVMFuzzerTestOneInput reads operations from the
 *     fuzzer's bytes;
 *   - as a standalone program (gcc -fsanitize=address,undefined): main()
 *     feeds the same entry point a deterministic stream of random inputs.
 *     tests/test_conc_engine_c.py builds and runs it.
 *
 * Every input picks settings (limit, queue, lanes, reserve, max_keys) and
 * drives one table through acquisitions, queueing (with shedding),
 * releases (with hand-over) and cancellations on a few keys and the
 * global key, against a model (holder counts and per-lane FIFO arrays),
 * checking after every step that the engine hands slots to exactly the
 * model's waiter, sheds the model's victim, keeps the counts, tracks a
 * key exactly while something holds or waits on it, and never lets lane
 * p hold more than its cap.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conc.h"

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "%s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #cond);          \
			abort();                                     \
		}                                                    \
	} while (0)

#define NKEYS 5 /* key 0 is the global key */
#define NNODES 48
#define MAXQ 8

enum { FREE, WAITING, HOLDING };

typedef struct {
	cc_node node; /* the engine's link */
	int state;    /* FREE, WAITING or HOLDING */
	int key;      /* while WAITING or HOLDING */
	int lane;
} waiter;

typedef struct {
	int held;
	int n[4];         /* waiters per lane */
	int q[4][NNODES]; /* node ids, oldest first */
} model_key;

static waiter nodes[NNODES];
static model_key model[NKEYS];

static cc_key *key_of(cc_table *t, int k, int add, int *err)
{
	char name = (char)('a' + k);
	*err = CC_OK;
	if (k == 0)
		return t->global;
	if (add)
		return cc_find_or_add(t, (uint64_t)k * 0x9E37u, 1, &name, 1,
		                      err);
	return cc_find(t, (uint64_t)k * 0x9E37u, 1, &name, 1);
}

static int model_queued(int k)
{
	int n = 0;
	for (int l = 0; l < 4; l++)
		n += model[k].n[l];
	return n;
}

static void model_unqueue(int k, int lane, int pos)
{
	model_key *m = &model[k];
	memmove(&m->q[lane][pos], &m->q[lane][pos + 1],
	        (size_t)(m->n[lane] - pos - 1) * sizeof(int));
	m->n[lane]--;
}

static void check_all(cc_table *t)
{
	int64_t held = 0, queued = 0;
	size_t live = 0;
	int err;

	for (int k = 0; k < NKEYS; k++) {
		cc_key *ck = key_of(t, k, 0, &err);
		int q = model_queued(k);
		held += model[k].held;
		queued += q;
		if (k > 0) {
			CHECK((ck != NULL) == (model[k].held > 0 || q > 0));
			live += ck != NULL;
		}
		if (ck == NULL)
			continue;
		CHECK(ck->held == model[k].held);
		CHECK(ck->queued == q);
		CHECK(ck->held <= t->limit);
		for (int l = 0; l < t->nlanes; l++) {
			cc_node *n = ck->lanes[l].next;
			for (int i = 0; i < model[k].n[l]; i++) {
				CHECK(n == &nodes[model[k].q[l][i]].node);
				n = n->next;
			}
			CHECK(n == &ck->lanes[l]);
			/* A waiter of lane l waits only while lane l is
			 * at its cap. */
			if (model[k].n[l] > 0)
				CHECK(ck->held >= cc_cap(t, l));
		}
	}
	CHECK(t->held == held);
	CHECK(t->queued == queued);
	CHECK(t->table.count == live);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cc_table t;
	int64_t limit, queue, reserve;
	int lanes;
	size_t max_keys;
	int err;

	if (size < 4)
		return 0;
	limit = 1 + data[0] % 4;
	queue = data[1] % (MAXQ + 1);
	lanes = 1 + data[2] % 3;
	reserve =
	    lanes > 1 ? data[3] % ((limit + lanes - 2) / (lanes - 1)) : 0;
	if (reserve * (lanes - 1) >= limit)
		reserve = 0;
	max_keys = 1 + data[3] % 4;
	data += 4;
	size -= 4;
	CHECK(cc_init(&t, limit, queue, lanes, reserve, max_keys, 7) == 0);
	memset(nodes, 0, sizeof(nodes));
	memset(model, 0, sizeof(model));

	for (; size >= 2; data += 2, size -= 2) {
		int op = data[0] % 4, k = (data[0] >> 2) % NKEYS;
		int lane = (data[1] >> 6) % lanes, id = data[1] % NNODES;
		waiter *w = &nodes[id];

		if (op <= 1 && w->state == FREE) { /* take, or queue */
			cc_key *ck = key_of(&t, k, 1, &err);
			if (ck == NULL) {
				CHECK(err == CC_FULL);
				CHECK(t.table.count == t.table.max);
				continue;
			}
			if (cc_try(&t, ck, lane)) {
				int ahead = 0;
				for (int l = lane; l < lanes; l++)
					ahead += model[k].n[l];
				CHECK(ahead == 0);
				CHECK(model[k].held < cc_cap(&t, lane));
				model[k].held++;
				w->state = HOLDING;
				w->key = k;
				w->lane = lane;
			} else if (op == 1) {
				cc_node *shed = NULL;
				int full = model_queued(k) >= queue;
				if (cc_enqueue(&t, ck, &w->node, lane, &shed) <
				    0) {
					CHECK(full && shed == NULL);
					cc_drop_if_idle(&t, ck);
				} else {
					if (full) {
						int l = 0;
						while (model[k].n[l] == 0)
							l++;
						CHECK(l < lane);
						int v =
						    model[k]
						        .q[l]
						          [model[k].n[l] - 1];
						CHECK(shed == &nodes[v].node);
						model_unqueue(
						    k, l, model[k].n[l] - 1);
						nodes[v].state = FREE;
					} else {
						CHECK(shed == NULL);
					}
					model[k].q[lane][model[k].n[lane]++] =
					    id;
					w->state = WAITING;
					w->key = k;
					w->lane = lane;
				}
			} else {
				cc_drop_if_idle(&t, ck);
			}
		} else if (op == 2 && w->state == HOLDING) { /* release */
			cc_key *ck = key_of(&t, w->key, 0, &err);
			cc_node *next;
			int kk = w->key, granted = -1;
			CHECK(ck != NULL);
			model[kk].held--;
			w->state = FREE;
			for (int l = lanes - 1; l >= 0; l--) {
				if (model[kk].n[l] == 0)
					continue;
				if (model[kk].held < cc_cap(&t, l)) {
					granted = model[kk].q[l][0];
					model_unqueue(kk, l, 0);
					model[kk].held++;
				}
				break;
			}
			next = cc_release(&t, ck);
			if (granted < 0) {
				CHECK(next == NULL);
			} else {
				CHECK(next == &nodes[granted].node);
				nodes[granted].state = HOLDING;
			}
			cc_drop_if_idle(&t, ck);
		} else if (op == 3 && w->state == WAITING) { /* cancel */
			cc_key *ck = key_of(&t, w->key, 0, &err);
			int pos = 0;
			CHECK(ck != NULL);
			while (model[w->key].q[w->lane][pos] != id)
				pos++;
			model_unqueue(w->key, w->lane, pos);
			cc_cancel(&t, ck, &w->node);
			cc_drop_if_idle(&t, ck);
			w->state = FREE;
		}
		check_all(&t);
	}
	cc_free(&t);
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
