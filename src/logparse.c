/* The access-log engine; see logparse.h for the model. */
#include "logparse.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LP_NS 1000000000LL

/* ------------------------------------------------------------------ */
/* Format compilation                                                   */
/* ------------------------------------------------------------------ */

static const char FMT_COMMON[] = "%h %l %u %t \"%r\" %>s %b";
static const char FMT_COMBINED[] =
    "%h %l %u %t \"%r\" %>s %b \"%{Referer}i\" \"%{User-agent}i\"";
static const char FMT_NGINX[] =
    "$remote_addr - $remote_user [$time_local] \"$request\" $status "
    "$body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

typedef struct {
	lp_format *f;
	size_t litcap, litlen;
	size_t t_mark; /* litlen right after an Apache %t's "]" */
	const char *err;
} fmt_builder;

static int fb_lit(fmt_builder *b, const char *s, size_t n)
{
	lp_format *f = b->f;
	lp_item *it;

	if (n == 0)
		return 0;
	if (b->litlen + n > b->litcap) {
		size_t cap = (b->litlen + n) * 2 + 16;
		unsigned char *q = realloc(f->lits, cap);
		if (q == NULL) {
			b->err = "out of memory";
			return -1;
		}
		f->lits = q;
		b->litcap = cap;
	}
	memcpy(f->lits + b->litlen, s, n);
	if (f->nitems > 0 && f->items[f->nitems - 1].kind == LP_LIT) {
		f->items[f->nitems - 1].len += n;
	} else {
		if (f->nitems == LP_MAX_ITEMS) {
			b->err = "the log format has too many fields";
			return -1;
		}
		it = &f->items[f->nitems++];
		memset(it, 0, sizeof(*it));
		it->kind = LP_LIT;
		it->off = b->litlen;
		it->len = n;
	}
	b->litlen += n;
	return 0;
}

/* A field may start here: a literal (not an Apache %t's "]") precedes
 * it, or nothing does. */
static int fb_separated(fmt_builder *b)
{
	lp_format *f = b->f;

	if ((f->nitems > 0 && f->items[f->nitems - 1].kind != LP_LIT) ||
	    (b->t_mark != 0 && b->litlen == b->t_mark)) {
		b->err =
		    "two fields of the log format have nothing between "
		    "them";
		return -1;
	}
	return 0;
}

static int fb_field(fmt_builder *b, int kind)
{
	lp_format *f = b->f;
	lp_item *it;

	if (fb_separated(b) < 0)
		return -1;
	if (f->nitems == LP_MAX_ITEMS) {
		b->err = "the log format has too many fields";
		return -1;
	}
	/* Only the first field of a kind counts (the two time kinds are
	 * one); repeats are opaque. */
	for (int i = 0; i < f->nitems; i++) {
		int k = f->items[i].kind;
		if (k == kind || (k == LP_TIME_ISO && kind == LP_TIME_CLF) ||
		    (k == LP_TIME_CLF && kind == LP_TIME_ISO))
			kind = LP_OPAQUE;
	}
	it = &f->items[f->nitems++];
	memset(it, 0, sizeof(*it));
	it->kind = kind;
	return 0;
}

static int ieq(const char *a, size_t n, const char *lit)
{
	return strlen(lit) == n && memcmp(a, lit, n) == 0;
}

static int is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c == '_';
}

static int nginx_kind(const char *v, size_t n)
{
	if (ieq(v, n, "remote_addr"))
		return LP_CLIENT;
	if (ieq(v, n, "time_local"))
		return LP_TIME_CLF;
	if (ieq(v, n, "time_iso8601"))
		return LP_TIME_ISO;
	if (ieq(v, n, "request"))
		return LP_REQUEST;
	if (ieq(v, n, "status"))
		return LP_STATUS;
	if (ieq(v, n, "body_bytes_sent") || ieq(v, n, "bytes_sent"))
		return LP_BYTES;
	return LP_OPAQUE;
}

static int compile_nginx(fmt_builder *b, const char *s, size_t len)
{
	size_t i = 0, start;

	while (i < len) {
		if (s[i] != '$') {
			start = i;
			while (i < len && s[i] != '$')
				i++;
			if (fb_lit(b, s + start, i - start) < 0)
				return -1;
			continue;
		}
		i++;
		if (i < len && s[i] == '{') {
			start = ++i;
			while (i < len && is_name_char(s[i]))
				i++;
			if (i == start || i >= len || s[i] != '}') {
				b->err =
				    "a '${' in the log format is not "
				    "closed by a name and '}'";
				return -1;
			}
			if (fb_field(b, nginx_kind(s + start, i - start)) < 0)
				return -1;
			i++;
			continue;
		}
		start = i;
		while (i < len && is_name_char(s[i]))
			i++;
		if (i == start) {
			b->err = "a '$' in the log format starts no variable";
			return -1;
		}
		if (fb_field(b, nginx_kind(s + start, i - start)) < 0)
			return -1;
	}
	return 0;
}

static int compile_apache(fmt_builder *b, const char *s, size_t len)
{
	size_t i = 0, start;
	int kind, braces;

	while (i < len) {
		if (s[i] == '\\' && i + 1 < len && s[i + 1] == '"') {
			/* httpd.conf's \" is a quote */
			if (fb_lit(b, "\"", 1) < 0)
				return -1;
			i += 2;
			continue;
		}
		if (s[i] != '%') {
			start = i;
			while (
			    i < len && s[i] != '%' &&
			    !(s[i] == '\\' && i + 1 < len && s[i + 1] == '"'))
				i++;
			if (fb_lit(b, s + start, i - start) < 0)
				return -1;
			continue;
		}
		/* %[<>]*!?[0-9,]*({...})?[A-Za-z%] */
		start = i++;
		while (i < len && (s[i] == '<' || s[i] == '>'))
			i++;
		if (i < len && s[i] == '!')
			i++;
		while (i < len &&
		       ((s[i] >= '0' && s[i] <= '9') || s[i] == ','))
			i++;
		braces = 0;
		if (i < len && s[i] == '{') {
			const char *close = memchr(s + i, '}', len - i);
			if (close != NULL) {
				i = (size_t)(close - s) + 1;
				braces = 1;
			}
		}
		if (i >= len ||
		    !((s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= 'A' && s[i] <= 'Z') || s[i] == '%')) {
			b->err = "a '%' in the log format starts no directive";
			return -1;
		}
		if (s[i] == '%') {
			if (fb_lit(b, "%", 1) < 0)
				return -1;
			i++;
			continue;
		}
		kind = LP_OPAQUE;
		if (!braces) {
			switch (s[i]) {
			case 'h':
			case 'a':
				kind = LP_CLIENT;
				break;
			case 't':
				/* "[" time "]": time ends at the first ']' */
				if (fb_separated(b) < 0 ||
				    fb_lit(b, "[", 1) < 0 ||
				    fb_field(b, LP_TIME_CLF) < 0)
					return -1;
				b->t_mark = 0;
				if (fb_lit(b, "]", 1) < 0)
					return -1;
				b->t_mark = b->litlen;
				i++;
				continue;
			case 'r':
				kind = LP_REQUEST;
				break;
			case 's':
				kind = LP_STATUS;
				break;
			case 'b':
			case 'B':
				kind = LP_BYTES;
				break;
			default:
				break;
			}
		}
		if (fb_field(b, kind) < 0)
			return -1;
		i++;
	}
	return 0;
}

