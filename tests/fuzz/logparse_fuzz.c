/* Property checks of the access-log engine (src/logparse.c), without
 * Python.
 *
 * Built two ways, like engine_fuzz.c:
 *   - as a libFuzzer target (clang -fsanitize=fuzzer,address,undefined
 *     -DST_LIBFUZZER): LLVMFuzzerTestOneInput reads a format choice, a
 *     table size, chunk sizes and the log from the fuzzer's bytes;
 *   - as a standalone program (gcc -fsanitize=address,undefined): main()
 *     feeds the same entry point a deterministic stream of inputs made of
 *     log lines, mostly well formed, then corrupted (bytes flipped,
 *     quotes, backslashes, NULs, '\r', cut or overlong lines).
 *     tests/test_logparse.py builds and runs it.
 *
 * For every input: compiling an arbitrary format never crashes; the log
 * parsed in one piece and in random chunks gives the same counts and
 * tables; lines = parsed + malformed; the per-second series and the
 * statuses add up to the parsed lines; every table holds at most `top`
 * entries, its buckets ascend and hold entries of their count, its index
 * finds every entry; rate percentiles are ordered and below the max.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logparse.h"

#define CHECK(cond)                                                  \
	do {                                                         \
		if (!(cond)) {                                       \
			fprintf(stderr, "%s:%d: check failed: %s\n", \
			        __FILE__, __LINE__, #cond);          \
			abort();                                     \
		}                                                    \
	} while (0)

static const char *FORMATS[] = {
    "combined",
    "common",
    "nginx",
    "$remote_addr [$time_iso8601] \"$request\" $status $bytes_sent $x",
    "%h %l %u %t \\\"%r\\\" %>s %b %D",
    "%a|%t|%s",
};
#define NFORMATS (sizeof(FORMATS) / sizeof(FORMATS[0]))

static void check_table(const lp_table *t, int64_t parsed)
{
	int64_t total = 0, last = 0;
	int32_t seen = 0;

	CHECK(t->n <= t->top);
	for (int32_t b = t->bhead; b != LP_NIL; b = t->buckets[b].next) {
		const lp_bucket *bk = &t->buckets[b];
		CHECK(bk->count > last);
		last = bk->count;
		CHECK(bk->head != LP_NIL);
		for (int32_t e = bk->head; e != LP_NIL;
		     e = t->entries[e].next) {
			CHECK(t->entries[e].bucket == b);
			CHECK(t->entries[e].requests == bk->count);
			seen++;
		}
	}
	CHECK(seen == t->n);
	for (int32_t e = 0; e < t->n; e++) {
		const lp_entry *en = &t->entries[e];
		size_t j = (en->hash >> 32) & t->mask;
		while ((int32_t)((uint32_t)t->slots[j] - 1) != e) {
			CHECK(t->slots[j] != 0);
			j = (j + 1) & t->mask;
		}
		CHECK(en->error >= 0 && en->error < en->requests);
		CHECK(en->error == 0 || t->evicted);
		total += en->requests;
	}
	if (!t->evicted && parsed >= 0)
		CHECK(total == parsed);
}

static void check_invariants(const lp_parser *p)
{
	int64_t sum = 0, status = 0;

	CHECK(p->lines == p->parsed + p->malformed);
	CHECK(p->nexamples == (p->malformed < 5 ? p->malformed : 5));
	for (size_t i = 0; i <= p->secmask; i++)
		if (p->secs[i].sec != INT64_MIN)
			sum += p->secs[i].requests;
	CHECK(sum == p->parsed);
	for (int s = 0; s < 1000; s++)
		status += p->status[s];
	CHECK(status == (p->fmt.has_status ? p->parsed : 0));
	check_table(&p->clients, p->parsed);
	check_table(&p->paths, p->fmt.has_request ? p->parsed : 0);
	check_table(&p->templates, p->fmt.has_request ? p->parsed : 0);
	for (int32_t e = 0; e < p->clients.n; e++)
		for (int w = 0; w < p->nwin; w++) {
			int64_t r[4];
			lp_client_rates(p, e, w, r);
			CHECK(r[0] >= 1 && r[0] <= r[1] && r[1] <= r[2] &&
			      r[2] <= r[3]);
			CHECK(r[3] <= p->clients.entries[e].requests);
		}
}

/* A digest of everything summary() reports. */
static uint64_t mix(uint64_t h, int64_t v)
{
	h ^= (uint64_t)v;
	h *= UINT64_C(0x100000001B3);
	return h ^ (h >> 29);
}

