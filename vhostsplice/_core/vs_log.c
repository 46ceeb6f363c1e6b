/* vs_log.c - the dirty log (live migration, vhost-user "Migration"): marking the 4 KiB guest-physical
 * pages the device wrote.
 *
 * While l->all is set, every store the device makes into guest memory is followed by marking its pages
 * in the log Python mapped (vs_log_write).  The order is always: guest-memory store -> release fence ->
 * atomic OR of the log byte, so a reader that sees (and clears) the bit and then copies the page copies
 * the new data.  A ring's own stores (its used ring, VHOST_VRING_F_LOG) are logged at r->log_addr plus
 * their offset (vs_log_ring); the layout says which offsets it wrote.  Every log index is bounds-
 * checked against the log's size with subtraction-only arithmetic: a page past the log's end is never
 * written, only counted (overflow).
 */
#include <errno.h>
#include <limits.h>

#include "vs_api.h"

/* Mark the log pages of [gpa, gpa + len) (bit p % 8 of byte p / 8 for page p), after a release fence:
 * the caller stored the data first.  No-op (0) unless logging is on and a log is set.  Pages past the
 * log's end (or a range wrapping past 2^64) are not written: the call counts one overflow, marks the
 * pages that are inside, and returns -ERANGE.  Otherwise returns the number of pages marked (capped at
 * INT_MAX). */
int vs_log_write(struct vs_log *l, uint64_t gpa, uint64_t len)
{
    if (!l->all || l->base == NULL || len == 0)
        return 0;
    uint64_t first = gpa >> VS_LOG_PAGE_SHIFT, last;
    int over = 0;
    if (len - 1 > UINT64_MAX - gpa) {
        last = UINT64_MAX >> VS_LOG_PAGE_SHIFT; /* wraps: mark up to the top, count it */
        over = 1;
    } else {
        last = (gpa + (len - 1)) >> VS_LOG_PAGE_SHIFT;
    }
    if ((first >> 3) >= l->size) {
        l->overflow++;
        return -ERANGE;
    }
    if ((last >> 3) >= l->size) {
        /* size <= last / 8 < 2^61 here, so the shift cannot overflow */
        last = ((l->size - 1) << 3) | 7;
        over = 1;
    }
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (uint64_t page = first;;) {
        uint64_t byte = page >> 3, stop = (byte << 3) | 7;
        if (stop > last)
            stop = last;
        uint8_t bits = (uint8_t)((0xFFu << (page & 7)) & (0xFFu >> (7 - (stop & 7))));
        /* SAFETY: byte <= last / 8 < size, the length of Python's log buffer. */
        __atomic_fetch_or(&l->base[byte], bits, __ATOMIC_RELAXED);
        if (stop == last)
            break;
        page = stop + 1;
    }
    if (over) {
        l->overflow++;
        return -ERANGE;
    }
    l->writes++;
    uint64_t pages = last - first + 1;
    return pages > INT_MAX ? INT_MAX : (int)pages;
}

/* Log the first len bytes of a guest iovec list whose pieces start at the guest-physical addresses
 * gpa[i] (what vs_gpa_to_iov recorded): the bytes the device just wrote there. */
void vs_log_iov(struct vs_log *l, const struct iovec *iov, const uint64_t *gpa, uint32_t niov, uint64_t len)
{
    for (uint32_t i = 0; i < niov && len > 0; i++) {
        uint64_t k = iov[i].iov_len < len ? iov[i].iov_len : len;
        vs_log_write(l, gpa[i], k);
        len -= k;
    }
}

/* Log a store of len bytes at byte offset off of the ring's logged area (its used ring), when the
 * front-end asked for it (r->log_used). */
void vs_log_ring(struct vs_log *l, const struct vs_ring *r, uint64_t off, uint64_t len)
{
    if (!r->log_used)
        return;
    if (off > UINT64_MAX - r->log_addr) { /* the front-end's log_addr wraps: never a real page */
        if (l->base != NULL)
            l->overflow++;
        return;
    }
    vs_log_write(l, r->log_addr + off, len);
}