/* See logparse.h. */
int lp_format_compile(lp_format *f, const char *spec, size_t len,
                      const char **err)
{
	fmt_builder b = {f, 0, 0, 0, NULL};
	int has_client = 0, has_time = 0, rc;

	memset(f, 0, sizeof(*f));
	if (memchr(spec, '$', len) != NULL) {
		rc = compile_nginx(&b, spec, len);
	} else if (memchr(spec, '%', len) != NULL) {
		rc = compile_apache(&b, spec, len);
	} else if (len == 6 && memcmp(spec, "common", 6) == 0) {
		rc = compile_apache(&b, FMT_COMMON, strlen(FMT_COMMON));
	} else if (len == 8 && memcmp(spec, "combined", 8) == 0) {
		rc = compile_apache(&b, FMT_COMBINED, strlen(FMT_COMBINED));
	} else if (len == 5 && memcmp(spec, "nginx", 5) == 0) {
		rc = compile_nginx(&b, FMT_NGINX, strlen(FMT_NGINX));
	} else {
		b.err =
		    "log_format must be 'common', 'combined', 'nginx', an "
		    "nginx log_format (with $variables) or an Apache "
		    "LogFormat (with %directives)";
		rc = -1;
	}
	if (rc == 0) {
		for (int i = 0; i < f->nitems; i++) {
			lp_item *it = &f->items[i];
			if (it->kind == LP_CLIENT)
				has_client = 1;
			if (it->kind == LP_REQUEST)
				f->has_request = 1;
			if (it->kind == LP_STATUS)
				f->has_status = 1;
			if (it->kind == LP_TIME_CLF || it->kind == LP_TIME_ISO)
				has_time = 1;
			if (it->kind == LP_LIT)
				continue;
			if (i + 1 < f->nitems) {
				const lp_item *nx = &f->items[i + 1];
				it->delim = f->lits[nx->off];
				it->quoted =
				    i > 0 && it->delim == '"' &&
				    f->lits[f->items[i - 1].off +
				            f->items[i - 1].len - 1] == '"';
			} else {
				it->last = 1;
				it->delim = ' ';
			}
		}
		if (!has_client || !has_time) {
			b.err =
			    "the log format needs a client field (%h, %a "
			    "or $remote_addr) and a time field (%t, "
			    "$time_local or $time_iso8601)";
			rc = -1;
		}
	}
	if (rc < 0) {
		*err = b.err;
		lp_format_free(f);
		return -1;
	}
	return 0;
}

void lp_format_free(lp_format *f)
{
	free(f->lits);
	f->lits = NULL;
	f->nitems = 0;
}

/* ------------------------------------------------------------------ */
/* Time                                                                 */
/* ------------------------------------------------------------------ */

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
	static const int dm[12] = {31, 28, 31, 30, 31, 30,
	                           31, 31, 30, 31, 30, 31};
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return dm[m - 1];
}

#define DIG(c) ((unsigned)((c) - '0') < 10)

static int num2(const unsigned char *s, int *v)
{
	if (!DIG(s[0]) || !DIG(s[1]))
		return -1;
	*v = (s[0] - '0') * 10 + (s[1] - '0');
	return 0;
}

static int num4(const unsigned char *s, int *v)
{
	int a, b;
	if (num2(s, &a) < 0 || num2(s + 2, &b) < 0)
		return -1;
	*v = a * 100 + b;
	return 0;
}

static int month_of(const unsigned char *s)
{
	/* Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec */
	static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	for (int i = 0; i < 12; i++)
		if (memcmp(s, names + 3 * i, 3) == 0)
			return i + 1;
	return 0;
}

/* Days of a valid date, or -1 << 40 when invalid. */
#define BAD_DAYS (-((int64_t)1 << 40))

static int64_t date_days(int y, int m, int d)
{
	if (y < 1970 || y > 2261 || m < 1 || m > 12 || d < 1 ||
	    d > days_in_month(y, m))
		return BAD_DAYS;
	return days_from_civil(y, m, d);
}

/* "HH:MM:SS" -> seconds, or -1. */
static int64_t clock_secs(const unsigned char *s)
{
	int h, mi, se;
	if (num2(s, &h) < 0 || s[2] != ':' || num2(s + 3, &mi) < 0 ||
	    s[5] != ':' || num2(s + 6, &se) < 0 || h > 23 || mi > 59 ||
	    se > 60)
		return -1;
	return h * 3600 + mi * 60 + se;
}

/* "+HHMM" (colon = 0) or "+HH:MM" (colon = 1) -> seconds east, or
 * INT64_MIN. */
static int64_t offset_secs(const unsigned char *s, int colon)
{
	int h, mi;
	if ((s[0] != '+' && s[0] != '-') || num2(s + 1, &h) < 0 ||
	    (colon && s[3] != ':') || num2(s + 3 + colon, &mi) < 0 || h > 23 ||
	    mi > 59)
		return INT64_MIN;
	return (s[0] == '-' ? -1 : 1) * (int64_t)(h * 3600 + mi * 60);
}

/* 26 bytes equal, without a call. */
static inline int same26(const unsigned char *a, const unsigned char *b)
{
	uint64_t x[4], y[4];
	memcpy(x, a, 24);
	memcpy(y, b, 24);
	memcpy(&x[3], a + 18, 8);
	memcpy(&y[3], b + 18, 8);
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) |
	        (x[3] ^ y[3])) == 0;
}

