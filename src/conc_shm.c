#define _GNU_SOURCE
#include "conc_shm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "shm.h"

#if defined(__linux__)

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
	uint64_t magic;  /* CS_MAGIC */
	uint32_t layout; /* CS_LAYOUT */
	uint32_t ready;  /* 1 once the creator filled the header */
	uint64_t size;   /* segment bytes */
	uint64_t k0, k1; /* the secret of the keyed hash */
	int64_t limit;   /* the settings */
	int64_t queue;
	int64_t reserve;
	int32_t nlanes;
	uint32_t max_keys;
	uint32_t nbuckets;   /* buckets after the header */
	uint32_t pad;        /* 0 */
	uint64_t entry_size; /* bytes per key entry */
	uint64_t seq;        /* queue tickets handed out (atomic) */
} cs_header;

_Static_assert(sizeof(cs_header) <= CS_HEADER_SIZE, "the header fits");

typedef struct {
	uint64_t owner; /* owner word; 0: free */
	uint64_t id;    /* the lease or waiter id */
	int64_t expiry; /* CLOCK_MONOTONIC ns */
	uint64_t aux;   /* lease: lane; queue: order */
} cs_slot;

/* An entry: lo, hi, then `limit` lease slots and `queue` queue slots. */
ST_INLINE uint64_t *e_lo(char *e)
{
	return (uint64_t *)e;
}
ST_INLINE uint64_t *e_hi(char *e)
{
	return (uint64_t *)(e + 8);
}
ST_INLINE cs_slot *e_slots(char *e)
{
	return (cs_slot *)(e + 16);
}

ST_INLINE cs_header *cs_head(const cs_shm *h)
{
	return (cs_header *)h->base;
}

/* The bucket of `kh`: its lock word, then CS_WAYS entries after 16
 * bytes. */
ST_INLINE char *cs_bucket(const cs_shm *h, cs_hash kh)
{
	uint32_t i =
	    (uint32_t)(((unsigned __int128)kh.hi * h->nbuckets) >> 64);
	return h->base + CS_HEADER_SIZE + (size_t)i * h->bucket_size;
}

ST_INLINE char *cs_entry(const cs_shm *h, char *b, int i)
{
	return b + 16 + (size_t)i * h->entry_size;
}

ST_INLINE uint64_t slot_owner(const cs_slot *s)
{
	return __atomic_load_n(&s->owner, __ATOMIC_RELAXED);
}

ST_INLINE void slot_free(cs_slot *s)
{
	__atomic_store_n(&s->owner, 0, __ATOMIC_RELEASE);
}

/* Fills a free slot, publishing it last. */
static void slot_fill(cs_slot *s, uint64_t id, int64_t expiry, uint64_t aux)
{
	s->id = id;
	s->expiry = expiry;
	s->aux = aux;
	__atomic_store_n(&s->owner, st_shm_owner_self(), __ATOMIC_RELEASE);
}

/* Owners whose fate one reap asks the system about, at most: each
 * question costs system calls, made with the bucket locked. */
#define CS_OWNER_CHECKS 8

/* Frees what has expired in entry `e`; with `owners`, also the leases of
 * processes that are gone (system calls: only when they matter, for at
 * most CS_OWNER_CHECKS distinct owners, from a place that moves with the
 * clock so that every lease is looked at over a few calls). */
static void cs_reap(const cs_shm *h, char *e, int64_t now, int owners)
{
	cs_slot *s = e_slots(e);
	int64_t n = h->set.limit + h->set.queue;
	int64_t start =
	    owners ? (int64_t)((uint64_t)now % (uint64_t)h->set.limit) : 0;
	uint64_t self = st_shm_owner_self();
	uint64_t asked[CS_OWNER_CHECKS];
	int gone[CS_OWNER_CHECKS], nasked = 0;

	for (int64_t i = 0; i < n; i++) {
		uint64_t o = slot_owner(&s[i]);
		if (o != 0 && s[i].expiry <= now)
			slot_free(&s[i]);
	}
	for (int64_t j = 0; owners && j < h->set.limit; j++) {
		int64_t i = (start + j) % h->set.limit;
		uint64_t o = slot_owner(&s[i]);
		int k = 0;
		if (o == 0 || o == self)
			continue;
		while (k < nasked && asked[k] != o)
			k++;
		if (k == nasked) {
			if (nasked == CS_OWNER_CHECKS)
				continue;
			asked[k] = o;
			gone[k] = st_shm_owner_gone(o);
			nasked++;
		}
		if (gone[k])
			slot_free(&s[i]);
	}
}

