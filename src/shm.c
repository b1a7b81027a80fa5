#define _GNU_SOURCE
#include "shm.h"

/* Linux only (getrandom, /proc, posix_fallocate on tmpfs); elsewhere
 * st_shm_open fails with ENOSYS and nothing else is ever called. */
#if defined(__linux__)

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the segment's header -----------------------------------------------
 * magic and layout stay at offsets 0 and 8 in every layout, so any version
 * can tell another one apart. */
typedef struct {
	int64_t period_ns, capacity, interval_ns, tolerance_ns;
} st_shm_rate;

typedef struct {
	uint64_t magic;       /* ST_SHM_MAGIC */
	uint32_t layout;      /* ST_SHM_LAYOUT */
	uint32_t ready;       /* 1 once the creator filled the header */
	uint64_t size;        /* segment bytes */
	uint64_t k0, k1;      /* the secret of the keyed hash */
	uint32_t max_keys;    /* as first opened */
	uint32_t nbuckets;    /* buckets after the header */
	uint32_t bucket_size; /* bytes per bucket */
	uint32_t ways;        /* ST_SHM_WAYS */
	int32_t algorithm;    /* st_algorithm */
	int32_t nrates;       /* 1..ST_MAX_RATES */
	st_shm_rate rates[ST_MAX_RATES]; /* the compiled rates */
	uint64_t evicted;                /* atomic counters */
	uint64_t expired;
	/* The penalty (all zero without one, as in segments made before
	 * penalties existed: the header page is zeroed when created). */
	int64_t pn_on; /* 1 with a penalty */
	int64_t pn_after, pn_within_ns, pn_ban_ns, pn_max_ban_ns;
	double pn_factor;
} st_shm_header;

_Static_assert(sizeof(st_shm_header) <= ST_SHM_HEADER_SIZE,
               "the header fits its page");

/* ---- a bucket -----------------------------------------------------------
 *   0  uint64_t lock        0, or the holder: pid | start time << 32
 *   8  uint8_t sel[WAYS]    which of a slot's two state copies is current
 *  16  uint64_t lo[WAYS]    first hash word; 0 = empty slot
 *  80  uint64_t hi[WAYS]    second hash word
 * 144  int64_t state[WAYS][2][words]
 */
#define B_SEL 8
#define B_LO 16
#define B_HI (B_LO + 8 * ST_SHM_WAYS)
#define B_STATE (B_HI + 8 * ST_SHM_WAYS)

ST_INLINE uint64_t *b_lock(char *b)
{
	return (uint64_t *)b;
}
ST_INLINE uint8_t *b_sel(char *b)
{
	return (uint8_t *)(b + B_SEL);
}
ST_INLINE uint64_t *b_lo(char *b)
{
	return (uint64_t *)(b + B_LO);
}
ST_INLINE uint64_t *b_hi(char *b)
{
	return (uint64_t *)(b + B_HI);
}

static size_t bucket_bytes(int words)
{
	return B_STATE + (size_t)ST_SHM_WAYS * 2 * (size_t)words * 8;
}

ST_INLINE int64_t *slot_state(const st_shm *h, char *b, int i, int copy)
{
	size_t words = (size_t)h->words;
	return (int64_t *)(b + B_STATE) +
	       ((size_t)i * 2 + (size_t)copy) * words;
}

/* State words of one copy at most: the rates', then the penalty's. */
#define MAX_WORDS (ST_MAX_RATES * 3 + PN_WORDS)

ST_INLINE st_shm_header *header(const st_shm *h)
{
	return (st_shm_header *)h->base;
}

/* Bucket `i`. */
ST_INLINE char *bucket_at(const st_shm *h, uint32_t i)
{
	return h->base + ST_SHM_HEADER_SIZE + (size_t)i * h->bucket_size;
}

/* A hash word scaled onto [0, nbuckets) by a multiplication: a key's two
 * candidate buckets come from its two hash words. */
ST_INLINE uint32_t bucket_index(const st_shm *h, uint64_t x)
{
	return (uint32_t)(((unsigned __int128)x * h->nbuckets) >> 64);
}

/* ---- SipHash-2-4, 128-bit output ----------------------------------------
 */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                   \
	do {                       \
		v0 += v1;          \
		v1 = ROTL(v1, 13); \
		v1 ^= v0;          \
		v0 = ROTL(v0, 32); \
		v2 += v3;          \
		v3 = ROTL(v3, 16); \
		v3 ^= v2;          \
		v0 += v3;          \
		v3 = ROTL(v3, 21); \
		v3 ^= v0;          \
		v2 += v1;          \
		v1 = ROTL(v1, 17); \
		v1 ^= v2;          \
		v2 = ROTL(v2, 32); \
	} while (0)

ST_INLINE uint64_t load_le64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