/* "10/Oct/2000:13:55:36 -0700" -> epoch ns. Returns 0 or -1. */
static int parse_clf(lp_parser *p, const unsigned char *s, size_t n,
                     int64_t *ns)
{
	int64_t days, tod, off;
	int d, y, m;

	if (n != 26)
		return -1;
	if (p->tkind == LP_TIME_CLF && p->tkey_len == 26 &&
	    same26(p->tkey, s)) {
		*ns = p->tkey_ns;
		return 0;
	}
	if (s[2] != '/' || s[6] != '/' || s[11] != ':' || s[20] != ' ')
		return -1;
	if (p->has_d && memcmp(p->dkey, s, 11) == 0) {
		days = p->dkey_days;
	} else {
		if (num2(s, &d) < 0 || num4(s + 7, &y) < 0)
			return -1;
		m = month_of(s + 3);
		days = date_days(y, m, d);
		if (days == BAD_DAYS)
			return -1;
		memcpy(p->dkey, s, 11);
		p->dkey_days = days;
		p->has_d = 1;
	}
	tod = clock_secs(s + 12);
	off = offset_secs(s + 21, 0);
	if (tod < 0 || off == INT64_MIN)
		return -1;
	if (days * 86400 + tod - off < 0)
		return -1;
	*ns = (days * 86400 + tod - off) * LP_NS;
	memcpy(p->tkey, s, 26);
	p->tkey_len = 26;
	p->tkey_ns = *ns;
	p->tkind = LP_TIME_CLF;
	return 0;
}

/* "2000-10-10T13:55:36-07:00" or "2000-10-10T13:55:36Z" -> epoch ns. */
static int parse_iso(lp_parser *p, const unsigned char *s, size_t n,
                     int64_t *ns)
{
	int64_t days, tod, off;
	int d, y, m;

	if (n != 25 && !(n == 20 && s[19] == 'Z'))
		return -1;
	if (p->tkind == LP_TIME_ISO && p->tkey_len == n &&
	    memcmp(p->tkey, s, n) == 0) {
		*ns = p->tkey_ns;
		return 0;
	}
	if (num4(s, &y) < 0 || s[4] != '-' || num2(s + 5, &m) < 0 ||
	    s[7] != '-' || num2(s + 8, &d) < 0 || s[10] != 'T')
		return -1;
	days = date_days(y, m, d);
	tod = clock_secs(s + 11);
	off = n == 20 ? 0 : offset_secs(s + 19, 1);
	if (days == BAD_DAYS || tod < 0 || off == INT64_MIN ||
	    days * 86400 + tod - off < 0)
		return -1;
	*ns = (days * 86400 + tod - off) * LP_NS;
	memcpy(p->tkey, s, n);
	p->tkey_len = n;
	p->tkey_ns = *ns;
	p->tkind = LP_TIME_ISO;
	return 0;
}

