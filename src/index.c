/* The shared open-addressing hash index (see index.h). */
#include "index.h"

void st_ix_rebuild(uint32_t *slots, uint32_t nslots, uint32_t count,
                   st_ix_hash_fn hash_of, const void *owner)
{
	uint32_t mask = nslots - 1;

	for (uint32_t i = 0; i < count; i++)
		st_ix_put(slots, mask, st_ix_home(hash_of(owner, i), mask), i);
}
