#include "rate.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

/* The longest period accepted: 30 years (within ST_MAX_SPAN_NS). */
#define RATE_MAX_PERIOD_NS (INT64_C(30) * 365 * 86400 * ST_NS_PER_SEC)
/* The largest N accepted. Far beyond any real quota; keeps the derived
 * intervals and counters well inside int64_t. */
#define RATE_MAX_AMOUNT 1e12

typedef struct {
	const char *name;
	int64_t seconds;
} rate_unit;

static const rate_unit rate_units[] = {
    {"s", 1},
    {"sec", 1},
    {"secs", 1},
    {"second", 1},
    {"seconds", 1},
    {"m", 60},
    {"min", 60},
    {"mins", 60},
    {"minute", 60},
    {"minutes", 60},
    {"h", 3600},
    {"hr", 3600},
    {"hrs", 3600},
    {"hour", 3600},
    {"hours", 3600},
    {"d", 86400},
    {"day", 86400},
    {"days", 86400},
    {"mo", 30 * 86400},
    {"month", 30 * 86400},
    {"months", 30 * 86400},
    {"y", 365 * 86400},
    {"yr", 365 * 86400},
    {"year", 365 * 86400},
    {"years", 365 * 86400},
};

/* Writes "invalid rate '<part>': <why>" to err. The message becomes a
 * Python str (UTF-8): a long part is cut at 57 bytes, backed up to the
 * start of a character (never inside one, which would not decode), and
 * a control byte (a NUL among them, which would end the text) is shown
 * as '?'. */
static void rate_error(char *err, size_t errlen, const char *part,
                       size_t partlen, const char *fmt, ...)
{
	char why[128];
	char shown[64];
	size_t n = partlen, i;
	int cut = partlen > 60;
	va_list ap;

	if (errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	if (cut) {
		n = 57;
		while (n > 0 && ((unsigned char)part[n] & 0xC0) == 0x80)
			n--;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)part[i];
		shown[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	shown[n] = '\0';
	if (cut)
		snprintf(err, errlen, "invalid rate '%s...': %s", shown, why);
	else
		snprintf(err, errlen, "invalid rate '%s': %s", shown, why);
}

static int rate_isspace(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
	       c == '\v';
}

static int rate_isdigit(char c)
{
	return c >= '0' && c <= '9';
}

static int rate_isalpha(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char rate_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Reads an unsigned decimal number ("10", "0.5", "2.") at *p < end.
 * Returns 0 and advances *p on success, -1 when no digits are there. */
static int rate_number(const char **p, const char *end, double *value)
{
	const char *q = *p;
	double v = 0.0, scale = 1.0;
	int digits = 0;

	while (q < end && rate_isdigit(*q)) {
		v = v * 10.0 + (*q - '0');
		q++;
		digits++;
	}
	if (q < end && *q == '.') {
		q++;
		while (q < end && rate_isdigit(*q)) {
			scale /= 10.0;
			v += (*q - '0') * scale;
			q++;
			digits++;
		}
	}
	if (digits == 0)
		return -1;
	*p = q;
	*value = v;
	return 0;
}

static void rate_skip_space(const char **p, const char *end)
{
	while (*p < end && rate_isspace(**p))
		(*p)++;
}

/* Parses one rate in [s, end), surrounding spaces allowed. */
static int rate_one(const char *s, const char *end, st_rate *out, char *err,
                    size_t errlen)
{
	const char *p = s, *q, *word;
	double amount, multiple = 1.0, period;
	size_t wlen, i;
	char unit[16];

	for (q = s; q < end; q++) {
		unsigned char c = (unsigned char)*q;
		if (c >= 0x80 || (c < 0x20 && !rate_isspace(*q)) ||
		    c == 0x7f) {
			/* Python's \s (and so limits) also takes Unicode
			 * spaces such as U+00A0: say so rather than a vaguer
			 * "expected ..." further on. */
			rate_error(
			    err, errlen, s, (size_t)(end - s),
			    "non-ASCII or control byte 0x%02X: only ASCII "
			    "whitespace may separate the parts of a rate",
			    c);
			return -1;
		}
	}
	rate_skip_space(&p, end);
	if (rate_number(&p, end, &amount) < 0) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "expected a number of requests first");
		return -1;
	}
	if (!(amount > 0.0)) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "the number of requests must be positive");
		return -1;
	}
	if (amount > RATE_MAX_AMOUNT) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "the number of requests is too large (max %g)",
		           RATE_MAX_AMOUNT);
		return -1;
	}
	rate_skip_space(&p, end);
	if (p < end && *p == '/') {
		p++;
	} else if (end - p >= 3 && rate_lower(p[0]) == 'p' &&
	           rate_lower(p[1]) == 'e' && rate_lower(p[2]) == 'r') {
		/* No unit starts with "per", so "10persecond" is read as
		 * limits reads it. */
		p += 3;
	} else {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "expected '/' or 'per' after the number");
		return -1;
	}
	rate_skip_space(&p, end);
	if (p < end && (rate_isdigit(*p) || *p == '.')) {
		if (rate_number(&p, end, &multiple) < 0 || !(multiple > 0.0)) {
			rate_error(err, errlen, s, (size_t)(end - s),
			           "the period multiple must be positive");
			return -1;
		}
		rate_skip_space(&p, end);
	}
	word = p;
	while (p < end && rate_isalpha(*p))
		p++;
	wlen = (size_t)(p - word);
	rate_skip_space(&p, end);
	if (wlen == 0) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "expected a unit (second, minute, hour, day, "
		           "month, year)");
		return -1;
	}
	if (p != end) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "unexpected text '%.*s' after the unit",
		           (int)(end - p > 20 ? 20 : end - p), p);
		return -1;
	}
	if (wlen >= sizeof(unit))
		goto bad_unit;
	for (i = 0; i < wlen; i++)
		unit[i] = rate_lower(word[i]);
	unit[wlen] = '\0';
	for (i = 0; i < sizeof(rate_units) / sizeof(rate_units[0]); i++) {
		if (strcmp(unit, rate_units[i].name) == 0)
			break;
	}
	if (i == sizeof(rate_units) / sizeof(rate_units[0]))
		goto bad_unit;

	period = multiple * (double)rate_units[i].seconds * 1e9;
	if (!(period >= 1.0) || period > (double)RATE_MAX_PERIOD_NS) {
		rate_error(err, errlen, s, (size_t)(end - s),
		           "the period must be between 1 ns and 30 years");
		return -1;
	}
	out->amount = amount;
	out->period_ns = (int64_t)llround(period);
	return 0;

bad_unit:
	rate_error(err, errlen, s, (size_t)(end - s),
	           "unknown unit '%.*s' (use second, minute, hour, day, "
	           "month or year)",
	           (int)(wlen > 20 ? 20 : wlen), word);
	return -1;
}

int rate_parse(const char *s, size_t n, st_rate *out, size_t max, char *err,
               size_t errlen)
{
	const char *p = s, *end = s + n, *sep;
	size_t count = 0;

	if (errlen)
		err[0] = '\0';
	for (;;) {
		sep = p;
		while (sep < end && *sep != ';' && *sep != ',' && *sep != '|')
			sep++;
		if (count == max) {
			rate_error(err, errlen, s, n,
			           "too many rates (at most %zu)", max);
			return -1;
		}
		if (rate_one(p, sep, &out[count], err, errlen) < 0)
			return -1;
		count++;
		if (sep == end)
			break;
		p = sep + 1;
	}
	return (int)count;
}
