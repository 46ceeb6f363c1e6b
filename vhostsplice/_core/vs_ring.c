/* vs_ring.c - what the two ring layouts (vs_split.c, vs_packed.c) share: breaking a ring, translating
 * its three areas, adding a data descriptor to a walk, and calling the driver after a batch.  Like the
 * layouts, it knows nothing of the net device.
 */
#include <errno.h>
#include <unistd.h>

#include "vs_api.h"

/* Mark the ring broken (once), signal the error eventfd, and fail. */
int vs_ring_fail(struct vs_ring *r, int reason)
{
    if (r->broken == 0) {
        uint64_t one = 1;
        r->broken = reason;
        if (r->err_fd >= 0 && write(r->err_fd, &one, sizeof one) < 0) {
            /* the eventfd is full or gone: the -EBADMSG return still reports it */
        }
    }
    return -EBADMSG;
}

/* Translate the ring's three areas (their byte counts given by the layout), each wholly inside one
 * region, and keep them when our mapping has the alignment the layout's atomics need: `masks` holds
 * the desc and avail masks (align - 1) in its low and high byte; the used area is always 4-aligned.
 * 0, -EFAULT (outside memory) or -EINVAL. */
int vs_ring_map(const struct vs_mem *m, struct vs_ring *r, uint64_t desc_len, uint64_t avail_len, uint64_t used_len,
                uint32_t masks)
{
    uintptr_t desc_mask = masks & 0xFF, avail_mask = masks >> 8;
    uint8_t *desc = vs_uva_to_hva(m, r->desc_uva, desc_len);
    uint8_t *avail = vs_uva_to_hva(m, r->avail_uva, avail_len);
    uint8_t *used = vs_uva_to_hva(m, r->used_uva, used_len);
    if (desc == NULL || avail == NULL || used == NULL)
        return -EFAULT;
    if (((uintptr_t)desc & desc_mask) != 0 || ((uintptr_t)avail & avail_mask) != 0 || ((uintptr_t)used & 3) != 0)
        return -EINVAL;
    r->desc = desc;
    r->avail = avail;
    r->used = used;
    return 0;
}

/* Add one data descriptor (both layouts: guest-physical addr, len, and whether it is device-writable)
 * to the chain's iovecs: 0, VS_CHAIN_BAD_DESC (the wrong direction), or vs_gpa_to_iov's fault. */
int vs_walk_add(const struct vs_mem *m, int writable, int desc_writable, uint64_t addr, uint32_t len, struct vs_walk *w)
{
    if (!!desc_writable != !!writable)
        return VS_CHAIN_BAD_DESC;
    w->len += len;
    if (len == 0)
        return 0;
    return vs_gpa_to_iov(m, addr, len, w->iov, w->gpa, &w->niov, w->max);
}

/* A batch was published: signal the call eventfd if the driver wants it (the layout asked), count it. */
void vs_ring_call(struct vs_ring *r, int want)
{
    if (!want) {
        r->st.notify_suppressed++;
        return;
    }
    r->st.notify_sent++;
    uint64_t one = 1;
    if (r->call_fd >= 0 && write(r->call_fd, &one, sizeof one) < 0) {
        /* a full eventfd already wakes the driver */
    }
}
