/* The access-log engine: format compilation, line splitting across chunks,
 * field scanning and the traffic aggregation of `stanchion report`.
 *
 * Plain C, no Python: tests/fuzz/logparse_fuzz.c drives it directly and
 * src/logparse_type.c wraps it as stanchion._core.LogParser.
 *
 *   format    a compiled list of literals and fields (the rules of
 *             stanchion.report._pyparse, the reference): a field ends at
 *             the first byte of the literal that follows it (a space when
 *             it is last); a field between two '"' ends at the first '"'
 *             not escaped by a backslash; Apache's %t is "[", a field up
 *             to the next ']', then "]"; text after the format is ignored.
 *   lines     split on '\n'; one trailing '\r' is dropped; empty lines are
 *             not counted; a line longer than LP_MAX_LINE bytes is
 *             malformed and never buffered past that bound.
 *   tables    clients, paths and templates: space-saving top-K tables
 *             (Metwally et al.) of at most `top` entries each, keyed by
 *             the first LP_MAX_KEY bytes of a client or path (a template
 *             is made from the cut path), so that their memory is bounded
 *             by `top` times a few kB, not by the line length. Entries sit
 *             in count buckets (ascending), each bucket's entries in the
 *             order of their last update, so the entry evicted (fewest
 *             requests, then least recently updated) is the head of the
 *             first bucket: every update is O(1).
 *   seconds   a hash map of the seconds that saw traffic.
 *
 * Memory is bounded by `top` except for the per-second map, which holds
 * one entry per second with traffic (as the report lists them all).
 */
#ifndef ST_LOGPARSE_H
#define ST_LOGPARSE_H

#include <stddef.h>
#include <stdint.h>

#define LP_MAX_LINE 65536     /* longer lines (after '\r') are malformed */
#define LP_MAX_KEY 2048       /* clients and paths are cut to this */
#define LP_EXAMPLE_LEN 200    /* bytes of a malformed line kept */
#define LP_MAX_EXAMPLES 5     /* malformed lines kept */
#define LP_MAX_METHODS 16     /* distinct methods counted by name */
#define LP_MAX_WINDOWS 4      /* rate windows per client */
#define LP_MAX_ITEMS 256      /* literals + fields in a format */
#define LP_MAX_TOP 0x7fffffff /* largest `top` */
#define LP_NIL (-1)           /* no entry / no bucket */

/* What a format's field is. */
enum {
	LP_LIT = 0,  /* literal bytes */
	LP_CLIENT,   /* %h %a $remote_addr */
	LP_TIME_CLF, /* 10/Oct/2000:13:55:36 -0700 (brackets are literals) */
	LP_TIME_ISO, /* 2000-10-10T13:55:36-07:00 or ...Z */
	LP_REQUEST,  /* GET /a?b=1 HTTP/1.1 */
	LP_STATUS,   /* three digits */
	LP_BYTES,    /* 1 to 18 digits or "-" */
	LP_OPAQUE    /* anything else */
};

typedef struct {
	int kind;   /* LP_LIT or a field kind */
	int quoted; /* field between two '"' */
	unsigned char
	    delim;       /* a field's end byte (the next literal's first) */
	int last;        /* the last item (delim ' ', or the line's end) */
	size_t off, len; /* a literal's bytes in lp_format.lits */
} lp_item;

typedef struct {
	int nitems;
	int has_request; /* lines have a method and a path */
	int has_status;  /* lines have a status */
	lp_item items[LP_MAX_ITEMS];
	unsigned char *lits; /* literal bytes, owned */
} lp_format;

/* Compiles `spec` (`len` bytes): "common", "combined", "nginx", an nginx
 * log_format string (contains '$') or an Apache LogFormat string
 * (contains '%'). Returns 0, or -1 with a static message in *err (unknown
 * name, no client or time field, two fields with nothing between them,
 * a '%' or '$' that starts no directive, too many items, no memory). */
int lp_format_compile(lp_format *f, const char *spec, size_t len,
                      const char **err);
void lp_format_free(lp_format *f);

/* A parsed line, valid during the callback only. Without a request field
 * in the format, path and method are empty; without a status field,
 * status is 0 (and not counted). */
typedef struct {
	int64_t ts_ns;               /* epoch ns (UTC) */
	const unsigned char *client; /* client bytes */
	size_t client_len;
	const unsigned char *path; /* target up to the first '?' */
	size_t path_len;
	const unsigned char *method;
	size_t method_len;
	int status;    /* 0..999 */
	int64_t bytes; /* response bytes, 0 for "-" */
} lp_line;

/* One histogram bucket of a client's window counts. */
typedef struct {
	uint32_t idx;   /* bucket index, see lp_bucket_value */
	uint32_t pad;   /* unused */
	uint64_t count; /* samples in the bucket */
} lp_hbin;

/* A client's counts in one window size. */
typedef struct {
	int64_t cur_id;    /* the open window's id */
	int64_t cur_count; /* requests in the open window (0: none yet) */
	int64_t max;       /* largest closed window count */
	int64_t samples;   /* closed windows */
	lp_hbin *bins;     /* sorted by idx */
	uint32_t nbins, cap;
} lp_win;

#define LP_INLINE 24 /* keys up to this long live in the entry */

