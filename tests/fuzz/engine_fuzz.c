/* Fuzz and property checks of the pure C engine, without Python.
 *
 * Built two ways:
 *   - as a libFuzzer target (clang -fsanitize=fuzzer,address,undefined
 *     -DST_LIBFUZZER): LLVMFuzzerTestOneInput drives the rate parser and
 *     the key table from the fuzzer's bytes;
 *   - as a standalone program (gcc -fsanitize=address,undefined): main()
 *     feeds the same entry point a deterministic stream of random inputs.
 *     tests/test_engine_c.py builds and runs it.
 *
 * The key table is checked against a plain array model after every
 * operation; the rate parser must never read out of bounds and, when it
 * succeeds, must return rates the policy compiler either accepts or
 * rejects cleanly.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keytable.h"
#include "limit.h"
#include "rate.h"

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "%s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #cond);          \
			abort();                                     \
		}                                                    \
	} while (0)

/* ---- rate parser -------------------------------------------------------- */

/* Whether s[0..n) is UTF-8 (structure only: lead and continuation
 * bytes), as Python needs an error message to be. */
static int utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		size_t more = c < 0x80             ? 0
		              : (c & 0xE0) == 0xC0 ? 1
		              : (c & 0xF0) == 0xE0 ? 2
		              : (c & 0xF8) == 0xF0 ? 3
		                                   : 4;
		if (more == 4 || more > n - i - 1)
			return 0;
		for (size_t k = 1; k <= more; k++)
			if ((s[i + k] & 0xC0) != 0x80)
				return 0;
		i += more + 1;
	}
	return 1;
}

static void fuzz_rates(const uint8_t *data, size_t size)
{
	st_rate rates[ST_MAX_RATES];
	char err[128];
	/* A copy of exactly `size` bytes: ASan flags any read past it. */
	char *buf = malloc(size ? size : 1);
	int n;

	CHECK(buf != NULL);
	memcpy(buf, data, size);
	n = rate_parse(buf, size, rates, ST_MAX_RATES, err, sizeof(err));
	if (n < 0) {
		CHECK(strlen(err) > 0);
		/* The message shows part of the text: never cut inside a
		 * character of a UTF-8 input (Python must decode it). */
		if (utf8_ok(data, size))
			CHECK(
			    utf8_ok((const unsigned char *)err, strlen(err)));
	} else {
		st_policy p;
		CHECK(n >= 1 && n <= ST_MAX_RATES);
		for (int alg = 0; alg < 3; alg++) {
			st_policy_init(&p, (st_algorithm)alg);
			for (int i = 0; i < n; i++) {
				const char *why;
				CHECK(rates[i].amount > 0);
				CHECK(rates[i].period_ns > 0);
				(void)st_policy_add(&p, rates[i].amount,
				                    rates[i].period_ns, 0,
				                    &why);
			}
		}
	}
	free(buf);
}

/* ---- key table against a model ------------------------------------------ */

#define MODEL_MAX 64

typedef struct {
	char key[40];
	size_t len;
	int64_t value;
} model_entry;

static uint64_t toy_hash(const char *k, size_t len)
{
	/* Deliberately weak, so probe runs collide and wrap. */
	uint64_t h = 0;
	for (size_t i = 0; i < len; i++)
		h = h * 31 + (uint8_t)k[i];
	return h % 7;
}

static void check_table(kt_table *t, model_entry *m, size_t n)
{
	CHECK(t->count == n);
	for (size_t i = 0; i < n; i++) {
		kt_entry *e = kt_find(t, toy_hash(m[i].key, m[i].len), 1,
		                      m[i].key, m[i].len);
		CHECK(e != NULL);
		CHECK(e->state[0] == m[i].value);
	}
}