st_shm_hash st_siphash128(uint64_t k0, uint64_t k1, const void *data,
                          size_t len)
{
	const uint8_t *p = data;
	uint64_t v0 = UINT64_C(0x736f6d6570736575) ^ k0;
	uint64_t v1 = UINT64_C(0x646f72616e646f6d) ^ k1 ^ 0xee;
	uint64_t v2 = UINT64_C(0x6c7967656e657261) ^ k0;
	uint64_t v3 = UINT64_C(0x7465646279746573) ^ k1;
	size_t whole = len & ~(size_t)7;
	uint64_t b = (uint64_t)len << 56;
	st_shm_hash out;

	for (size_t i = 0; i < whole; i += 8) {
		uint64_t m = load_le64(p + i);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < (len & 7); j++)
		b |= (uint64_t)p[whole + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xee;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	out.lo = v0 ^ v1 ^ v2 ^ v3;
	v1 ^= 0xdd;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	out.hi = v0 ^ v1 ^ v2 ^ v3;
	return out;
}

st_shm_hash st_shm_hash_key(const st_shm *h, uint8_t kind, const void *key,
                            size_t len)
{
	st_shm_hash kh = st_siphash128(h->k0, h->k1 ^ kind, key, len);
	if (kh.lo == 0) /* 0 marks an empty slot */
		kh.lo = 1;
	return kh;
}

/* ---- locks named by their owner ----------------------------------------
 * A lock word names its holder by pid and by the low 32 bits of the
 * process's start time (clock ticks since boot, /proc/<pid>/stat), so a
 * pid used again by another process (a worker restarted in a fresh pid
 * namespace gets the same pids) does not keep a dead holder's lock. The
 * word is cached and refreshed in a fork's child (getpid() is a system
 * call on the hot path otherwise). */
static uint64_t self_owner;
static pthread_once_t pid_once = PTHREAD_ONCE_INIT;

/* Reads /proc/<pid>/stat (pid 0: self). Returns the state letter, or 0
 * when unreadable (ENOENT: gone, errno set), and sets *start to the low
 * 32 bits of the start time (0 when unknown). */
static char proc_stat(uint32_t pid, uint32_t *start)
{
	char path[48], buf[1024], *p;
	unsigned long long st;
	ssize_t n;
	int fd;

	*start = 0;
	if (pid == 0)
		snprintf(path, sizeof(path), "/proc/self/stat");
	else
		snprintf(path, sizeof(path), "/proc/%u/stat", (unsigned)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	errno = EIO; /* not ENOENT: the process is there */
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	/* "pid (comm) S f4 ... f22 ...": comm may hold parentheses and
	 * spaces, so from the last ')'; the start time is field 22. */
	p = strrchr(buf, ')');
	if (p == NULL || p[1] != ' ' || p[2] == '\0')
		return 0;
	p += 2;
	{
		char state = *p;
		for (int field = 3; field < 22 && p != NULL; field++) {
			p = strchr(p, ' ');
			if (p != NULL)
				p++;
		}
		if (p != NULL && sscanf(p, "%llu", &st) == 1)
			*start = (uint32_t)st;
		return state;
	}
}

static void refresh_pid(void)
{
	uint32_t start;
	(void)proc_stat(0, &start);
	__atomic_store_n(&self_owner,
	                 (uint64_t)(uint32_t)getpid() | (uint64_t)start << 32,
	                 __ATOMIC_RELAXED);
}

static void init_pid(void)
{
	refresh_pid();
	(void)pthread_atfork(NULL, NULL, refresh_pid);
}

/* Whether the holder named by lock word `owner` can no longer release
 * it: its pid does not exist, is a zombie waiting to be reaped, or now
 * belongs to a process started at another time. */
static int owner_gone(uint64_t owner)
{
	uint32_t pid = (uint32_t)owner, start;
	char state;

	if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
		return 1;
	state = proc_stat(pid, &start);
	if (state == 0)
		return errno == ENOENT;
	if (state == 'Z' || state == 'X')
		return 1;
	/* A start time of 0 is unknown: then trust the pid alone. */
	return start != 0 && (uint32_t)(owner >> 32) != 0 &&
	       (uint32_t)(owner >> 32) != start;
}

ST_INLINE void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static void lock_slow(uint64_t *lock, uint64_t me)
{
	for (unsigned spins = 0;; spins++) {
		uint64_t owner = __atomic_load_n(lock, __ATOMIC_RELAXED);
		if (owner == 0) {
			if (__atomic_compare_exchange_n(lock, &owner, me, 0,
			                                __ATOMIC_ACQUIRE,
			                                __ATOMIC_RELAXED))
				return;
			continue;
		}
		if (spins < 2000) {
			cpu_relax();
			continue;
		}
		/* Held for long: is the holder still there? (Asked every
		 * 64th time: a holder merely descheduled is the common
		 * case, and the question costs system calls.) */
		if (owner != me && (spins & 63) == 0 && owner_gone(owner) &&
		    __atomic_compare_exchange_n(lock, &owner, me, 0,
		                                __ATOMIC_ACQUIRE,
		                                __ATOMIC_RELAXED))
			return;
		sched_yield();
	}
}

ST_INLINE void bucket_lock(char *b)
{
	uint64_t expected = 0;
	uint64_t me = __atomic_load_n(&self_owner, __ATOMIC_RELAXED);
	if (ST_LIKELY(__atomic_compare_exchange_n(b_lock(b), &expected, me, 0,
	                                          __ATOMIC_ACQUIRE,
	                                          __ATOMIC_RELAXED)))
		return;
	lock_slow(b_lock(b), me);
}

ST_INLINE void bucket_unlock(char *b)
{
	__atomic_store_n(b_lock(b), 0, __ATOMIC_RELEASE);
}

/* ---- settings ------------------------------------------------------------
 */
static const char *algorithm_name(int32_t a)
{
	switch (a) {
	case ST_TOKEN_BUCKET:
		return "token_bucket";
	case ST_FIXED_WINDOW:
		return "fixed_window";
	case ST_SLIDING_WINDOW:
		return "sliding_window";
	default:
		return "unknown";
	}
}

/* The settings part of a header, from a policy. */
static void settings_of(st_shm_header *s, const st_policy *p,
                        const st_penalty *pn, uint32_t max_keys)
{
	if (pn != NULL) {
		s->pn_on = 1;
		s->pn_after = pn->after;
		s->pn_within_ns = pn->within_ns;
		s->pn_ban_ns = pn->ban_ns;
		s->pn_max_ban_ns = pn->max_ban_ns;
		s->pn_factor = pn->factor;
	}
	s->max_keys = max_keys;
	s->algorithm = (int32_t)p->algorithm;
	s->nrates = p->nrates;
	for (int i = 0; i < ST_MAX_RATES; i++) {
		st_shm_rate *r = &s->rates[i];
		if (i < p->nrates) {
			r->period_ns = p->rates[i].period_ns;
			r->capacity = p->rates[i].capacity;
			r->interval_ns = p->rates[i].interval_ns;
			r->tolerance_ns = p->rates[i].tolerance_ns;
		} else {
			memset(r, 0, sizeof(*r));
		}
	}
}

static int same_settings(const st_shm_header *a, const st_shm_header *b)
{
	if (a->max_keys != b->max_keys || a->algorithm != b->algorithm ||
	    a->nrates != b->nrates || a->nrates < 1 ||
	    a->nrates > ST_MAX_RATES)
		return 0;
	if (a->pn_on != b->pn_on ||
	    (a->pn_on && (a->pn_after != b->pn_after ||
	                  a->pn_within_ns != b->pn_within_ns ||
	                  a->pn_ban_ns != b->pn_ban_ns ||
	                  a->pn_max_ban_ns != b->pn_max_ban_ns ||
	                  a->pn_factor != b->pn_factor)))
		return 0;
	for (int i = 0; i < a->nrates; i++) {
		const st_shm_rate *x = &a->rates[i], *y = &b->rates[i];
		if (x->period_ns != y->period_ns ||
		    x->capacity != y->capacity ||
		    x->interval_ns != y->interval_ns ||
		    x->tolerance_ns != y->tolerance_ns)
			return 0;
	}
	return 1;
}

/* "token_bucket 10 per 60s (one per 6000000000 ns), max_keys=1000" */
static void describe(char *buf, size_t n, const st_shm_header *s)
{
	size_t used;
	int nrates = s->nrates < 0              ? 0
	             : s->nrates > ST_MAX_RATES ? ST_MAX_RATES
	                                        : s->nrates;

	used = (size_t)snprintf(buf, n, "%s", algorithm_name(s->algorithm));
	for (int i = 0; i < nrates && used < n; i++) {
		const st_shm_rate *r = &s->rates[i];
		used += (size_t)snprintf(
		    buf + used, n - used, "%s %lld per %.9gs", i ? ";" : "",
		    (long long)r->capacity, (double)r->period_ns / 1e9);
		if (s->algorithm == ST_TOKEN_BUCKET && used < n)
			used += (size_t)snprintf(buf + used, n - used,
			                         " (one per %lld ns)",
			                         (long long)r->interval_ns);
	}
	if (used < n && s->pn_on)
		used += (size_t)snprintf(
		    buf + used, n - used,
		    ", penalty after %lld within %.9gs ban %.9gs factor %g "
		    "max %.9gs",
		    (long long)s->pn_after, (double)s->pn_within_ns / 1e9,
		    (double)s->pn_ban_ns / 1e9, s->pn_factor,
		    (double)s->pn_max_ban_ns / 1e9);
	if (used < n)
		snprintf(buf + used, n - used, ", max_keys=%u",
		         (unsigned)s->max_keys);
}

/* ---- open / close --------------------------------------------------------
 */
static int valid_name(const char *name)
{
	size_t len = strlen(name);
	return len >= 2 && len <= 251 && name[0] == '/' &&
	       strchr(name + 1, '/') == NULL;
}

static void fail(char *err, size_t errlen, const char *what, const char *name)
{
	int e = errno;
	snprintf(err, errlen, "%s shared memory %s: %s", what, name,
	         strerror(e));
	errno = e;
}

/* Sizes a fresh (or abandoned) segment and writes its header. */
static int create_segment(st_shm *h, int fd, const char *name,
                          const st_shm_header *want, char *err, size_t errlen)
{
	st_shm_header *hdr;
	uint64_t secret[2];
	int rc;

	if (ftruncate(fd, 0) < 0) {
		fail(err, errlen, "cannot clear", name);
		return ST_SHM_EOS;
	}
	/* Reserve every page now: a full /dev/shm is an error here, not a
	 * SIGBUS on some later hit. */
	rc = posix_fallocate(fd, 0, (off_t)h->size);
	if (rc != 0) {
		errno = rc;
		snprintf(err, errlen,
		         "cannot reserve %zu bytes of shared memory %s: %s "
		         "(lower max_keys, or enlarge /dev/shm)",
		         h->size, name, strerror(rc));
		(void)ftruncate(fd, 0);
		errno = rc;
		return ST_SHM_EOS;
	}
	h->base =
	    mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h->base == MAP_FAILED) {
		h->base = NULL;
		fail(err, errlen, "cannot map", name);
		return ST_SHM_EOS;
	}
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret)) {
		fail(err, errlen, "no random secret for", name);
		return ST_SHM_EOS;
	}
	hdr = header(h);
	*hdr = *want;
	hdr->magic = ST_SHM_MAGIC;
	hdr->layout = ST_SHM_LAYOUT;
	hdr->size = h->size;
	hdr->k0 = secret[0];
	hdr->k1 = secret[1];
	hdr->nbuckets = h->nbuckets;
	hdr->bucket_size = (uint32_t)h->bucket_size;
	hdr->ways = ST_SHM_WAYS;
	hdr->evicted = hdr->expired = 0;
	__atomic_store_n(&hdr->ready, 1, __ATOMIC_RELEASE);
	return ST_SHM_OK;
}