/* Used slots in [from, to). */
static int64_t cs_used(char *e, int64_t from, int64_t to)
{
	cs_slot *s = e_slots(e);
	int64_t n = 0;
	for (int64_t i = from; i < to; i++)
		n += slot_owner(&s[i]) != 0;
	return n;
}

static char *cs_find(const cs_shm *h, char *b, cs_hash kh)
{
	for (int i = 0; i < CS_WAYS; i++) {
		char *e = cs_entry(h, b, i);
		if (*e_lo(e) == kh.lo && *e_hi(e) == kh.hi)
			return e;
	}
	return NULL;
}

/* Drops `e` (its lo word) when nothing holds or waits in it. */
static void cs_drop_if_empty(const cs_shm *h, char *e)
{
	if (cs_used(e, 0, h->set.limit + h->set.queue) == 0)
		__atomic_store_n(e_lo(e), 0, __ATOMIC_RELEASE);
}

/* An entry for a new key `kh` in bucket `b`: an empty one, or one whose
 * slots have all expired (or whose holders are gone). NULL when all
 * CS_WAYS entries are in use. */
static char *cs_claim(const cs_shm *h, char *b, cs_hash kh, int64_t now)
{
	for (int owners = 0; owners < 2; owners++) {
		for (int i = 0; i < CS_WAYS; i++) {
			char *e = cs_entry(h, b, i);
			if (*e_lo(e) != 0) {
				cs_reap(h, e, now, owners);
				cs_drop_if_empty(h, e);
			}
			if (*e_lo(e) == 0) {
				*e_hi(e) = kh.hi;
				__atomic_store_n(e_lo(e), kh.lo,
				                 __ATOMIC_RELEASE);
				return e;
			}
		}
	}
	return NULL;
}

int cs_acquire(cs_shm *h, cs_hash kh, uint64_t id, int lane, int64_t lease_ns,
               int64_t patience_ns, int mode, int64_t now, int64_t *held,
               int64_t *queued)
{
	const cs_settings *set = &h->set;
	int64_t lanes_above = set->nlanes - 1 - lane;
	int64_t cap = set->limit - set->reserve * lanes_above;
	uint64_t base = (uint64_t)lanes_above * CS_LANE_SPAN;
	uint64_t bound = base + CS_LANE_SPAN; /* orders of lanes >= ours */
	char *b = cs_bucket(h, kh), *e;
	cs_slot *s, *q, *mine = NULL;
	int64_t ahead = 0, nheld, rc;

	*held = *queued = 0;
	st_shm_lock_word((uint64_t *)b);
	e = cs_find(h, b, kh);
	if (e == NULL) {
		if (mode == CS_POLL) {
			rc = CS_LOST;
			goto out;
		}
		e = cs_claim(h, b, kh, now);
		if (e == NULL) {
			rc = CS_KEYS;
			goto out;
		}
	}
	cs_reap(h, e, now, 0);
	s = e_slots(e);
	q = s + set->limit;
	for (int64_t i = 0; i < set->queue; i++) {
		if (slot_owner(&q[i]) != 0 && q[i].id == id)
			mine = &q[i];
	}
	for (int64_t i = 0; i < set->queue; i++) {
		if (slot_owner(&q[i]) == 0)
			continue;
		if (mine ? q[i].aux < mine->aux : q[i].aux < bound)
			ahead++;
	}
	nheld = cs_used(e, 0, set->limit);
	if (nheld >= cap) {
		cs_reap(h, e, now, 1);
		nheld = cs_used(e, 0, set->limit);
	}
	if (nheld < cap && ahead < cap - nheld) {
		for (int64_t i = 0; i < set->limit; i++) {
			if (slot_owner(&s[i]) == 0) {
				slot_fill(&s[i], id, now + lease_ns,
				          (uint64_t)lane);
				break;
			}
		}
		if (mine != NULL)
			slot_free(mine);
		rc = CS_TAKEN;
	} else if (mode == CS_TRY) {
		rc = CS_WAITING;
	} else if (mine != NULL) {
		mine->expiry = now + patience_ns;
		rc = CS_WAITING;
	} else if (mode == CS_POLL) {
		rc = CS_LOST;
	} else {
		cs_slot *free_q = NULL, *last = NULL;
		for (int64_t i = 0; i < set->queue; i++) {
			if (slot_owner(&q[i]) == 0) {
				if (free_q == NULL)
					free_q = &q[i];
			} else if (last == NULL || q[i].aux > last->aux) {
				last = &q[i];
			}
		}
		if (free_q == NULL && last != NULL && last->aux >= bound) {
			slot_free(last); /* shed: a lower lane's newest */
			free_q = last;
		}
		if (free_q == NULL) {
			rc = CS_FULL;
		} else {
			uint64_t ticket = __atomic_fetch_add(
			    &cs_head(h)->seq, 1, __ATOMIC_RELAXED);
			slot_fill(free_q, id, now + patience_ns,
			          base + ticket % CS_LANE_SPAN);
			rc = CS_WAITING;
		}
	}
	*held = cs_used(e, 0, set->limit);
	*queued = cs_used(e, set->limit, set->limit + set->queue);
	cs_drop_if_empty(h, e);
out:
	st_shm_unlock_word((uint64_t *)b);
	return (int)rc;
}

