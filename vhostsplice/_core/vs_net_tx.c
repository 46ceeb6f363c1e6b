/* vs_net_tx.c - virtio-net TX: each chain the driver made available -> one writev to the host fd (or,
 * for a byte stream, a length prefix and the frame, with a short write's tail kept in Python's stage).
 * With the host fd's io_uring on (vs_uring.c), up to VS_URING_BATCH chains are taken at once and written
 * by one io_uring_enter, then completed in the order taken: a write that met EAGAIN is given back with
 * every chain after it (VS_TX_BLOCKED), unless a later write of the same batch went out (the full queue
 * drained in between): then it is a dropped packet (drops_hostfd, uring tx_raced), never one sent twice
 * or out of order with its ring.  TX writes no guest memory but the used entries (logged by the ring's
 * layout).
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

/* ------------------------------------------------------------------- batches through the io_uring */

struct tx_slots {
    struct vs_walk w[VS_URING_BATCH];
    struct iovec *host[VS_URING_BATCH];
    uint32_t nhost[VS_URING_BATCH];
    int32_t res[VS_URING_BATCH];
    struct iovec cut[VS_MAX_IOV + VS_URING_BATCH]; /* each chain without the omitted header bytes */
};

/* Take up to max chains (their iovecs into pool) for one batch: how many.  A faulty chain is completed
 * when it comes first (its count is 0 then), else left to start the next batch, as is a chain whose
 * pieces do not fit the iovecs left; *stop gets a ring fault (-EBADMSG) or the fault policy's -EFAULT. */
static uint32_t tx_take(struct vs_pair *p, struct vs_ring *r, struct iovec *pool, struct tx_slots *s, uint32_t max,
                        int *stop)
{
    uint32_t n = 0, g = 0, h = 0;
    while (n < max && *stop == 0) {
        int rc = vs_avail_pending(r);
        if (rc <= 0) {
            *stop = rc;
            break;
        }
        struct vs_walk *w = &s->w[n];
        *w = (struct vs_walk){ .iov = pool + g, .max = VS_GUEST_IOV - g };
        rc = vs_pop_chain(&p->mem, r, 0, w);
        if (rc == 0 && (w->len < p->hdr_len || w->len == p->hdr_omit))
            rc = VS_CHAIN_SHORT;
        if (rc > 0 && n > 0)
            vs_avail_rewind(r, w->at);
        if (rc > 0 && n == 0)
            *stop = vs_chain_fault(p, r, w->head, rc);
        if (rc != 0) {
            *stop = rc < 0 ? rc : *stop;
            break;
        }
        g += w->niov;
        s->nhost[n] = w->niov;
        s->host[n] = vs_host_iov(p, w->iov, &s->nhost[n], s->cut + h);
        h += p->hdr_omit ? s->nhost[n] : 0;
        n++;
    }
    return n;
}

/* Every write of the batch after slot i that went out. */
static int tx_later_sent(const struct tx_slots *s, uint32_t i, uint32_t n)
{
    for (uint32_t k = i + 1; k < n; k++)
        if (s->res[k] >= 0)
            return 1;
    return 0;
}

static void tx_done(struct vs_pair *p, struct vs_ring *r, const struct vs_walk *w, int sent)
{
    if (sent) {
        r->st.packets++;
        r->st.bytes += w->len - p->hdr_len;
    } else {
        r->st.drops_hostfd++;
    }
    r->st.chains++;
    vs_used_add(r, w->head, 0);
}

/* Complete the batch's chains in order from their write results: 0, VS_TX_BLOCKED, 1 (the ring is off
 * or nothing went out: the caller retries per frame, from the chain given back), or -errno. */
static int tx_settle(struct vs_pair *p, struct vs_ring *r, struct tx_slots *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        int err = s->res[i] < 0 ? -s->res[i] : 0;
        int raced = (err == EAGAIN || err == EWOULDBLOCK) && tx_later_sent(s, i, n);
        if (err == 0 || raced || (err != EAGAIN && err != EWOULDBLOCK && vs_host_drops(p, err))) {
            p->uring.tx_raced += (uint64_t)raced;
            tx_done(p, r, &s->w[i], err == 0);
            continue;
        }
        if (err == EOPNOTSUPP)
            vs_uring_off(&p->uring, -err); /* RWF_NOWAIT refused: this fd cannot take the batched path */
        if (err == EAGAIN || err == EWOULDBLOCK || err == EOPNOTSUPP || err == ECANCELED) {
            vs_avail_rewind(r, s->w[i].at); /* ECANCELED: the kernel did not take it (vs_uring_rw) */
            return i == 0 ? 1 : (err == EAGAIN || err == EWOULDBLOCK) ? VS_TX_BLOCKED : VS_MORE;
        }
        if (i + 1 < n)
            vs_avail_rewind(r, s->w[i + 1].at); /* the failed chain stays taken, as one readv/writev leaves it */
        return vs_host_fatal(err);
    }
    return 0;
}

/* Up to `room` chains in one io_uring_enter; *done counts the chains taken.  0, VS_TX_BLOCKED,
 * VS_MORE, or -errno.  A batch that sent nothing is checked by one writev of its first chain (tx_one):
 * a full queue says EAGAIN there too, and a fd the ring cannot drive still moves. */
static int tx_many(struct vs_pair *p, struct vs_ring *r, struct iovec *pool, struct iovec *cut, uint32_t room,
                   uint32_t *done)
{
    struct tx_slots s;
    int stop = 0;
    uint32_t n = tx_take(p, r, pool, &s, room, &stop);
    *done += n ? n : 1;
    if (n == 0)
        return stop;
    int rc = vs_uring_rw(&p->uring, 1, s.host, s.nhost, n, s.res);
    if (rc <= 0 && rc != -EINTR)
        vs_uring_off(&p->uring, rc < 0 ? rc : -EAGAIN); /* the kernel took nothing: per frame from now on */
    if (rc <= 0) {
        vs_avail_rewind(r, s.w[0].at);
        return rc == -EINTR ? VS_MORE : 0;
    }
    rc = tx_settle(p, r, &s, n);
    if (rc == 1) {
        p->uring.confirms++;
        rc = tx_one(p, r, pool, cut);
    }
    return rc != 0 ? rc : stop;
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
        if (done >= p->tx_budget) {
            rc = VS_MORE;
            break;
        }
        uint32_t room = vs_batch_room(p, p->tx_budget - done);
        if (room > 1) {
            rc = tx_many(p, r, iov, cut, room, &done);
            continue;
        }
        done++;
        rc = tx_one(p, r, iov, cut);
    }
    vs_net_publish(p, r, old);
    r->st.batches++;
    return rc;
}