/* Checks an existing, initialised segment against what we want. */
static int check_segment(st_shm *h, const st_shm_header *hdr,
                         uint64_t file_size, const char *name,
                         const st_shm_header *want, char *err, size_t errlen)
{
	char have_s[400], want_s[400];

	if (hdr->magic != ST_SHM_MAGIC) {
		snprintf(err, errlen,
		         "shared memory %s exists and is not a stanchion "
		         "segment",
		         name);
		return ST_SHM_EMISMATCH;
	}
	if (hdr->layout != ST_SHM_LAYOUT) {
		snprintf(err, errlen,
		         "shared memory %s has layout version %u, this "
		         "stanchion uses version %u: stop the processes "
		         "using it and remove it, or use another name",
		         name, (unsigned)hdr->layout, (unsigned)ST_SHM_LAYOUT);
		return ST_SHM_EMISMATCH;
	}
	if (!same_settings(hdr, want)) {
		describe(have_s, sizeof(have_s), hdr);
		describe(want_s, sizeof(want_s), want);
		snprintf(err, errlen,
		         "shared memory %s holds other settings: it has %s; "
		         "this limiter asks for %s",
		         name, have_s, want_s);
		return ST_SHM_EMISMATCH;
	}
	if (hdr->size != h->size || hdr->nbuckets != h->nbuckets ||
	    hdr->bucket_size != h->bucket_size || hdr->ways != ST_SHM_WAYS) {
		snprintf(err, errlen,
		         "shared memory %s is damaged: its header says %llu "
		         "bytes in %u buckets, expected %zu bytes in %u",
		         name, (unsigned long long)hdr->size,
		         (unsigned)hdr->nbuckets, h->size,
		         (unsigned)h->nbuckets);
		return ST_SHM_EMISMATCH;
	}
	/* A file cut (or grown) behind our back: a hit past its end would
	 * fault (SIGBUS), and our mapping is only as long as the file. */
	if (file_size != h->size) {
		snprintf(err, errlen,
		         "shared memory %s is damaged: the file is %llu "
		         "bytes, its header says %zu: remove it",
		         name, (unsigned long long)file_size, h->size);
		return ST_SHM_EMISMATCH;
	}
	h->k0 = hdr->k0;
	h->k1 = hdr->k1;
	return ST_SHM_OK;
}