void cs_release(cs_shm *h, cs_hash kh, uint64_t id)
{
	char *b = cs_bucket(h, kh), *e;

	st_shm_lock_word((uint64_t *)b);
	e = cs_find(h, b, kh);
	if (e != NULL) {
		cs_slot *s = e_slots(e);
		for (int64_t i = 0; i < h->set.limit + h->set.queue; i++) {
			if (slot_owner(&s[i]) != 0 && s[i].id == id)
				slot_free(&s[i]);
		}
		cs_drop_if_empty(h, e);
	}
	st_shm_unlock_word((uint64_t *)b);
}

int cs_extend(cs_shm *h, cs_hash kh, uint64_t id, int64_t lease_ns,
              int64_t now)
{
	char *b = cs_bucket(h, kh), *e;
	int found = 0;

	st_shm_lock_word((uint64_t *)b);
	e = cs_find(h, b, kh);
	if (e != NULL) {
		cs_slot *s = e_slots(e);
		for (int64_t i = 0; i < h->set.limit; i++) {
			if (slot_owner(&s[i]) != 0 && s[i].id == id &&
			    s[i].expiry > now) {
				s[i].expiry = now + lease_ns;
				found = 1;
			}
		}
	}
	st_shm_unlock_word((uint64_t *)b);
	return found;
}

void cs_count(cs_shm *h, cs_hash kh, int64_t now, int64_t *held,
              int64_t *queued)
{
	char *b = cs_bucket(h, kh), *e;

	*held = *queued = 0;
	st_shm_lock_word((uint64_t *)b);
	e = cs_find(h, b, kh);
	if (e != NULL) {
		cs_reap(h, e, now, 1);
		*held = cs_used(e, 0, h->set.limit);
		*queued =
		    cs_used(e, h->set.limit, h->set.limit + h->set.queue);
		cs_drop_if_empty(h, e);
	}
	st_shm_unlock_word((uint64_t *)b);
}

cs_hash cs_hash_key(const cs_shm *h, uint8_t kind, const void *key, size_t len)
{
	st_shm_hash x = st_siphash128(h->k0, h->k1 ^ kind, key, len);
	cs_hash kh = {x.lo ? x.lo : 1, x.hi};
	return kh;
}

/* ---- the segment ---------------------------------------------------------
 */

static void cs_fail(char *err, size_t errlen, const char *what,
                    const char *name)
{
	int e = errno;
	snprintf(err, errlen, "%s shared memory %s: %s", what, name,
	         strerror(e));
	errno = e;
}

static int cs_same(const cs_header *hdr, const cs_settings *set)
{
	return hdr->limit == set->limit && hdr->queue == set->queue &&
	       hdr->reserve == set->reserve && hdr->nlanes == set->nlanes &&
	       hdr->max_keys == set->max_keys;
}