typedef struct {
	union {
		unsigned char inl[LP_INLINE]; /* kcap == 0 */
		unsigned char *heap;          /* kcap > 0: owned */
	} k;
	uint32_t klen, kcap;
	uint64_t hash;
	int64_t requests, error; /* space-saving count and overestimate */
	int64_t bytes, n4xx, n5xx;
	int64_t first_ns, last_ns;
	int32_t prev, next; /* in the bucket, by last update */
	int32_t bucket;     /* index in lp_table.buckets */
} lp_entry;

typedef struct {
	int64_t count;      /* requests of every entry here */
	int32_t head, tail; /* entries, least recently updated first */
	int32_t prev, next; /* buckets by ascending count */
} lp_bucket;

typedef struct {
	int32_t top;        /* capacity */
	int32_t n;          /* entries used */
	int32_t cap;        /* entries allocated */
	lp_entry *entries;  /* dense [0, n) */
	lp_bucket *buckets; /* `cap` of them; free ones chained by next */
	int32_t bfree;      /* free bucket list */
	int32_t bhead;      /* the lowest count bucket */
	uint64_t *slots;    /* index: hash >> 32 << 32 | entry + 1; 0 empty */
	uint32_t mask;      /* slots - 1 */
	int nwin;           /* rate windows per entry (clients only) */
	lp_win *wins;       /* cap * nwin, or NULL */
	int evicted;        /* an entry was ever evicted */
	uint64_t seed;      /* the hash's key */
} lp_table;

typedef struct {
	int64_t sec, requests, bytes, n4xx, n5xx;
} lp_second;

typedef struct {
	int64_t line_no;                    /* 1-based, all lines */
	size_t len;                         /* bytes kept */
	unsigned char text[LP_EXAMPLE_LEN]; /* the line's first bytes */
} lp_example;

typedef void (*lp_event_fn)(void *ctx, const lp_line *line);

typedef struct {
	lp_format fmt;
	int nwin;
	int64_t windows[LP_MAX_WINDOWS]; /* seconds */
	/* the line waiting for its end */
	unsigned char *carry; /* LP_MAX_LINE + 2 bytes */
	size_t carry_len;
	int carry_long; /* the carried line is already too long */
	/* totals */
	int64_t line_no, lines, parsed, malformed, bytes;
	int64_t first_ns, last_ns;
	int nexamples;
	lp_example examples[LP_MAX_EXAMPLES];
	int64_t status[1000];
	int nmethods;
	unsigned char *method[LP_MAX_METHODS]; /* owned */
	size_t method_len[LP_MAX_METHODS];
	int64_t method_count[LP_MAX_METHODS];
	int64_t method_other;
	int64_t wsec;                /* the second wid[] is for */
	int64_t wid[LP_MAX_WINDOWS]; /* its window ids */
	/* per second */
	lp_second *secs;
	size_t nsecs, secmask;
	size_t seclast; /* the slot of the last second touched */
	/* tables */
	lp_table clients, paths, templates;
	unsigned char *tmpl; /* scratch for a template */
	/* time caches */
	unsigned char tkey[32];
	size_t tkey_len;
	int64_t tkey_ns;
	unsigned char dkey[12];
	int64_t dkey_days;
	int has_d;
	int tkind;
} lp_parser;

/* Sets up `p` for `fmt` (taken over: freed by lp_free, even on failure).
 * windows: 1..LP_MAX_WINDOWS distinct positive values; top 1..LP_MAX_TOP.
 * Returns 0, or -1 when memory ran out (p is then safe to lp_free). */
int lp_init(lp_parser *p, lp_format *fmt, int32_t top, const int64_t *windows,
            int nwin);
void lp_free(lp_parser *p);

/* Parses and aggregates the complete lines of `data`; a tail without
 * '\n' waits for the next call. `fn` (may be NULL) is called for each
 * parsed line after it is counted. Returns 0, or -1 when memory ran out:
 * the tables stay well formed (safe to read and free), but the line that
 * failed may be partly counted and the rest of `data` is not parsed. */
int lp_feed(lp_parser *p, const unsigned char *data, size_t len,
            lp_event_fn fn, void *ctx);
/* Parses the waiting tail, if any, as the last line. */
int lp_finish(lp_parser *p, lp_event_fn fn, void *ctx);

/* The value a histogram bucket stands for. */
int64_t lp_bucket_value(uint32_t idx);
/* The bucket of a window count v >= 1. */
uint32_t lp_bucket_of(int64_t v);

/* p50, p90, p99 and max of window `w` of client entry `e`, the open
 * window included as a sample. Without any sample, all 0. */
void lp_client_rates(const lp_parser *p, int32_t e, int w, int64_t out[4]);

/* The key bytes of an entry. */
static inline const unsigned char *lp_key(const lp_entry *e)
{
	return e->kcap ? e->k.heap : e->k.inl;
}

/* Fills order[0..t->n) with the entries by requests descending, then key
 * ascending (bytes). Returns 0, or -1 when memory ran out. */
int lp_table_order(const lp_table *t, int32_t *order);
/* Fills order[0..p->nsecs) with the slots of p->secs in use, by second.
 * Returns 0, or -1 when memory ran out. */
int lp_seconds_order(const lp_parser *p, size_t *order);

/* The template of `path`: segments of all digits, UUIDs or >= 16 hex
 * digits become "{id}". Writes at most 4 * len + 4 bytes to out and
 * returns the length. */
size_t lp_template(const unsigned char *path, size_t len, unsigned char *out);

#endif /* ST_LOGPARSE_H */
