/* vs_ring.c - what the two ring layouts (vs_split.c, vs_packed.c) share: breaking a ring, and calling
 * the driver after a batch.  Like the layouts, it knows nothing of the net device.
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
