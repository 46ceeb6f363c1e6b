/* vs_net_tx.c - virtio-net TX: each chain the driver made available -> one writev to the host fd (or,
 * for a byte stream, a length prefix and the frame, with a short write's tail kept in Python's stage).
 * TX writes no guest memory but the used entries (logged by the ring's layout).
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vs_api.h"

/* Cache hint for a chain already walked: its first iovec's first line (a validated guest piece). */
static void prefetch_iov(const struct iovec *iov, uint32_t niov)
{
    /* SAFETY: iov[0] was built by vs_gpa_to_iov inside one region; only its first byte's line. */
    if (niov > 0 && iov[0].iov_len > 0)
        __builtin_prefetch(iov[0].iov_base, 0, 3);
}

static int tx_error(struct vs_pair *p, struct vs_ring *r, const struct vs_walk *w, int err)
{
    if (err == EAGAIN || err == EWOULDBLOCK) {
        vs_avail_rewind(r, w->at); /* not consumed: it goes out when the fd is writable */
        return VS_TX_BLOCKED;
    }
    if (err == EINTR) {
        vs_avail_rewind(r, w->at);
        return VS_MORE;
    }
    if (!vs_host_drops(p, err))
        return vs_host_fatal(err);
    r->st.drops_hostfd++;
    r->st.chains++;
    vs_used_add(r, w->head, 0);
    return 0;
}

/* ------------------------------------------------------------------- byte streams (VS_HOST_STREAM) */

/* Copy the bytes of iov after the first `skip` into dst (at most cap); returns the count copied. */
static uint64_t iov_gather(const struct iovec *iov, uint32_t n, uint64_t skip, uint8_t *dst, uint64_t cap)
{
    uint64_t got = 0;
    for (uint32_t i = 0; i < n && got < cap; i++) {
        uint64_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        uint64_t k = len - skip < cap - got ? len - skip : cap - got;
        /* SAFETY: skip < iov_len and k <= iov_len - skip (guest piece); got + k <= cap (Python's stage). */
        memcpy(dst + got, (const uint8_t *)iov[i].iov_base + skip, k);
        got += k;
        skip = 0;
    }
    return got;
}

/* Write the unsent tail of a partly written frame: 0 done, VS_TX_BLOCKED, VS_MORE, or -errno. */
static int tx_flush(struct vs_pair *p)
{
    while (p->tx_stage_off < p->tx_stage_len) {
        /* SAFETY: off < len <= tx_stage_cap: inside Python's stage buffer. */
        ssize_t n = write(p->host_fd, p->tx_stage + p->tx_stage_off, p->tx_stage_len - p->tx_stage_off);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return VS_TX_BLOCKED;
        if (n < 0)
            return errno == EINTR ? VS_MORE : vs_host_fatal(errno);
        p->tx_stage_off += (uint32_t)n;
    }
    p->tx_stage_len = p->tx_stage_off = 0;
    return 0;
}

/* One frame onto the stream: its length prefix and bytes in one writev; a short write leaves the rest
 * in the stage (the chain is done: its bytes are copied). 0, VS_TX_BLOCKED or -errno. */
static int tx_stream(struct vs_pair *p, struct vs_ring *r, struct vs_walk *w, struct iovec *cut)
{
    uint64_t flen = w->len - p->hdr_len;
    uint32_t be = htobe32((uint32_t)flen);
    if (flen + sizeof be > p->tx_stage_cap) {
        r->st.drops_hostfd++; /* larger than any frame a peer takes */
        r->st.chains++;
        vs_used_add(r, w->head, 0);
        return 0;
    }
    cut[0].iov_base = &be;
    cut[0].iov_len = sizeof be;
    uint32_t n = 1 + vs_iov_cut(w->iov, w->niov, 0, p->hdr_len, cut + 1);
    /* SAFETY: guest iovecs narrowed by vs_iov_cut plus the local prefix; n <= VS_MAX_IOV + 2. */
    ssize_t sent = writev(p->host_fd, cut, (int)n);
    if (sent < 0)
        return tx_error(p, r, w, errno);
    uint64_t total = flen + sizeof be;
    if ((uint64_t)sent < total) {
        p->tx_stage_len = (uint32_t)iov_gather(cut, n, (uint64_t)sent, p->tx_stage, p->tx_stage_cap);
        p->tx_stage_off = 0;
    }
    r->st.packets++;
    r->st.bytes += flen;
    r->st.chains++;
    vs_used_add(r, w->head, 0);
    return p->tx_stage_len ? VS_TX_BLOCKED : 0;
}

/* One TX chain -> one writev. 0, VS_TX_BLOCKED, VS_MORE, or -errno. */
static int tx_one(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, struct iovec *cut)
{
    struct vs_walk w = { .iov = iov, .max = VS_GUEST_IOV };
    int rc = vs_pop_chain(&p->mem, r, 0, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc == 0 && w.len == p->hdr_omit)
        rc = VS_CHAIN_SHORT; /* a header and no frame: nothing to send (a 0-byte write sends nothing) */
    if (rc > 0)
        return vs_chain_fault(p, r, w.head, rc);
    if (p->host_flags & VS_HOST_STREAM)
        return tx_stream(p, r, &w, cut);
    uint32_t niov = w.niov;
    struct iovec *out = vs_host_iov(p, iov, &niov, cut);
    prefetch_iov(iov, w.niov);
    vs_prefetch_chain(&p->mem, r, vs_avail_pos(r)); /* the next chain: in cache by the time it is sent */
    /* SAFETY: every iovec was built by vs_gpa_to_iov inside one region (vs_iov_cut only narrows them);
     * niov <= VS_GUEST_IOV + 1 <= UIO_MAXIOV. */
    ssize_t n = writev(p->host_fd, out, (int)niov);
    if (n < 0)
        return tx_error(p, r, &w, errno);
    r->st.packets++;
    r->st.bytes += w.len - p->hdr_len;
    r->st.chains++;
    vs_used_add(r, w.head, 0);
    return 0;
}

int vs_tx_batch(struct vs_pair *p)
{
    struct vs_ring *r = &p->tx;
    struct iovec iov[VS_MAX_IOV];
    struct iovec cut[VS_MAX_IOV + 2];
    uint16_t old = vs_used_pos(r);
    uint32_t done = 0;
    int rc = 0;
    if (p->host_flags & VS_HOST_STREAM) {
        rc = tx_flush(p); /* the rest of a frame goes out before any other */
        if (rc != 0) {
            r->st.batches++;
            return rc;
        }
    }
    vs_notify_disable(&p->mem, r);
    while (rc == 0) {
        int n = vs_avail_pending(r);
        if (n == 0)
            n = vs_notify_enable(&p->mem, r, vs_avail_pos(r));
        if (n <= 0) {
            rc = n;
            break;
        }
        if (done++ >= p->tx_budget) {
            rc = VS_MORE;
            break;
        }
        rc = tx_one(p, r, iov, cut);
    }
    vs_net_publish(p, r, old);
    r->st.batches++;
    return rc;
}