/* fields: 0 key and counts (templates), 1 and bytes (paths), 2 and
 * first_ns (clients): what summary() reports of the table, and what the
 * engine sets (a template's bytes are never written). */
static uint64_t digest_table(uint64_t h, const lp_table *t, int fields)
{
	int32_t *order = malloc(((size_t)t->n + 1) * sizeof(*order));
	CHECK(order != NULL);
	CHECK(lp_table_order(t, order) == 0);
	for (int32_t i = 0; i < t->n; i++) {
		const lp_entry *e = &t->entries[order[i]];
		const unsigned char *k = lp_key(e);
		for (uint32_t j = 0; j < e->klen; j++)
			h = mix(h, k[j]);
		h = mix(h, e->requests);
		h = mix(h, e->error);
		if (fields >= 1)
			h = mix(h, e->bytes);
		if (fields >= 2)
			h = mix(h, e->first_ns);
	}
	free(order);
	return h;
}

static uint64_t digest(const lp_parser *p)
{
	uint64_t h = 1469598103934665603ULL;
	size_t *order = malloc((p->nsecs + 1) * sizeof(*order));

	h = mix(h, p->lines);
	h = mix(h, p->parsed);
	h = mix(h, p->bytes);
	h = mix(h, p->line_no);
	for (int i = 0; i < p->nexamples; i++) {
		h = mix(h, p->examples[i].line_no);
		for (size_t j = 0; j < p->examples[i].len; j++)
			h = mix(h, p->examples[i].text[j]);
	}
	for (int s = 0; s < 1000; s++)
		h = mix(h, p->status[s]);
	CHECK(order != NULL);
	CHECK(lp_seconds_order(p, order) == 0);
	for (size_t i = 0; i < p->nsecs; i++) {
		h = mix(h, p->secs[order[i]].sec);
		h = mix(h, p->secs[order[i]].requests);
	}
	free(order);
	h = digest_table(h, &p->clients, 2);
	h = digest_table(h, &p->paths, 1);
	h = digest_table(h, &p->templates, 0);
	for (int32_t e = 0; e < p->clients.n; e++)
		for (int w = 0; w < p->nwin; w++) {
			int64_t r[4];
			lp_client_rates(p, e, w, r);
			for (int k = 0; k < 4; k++)
				h = mix(h, r[k]);
		}
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int64_t total_parsed, total_malformed, total_evicting;

/* Input: [format][top][chunk seed][windows] then the log. A format byte
 * >= NFORMATS takes a format string from the log up to its first '\n'. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const int64_t wins[4] = {1, 60, 7, 3600};
	lp_format f1, f2;
	lp_parser a, b;
	const char *err;
	const char *spec;
	size_t spec_len;
	uint64_t x;
	int nwin, top;

	if (size < 4)
		return 0;
	top = 1 + data[1] % 16;
	x = data[2] | 1;
	nwin = 1 + data[3] % 4;
	data += 4;
	size -= 4;
	if (data[-4] % 8 < NFORMATS) {
		spec = FORMATS[data[-4] % 8];
		spec_len = strlen(spec);
	} else {
		const uint8_t *nl = memchr(data, '\n', size);
		spec = (const char *)data;
		spec_len = nl ? (size_t)(nl - data) : size;
		data += spec_len;
		size -= spec_len;
	}
	if (lp_format_compile(&f1, spec, spec_len, &err) < 0) {
		CHECK(err != NULL);
		return 0;
	}
	CHECK(lp_format_compile(&f2, spec, spec_len, &err) == 0);
	CHECK(lp_init(&a, &f1, top, wins, nwin) == 0);
	CHECK(lp_init(&b, &f2, top, wins, nwin) == 0);

	CHECK(lp_feed(&a, data, size, NULL, NULL) == 0);
	CHECK(lp_finish(&a, NULL, NULL) == 0);
	for (size_t off = 0; off < size;) {
		size_t n;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		n = (size_t)(x % 97);
		if (n > size - off)
			n = size - off;
		CHECK(lp_feed(&b, data + off, n, NULL, NULL) == 0);
		off += n;
		if (x % 5 == 0)
			check_invariants(&b);
	}
	CHECK(lp_finish(&b, NULL, NULL) == 0);
	check_invariants(&a);
	check_invariants(&b);
	CHECK(digest(&a) == digest(&b));
	total_parsed += a.parsed;
	total_malformed += a.malformed;
	total_evicting += a.clients.evicted;
	lp_free(&a);
	lp_free(&b);
	return 0;
}

#ifndef ST_LIBFUZZER
static uint64_t rng = UINT64_C(0x9E3779B97F4A7C15);

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static const char *PIECES[] = {
    "10.0.0.",
    "[04/Dec/2026:10:00:0",
    " +0000]",
    "\"GET /a/",
    "?q=1",
    " HTTP/1.1\" ",
    "200 ",
    "404 ",
    "503 ",
    "-",
    "\"-\" \"ua\"",
    "\\\"",
    "\"",
    "\\",
    " ",
    "\r",
    "\n",
    "",
};

/* A line of the chosen format, then maybe corrupted. */
static size_t make_line(uint8_t *out, size_t cap, int fmt)
{
	char line[512];
	int n;
	unsigned c = (unsigned)(next() % 40), s = (unsigned)(next() % 60);
	unsigned id = (unsigned)(next() % 1000);
	static const char *st[] = {"200", "404", "503", "301", "500"};
	const char *status = st[next() % 5];

	switch (fmt) {
	case 3:
		n = snprintf(line, sizeof(line),
		             "10.0.0.%u [2026-12-04T10:%02u:%02u+01:00] \"GET "
		             "/u/%u HTTP/1.1\" %s %u 0.1\n",
		             c, s / 2, s, id, status, id);
		break;
	case 5:
		n = snprintf(line, sizeof(line),
		             "10.0.0.%u|[04/Dec/2026:10:00:%02u +0000]|%s\n",
		             c, s, status);
		break;
	default:
		n = snprintf(line, sizeof(line),
		             "10.0.0.%u - - [04/Dec/2026:10:%02u:%02u -0130] "
		             "\"%s /p/%u/x%s HTTP/1.1\" %s %u \"-\" "
		             "\"ua \\\"q\\\"\" 7\n",
		             c, s % 3, s, next() % 7 ? "GET" : "POST", id,
		             next() % 3 ? "" : "?a=1", status, id * 10);
		break;
	}
	CHECK(n > 0 && (size_t)n < sizeof(line));
	if (next() % 4 == 0) {
		/* corrupt: flip, cut, splice a piece */
		int k = (int)(next() % 4);
		size_t pos = (size_t)(next() % (uint64_t)n);
		if (k == 0)
			line[pos] = (char)next();
		else if (k == 1)
			n = (int)pos;
		else if (k == 2)
			line[pos] = PIECES[next() % 18][0];
		else
			line[pos] = '\0';
	}
	if ((size_t)n > cap)
		n = (int)cap;
	memcpy(out, line, (size_t)n);
	return (size_t)n;
}

int main(int argc, char **argv)
{
	long runs = argc > 1 ? atol(argv[1]) : 20000;
	static uint8_t buf[LP_MAX_LINE * 2 + 8192];

	for (long r = 0; r < runs; r++) {
		size_t size = 4, lines = 1 + next() % 40;
		int fmt = (int)(next() % (NFORMATS + 2));
		buf[0] = (uint8_t)fmt;
		buf[1] = (uint8_t)next();
		buf[2] = (uint8_t)next();
		buf[3] = (uint8_t)next();
		if (fmt >= (int)NFORMATS) {
			/* a format from the input: a known one, mangled */
			const char *f = FORMATS[next() % NFORMATS];
			size_t n = strlen(f);
			memcpy(buf + size, f, n);
			if (next() % 2)
				buf[size + next() % n] = (uint8_t)next();
			size += n;
			buf[size++] = '\n';
		}
		if (r % 500 == 0) {
			/* an overlong line between two normal ones */
			size += make_line(buf + size, 512, fmt);
			memset(buf + size, 'x', LP_MAX_LINE + 10);
			size += LP_MAX_LINE + 10;
			buf[size++] = '\n';
		}
		for (size_t i = 0; i < lines; i++)
			size += make_line(buf + size, 512, fmt % NFORMATS);
		if (r % 3 == 0) {
			/* raw random bytes */
			size_t n = next() % 300;
			for (size_t i = 0; i < n; i++)
				buf[size++] = (uint8_t)next();
		}
		LLVMFuzzerTestOneInput(buf, size);
	}
	printf(
	    "%ld inputs ok: %lld lines parsed, %lld malformed, %lld "
	    "inputs evicted clients\n",
	    runs, (long long)total_parsed, (long long)total_malformed,
	    (long long)total_evicting);
	return 0;
}
#endif