/* Sizes a fresh (or abandoned) segment and writes its header. */
static int cs_create(cs_shm *h, int fd, const char *name, char *err,
                     size_t errlen)
{
	cs_header *hdr;
	uint64_t secret[2];
	int rc;

	if (ftruncate(fd, 0) < 0) {
		cs_fail(err, errlen, "cannot clear", name);
		return CS_EOS;
	}
	rc = posix_fallocate(fd, 0, (off_t)h->size);
	if (rc != 0) {
		errno = rc;
		snprintf(err, errlen,
		         "cannot reserve %zu bytes of shared memory %s: %s "
		         "(lower max_keys, limit or queue, or enlarge "
		         "/dev/shm)",
		         h->size, name, strerror(rc));
		(void)ftruncate(fd, 0);
		errno = rc;
		return CS_EOS;
	}
	h->base =
	    mmap(NULL, h->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (h->base == MAP_FAILED) {
		h->base = NULL;
		cs_fail(err, errlen, "cannot map", name);
		return CS_EOS;
	}
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret)) {
		cs_fail(err, errlen, "no random secret for", name);
		return CS_EOS;
	}
	hdr = cs_head(h);
	memset(hdr, 0, sizeof(*hdr));
	hdr->magic = CS_MAGIC;
	hdr->layout = CS_LAYOUT;
	hdr->size = h->size;
	hdr->k0 = h->k0 = secret[0];
	hdr->k1 = h->k1 = secret[1];
	hdr->limit = h->set.limit;
	hdr->queue = h->set.queue;
	hdr->reserve = h->set.reserve;
	hdr->nlanes = h->set.nlanes;
	hdr->max_keys = h->set.max_keys;
	hdr->nbuckets = h->nbuckets;
	hdr->entry_size = h->entry_size;
	__atomic_store_n(&hdr->ready, 1, __ATOMIC_RELEASE);
	return CS_OK;
}

static int cs_check(cs_shm *h, const cs_header *hdr, uint64_t file_size,
                    const char *name, char *err, size_t errlen)
{
	if (hdr->magic != CS_MAGIC || hdr->layout != CS_LAYOUT) {
		snprintf(err, errlen,
		         "shared memory %s exists and is not a stanchion "
		         "concurrency segment of layout %u",
		         name, (unsigned)CS_LAYOUT);
		return CS_EMISMATCH;
	}
	if (!cs_same(hdr, &h->set)) {
		snprintf(err, errlen,
		         "shared memory %s holds other settings: limit=%lld, "
		         "queue=%lld, priorities=%d, reserve=%lld, "
		         "max_keys=%u; this one asks for limit=%lld, "
		         "queue=%lld, priorities=%d, reserve=%lld, "
		         "max_keys=%u",
		         name, (long long)hdr->limit, (long long)hdr->queue,
		         (int)hdr->nlanes, (long long)hdr->reserve,
		         (unsigned)hdr->max_keys, (long long)h->set.limit,
		         (long long)h->set.queue, (int)h->set.nlanes,
		         (long long)h->set.reserve, (unsigned)h->set.max_keys);
		return CS_EMISMATCH;
	}
	if (hdr->size != h->size || file_size != h->size ||
	    hdr->nbuckets != h->nbuckets || hdr->entry_size != h->entry_size) {
		snprintf(err, errlen,
		         "shared memory %s is damaged (its size or layout "
		         "differs from its header): remove it",
		         name);
		return CS_EMISMATCH;
	}
	h->k0 = hdr->k0;
	h->k1 = hdr->k1;
	return CS_OK;
}