int st_shm_open(st_shm *h, const char *name, const st_policy *policy,
                uint32_t max_keys, char *err, size_t errlen)
{
	return st_shm_open_penalty(h, name, policy, NULL, max_keys, err,
	                           errlen);
}

int st_shm_open_penalty(st_shm *h, const char *name, const st_policy *policy,
                        const st_penalty *penalty, uint32_t max_keys,
                        char *err, size_t errlen)
{
	st_shm_header want;
	struct stat sb;
	uint64_t slots;
	int fd, rc = ST_SHM_EOS;

	memset(h, 0, sizeof(*h));
	h->policy = *policy;
	h->has_penalty = penalty != NULL;
	if (penalty != NULL)
		h->penalty = *penalty;
	h->words = st_policy_words(policy) + (penalty != NULL ? PN_WORDS : 0);
	pthread_once(&pid_once, init_pid);
	if (!valid_name(name)) {
		errno = EINVAL;
		snprintf(err, errlen, "invalid shared memory name %s", name);
		return ST_SHM_EOS;
	}
	if (max_keys < 1 || max_keys > ST_SHM_MAX_KEYS || policy->nrates < 1) {
		errno = EINVAL;
		snprintf(err, errlen, "invalid max_keys %u",
		         (unsigned)max_keys);
		return ST_SHM_EOS;
	}
	memset(&want, 0, sizeof(want));
	settings_of(&want, policy, penalty, max_keys);
	slots = (uint64_t)max_keys + ((uint64_t)max_keys + 3) / 4;
	h->nbuckets = (uint32_t)((slots + ST_SHM_WAYS - 1) / ST_SHM_WAYS);
	h->bucket_size = bucket_bytes(h->words);
	h->size = ST_SHM_HEADER_SIZE + (size_t)h->nbuckets * h->bucket_size;

	fd = shm_open(name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		fail(err, errlen, "cannot open", name);
		return ST_SHM_EOS;
	}
	/* One opener at a time; the kernel drops the lock of a process
	 * that dies, so a creator killed mid-way is simply redone. */
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			fail(err, errlen, "cannot lock", name);
			goto done;
		}
	}
	if (fstat(fd, &sb) < 0) {
		fail(err, errlen, "cannot stat", name);
		goto done;
	}
	if (sb.st_size == 0) {
		rc = create_segment(h, fd, name, &want, err, errlen);
	} else if ((size_t)sb.st_size < ST_SHM_HEADER_SIZE) {
		snprintf(err, errlen,
		         "shared memory %s exists and is not a stanchion "
		         "segment (%lld bytes)",
		         name, (long long)sb.st_size);
		rc = ST_SHM_EMISMATCH;
	} else {
		st_shm_header *hdr =
		    mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE,
		         MAP_SHARED, fd, 0);
		if (hdr == MAP_FAILED) {
			fail(err, errlen, "cannot map", name);
			goto done;
		}
		if ((hdr->magic == ST_SHM_MAGIC || hdr->magic == 0) &&
		    __atomic_load_n(&hdr->ready, __ATOMIC_ACQUIRE) != 1) {
			/* Its creator died before finishing (after sizing
			 * it, before or while writing the header; we hold
			 * the flock it held): redo it. */
			munmap(hdr, (size_t)sb.st_size);
			rc = create_segment(h, fd, name, &want, err, errlen);
		} else {
			rc = check_segment(h, hdr, (uint64_t)sb.st_size, name,
			                   &want, err, errlen);
			if (rc == ST_SHM_OK)
				h->base = (char *)hdr;
			else
				munmap(hdr, (size_t)sb.st_size);
		}
	}
	if (rc == ST_SHM_OK) {
		h->k0 = header(h)->k0;
		h->k1 = header(h)->k1;
	}