/* a + b, clamped at INT64_MAX (both are >= 0). */
static inline int64_t sat_add(int64_t a, int64_t b)
{
	int64_t r;
	return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t floor_div(int64_t a, int64_t b)
{
	int64_t q = a / b;
	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

/* ------------------------------------------------------------------ */
/* Hashing                                                              */
/* ------------------------------------------------------------------ */

/* A fast keyed hash. The key (seed) differs per table and per process,
 * so a log written to collide (request paths are anyone's to choose)
 * cannot be prepared in advance to pile keys into one probe chain. */
static uint64_t lp_hash(const unsigned char *s, size_t n, uint64_t seed)
{
	uint64_t h =
	    seed ^ 0x9E3779B97F4A7C15ULL ^ (n * 0xff51afd7ed558ccdULL);
	uint64_t v;

	while (n >= 8) {
		memcpy(&v, s, 8);
		h = (h ^ v) * 0xc4ceb9fe1a85ec53ULL;
		h ^= h >> 29;
		s += 8;
		n -= 8;
	}
	v = 0;
	if (n >= 4) {
		uint32_t a, b;
		memcpy(&a, s, 4);
		memcpy(&b, s + n - 4, 4);
		v = (uint64_t)a << 32 | b;
	} else if (n > 0) {
		v = (uint64_t)s[0] << 16 | (uint64_t)s[n / 2] << 8 | s[n - 1];
	}
	h = (h ^ v) * 0xff51afd7ed558ccdULL;
	h ^= h >> 32;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 29;
	return h;
}

/* ------------------------------------------------------------------ */
/* Histograms                                                           */
/* ------------------------------------------------------------------ */

static int bitlen(uint64_t v)
{
	return v == 0 ? 0 : 64 - __builtin_clzll(v);
}

uint32_t lp_bucket_of(int64_t v)
{
	int e;
	if (v < 64)
		return (uint32_t)v;
	e = bitlen((uint64_t)v) - 6;
	return (uint32_t)(64 + (e - 1) * 32 + ((v >> e) - 32));
}

int64_t lp_bucket_value(uint32_t idx)
{
	uint32_t e, m;
	if (idx < 64)
		return idx;
	e = (idx - 64) / 32 + 1;
	m = (idx - 64) % 32 + 32;
	return (int64_t)m << e;
}

/* Adds a closed window of `v` requests. Returns 0 or -1 (no memory). */
static int win_add(lp_win *w, int64_t v)
{
	uint32_t idx = lp_bucket_of(v), lo = 0, hi = w->nbins;

	if (v > w->max)
		w->max = v;
	w->samples++;
	while (lo < hi) {
		uint32_t mid = (lo + hi) / 2;
		if (w->bins[mid].idx < idx)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < w->nbins && w->bins[lo].idx == idx) {
		w->bins[lo].count++;
		return 0;
	}
	if (w->nbins == w->cap) {
		uint32_t cap = w->cap ? w->cap * 2 : 4;
		lp_hbin *b = realloc(w->bins, cap * sizeof(*b));
		if (b == NULL) {
			w->samples--;
			return -1;
		}
		w->bins = b;
		w->cap = cap;
	}
	memmove(&w->bins[lo + 1], &w->bins[lo],
	        (w->nbins - lo) * sizeof(*w->bins));
	w->bins[lo].idx = idx;
	w->bins[lo].pad = 0;
	w->bins[lo].count = 1;
	w->nbins++;
	return 0;
}

static void win_reset(lp_win *w, int64_t id)
{
	w->cur_id = id;
	w->cur_count = 1;
	w->max = 0;
	w->samples = 0;
	w->nbins = 0;
}

/* See logparse.h. */
void lp_client_rates(const lp_parser *p, int32_t e, int wi, int64_t out[4])
{
	const lp_win *w = &p->clients.wins[(size_t)e * p->nwin + wi];
	int64_t n = w->samples + (w->cur_count > 0);
	uint32_t xidx = w->cur_count > 0 ? lp_bucket_of(w->cur_count) : 0;
	static const int ps[3] = {50, 90, 99};

	out[3] = w->max > w->cur_count ? w->max : w->cur_count;
	for (int k = 0; k < 3; k++) {
		int64_t target = (ps[k] * n + 99) / 100, cum = 0;
		int xdone = w->cur_count <= 0;
		uint32_t i = 0;
		out[k] = 0;
		if (n == 0)
			continue;
		for (;;) {
			uint32_t idx;
			int64_t c;
			if (!xdone &&
			    (i >= w->nbins || xidx <= w->bins[i].idx)) {
				idx = xidx;
				c = 1;
				if (i < w->nbins && w->bins[i].idx == xidx)
					c += (int64_t)w->bins[i++].count;
				xdone = 1;
			} else if (i < w->nbins) {
				idx = w->bins[i].idx;
				c = (int64_t)w->bins[i++].count;
			} else {
				break;
			}
			cum += c;
			if (cum >= target) {
				out[k] = lp_bucket_value(idx);
				break;
			}
		}
	}
}

/* ------------------------------------------------------------------ */
/* Space-saving tables                                                  */
/* ------------------------------------------------------------------ */

/* A slot's value: the hash's high half tags it, so probing rarely
 * touches an entry that is not the one sought. */
#define SLOT(h, e) (((h) >> 32 << 32) | ((uint64_t)(uint32_t)(e) + 1))
#define SLOT_ENTRY(s) ((int32_t)((uint32_t)(s)-1))

static void tab_free(lp_table *t)
{
	for (int32_t i = 0; i < t->n; i++)
		if (t->entries[i].kcap)
			free(t->entries[i].k.heap);
	if (t->wins != NULL)
		for (size_t i = 0; i < (size_t)t->n * t->nwin; i++)
			free(t->wins[i].bins);
	free(t->entries);
	free(t->buckets);
	free(t->slots);
	free(t->wins);
	memset(t, 0, sizeof(*t));
}

static int tab_init(lp_table *t, int32_t top, int nwin, uint64_t seed)
{
	memset(t, 0, sizeof(*t));
	t->seed = seed;
	t->top = top;
	t->nwin = nwin;
	t->bfree = LP_NIL;
	t->bhead = LP_NIL;
	t->mask = 63;
	t->slots = calloc(64, sizeof(uint64_t));
	return t->slots == NULL ? -1 : 0;
}

/* Room for one more entry (and its bucket). */
static int tab_reserve(lp_table *t)
{
	int32_t cap;
	size_t nslots;

	if (t->n < t->cap)
		goto slots;
	cap = t->cap ? (t->cap > t->top / 2 ? t->top : t->cap * 2) : 16;
	if (cap > t->top)
		cap = t->top;
	{
		lp_entry *e = realloc(t->entries, (size_t)cap * sizeof(*e));
		if (e == NULL)
			return -1;
		t->entries = e;
	}
	{
		lp_bucket *b = realloc(t->buckets, (size_t)cap * sizeof(*b));
		if (b == NULL)
			return -1;
		t->buckets = b;
		for (int32_t i = t->cap; i < cap; i++) {
			b[i].next = t->bfree;
			t->bfree = i;
		}
	}
	if (t->nwin > 0) {
		lp_win *w =
		    realloc(t->wins, (size_t)cap * t->nwin * sizeof(*w));
		if (w == NULL)
			return -1;
		t->wins = w;
	}
	t->cap = cap;
	slots:
	nslots = (size_t)t->mask + 1;
	if ((size_t)(t->n + 1) * 2 > nslots) {
		size_t ns = nslots * 2;
		uint64_t *s = calloc(ns, sizeof(uint64_t));
		if (s == NULL)
			return -1;
		for (int32_t i = 0; i < t->n; i++) {
			uint64_t h = t->entries[i].hash;
			size_t j = (h >> 32) & (ns - 1);
			while (s[j] != 0)
				j = (j + 1) & (ns - 1);
			s[j] = SLOT(h, i);
		}
		free(t->slots);
		t->slots = s;
		t->mask = (uint32_t)(ns - 1);
	}
	return 0;
}

/* The slot holding `key`, or the empty slot where it would go. */
static size_t tab_find(const lp_table *t, const unsigned char *key,
                       size_t klen, uint64_t h)
{
	size_t j = (h >> 32) & t->mask;
	uint64_t tag = h >> 32 << 32;
	for (;;) {
		uint64_t s = t->slots[j];
		if (s == 0)
			return j;
		if ((s >> 32 << 32) == tag) {
			const lp_entry *e = &t->entries[SLOT_ENTRY(s)];
			if (e->hash == h && e->klen == klen &&
			    memcmp(lp_key(e), key, klen) == 0)
				return j;
		}
		j = (j + 1) & t->mask;
	}
}

/* The slot of entry e. */
static size_t tab_slot_of(const lp_table *t, int32_t e)
{
	size_t j = (t->entries[e].hash >> 32) & t->mask;
	while (SLOT_ENTRY(t->slots[j]) != e)
		j = (j + 1) & t->mask;
	return j;
}

/* Removes slot j, shifting the probe chain back. */
static void tab_unslot(lp_table *t, size_t j)
{
	size_t i = j, k;
	for (;;) {
		t->slots[i] = 0;
		for (;;) {
			j = (j + 1) & t->mask;
			if (t->slots[j] == 0)
				return;
			k = (t->slots[j] >> 32) & t->mask;
			/* Leave j when its home lies cyclically in (i, j]. */
			if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
				continue;
			break;
		}
		t->slots[i] = t->slots[j];
		i = j;
	}
}

/* Sets entry e's key; returns 0 or -1 (no memory). */
static int ent_set_key(lp_entry *en, const unsigned char *key, size_t klen)
{
	if (klen <= LP_INLINE && en->kcap == 0) {
		memcpy(en->k.inl, key, klen);
	} else {
		if (en->kcap < klen) {
			unsigned char *q = en->kcap ? realloc(en->k.heap, klen)
			                            : malloc(klen);
			if (q == NULL)
				return -1;
			en->k.heap = q;
			en->kcap = (uint32_t)klen;
		}
		memcpy(en->k.heap, key, klen);
	}
	en->klen = (uint32_t)klen;
	return 0;
}

static int32_t bucket_new(lp_table *t, int64_t count)
{
	int32_t b = t->bfree;
	t->bfree = t->buckets[b].next;
	t->buckets[b].count = count;
	t->buckets[b].head = t->buckets[b].tail = LP_NIL;
	t->buckets[b].prev = t->buckets[b].next = LP_NIL;
	return b;
}

static void bucket_append(lp_table *t, int32_t b, int32_t e)
{
	lp_bucket *bk = &t->buckets[b];
	lp_entry *en = &t->entries[e];
	en->bucket = b;
	en->next = LP_NIL;
	en->prev = bk->tail;
	if (bk->tail != LP_NIL)
		t->entries[bk->tail].next = e;
	else
		bk->head = e;
	bk->tail = e;
}

/* Takes `e` out of its bucket, freeing the bucket when it empties
 * (unless it is `keep`). */
static void bucket_remove(lp_table *t, int32_t e)
{
	lp_entry *en = &t->entries[e];
	int32_t b = en->bucket;
	lp_bucket *bk = &t->buckets[b];

	if (en->prev != LP_NIL)
		t->entries[en->prev].next = en->next;
	else
		bk->head = en->next;
	if (en->next != LP_NIL)
		t->entries[en->next].prev = en->prev;
	else
		bk->tail = en->prev;
	if (bk->head == LP_NIL) {
		if (bk->prev != LP_NIL)
			t->buckets[bk->prev].next = bk->next;
		else
			t->bhead = bk->next;
		if (bk->next != LP_NIL)
			t->buckets[bk->next].prev = bk->prev;
		bk->next = t->bfree;
		t->bfree = b;
	}
}

/* requests + 1, moving `e` to the tail of the next count's bucket. */
static void tab_increment(lp_table *t, int32_t e)
{
	lp_entry *en = &t->entries[e];
	int32_t b = en->bucket, nb = t->buckets[b].next;
	int64_t c = en->requests + 1;

	if (nb == LP_NIL || t->buckets[nb].count != c) {
		/* A new bucket after b. There is always a free one: the
		 * buckets in use are at most the entries, and b holds e. */
		if (t->buckets[b].head == e && t->buckets[b].tail == e) {
			/* e alone in b: just renumber b */
			t->buckets[b].count = c;
			en->requests = c;
			return;
		}
		nb = bucket_new(t, c);
		t->buckets[nb].prev = b;
		t->buckets[nb].next = t->buckets[b].next;
		if (t->buckets[b].next != LP_NIL)
			t->buckets[t->buckets[b].next].prev = nb;
		t->buckets[b].next = nb;
	}
	bucket_remove(t, e);
	bucket_append(t, nb, e);
	en->requests = c;
}

/* Counts one request for `key`. Returns the entry and sets *fresh when the
 * entry is new to this key (its fields other than requests/error need
 * setting), or returns LP_NIL when memory ran out. */
static int32_t tab_touch(lp_table *t, const unsigned char *key, size_t klen,
                         int *fresh)
{
	uint64_t h = lp_hash(key, klen, t->seed);
	size_t j = tab_find(t, key, klen, h);
	int32_t e;
	lp_entry *en;

	if (t->slots[j] != 0) {
		e = SLOT_ENTRY(t->slots[j]);
		tab_increment(t, e);
		*fresh = 0;
		return e;
	}
	*fresh = 1;
	if (t->n < t->top) {
		if (tab_reserve(t) < 0)
			return LP_NIL;
		j = tab_find(t, key, klen, h);
		e = t->n;
		en = &t->entries[e];
		en->kcap = 0;
		if (ent_set_key(en, key, klen) < 0)
			return LP_NIL;
		t->n++;
		en->hash = h;
		en->requests = 1;
		en->error = 0;
		if (t->nwin > 0)
			for (int w = 0; w < t->nwin; w++) {
				lp_win *wn = &t->wins[(size_t)e * t->nwin + w];
				memset(wn, 0, sizeof(*wn));
			}
		if (t->bhead != LP_NIL && t->buckets[t->bhead].count == 1) {
			bucket_append(t, t->bhead, e);
		} else {
			int32_t b = bucket_new(t, 1);
			t->buckets[b].next = t->bhead;
			if (t->bhead != LP_NIL)
				t->buckets[t->bhead].prev = b;
			t->bhead = b;
			bucket_append(t, b, e);
		}
		t->slots[j] = SLOT(h, e);
		return e;
	}
	/* Evict the least: head of the lowest bucket. */
	e = t->buckets[t->bhead].head;
	en = &t->entries[e];
	if (klen > LP_INLINE && en->kcap < klen) {
		/* the allocation first: on failure, nothing changed */
		unsigned char *q =
		    en->kcap ? realloc(en->k.heap, klen) : malloc(klen);
		if (q == NULL)
			return LP_NIL;
		en->k.heap = q;
		en->kcap = (uint32_t)klen;
	}
	tab_unslot(t, tab_slot_of(t, e));
	ent_set_key(en, key, klen);
	en->hash = h;
	en->error = en->requests;
	tab_increment(t, e);
	t->slots[tab_find(t, key, klen, h)] = SLOT(h, e);
	t->evicted = 1;
	return e;
}

static int key_cmp(const lp_entry *a, const lp_entry *b)
{
	size_t n = a->klen < b->klen ? a->klen : b->klen;
	int c = memcmp(lp_key(a), lp_key(b), n);
	if (c != 0)
		return c;
	return a->klen < b->klen ? -1 : a->klen > b->klen;
}

static int order_cmp(const void *x, const void *y)
{
	const lp_entry *a = *(const lp_entry *const *)x;
	const lp_entry *b = *(const lp_entry *const *)y;
	if (a->requests != b->requests)
		return a->requests > b->requests ? -1 : 1;
	return key_cmp(a, b);
}

/* See logparse.h. */
int lp_table_order(const lp_table *t, int32_t *order)
{
	const lp_entry **ptrs = malloc(((size_t)t->n + 1) * sizeof(*ptrs));
	if (ptrs == NULL)
		return -1;
	for (int32_t i = 0; i < t->n; i++)
		ptrs[i] = &t->entries[i];
	qsort(ptrs, (size_t)t->n, sizeof(*ptrs), order_cmp);
	for (int32_t i = 0; i < t->n; i++)
		order[i] = (int32_t)(ptrs[i] - t->entries);
	free(ptrs);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Per-second map                                                       */
/* ------------------------------------------------------------------ */

#define SEC_EMPTY INT64_MIN

static int secs_grow(lp_parser *p)
{
	size_t ncap = (p->secmask + 1) * 2;
	lp_second *ns = malloc(ncap * sizeof(*ns));
	if (ns == NULL)
		return -1;
	for (size_t i = 0; i < ncap; i++)
		ns[i].sec = SEC_EMPTY;
	for (size_t i = 0; i <= p->secmask; i++) {
		if (p->secs[i].sec == SEC_EMPTY)
			continue;
		size_t j = (size_t)(lp_hash(
		               (const unsigned char *)&p->secs[i].sec, 8, 0)) &
		           (ncap - 1);
		while (ns[j].sec != SEC_EMPTY)
			j = (j + 1) & (ncap - 1);
		ns[j] = p->secs[i];
	}
	free(p->secs);
	p->secs = ns;
	p->secmask = ncap - 1;
	p->seclast = 0;
	return 0;
}

static lp_second *sec_get(lp_parser *p, int64_t sec)
{
	size_t j;
	if (p->secs[p->seclast].sec == sec)
		return &p->secs[p->seclast];
	if ((p->nsecs + 1) * 2 > p->secmask + 1 && secs_grow(p) < 0)
		return NULL;
	j = (size_t)lp_hash((const unsigned char *)&sec, 8, 0) & p->secmask;
	while (p->secs[j].sec != sec) {
		if (p->secs[j].sec == SEC_EMPTY) {
			p->secs[j].sec = sec;
			p->secs[j].requests = p->secs[j].bytes = 0;
			p->secs[j].n4xx = p->secs[j].n5xx = 0;
			p->nsecs++;
			break;
		}
		j = (j + 1) & p->secmask;
	}
	p->seclast = j;
	return &p->secs[j];
}

static int sec_cmp(const void *x, const void *y)
{
	int64_t a = (*(const lp_second *const *)x)->sec;
	int64_t b = (*(const lp_second *const *)y)->sec;
	return a < b ? -1 : a > b;
}

/* See logparse.h. */
int lp_seconds_order(const lp_parser *p, size_t *order)
{
	size_t n = 0;
	const lp_second **ptrs = malloc((p->nsecs + 1) * sizeof(*ptrs));
	if (ptrs == NULL)
		return -1;
	for (size_t i = 0; i <= p->secmask; i++)
		if (p->secs[i].sec != SEC_EMPTY)
			ptrs[n++] = &p->secs[i];
	qsort(ptrs, n, sizeof(*ptrs), sec_cmp);
	for (size_t i = 0; i < n; i++)
		order[i] = (size_t)(ptrs[i] - p->secs);
	free(ptrs);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Templates                                                            */
/* ------------------------------------------------------------------ */

/* Byte classes for templates: 1 = digit, 2 = hex digit, 4 = '-'. */
static const unsigned char CLS[256] = {
    ['0'] = 3, ['1'] = 3, ['2'] = 3, ['3'] = 3, ['4'] = 3, ['5'] = 3,
    ['6'] = 3, ['7'] = 3, ['8'] = 3, ['9'] = 3, ['a'] = 2, ['b'] = 2,
    ['c'] = 2, ['d'] = 2, ['e'] = 2, ['f'] = 2, ['A'] = 2, ['B'] = 2,
    ['C'] = 2, ['D'] = 2, ['E'] = 2, ['F'] = 2, ['-'] = 4,
};

/* All digits, a UUID (8-4-4-4-12 hex) or >= 16 hex digits. One pass
 * that stops at the first byte that rules all three out. */
static int is_id(const unsigned char *s, size_t n)
{
	unsigned all = 7;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n && (all & 3) != 0; i++)
		all &= CLS[s[i]];
	if (all & 1)
		return 1;
	if ((all & 2) && n >= 16)
		return 1;
	if (n == 36 && s[8] == '-' && s[13] == '-' && s[18] == '-' &&
	    s[23] == '-') {
		for (size_t i = 0; i < 36; i++)
			if (i != 8 && i != 13 && i != 18 && i != 23 &&
			    !(CLS[s[i]] & 2))
				return 0;
		return 1;
	}
	return 0;
}

/* See logparse.h. */
size_t lp_template(const unsigned char *path, size_t len, unsigned char *out)
{
	size_t o = 0, i = 0;

	for (;;) {
		const unsigned char *seg = path + i;
		const unsigned char *slash = memchr(seg, '/', len - i);
		size_t n = slash ? (size_t)(slash - seg) : len - i;
		if (is_id(seg, n)) {
			memcpy(out + o, "{id}", 4);
			o += 4;
		} else {
			memcpy(out + o, seg, n);
			o += n;
		}
		if (slash == NULL)
			return o;
		out[o++] = '/';
		i += n + 1;
	}
}

/* ------------------------------------------------------------------ */
/* Lines                                                                */
/* ------------------------------------------------------------------ */

static int method_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
}

/* "METHOD TARGET[ PROTOCOL]" */
static int parse_request(const unsigned char *s, size_t n, lp_line *ln)
{
	size_t i = 0, t0, t1;
	const unsigned char *q;

	while (i < n && method_char(s[i]))
		i++;
	if (i == 0 || i >= n || s[i] != ' ')
		return -1;
	ln->method = s;
	ln->method_len = i;
	t0 = ++i;
	q = memchr(s + t0, ' ', n - t0);
	t1 = q ? (size_t)(q - s) : n;
	if (t1 == t0)
		return -1;
	if (q != NULL) {
		/* a protocol: non-empty, no space */
		if (t1 + 1 >= n || memchr(s + t1 + 1, ' ', n - t1 - 1) != NULL)
			return -1;
	}
	ln->path = s + t0;
	q = memchr(s + t0, '?', t1 - t0);
	ln->path_len = q ? (size_t)(q - (s + t0)) : t1 - t0;
	return 0;
}

/* Matches one line (no '\n', no trailing '\r', not empty) against the
 * format. Returns 0 and fills *ln, or -1: malformed. */
static int match_line(lp_parser *p, const unsigned char *s, size_t n,
                      lp_line *ln)
{
	const lp_format *f = &p->fmt;
	size_t pos = 0;

	ln->client = NULL;
	ln->client_len = 0;
	ln->path = (const unsigned char *)"";
	ln->path_len = 0;
	ln->method = (const unsigned char *)"";
	ln->method_len = 0;
	ln->status = 0;
	ln->bytes = 0;
	for (int i = 0; i < f->nitems; i++) {
		const lp_item *it = &f->items[i];
		size_t end;

		if (it->kind == LP_LIT) {
			/* literals are short: no call */
			const unsigned char *l = f->lits + it->off;
			if (n - pos < it->len)
				return -1;
			for (size_t k = 0; k < it->len; k++)
				if (s[pos + k] != l[k])
					return -1;
			pos += it->len;
			continue;
		}
		if (it->quoted) {
			end = pos;
			for (;;) {
				const unsigned char *q =
				    memchr(s + end, '"', n - end);
				size_t k;
				if (q == NULL)
					return -1;
				end = (size_t)(q - s);
				k = end;
				while (k > pos && s[k - 1] == '\\')
					k--;
				if (((end - k) & 1) == 0)
					break;
				end++;
			}
		} else {
			/* short fields end within a few bytes: look
			 * there before calling memchr */
			size_t lim = n - pos > 16 ? pos + 16 : n;
			const unsigned char *q;
			for (end = pos; end < lim; end++)
				if (s[end] == it->delim)
					break;
			if (end == lim && lim < n) {
				q = memchr(s + lim, it->delim, n - lim);
				end = q ? (size_t)(q - s) : n;
			}
			if (end == n && !it->last)
				return -1;
		}
		switch (it->kind) {
		case LP_CLIENT:
			if (end == pos)
				return -1;
			ln->client = s + pos;
			ln->client_len = end - pos;
			break;
		case LP_TIME_CLF:
			if (parse_clf(p, s + pos, end - pos, &ln->ts_ns) < 0)
				return -1;
			break;
		case LP_TIME_ISO:
			if (parse_iso(p, s + pos, end - pos, &ln->ts_ns) < 0)
				return -1;
			break;
		case LP_REQUEST:
			if (parse_request(s + pos, end - pos, ln) < 0)
				return -1;
			break;
		case LP_STATUS:
			if (end - pos != 3 || !DIG(s[pos]) ||
			    !DIG(s[pos + 1]) || !DIG(s[pos + 2]))
				return -1;
			ln->status = (s[pos] - '0') * 100 +
			             (s[pos + 1] - '0') * 10 +
			             (s[pos + 2] - '0');
			break;
		case LP_BYTES:
			if (end - pos == 1 && s[pos] == '-') {
				ln->bytes = 0;
				break;
			}
			if (end == pos || end - pos > 18)
				return -1;
			ln->bytes = 0;
			for (size_t k = pos; k < end; k++) {
				if (!DIG(s[k]))
					return -1;
				ln->bytes = ln->bytes * 10 + (s[k] - '0');
			}
			break;
		default:
			break;
		}
		pos = end;
	}
	/* What follows the format is ignored (extra fields). Keys are
	 * cut: a table holds `top` of them, whatever the lines' length. */
	if (ln->client_len > LP_MAX_KEY)
		ln->client_len = LP_MAX_KEY;
	if (ln->path_len > LP_MAX_KEY)
		ln->path_len = LP_MAX_KEY;
	return 0;
}

static void add_example(lp_parser *p, const unsigned char *s, size_t n)
{
	lp_example *ex;
	if (p->nexamples >= LP_MAX_EXAMPLES)
		return;
	ex = &p->examples[p->nexamples++];
	ex->line_no = p->line_no;
	ex->len = n < LP_EXAMPLE_LEN ? n : LP_EXAMPLE_LEN;
	memcpy(ex->text, s, ex->len);
}

static int count_method(lp_parser *p, const unsigned char *m, size_t n)
{
	for (int i = 0; i < p->nmethods; i++) {
		if (p->method_len[i] == n && memcmp(p->method[i], m, n) == 0) {
			p->method_count[i]++;
			return 0;
		}
	}
	if (p->nmethods < LP_MAX_METHODS) {
		p->method[p->nmethods] = malloc(n);
		if (p->method[p->nmethods] == NULL)
			return -1;
		memcpy(p->method[p->nmethods], m, n);
		p->method_len[p->nmethods] = n;
		p->method_count[p->nmethods++] = 1;
		return 0;
	}
	p->method_other++;
	return 0;
}

/* Counts a parsed line. Returns 0 or -1 (no memory). */
static int aggregate(lp_parser *p, const lp_line *ln)
{
	int64_t sec = floor_div(ln->ts_ns, LP_NS);
	int is4 = ln->status >= 400 && ln->status < 500;
	int is5 = ln->status >= 500 && ln->status < 600;
	lp_second *sc;
	lp_entry *en;
	int32_t e;
	int fresh;
	size_t tn;

	if (sec != p->wsec) {
		/* window ids change at most once a second */
		p->wsec = sec;
		for (int w = 0; w < p->nwin; w++)
			p->wid[w] = floor_div(sec, p->windows[w]);
	}
	sc = sec_get(p, sec);
	if (sc == NULL)
		return -1;
	e = tab_touch(&p->clients, ln->client, ln->client_len, &fresh);
	if (e == LP_NIL)
		return -1;
	en = &p->clients.entries[e];
	lp_win *wins = &p->clients.wins[(size_t)e * p->nwin];
	if (fresh) {
		en->bytes = ln->bytes;
		en->n4xx = is4;
		en->n5xx = is5;
		en->first_ns = en->last_ns = ln->ts_ns;
		for (int w = 0; w < p->nwin; w++)
			win_reset(&wins[w], p->wid[w]);
	} else {
		en->bytes = sat_add(en->bytes, ln->bytes);
		en->n4xx += is4;
		en->n5xx += is5;
		if (ln->ts_ns < en->first_ns)
			en->first_ns = ln->ts_ns;
		if (ln->ts_ns > en->last_ns)
			en->last_ns = ln->ts_ns;
		for (int w = 0; w < p->nwin; w++) {
			lp_win *wn = &wins[w];
			int64_t id = p->wid[w];
			if (id > wn->cur_id) {
				if (win_add(wn, wn->cur_count) < 0)
					return -1;
				wn->cur_id = id;
				wn->cur_count = 1;
			} else {
				wn->cur_count++;
			}
		}
	}
	if (p->fmt.has_request) {
		e = tab_touch(&p->paths, ln->path, ln->path_len, &fresh);
		if (e == LP_NIL)
			return -1;
		en = &p->paths.entries[e];
		if (fresh) {
			en->bytes = ln->bytes;
			en->n4xx = is4;
			en->n5xx = is5;
		} else {
			en->bytes = sat_add(en->bytes, ln->bytes);
			en->n4xx += is4;
			en->n5xx += is5;
		}
		tn = lp_template(ln->path, ln->path_len, p->tmpl);
		if (tab_touch(&p->templates, p->tmpl, tn, &fresh) == LP_NIL)
			return -1;
		if (count_method(p, ln->method, ln->method_len) < 0)
			return -1;
	}

	p->parsed++;
	p->bytes = sat_add(p->bytes, ln->bytes);
	if (p->parsed == 1 || ln->ts_ns < p->first_ns)
		p->first_ns = ln->ts_ns;
	if (p->parsed == 1 || ln->ts_ns > p->last_ns)
		p->last_ns = ln->ts_ns;
	sc->requests++;
	sc->bytes = sat_add(sc->bytes, ln->bytes);
	sc->n4xx += is4;
	sc->n5xx += is5;
	if (p->fmt.has_status)
		p->status[ln->status]++;
	return 0;
}

/* One line without its '\n'; `too_long` when it was cut. */
static int do_line(lp_parser *p, const unsigned char *s, size_t n,
                   int too_long, lp_event_fn fn, void *ctx)
{
	lp_line ln;

	p->line_no++;
	if (!too_long && n > 0 && s[n - 1] == '\r')
		n--;
	if (n == 0)
		return 0;
	p->lines++;
	if (too_long || n > LP_MAX_LINE || match_line(p, s, n, &ln) < 0) {
		p->malformed++;
		add_example(p, s, n);
		return 0;
	}
	if (aggregate(p, &ln) < 0) {
		p->lines--;
		p->line_no--;
		return -1;
	}
	if (fn != NULL)
		fn(ctx, &ln);
	return 0;
}

/* Keeps at most LP_MAX_LINE + 2 bytes of a waiting line: enough to tell
 * a line that is too long even after dropping a '\r'. */
#define CARRY_CAP (LP_MAX_LINE + 2)

static void carry_add(lp_parser *p, const unsigned char *s, size_t n)
{
	size_t room = CARRY_CAP - p->carry_len;
	if (n > room) {
		n = room;
		p->carry_long = 1;
	}
	memcpy(p->carry + p->carry_len, s, n);
	p->carry_len += n;
}

/* See logparse.h. */
int lp_feed(lp_parser *p, const unsigned char *data, size_t len,
            lp_event_fn fn, void *ctx)
{
	const unsigned char *s = data, *end = data + len, *nl;

	if (p->carry_len > 0 || p->carry_long) {
		nl = memchr(s, '\n', len);
		if (nl == NULL) {
			carry_add(p, s, len);
			return 0;
		}
		carry_add(p, s, (size_t)(nl - s));
		if (do_line(p, p->carry, p->carry_len,
		            p->carry_long || p->carry_len > LP_MAX_LINE + 1,
		            fn, ctx) < 0)
			return -1;
		p->carry_len = 0;
		p->carry_long = 0;
		s = nl + 1;
	}
	while (s < end) {
		nl = memchr(s, '\n', (size_t)(end - s));
		if (nl == NULL) {
			carry_add(p, s, (size_t)(end - s));
			break;
		}
		if (do_line(p, s, (size_t)(nl - s), 0, fn, ctx) < 0) {
			/* Keep the rest for a retry after memory came back:
			 * nothing else to do in a plain C engine. */
			return -1;
		}
		s = nl + 1;
	}
	return 0;
}

/* See logparse.h. */
int lp_finish(lp_parser *p, lp_event_fn fn, void *ctx)
{
	int rc = 0;
	if (p->carry_len > 0 || p->carry_long)
		rc = do_line(p, p->carry, p->carry_len,
		             p->carry_long || p->carry_len > LP_MAX_LINE + 1,
		             fn, ctx);
	p->carry_len = 0;
	p->carry_long = 0;
	return rc;
}

/* ------------------------------------------------------------------ */
/* Life cycle                                                           */
/* ------------------------------------------------------------------ */

/* See logparse.h. */
int lp_init(lp_parser *p, lp_format *fmt, int32_t top, const int64_t *windows,
            int nwin)
{
	uint64_t seed;

	memset(p, 0, sizeof(*p));
	p->fmt = *fmt;
	memset(fmt, 0, sizeof(*fmt));
	p->nwin = nwin;
	for (int i = 0; i < nwin; i++)
		p->windows[i] = windows[i];
	p->carry = malloc(CARRY_CAP);
	p->tmpl = malloc(4 * (size_t)LP_MAX_LINE + 8);
	p->wsec = INT64_MIN;
	p->secmask = 63;
	p->secs = malloc(64 * sizeof(*p->secs));
	if (p->carry == NULL || p->tmpl == NULL || p->secs == NULL)
		return -1;
	for (size_t i = 0; i < 64; i++)
		p->secs[i].sec = SEC_EMPTY;
	/* keys for the table hashes: the parser's and the stack's addresses
	 * (ASLR) and the time; no shared state, so interpreters with their
	 * own GIL may make parsers at once */
	seed = (uint64_t)(uintptr_t)p ^ ((uint64_t)time(NULL) << 32) ^
	       ((uint64_t)(uintptr_t)&seed << 16);
	seed = lp_hash((const unsigned char *)&seed, 8, 0x5eed);
	if (tab_init(&p->clients, top, nwin, seed) < 0 ||
	    tab_init(&p->paths, top, 0, seed * 3 + 1) < 0 ||
	    tab_init(&p->templates, top, 0, seed * 5 + 2) < 0)
		return -1;
	return 0;
}

/* See logparse.h. */
void lp_free(lp_parser *p)
{
	lp_format_free(&p->fmt);
	free(p->carry);
	free(p->tmpl);
	free(p->secs);
	tab_free(&p->clients);
	tab_free(&p->paths);
	tab_free(&p->templates);
	for (int i = 0; i < p->nmethods; i++)
		free(p->method[i]);
	memset(p, 0, sizeof(*p));
}