int cs_open(cs_shm *h, const char *name, const cs_settings *set, char *err,
            size_t errlen)
{
	struct stat sb;
	uint64_t keys, bytes;
	size_t len = strlen(name);
	int fd, rc = CS_EOS;

	memset(h, 0, sizeof(*h));
	h->set = *set;
	if (len < 2 || len > 251 || name[0] != '/' ||
	    strchr(name + 1, '/') != NULL) {
		errno = EINVAL;
		snprintf(err, errlen, "invalid shared memory name %s", name);
		return CS_EOS;
	}
	h->entry_size =
	    16 + (size_t)(set->limit + set->queue) * sizeof(cs_slot);
	h->bucket_size = 16 + CS_WAYS * h->entry_size;
	keys = 2 * (uint64_t)set->max_keys;
	h->nbuckets = (uint32_t)((keys + CS_WAYS - 1) / CS_WAYS);
	bytes = CS_HEADER_SIZE + (uint64_t)h->nbuckets * h->bucket_size;
	if (set->limit + set->queue > (INT64_C(1) << 24) ||
	    bytes >= (UINT64_C(1) << 40)) {
		errno = EINVAL;
		snprintf(err, errlen,
		         "shared memory %s would take %llu bytes: lower "
		         "max_keys, limit or queue",
		         name, (unsigned long long)bytes);
		return CS_EOS;
	}
	h->size = (size_t)bytes;
	(void)st_shm_owner_self(); /* reads /proc once, before any lock */
	fd = shm_open(name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		cs_fail(err, errlen, "cannot open", name);
		return CS_EOS;
	}
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			cs_fail(err, errlen, "cannot lock", name);
			goto done;
		}
	}
	if (fstat(fd, &sb) < 0) {
		cs_fail(err, errlen, "cannot stat", name);
		goto done;
	}
	if (sb.st_size == 0) {
		rc = cs_create(h, fd, name, err, errlen);
	} else if ((size_t)sb.st_size < CS_HEADER_SIZE) {
		snprintf(err, errlen,
		         "shared memory %s exists and is not a stanchion "
		         "segment (%lld bytes)",
		         name, (long long)sb.st_size);
		rc = CS_EMISMATCH;
	} else {
		cs_header *hdr =
		    mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE,
		         MAP_SHARED, fd, 0);
		if (hdr == MAP_FAILED) {
			cs_fail(err, errlen, "cannot map", name);
			goto done;
		}
		if ((hdr->magic == CS_MAGIC || hdr->magic == 0) &&
		    __atomic_load_n(&hdr->ready, __ATOMIC_ACQUIRE) != 1) {
			/* Its creator died before finishing: redo it. */
			munmap(hdr, (size_t)sb.st_size);
			rc = cs_create(h, fd, name, err, errlen);
		} else {
			rc = cs_check(h, hdr, (uint64_t)sb.st_size, name, err,
			              errlen);
			if (rc == CS_OK)
				h->base = (char *)hdr;
			else
				munmap(hdr, (size_t)sb.st_size);
		}
	}
done : {
	int e = errno;
	(void)flock(fd, LOCK_UN);
	close(fd);
	errno = e;
}
	if (rc != CS_OK)
		cs_close(h);
	return rc;
}

void cs_close(cs_shm *h)
{
	if (h->base != NULL)
		munmap(h->base, h->size);
	h->base = NULL;
}

#else /* !__linux__ */

int cs_open(cs_shm *h, const char *name, const cs_settings *set, char *err,
            size_t errlen)
{
	memset(h, 0, sizeof(*h));
	h->set = *set;
	snprintf(err, errlen,
	         "shared memory %s: shared-memory limits need Linux", name);
	errno = ENOSYS;
	return CS_EOS;
}

void cs_close(cs_shm *h)
{
	h->base = NULL;
}

cs_hash cs_hash_key(const cs_shm *h, uint8_t kind, const void *key, size_t len)
{
	cs_hash kh = {1, 0};
	(void)h;
	(void)kind;
	(void)key;
	(void)len;
	return kh;
}

int cs_acquire(cs_shm *h, cs_hash kh, uint64_t id, int lane, int64_t lease_ns,
               int64_t patience_ns, int mode, int64_t now, int64_t *held,
               int64_t *queued)
{
	(void)h;
	(void)kh;
	(void)id;
	(void)lane;
	(void)lease_ns;
	(void)patience_ns;
	(void)mode;
	(void)now;
	*held = *queued = 0;
	return CS_KEYS;
}

void cs_release(cs_shm *h, cs_hash kh, uint64_t id)
{
	(void)h;
	(void)kh;
	(void)id;
}

int cs_extend(cs_shm *h, cs_hash kh, uint64_t id, int64_t lease_ns,
              int64_t now)
{
	(void)h;
	(void)kh;
	(void)id;
	(void)lease_ns;
	(void)now;
	return 0;
}

void cs_count(cs_shm *h, cs_hash kh, int64_t now, int64_t *held,
              int64_t *queued)
{
	(void)h;
	(void)kh;
	(void)now;
	*held = *queued = 0;
}

#endif /* __linux__ */