done : {
	int e = errno;
	/* Unlock explicitly: a mapping keeps the open file (and so
	 * its flock) alive past close(). */
	(void)flock(fd, LOCK_UN);
	close(fd);
	errno = e;
}
	if (rc != ST_SHM_OK)
		st_shm_close(h);
	return rc;
}

void st_shm_close(st_shm *h)
{
	if (h->base != NULL)
		munmap(h->base, h->size);
	h->base = NULL;
}

int st_shm_unlink(const char *name)
{
	return shm_unlink(name);
}

/* ---- decisions -----------------------------------------------------------
 */

/* The slot of `kh` in bucket `b`, or -1. Requires the bucket's lock. */
ST_INLINE int find_slot(char *b, st_shm_hash kh)
{
	const uint64_t *lo = b_lo(b), *hi = b_hi(b);
	for (int i = 0; i < ST_SHM_WAYS; i++) {
		if (lo[i] == kh.lo && hi[i] == kh.hi)
			return i;
	}
	return -1;
}

static int live_in(char *b)
{
	const uint64_t *lo = b_lo(b);
	int n = 0;
	for (int i = 0; i < ST_SHM_WAYS; i++)
		n += lo[i] != 0;
	return n;
}

/* What a slot's state is worth keeping: the time until its rates are
 * full, or, with a penalty, more when its penalty record holds more (a
 * ban outranks every rate state, a longer one a shorter one). */
ST_INLINE int64_t slot_worth(const st_shm *h, const int64_t *state,
                             int64_t now)
{
	int64_t f = st_policy_full_in(&h->policy, state, now);
	if (h->has_penalty) {
		const int64_t *pn = state + st_policy_words(&h->policy);
		int64_t left = pn_banned_for(pn, now);
		f = st_max64(f, left > 0 ? (INT64_C(1) << 62) + left
		                         : pn_idle_in(&h->penalty, pn, now));
	}
	return f;
}

/* A slot for a new key, in bucket `a` or `b` (both locked; the same one
 * when a == b): an empty one in the emptier bucket (two choices keep the
 * buckets even, so evictions start only near a full segment), else the
 * slot of the two buckets closest to full, counted as expired when it is
 * full and as evicted otherwise. Sets *in to the bucket chosen. */
static int make_room(st_shm *h, char *a, char *b, int64_t now, char **in)
{
	char *cand[2] = {a, b};
	int ncand = a == b ? 1 : 2;
	int best = 0;
	int64_t best_full_in = INT64_MAX;

	*in = a;
	if (ncand == 2 && live_in(b) < live_in(a)) {
		cand[0] = b;
		cand[1] = a;
	}
	for (int c = 0; c < ncand; c++) {
		const uint64_t *lo = b_lo(cand[c]);
		for (int i = 0; i < ST_SHM_WAYS; i++) {
			if (lo[i] == 0) {
				*in = cand[c];
				return i;
			}
		}
	}
	for (int c = 0; c < ncand && best_full_in > 0; c++) {
		char *x = cand[c];
		for (int i = 0; i < ST_SHM_WAYS; i++) {
			int64_t f = slot_worth(
			    h, slot_state(h, x, i, b_sel(x)[i] & 1), now);
			if (f < best_full_in) {
				best_full_in = f;
				best = i;
				*in = x;
				if (f == 0)
					break;
			}
		}
	}
	__atomic_fetch_add(
	    best_full_in == 0 ? &header(h)->expired : &header(h)->evicted, 1,
	    __ATOMIC_RELAXED);
	return best;
}

