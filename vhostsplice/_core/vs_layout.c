/* vs_layout.c - the ring layout interface (vs_api.h) dispatched to the ring's layout.
 *
 * vs_ring_start chooses the layout once, from VS_RF_PACKED, and stores its table (vs_split_layout or
 * vs_packed_layout) in the ring; every other function goes through that table, so no caller tests the
 * layout.  Positions are opaque uint16 values both layouts keep in last_avail and used_idx (split: the
 * free-running indexes; packed: index | wrap << 15), so their accessors are shared here.
 */
#include <errno.h>

#include "vs_api.h"

static const struct vs_layout *layout_of(uint32_t flags)
{
    return (flags & VS_RF_PACKED) ? &vs_packed_layout : &vs_split_layout;
}

/* The one ring-size rule of the layout `flags` selects: SET_VRING_NUM and Datapath.start_ring ask it
 * (datapath.ring_size_ok).  Split: a power of 2 up to 32768 (2.7); packed: 1..32768 (2.8). */
int vs_ring_num_ok(uint32_t num, uint32_t flags)
{
    return layout_of(flags)->num_ok(num);
}

static void ring_unmap(struct vs_ring *r)
{
    r->running = 0;
    r->desc = r->avail = r->used = NULL;
}

/* Pick the ring's layout, check its size and fields, translate its areas once for the full size, and
 * resume: the position (>= 0), or -EINVAL / -ERANGE / -EFAULT with the ring left stopped. */
int vs_ring_start(const struct vs_mem *m, struct vs_ring *r)
{
    r->layout = layout_of(r->flags);
    int rc = r->layout->num_ok(r->num) ? r->layout->check(r) : -EINVAL;
    if (rc == 0)
        rc = r->layout->map(m, r);
    if (rc < 0) {
        ring_unmap(r);
        return rc;
    }
    rc = r->layout->start(m, r);
    r->signalled_valid = 0;
    r->broken = 0;
    r->running = 1;
    return rc;
}

/* A new region table: translate a running ring's areas again (stopped if they are gone). */
int vs_ring_remap(const struct vs_mem *m, struct vs_ring *r)
{
    if (!r->running || r->layout == NULL)
        return 0;
    int rc = r->layout->map(m, r);
    if (rc < 0)
        ring_unmap(r);
    return rc;
}

int vs_avail_pending(struct vs_ring *r)
{
    return r->layout->avail_pending(r);
}

int vs_pop_chain(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w)
{
    return r->layout->pop_chain(m, r, writable, w);
}

void vs_prefetch_chain(const struct vs_mem *m, const struct vs_ring *r, uint16_t at)
{
    r->layout->prefetch_chain(m, r, at);
}

void vs_used_add(struct vs_ring *r, uint16_t head, uint32_t len)
{
    r->layout->used_add(r, head, len);
}

void vs_used_publish(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used)
{
    r->layout->used_publish(m, r, old_used);
}

void vs_notify_disable(const struct vs_mem *m, struct vs_ring *r)
{
    r->layout->notify_disable(m, r);
}

int vs_notify_enable(const struct vs_mem *m, struct vs_ring *r, uint16_t seen)
{
    return r->layout->notify_enable(m, r, seen);
}

/* The next chain the device takes, and the next used entry (a batch's start, for vs_used_publish). */
uint16_t vs_avail_pos(const struct vs_ring *r)
{
    return r->last_avail;
}

uint16_t vs_used_pos(const struct vs_ring *r)
{
    return r->used_idx;
}

/* Give back every chain taken since pos (taken, not completed: none of them has a used entry); the next
 * vs_pop_chain takes the chain at pos again. */
void vs_avail_rewind(struct vs_ring *r, uint16_t pos)
{
    r->last_avail = pos;
}