static void fuzz_table(const uint8_t *data, size_t size)
{
	kt_table t;
	model_entry m[MODEL_MAX];
	size_t n = 0, max = 1 + (size ? data[0] % MODEL_MAX : 0);

	kt_init(&t, 1, max, 12345);
	for (size_t pos = 1; pos + 1 < size; pos += 2) {
		uint8_t op = data[pos], arg = data[pos + 1];
		char key[40];
		size_t len = (size_t)(arg % 37);
		kt_entry *e;

		for (size_t i = 0; i < len; i++)
			key[i] = (char)('a' + (arg + i * 7) % 5);
		e = kt_find(&t, toy_hash(key, len), 1, key, len);
		if (op % 3 != 2) { /* insert or update */
			if (e != NULL) {
				e->state[0]++;
				for (size_t i = 0; i < n; i++)
					if (m[i].len == len &&
					    memcmp(m[i].key, key, len) == 0)
						m[i].value++;
			} else if (n < max) {
				e = kt_insert(&t, toy_hash(key, len), 1, key,
				              len);
				CHECK(e != NULL);
				e->state[0] = op;
				memcpy(m[n].key, key, len);
				m[n].len = len;
				m[n].value = op;
				n++;
			}
		} else if (n > 0) { /* remove a random entry */
			size_t i = kt_random(&t);
			kt_entry *victim = kt_at(&t, i);
			for (size_t j = 0; j < n; j++) {
				const char *vk = victim->len > KT_INLINE
				                     ? victim->key.big
				                     : victim->key.small;
				if (m[j].len == victim->len &&
				    memcmp(m[j].key, vk, victim->len) == 0) {
					m[j] = m[--n];
					break;
				}
			}
			kt_remove_at(&t, i);
		}
		check_table(&t, m, n);
	}
	kt_free(&t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	if (data[0] & 1)
		fuzz_rates(data + 1, size - 1);
	else
		fuzz_table(data + 1, size - 1);
	return 0;
}

#ifndef ST_LIBFUZZER
/* A key longer than an entry can record is refused before a byte of it
 * is read: neither stored (with a truncated length) nor found. */
static void check_too_long_key(void)
{
	kt_table t;
	char key[1] = {'k'};
	size_t len = (size_t)KT_MAX_KEY + 1;

	if (sizeof(size_t) <= sizeof(uint32_t))
		return; /* no such length */
	kt_init(&t, 1, 4, 1);
	CHECK(kt_insert(&t, 42, 1, key, 1) != NULL);
	CHECK(kt_insert(&t, 42, 1, key, len) == NULL);
	CHECK(kt_find(&t, 42, 1, key, len) == NULL);
	CHECK(t.count == 1 && t.key_bytes == 0);
	kt_free(&t);
}

/* Inputs that look like rates, so the parser's deeper paths are reached. */
static const char *seeds[] = {
    "10/second",
    "10 per minute",
    "100 per 2 hours",
    "5/s;1000/day",
    "0.5/s",
    "1 per 1.5 h",
    "3/fortnight",
    "7 per",
    "9/2",
    ";;",
    "1/s,2/m,3/h,4/d,5/mo,6/y,7/s,8/s,9/s",
};

int main(int argc, char **argv)
{
	uint64_t x = 88172645463325252ull;
	long iterations = argc > 1 ? atol(argv[1]) : 200000;
	uint8_t buf[256];

	check_too_long_key();

	for (long it = 0; it < iterations; it++) {
		size_t size;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size = 1 + (size_t)(x % sizeof(buf));
		if (it % 4 == 1) {
			/* A seed with random mutations. */
			const char *s =
			    seeds[x % (sizeof(seeds) / sizeof(*seeds))];
			size = 1 + strlen(s);
			buf[0] = 1;
			memcpy(buf + 1, s, size - 1);
			for (int k = 0; k < 2; k++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				buf[1 + x % (size - 1 ? size - 1 : 1)] =
				    (uint8_t) " 0123456789./;,perscondminu"
				        [x % 28];
			}
		} else {
			for (size_t i = 0; i < size; i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				buf[i] = (uint8_t)x;
			}
		}
		LLVMFuzzerTestOneInput(buf, size);
	}
	printf("engine_fuzz: %ld inputs ok\n", iterations);
	return 0;
}
#endif