/* The earliest time the process that wrote `state` can have read: the
 * start of a window it counted in, or a token bucket's arrival time less
 * its tolerance. Each process reads its clock before taking the lock, so
 * another may have stored a later time meanwhile; deciding at this time
 * instead keeps a window from being read as empty and overwritten (the
 * in-process limiter never lets time run backwards either). */
ST_INLINE int64_t state_time(const st_policy *p, const int64_t *state)
{
	int64_t t = INT64_MIN;

	for (int r = 0; r < p->nrates; r++) {
		const st_limit *l = &p->rates[r];
		int64_t s0 = state[r * p->words], x;
		if (s0 == INT64_MIN)
			continue;
		x = p->algorithm == ST_TOKEN_BUCKET ? s0 - l->tolerance_ns
		                                    : s0 * l->period_ns;
		t = x > t ? x : t;
	}
	return t;
}

/* The refusal of a banned key (as limiter_type.c's). */
static void banned_decision(const st_shm *h, int64_t left, st_decision *out)
{
	out->allowed = 0;
	out->banned = 1;
	out->binding = 0;
	out->limit = st_policy_max_cost(&h->policy);
	out->remaining = 0;
	out->reset_after_ns = left;
	out->retry_after_ns = left;
}

/* Writes `state` into the spare copy of slot `i` of locked bucket `b`,
 * then makes it current with one store. */
ST_INLINE void slot_write(st_shm *h, char *b, int i, const int64_t *state)
{
	int sel = b_sel(b)[i] & 1;
	memcpy(slot_state(h, b, i, sel ^ 1), state,
	       sizeof(int64_t) * (size_t)h->words);
	__atomic_store_n(&b_sel(b)[i], (uint8_t)(sel ^ 1), __ATOMIC_RELEASE);
}

/* Decides on the key in slot `i` of locked bucket `b`. With a penalty: a
 * banned key is refused, and a committed refusal is counted (and may
 * start a ban: *ban_count is then set). */
ST_INLINE void decide_at(st_shm *h, char *b, int i, int64_t now, int64_t cost,
                         int commit, st_decision *out, int64_t *ban_count)
{
	size_t bytes = sizeof(int64_t) * (size_t)h->words;
	int64_t state[MAX_WORDS], floor;
	int64_t *pn = state + st_policy_words(&h->policy);
	int sel = b_sel(b)[i] & 1;

	memcpy(state, slot_state(h, b, i, sel), bytes);
	if (h->has_penalty) {
		int64_t left = pn_banned_for(pn, now);
		if (left > 0) {
			banned_decision(h, left, out);
			return;
		}
	}
	floor = state_time(&h->policy, state);
	if (ST_UNLIKELY(now < floor))
		now = floor;
	st_policy_decide(&h->policy, state, now, cost, commit, out);
	if (out->allowed && commit) {
		slot_write(h, b, i, state);
	} else if (h->has_penalty && commit) {
		int64_t dur = pn_strike(&h->penalty, pn, now);
		slot_write(h, b, i, state);
		if (dur > 0) {
			banned_decision(h, dur, out);
			*ban_count = pn[PN_BANS];
		}
	}
}

/* Looks `kh` up in bucket `b` and decides on it if there. Returns 1 when
 * found. Takes and releases the bucket's lock. */
ST_INLINE int decide_in(st_shm *h, char *b, st_shm_hash kh, int64_t now,
                        int64_t cost, int commit, st_decision *out,
                        int64_t *ban_count)
{
	int i;

	bucket_lock(b);
	i = find_slot(b, kh);
	if (i >= 0)
		decide_at(h, b, i, now, cost, commit, out, ban_count);
	bucket_unlock(b);
	return i >= 0;
}

/* A key lives in one of two buckets, from its two hash words. A lookup
 * holds one bucket lock at a time; only storing a new key holds both
 * (lower index first, so no two processes wait on each other) and
 * searches both again, so a key is never stored twice. */
void st_shm_decide(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                   int commit, st_decision *out)
{
	int64_t ban_count;
	st_shm_decide_ban(h, kh, now, cost, commit, out, &ban_count);
}

