/* Checks of the shared-memory table (src/shm.c), without Python.
 *
 * Built by tests/test_shm_engine_c.py with gcc -fsanitize=address,undefined
 * and run as `shm_fuzz N`:
 *   - SipHash-2-4-128 against the reference's first test vector;
 *   - N random operations (hit, peek, reset, reset all; random costs and
 *     clock jumps; every algorithm, one to three rates) decided both by
 *     the segment and by st_policy_decide on a plain per-key model, which
 *     must agree field for field;
 *   - a full table keeps a blocked key blocked through a flood;
 *   - 8 forked processes hammering one key admit exactly its limit, and
 *     4 racing to store the same new keys never store one twice;
 *   - a process killed while holding a bucket's lock (reaped or still a
 *     zombie) blocks nobody;
 *   - reopening a name with other settings fails, naming both.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "limit.h"
#include "shm.h"

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "%s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #cond);          \
			abort();                                     \
		}                                                    \
	} while (0)

static uint64_t rng = UINT64_C(0x243F6A8885A308D3);

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static char name[64];

static void open_or_die(st_shm *h, const st_policy *p, uint32_t max_keys)
{
	char err[512];
	int rc = st_shm_open(h, name, p, max_keys, err, sizeof(err));
	if (rc != ST_SHM_OK) {
		fprintf(stderr, "open: %s\n", err);
		abort();
	}
}

static void check_siphash(void)
{
	static const uint8_t want[16] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25,
	                                 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14,
	                                 0xc7, 0x55, 0x02, 0x93};
	uint64_t k0 = UINT64_C(0x0706050403020100);
	uint64_t k1 = UINT64_C(0x0f0e0d0c0b0a0908);
	st_shm_hash hsh = st_siphash128(k0, k1, "", 0);
	uint8_t got[16];
	for (int i = 0; i < 8; i++) {
		got[i] = (uint8_t)(hsh.lo >> (8 * i));
		got[8 + i] = (uint8_t)(hsh.hi >> (8 * i));
	}
	CHECK(memcmp(got, want, 16) == 0);
}

static void random_policy(st_policy *p)
{
	int nrates = 1 + (int)(next() % 3);
	st_policy_init(p, (st_algorithm)(next() % 3));
	for (int i = 0; i < nrates; i++) {
		const char *why;
		double amount = (double)(1 + next() % 20);
		int64_t period = (int64_t)(1 + next() % 5000) * 1000000;
		int64_t burst = (int64_t)(next() % 3 == 0 ? next() % 30 : 0);
		CHECK(st_policy_add(p, amount, period, burst, &why) == 0);
	}
}

static int same(const st_decision *a, const st_decision *b)
{
	return a->allowed == b->allowed && a->limit == b->limit &&
	       a->remaining == b->remaining &&
	       a->reset_after_ns == b->reset_after_ns &&
	       a->retry_after_ns == b->retry_after_ns;
}

#define NKEYS 16

/* One random policy, `ops` operations, against the plain model. */
static void differential(int ops)
{
	st_policy p;
	st_shm h;
	st_shm_stats s;
	int64_t model[NKEYS][ST_MAX_RATES * 3];
	int known[NKEYS] = {0};
	int64_t now = (int64_t)(next() % 1000000000000);
	int64_t max_cost;

	random_policy(&p);
	max_cost = st_policy_max_cost(&p);
	open_or_die(&h, &p, 4096);
	for (int op = 0; op < ops; op++) {
		char key[8];
		int k = (int)(next() % NKEYS), kind = 1 + (int)(next() % 2);
		uint64_t r = next() % 100;
		st_shm_hash kh;
		snprintf(key, sizeof(key), "k%d", k);
		/* Both kinds of one text are different keys: model only
		 * kind 1, and check kind 2 never sees kind 1's state. */
		kh = st_shm_hash_key(&h, (uint8_t)kind, key, strlen(key));
		now += (int64_t)(next() % 3 == 0 ? next() % 2000000000
		                                 : next() % 1000000);
		if (r < 3) {
			st_shm_reset(&h, kh);
			if (kind == 1)
				known[k] = 0;
		} else if (r < 4) {
			st_shm_reset_all(&h);
			memset(known, 0, sizeof(known));
		} else {
			int commit = r < 80;
			int64_t cost =
			    1 + (int64_t)(next() % (uint64_t)max_cost);
			st_decision got, want;
			int64_t fresh[ST_MAX_RATES * 3];
			int64_t *state = model[k];
			st_shm_decide(&h, kh, now, cost, commit, &got);
			if (kind == 2) {
				/* An unmodelled key: only sanity. */
				CHECK(got.remaining >= 0);
				continue;
			}
			if (!known[k]) {
				st_policy_fresh(&p, fresh);
				state = fresh;
			}
			st_policy_decide(&p, state, now, cost, commit, &want);
			CHECK(same(&got, &want));
			if (!known[k] && want.allowed && commit) {
				memcpy(model[k], fresh, sizeof(fresh));
				known[k] = 1;
			}
		}
	}
	st_shm_get_stats(&h, &s);
	CHECK(s.evicted == 0);
	CHECK(s.keys <= 2 * NKEYS);
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

/* A blocked key stays blocked while fresh keys flood a full table. */
static void flood(void)
{
	st_policy p;
	st_shm h;
	st_shm_stats s;
	st_decision d;
	const char *why;
	st_shm_hash blocked;
	int64_t now = 1000;

	st_policy_init(&p, ST_TOKEN_BUCKET);
	CHECK(st_policy_add(&p, 5, INT64_C(3600) * 1000000000, 0, &why) == 0);
	open_or_die(&h, &p, 8);
	blocked = st_shm_hash_key(&h, 1, "victim", 6);
	for (int i = 0; i < 5; i++) {
		st_shm_decide(&h, blocked, now, 1, 1, &d);
		CHECK(d.allowed);
	}
	for (int i = 0; i < 20000; i++) {
		char key[32];
		int n = snprintf(key, sizeof(key), "flood-%d", i);
		st_shm_decide(&h, st_shm_hash_key(&h, 1, key, (size_t)n), now,
		              1, 1, &d);
		CHECK(d.allowed);
		now += 1000;
	}
	st_shm_decide(&h, blocked, now, 1, 1, &d);
	CHECK(!d.allowed);
	st_shm_get_stats(&h, &s);
	CHECK(s.keys <= s.slots);
	CHECK(s.evicted > 0);
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

/* 8 processes, one key, a fixed window of 3000: exactly 3000 allowed. */
static void hammer(void)
{
	st_policy p;
	st_shm h;
	const char *why;
	long *allowed = mmap(NULL, 8 * sizeof(long), PROT_READ | PROT_WRITE,
	                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	long total = 0;

	CHECK(allowed != MAP_FAILED);
	st_policy_init(&p, ST_FIXED_WINDOW);
	CHECK(st_policy_add(&p, 3000, INT64_C(1) << 50, 0, &why) == 0);
	open_or_die(&h, &p, 64);
	for (int c = 0; c < 8; c++) {
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			st_shm child;
			open_or_die(&child, &p, 64);
			st_shm_hash kh = st_shm_hash_key(&child, 1, "one", 3);
			for (int i = 0; i < 1000; i++) {
				st_decision d;
				st_shm_decide(&child, kh, 5, 1, 1, &d);
				allowed[c] += d.allowed;
			}
			st_shm_close(&child);
			_exit(0);
		}
	}
	for (int c = 0; c < 8; c++) {
		int status;
		CHECK(wait(&status) > 0);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	for (int c = 0; c < 8; c++)
		total += allowed[c];
	CHECK(total == 3000);
	munmap(allowed, 8 * sizeof(long));
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

/* 4 processes race to store the same new keys: in each of RACE_ROUNDS
 * rounds they meet at a barrier and then hit the round's RACE_KEYS fresh
 * keys (a fixed window of 1) once each. A key stored twice would admit a
 * second hit. The segment is large enough that nothing is evicted. */
#define RACE_ROUNDS 20000
#define RACE_KEYS 4
#define RACE_PROCS 4
static void race(void)
{
	st_policy p;
	st_shm h;
	st_shm_stats s;
	const char *why;
	size_t nkeys = RACE_ROUNDS * RACE_KEYS;
	long *shared =
	    mmap(NULL, (nkeys + 1) * sizeof(long), PROT_READ | PROT_WRITE,
	         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	long *arrived = shared, *allowed = shared + 1;

	CHECK(shared != MAP_FAILED);
	st_policy_init(&p, ST_FIXED_WINDOW);
	CHECK(st_policy_add(&p, 1, INT64_C(1) << 50, 0, &why) == 0);
	open_or_die(&h, &p, (uint32_t)(3 * nkeys));
	for (int c = 0; c < RACE_PROCS; c++) {
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			st_shm child;
			open_or_die(&child, &p, (uint32_t)(3 * nkeys));
			for (long r = 0; r < RACE_ROUNDS; r++) {
				__atomic_fetch_add(arrived, 1,
				                   __ATOMIC_SEQ_CST);
				while (__atomic_load_n(arrived,
				                       __ATOMIC_SEQ_CST) <
				       RACE_PROCS * (r + 1))
					sched_yield();
				for (int k = 0; k < RACE_KEYS; k++) {
					long idx = r * RACE_KEYS + k;
					char key[24];
					int n = snprintf(key, sizeof(key),
					                 "r%ld", idx);
					st_decision d;
					st_shm_decide(
					    &child,
					    st_shm_hash_key(&child, 1, key,
					                    (size_t)n),
					    5, 1, 1, &d);
					if (d.allowed)
						__atomic_fetch_add(
						    &allowed[idx], 1,
						    __ATOMIC_RELAXED);
				}
			}
			st_shm_close(&child);
			_exit(0);
		}
	}
	for (int c = 0; c < RACE_PROCS; c++) {
		int status;
		CHECK(wait(&status) > 0);
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	st_shm_get_stats(&h, &s);
	CHECK(s.evicted == 0);
	for (size_t k = 0; k < nkeys; k++)
		CHECK(allowed[k] == 1);
	CHECK(s.keys == nkeys);
	munmap(shared, (nkeys + 1) * sizeof(long));
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

/* A process killed holding a lock: others take it over, whether the dead
 * process was reaped already or is still a zombie. */
static void killed_holder(int reap_first)
{
	st_policy p;
	st_shm h;
	st_decision d;
	const char *why;
	st_shm_hash kh;
	int fds[2], status;
	char c;
	pid_t pid;

	st_policy_init(&p, ST_TOKEN_BUCKET);
	CHECK(st_policy_add(&p, 10, 1000000000, 0, &why) == 0);
	open_or_die(&h, &p, 16);
	kh = st_shm_hash_key(&h, 1, "held", 4);
	CHECK(pipe(fds) == 0);
	pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		st_shm_hold_lock(&h, kh);
		CHECK(write(fds[1], "x", 1) == 1);
		pause();
		_exit(0);
	}
	CHECK(read(fds[0], &c, 1) == 1);
	CHECK(kill(pid, SIGKILL) == 0);
	if (reap_first) {
		CHECK(waitpid(pid, &status, 0) == pid);
	} else {
		/* Wait until it is a zombie, without reaping it. */
		siginfo_t info;
		memset(&info, 0, sizeof(info));
		CHECK(waitid(P_PID, (id_t)pid, &info, WEXITED | WNOWAIT) == 0);
	}
	st_shm_decide(&h, kh, 1, 1, 1, &d);
	CHECK(d.allowed && d.remaining == 9);
	st_shm_decide(&h, kh, 1, 1, 1, &d);
	CHECK(d.allowed && d.remaining == 8);
	if (!reap_first)
		CHECK(waitpid(pid, &status, 0) == pid);
	close(fds[0]);
	close(fds[1]);
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

static void mismatch(void)
{
	st_policy p, q;
	st_shm h, g;
	const char *why;
	char err[512];

	st_policy_init(&p, ST_TOKEN_BUCKET);
	CHECK(st_policy_add(&p, 10, 1000000000, 0, &why) == 0);
	st_policy_init(&q, ST_SLIDING_WINDOW);
	CHECK(st_policy_add(&q, 10, 1000000000, 0, &why) == 0);
	open_or_die(&h, &p, 16);
	CHECK(st_shm_open(&g, name, &q, 16, err, sizeof(err)) ==
	      ST_SHM_EMISMATCH);
	CHECK(strstr(err, "token_bucket") != NULL);
	CHECK(strstr(err, "sliding_window") != NULL);
	CHECK(st_shm_open(&g, name, &p, 17, err, sizeof(err)) ==
	      ST_SHM_EMISMATCH);
	CHECK(strstr(err, "max_keys=16") && strstr(err, "max_keys=17"));
	open_or_die(&g, &p, 16);
	st_shm_close(&g);
	st_shm_close(&h);
	CHECK(st_shm_unlink(name) == 0);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 10000;
	long done = 0;

	snprintf(name, sizeof(name), "/stanchion-fuzz-%d", (int)getpid());
	rng ^= (uint64_t)getpid();
	check_siphash();
	while (done < n) {
		int ops = 200 + (int)(next() % 800);
		if (ops > n - done)
			ops = (int)(n - done);
		differential(ops);
		done += ops;
	}
	flood();
	hammer();
	race();
	killed_holder(1);
	killed_holder(0);
	mismatch();
	printf("%ld operations ok\n", done);
	return 0;
}