void st_shm_decide_ban(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                       int commit, st_decision *out, int64_t *ban_count)
{
	uint32_t ia = bucket_index(h, kh.hi), ib = bucket_index(h, kh.lo);
	char *a = bucket_at(h, ia), *b = bucket_at(h, ib), *in;
	size_t bytes = sizeof(int64_t) * (size_t)h->words;
	int64_t state[MAX_WORDS];
	int i;

	*ban_count = 0;
	if (ST_LIKELY(decide_in(h, a, kh, now, cost, commit, out, ban_count)))
		return;
	if (ib != ia && decide_in(h, b, kh, now, cost, commit, out, ban_count))
		return;
	/* An unknown key is full. Only an allowed, committed hit stores
	 * it: peeks and denials never grow the table. (A full key is never
	 * refused: a cost is at most the smallest capacity.) */
	memset(state, 0, sizeof(state));
	st_policy_fresh(&h->policy, state);
	st_policy_decide(&h->policy, state, now, cost, commit, out);
	if (!(out->allowed && commit))
		return;
	bucket_lock(ia <= ib ? a : b);
	if (ib != ia)
		bucket_lock(ia <= ib ? b : a);
	/* Stored meanwhile by another process? Then decide on that. */
	if ((i = find_slot(a, kh)) >= 0) {
		decide_at(h, a, i, now, cost, commit, out, ban_count);
	} else if (ib != ia && (i = find_slot(b, kh)) >= 0) {
		decide_at(h, b, i, now, cost, commit, out, ban_count);
	} else {
		i = make_room(h, a, b, now, &in);
		/* Empty the slot first and publish it last. */
		__atomic_store_n(&b_lo(in)[i], 0, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_RELEASE);
		b_hi(in)[i] = kh.hi;
		memcpy(slot_state(h, in, i, 0), state, bytes);
		b_sel(in)[i] = 0;
		__atomic_store_n(&b_lo(in)[i], kh.lo, __ATOMIC_RELEASE);
	}
	if (ib != ia)
		bucket_unlock(b);
	bucket_unlock(a);
}

static void reset_in(char *b, st_shm_hash kh)
{
	int i;

	bucket_lock(b);
	i = find_slot(b, kh);
	if (i >= 0)
		__atomic_store_n(&b_lo(b)[i], 0, __ATOMIC_RELEASE);
	bucket_unlock(b);
}

void st_shm_reset(st_shm *h, st_shm_hash kh)
{
	uint32_t ia = bucket_index(h, kh.hi), ib = bucket_index(h, kh.lo);

	reset_in(bucket_at(h, ia), kh);
	if (ib != ia)
		reset_in(bucket_at(h, ib), kh);
}

void st_shm_reset_all(st_shm *h)
{
	for (uint32_t k = 0; k < h->nbuckets; k++) {
		char *b = bucket_at(h, k);
		bucket_lock(b);
		for (int i = 0; i < ST_SHM_WAYS; i++)
			__atomic_store_n(&b_lo(b)[i], 0, __ATOMIC_RELEASE);
		bucket_unlock(b);
	}
}

void st_shm_get_stats(const st_shm *h, st_shm_stats *out)
{
	const st_shm_header *hdr = header(h);
	uint64_t keys = 0;

	for (uint32_t k = 0; k < h->nbuckets; k++) {
		char *b = bucket_at(h, k);
		for (int i = 0; i < ST_SHM_WAYS; i++)
			keys += __atomic_load_n(&b_lo(b)[i],
			                        __ATOMIC_RELAXED) != 0;
	}
	out->keys = keys;
	out->max_keys = hdr->max_keys;
	out->slots = (uint64_t)h->nbuckets * ST_SHM_WAYS;
	out->evicted = __atomic_load_n(&hdr->evicted, __ATOMIC_RELAXED);
	out->expired = __atomic_load_n(&hdr->expired, __ATOMIC_RELAXED);
	out->memory = h->size;
}

void st_shm_hold_lock(st_shm *h, st_shm_hash kh)
{
	bucket_lock(bucket_at(h, bucket_index(h, kh.hi)));
}

/* ---- the penalty box's API ------------------------------------------------
 */

/* Finds `kh` in its buckets and locks the one holding it: returns the
 * slot and sets *in, or returns -1 (nothing locked). */
static int lock_key(st_shm *h, st_shm_hash kh, char **in)
{
	uint32_t ia = bucket_index(h, kh.hi), ib = bucket_index(h, kh.lo);
	char *cand[2] = {bucket_at(h, ia), bucket_at(h, ib)};

	for (int c = 0; c < (ia == ib ? 1 : 2); c++) {
		int i;
		bucket_lock(cand[c]);
		i = find_slot(cand[c], kh);
		if (i >= 0) {
			*in = cand[c];
			return i;
		}
		bucket_unlock(cand[c]);
	}
	return -1;
}

int st_shm_penalty_state(st_shm *h, st_shm_hash kh, int64_t *pn)
{
	char *b;
	int i;

	if (!h->has_penalty || (i = lock_key(h, kh, &b)) < 0)
		return 0;
	memcpy(
	    pn,
	    slot_state(h, b, i, b_sel(b)[i] & 1) + st_policy_words(&h->policy),
	    sizeof(int64_t) * PN_WORDS);
	bucket_unlock(b);
	return 1;
}

int st_shm_lift(st_shm *h, st_shm_hash kh, int64_t now)
{
	int64_t state[MAX_WORDS];
	int64_t *pn = state + st_policy_words(&h->policy);
	char *b;
	int i, was;

	if (!h->has_penalty || (i = lock_key(h, kh, &b)) < 0)
		return 0;
	memcpy(state, slot_state(h, b, i, b_sel(b)[i] & 1),
	       sizeof(int64_t) * (size_t)h->words);
	was = pn_banned_for(pn, now) > 0;
	memset(pn, 0, sizeof(int64_t) * PN_WORDS);
	slot_write(h, b, i, state);
	bucket_unlock(b);
	return was;
}

int st_shm_each_ban(st_shm *h, int64_t now,
                    int (*fn)(void *arg, int64_t left, int64_t count),
                    void *arg)
{
	int64_t found[ST_SHM_WAYS][2];

	if (!h->has_penalty)
		return 0;
	for (uint32_t k = 0; k < h->nbuckets; k++) {
		char *b = bucket_at(h, k);
		int n = 0;
		bucket_lock(b);
		for (int i = 0; i < ST_SHM_WAYS; i++) {
			const int64_t *pn;
			if (b_lo(b)[i] == 0)
				continue;
			pn = slot_state(h, b, i, b_sel(b)[i] & 1) +
			     st_policy_words(&h->policy);
			if (pn_banned_for(pn, now) > 0) {
				found[n][0] = pn_banned_for(pn, now);
				found[n][1] = pn[PN_BANS];
				n++;
			}
		}
		bucket_unlock(b);
		for (int j = 0; j < n; j++) {
			if (fn(arg, found[j][0], found[j][1]) < 0)
				return -1;
		}
	}
	return 0;
}

uint64_t st_shm_owner_self(void)
{
	pthread_once(&pid_once, init_pid);
	return __atomic_load_n(&self_owner, __ATOMIC_RELAXED);
}

int st_shm_owner_gone(uint64_t owner)
{
	return owner_gone(owner);
}

void st_shm_lock_word(uint64_t *lock)
{
	uint64_t expected = 0;
	uint64_t me = st_shm_owner_self();
	if (!__atomic_compare_exchange_n(lock, &expected, me, 0,
	                                 __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
		lock_slow(lock, me);
}

void st_shm_unlock_word(uint64_t *lock)
{
	__atomic_store_n(lock, 0, __ATOMIC_RELEASE);
}

#else /* !__linux__ */

#include <errno.h>
#include <stdio.h>
#include <string.h>

int st_shm_open(st_shm *h, const char *name, const st_policy *policy,
                uint32_t max_keys, char *err, size_t errlen)
{
	(void)policy;
	(void)max_keys;
	memset(h, 0, sizeof(*h));
	snprintf(err, errlen,
	         "shared memory %s: shared-memory limits need Linux", name);
	errno = ENOSYS;
	return ST_SHM_EOS;
}

void st_shm_close(st_shm *h)
{
	h->base = NULL;
}

int st_shm_unlink(const char *name)
{
	(void)name;
	errno = ENOSYS;
	return -1;
}

st_shm_hash st_shm_hash_key(const st_shm *h, uint8_t kind, const void *key,
                            size_t len)
{
	st_shm_hash kh = {1, 0};
	(void)h;
	(void)kind;
	(void)key;
	(void)len;
	return kh;
}

void st_shm_decide(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                   int commit, st_decision *out)
{
	int64_t state[ST_MAX_RATES * 3];
	(void)kh;
	st_policy_fresh(&h->policy, state);
	st_policy_decide(&h->policy, state, now, cost, commit, out);
}

void st_shm_reset(st_shm *h, st_shm_hash kh)
{
	(void)h;
	(void)kh;
}

void st_shm_reset_all(st_shm *h)
{
	(void)h;
}

void st_shm_get_stats(const st_shm *h, st_shm_stats *out)
{
	(void)h;
	memset(out, 0, sizeof(*out));
}

void st_shm_hold_lock(st_shm *h, st_shm_hash kh)
{
	(void)h;
	(void)kh;
}

int st_shm_open_penalty(st_shm *h, const char *name, const st_policy *policy,
                        const st_penalty *penalty, uint32_t max_keys,
                        char *err, size_t errlen)
{
	(void)penalty;
	return st_shm_open(h, name, policy, max_keys, err, errlen);
}

void st_shm_decide_ban(st_shm *h, st_shm_hash kh, int64_t now, int64_t cost,
                       int commit, st_decision *out, int64_t *ban_count)
{
	*ban_count = 0;
	st_shm_decide(h, kh, now, cost, commit, out);
}

int st_shm_penalty_state(st_shm *h, st_shm_hash kh, int64_t *pn)
{
	(void)h;
	(void)kh;
	(void)pn;
	return 0;
}

int st_shm_lift(st_shm *h, st_shm_hash kh, int64_t now)
{
	(void)h;
	(void)kh;
	(void)now;
	return 0;
}

int st_shm_each_ban(st_shm *h, int64_t now,
                    int (*fn)(void *arg, int64_t left, int64_t count),
                    void *arg)
{
	(void)h;
	(void)now;
	(void)fn;
	(void)arg;
	return 0;
}

uint64_t st_shm_owner_self(void)
{
	return 1;
}

int st_shm_owner_gone(uint64_t owner)
{
	(void)owner;
	return 0;
}

void st_shm_lock_word(uint64_t *lock)
{
	*lock = 1;
}

void st_shm_unlock_word(uint64_t *lock)
{
	*lock = 0;
}

#endif /* __linux__ */
