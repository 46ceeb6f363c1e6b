/* vs_net_rx.c - virtio-net RX, one frame at a time: one readv from the host fd straight into the guest's
 * RX chains (one chain, or with MRG_RXBUF as many as the frame needs), or a staged frame of a byte
 * stream.  These are also the steps vs_net_rx_batch.c's io_uring batches reuse (declared in vs_api.h).
 *
 * Dirty log: RX chains are walked with their guest-physical addresses kept next to the iovecs, and a
 * delivered packet's bytes (frame, header, zeroed header bytes, num_buffers) are logged after the last
 * of those stores and before its used entry (vs_log_iov).  A frame dropped as short or oversize is logged
 * too, up to the buffers' length (readv did write there; more pages than needed is never wrong), so every
 * byte the device changes is in a marked page.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vs_api.h"

static void put_num_buffers(const struct vs_pair *p, const struct iovec *iov, uint32_t niov, uint16_t n)
{
    uint16_t le = htole16(n);
    if (p->hdr_len >= VS_NUM_BUFFERS_OFF + 2)
        vs_iov_write(iov, niov, VS_NUM_BUFFERS_OFF, &le, sizeof le);
}

/* readv failed (or hit end of file). */
int vs_rx_error(const struct vs_pair *p, struct vs_ring *r, ssize_t got, int err)
{
    if (got == 0 && (p->host_flags & VS_HOST_EMPTY_OK)) {
        r->st.drops_short++; /* an empty datagram */
        return 0;
    }
    if (got == 0)
        return -EPIPE; /* the peer closed: a tap never reads 0 */
    if (err == EAGAIN || err == EWOULDBLOCK)
        return VS_RX_IDLE;
    if (err == EINTR)
        return VS_MORE;
    if (!vs_host_drops(p, err))
        return vs_host_fatal(err);
    r->st.drops_hostfd++;
    return 0;
}

/* Put the scratch buffer behind the guest's iovecs, so a frame longer than the guest's buffers is
 * seen whole (and dropped) instead of silently cut short by readv. Returns the iovec count to read. */
int vs_rx_with_scratch(struct vs_pair *p, struct iovec *iov, uint32_t niov)
{
    if (p->scratch == NULL || p->scratch_len == 0)
        return (int)niov;
    /* SAFETY: the iovec arrays hold VS_MAX_IOV + 1 entries; scratch is Python's, scratch_len long. */
    iov[niov].iov_base = p->scratch;
    iov[niov].iov_len = p->scratch_len;
    return (int)niov + 1;
}

/* One readv from the host fd into the guest's iovecs (`cut`: see vs_host_iov). Returns the length as
 * the guest's buffers see it (the omitted header bytes counted), or readv's result when <= 0. */
static ssize_t host_read(struct vs_pair *p, struct iovec *iov, uint32_t niov, struct iovec *cut)
{
    struct iovec *in = vs_host_iov(p, iov, &niov, cut);
    /* SAFETY: guest iovecs from vs_gpa_to_iov (narrowed by vs_iov_cut), plus scratch; the arrays hold
     * VS_MAX_IOV + 2 entries and niov <= VS_MAX_IOV + 1 before the scratch entry. */
    ssize_t got = readv(p->host_fd, in, vs_rx_with_scratch(p, in, niov));
    return got <= 0 ? got : got + (ssize_t)p->hdr_omit;
}

/* The host fd had no frame (EAGAIN): the chain waits for the next one.  Read one byte of each page of
 * its buffers now, up to rx_max bytes (the most a frame can fill: a chain the guest made larger, up to
 * 1022 descriptors of 4 GiB each, costs no more).  The worker maps guest memory lazily, so the first store
 * to each page faults, and that fault would otherwise land inside the next frame's readv (~15 us a page
 * with a 4 KiB-page guest: benchmarks/RESULTS.md, "The trickle rule"); a read maps a page of a shared
 * memfd or hugetlbfs mapping writable (of a file on a regular file system read-only: its first store
 * still faults).  A page already mapped costs one load. */
static int rx_touch(const struct vs_pair *p, const struct iovec *iov, uint32_t niov, int err)
{
    if (err != EAGAIN && err != EWOULDBLOCK)
        return err;
    uint64_t left = p->rx_max > p->hdr_len ? p->rx_max : p->hdr_len;
    for (uint32_t i = 0; i < niov && left > 0; i++) {
        const volatile uint8_t *b = iov[i].iov_base;
        uint64_t len = iov[i].iov_len < left ? iov[i].iov_len : left;
        left -= len;
        /* SAFETY: the chain's own iovecs (vs_gpa_to_iov: each inside one region), read only, each load
         * at an offset below iov_len. */
        for (uint64_t off = 0; off < len; off += 4096 - (((uintptr_t)b + off) & 4095))
            (void)b[off];
    }
    return err;
}

/* The header bytes the host fd did not fill: zero (no offload, no GSO) in the guest's buffer. */
static void zero_omitted(const struct vs_pair *p, const struct iovec *iov, uint32_t niov)
{
    static const uint8_t zero[VS_NET_HDR_LEN];
    if (p->hdr_omit)
        vs_iov_write(iov, niov, p->hdr_len - p->hdr_omit, zero, p->hdr_omit);
}

/* A frame dropped as short or oversize still landed in the guest's buffers (up to their length): log
 * those bytes too, so that every byte the device changes is in a marked page. */
void vs_rx_log_dropped(struct vs_pair *p, const struct iovec *iov, const uint64_t *gpa, uint32_t niov, uint64_t got,
                       uint64_t cap)
{
    vs_log_iov(p->mem.log, iov, gpa, niov, got < cap ? got : cap);
}

/* The frame did not fit the guest's buffers: count it; the caller gives the chains back. */
int vs_rx_oversize(struct vs_ring *r)
{
    r->st.drops_oversize++;
    return 0;
}

/* No (or too few) RX buffers: ask for a kick past `seen`; 0 if buffers raced in meanwhile. */
int vs_rx_starved(struct vs_pair *p, struct vs_ring *r, uint16_t seen)
{
    int n = vs_notify_enable(&p->mem, r, seen);
    if (n != 0)
        return n < 0 ? n : 0;
    r->st.rx_starved++;
    return VS_RX_STARVED;
}

/* A frame of got bytes (header included) is in the chain: the header fix-ups, the log, its used entry. */
void vs_rx_deliver(struct vs_pair *p, struct vs_ring *r, const struct vs_walk *w, uint64_t got)
{
    zero_omitted(p, w->iov, w->niov);
    put_num_buffers(p, w->iov, w->niov, 1);
    if (vs_logging(p->mem.log))
        vs_log_iov(p->mem.log, w->iov, w->gpa, w->niov, got); /* the frame, the header and its fix-ups */
    vs_used_add(r, w->head, (uint32_t)got);
    r->st.packets++;
    r->st.bytes += got - p->hdr_len;
    r->st.chains++;
}

/* Without MRG_RXBUF: one packet into one chain. */
int vs_rx_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, uint64_t *gpa, struct iovec *cut)
{
    struct vs_walk w = { .iov = iov, .gpa = gpa, .max = VS_GUEST_IOV };
    int rc = vs_avail_pending(r);
    if (rc <= 0)
        return rc < 0 ? rc : vs_rx_starved(p, r, vs_avail_pos(r));
    rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return vs_chain_fault(p, r, w.head, rc);
    ssize_t got = host_read(p, iov, w.niov, cut);
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > w.len)
        vs_avail_rewind(r, w.at); /* the chain stays for the next packet */
    if (got <= 0)
        return vs_rx_error(p, r, got, got < 0 ? rx_touch(p, iov, w.niov, errno) : 0);
    if (vs_logging(p->mem.log) && ((size_t)got < p->hdr_len || (uint64_t)got > w.len))
        vs_rx_log_dropped(p, iov, gpa, w.niov, (uint64_t)got, w.len);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > w.len)
        return vs_rx_oversize(r);
    vs_rx_deliver(p, r, &w, (uint64_t)got);
    return 0;
}

/* What rx_take did with the next chain (or < 0: -errno). */
enum rx_take_result {
    RX_TAKE_SKIPPED = 0, /* a faulty first chain, completed with length 0 */
    RX_TAKE_TAKEN,       /* added to the merge */
    RX_TAKE_STOP,        /* a faulty chain after the first: left to start the next packet */
};

/* Add one chain to the merge: an rx_take_result, or < 0. */
static int rx_take(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m)
{
    struct vs_walk w = { .iov = m->iov + m->niov, .gpa = m->gpa + m->niov, .max = VS_GUEST_IOV - m->niov };
    int rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT; /* 5.1.6.3.1: each buffer holds at least the header */
    if (rc > 0 && m->n > 0) {
        vs_avail_rewind(r, w.at); /* leave it to start the next packet */
        return RX_TAKE_STOP;
    }
    if (rc > 0) {
        m->start = vs_avail_pos(r); /* the faulty chain is completed: never rewind over it */
        rc = vs_chain_fault(p, r, w.head, rc);
        return rc < 0 ? rc : RX_TAKE_SKIPPED;
    }
    if (m->n == 0)
        m->start = w.at;
    m->heads[m->n] = w.head;
    m->ends[m->n] = vs_avail_pos(r);
    m->cap[m->n++] = w.len;
    m->niov += w.niov;
    m->ndesc += w.ndesc;
    m->total += w.len;
    return RX_TAKE_TAKEN;
}

/* Collect chains until they hold rx_max bytes: 1 enough, 0 the driver has no more, < 0 fatal. */
static int rx_collect(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m)
{
    uint64_t want = p->rx_max > p->hdr_len ? p->rx_max : p->hdr_len;
    m->n = m->niov = m->ndesc = 0;
    m->total = 0;
    m->start = vs_avail_pos(r);
    while (m->total < want) {
        int rc = vs_avail_pending(r);
        if (rc <= 0)
            return rc;
        if (m->niov >= VS_GUEST_IOV)
            return 1;
        rc = rx_take(p, r, m);
        if (rc < 0)
            return rc;
        if (rc == RX_TAKE_STOP)
            return 1;
    }
    return 1;
}

/* Hand the bytes to the chains in order; unused chains go back to the avail ring. */
static void rx_finish(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m, uint64_t got)
{
    uint64_t left = got;
    uint16_t used = 0;
    for (uint32_t i = 0; i < m->n && left > 0; i++, used++) {
        uint64_t len = left < m->cap[i] ? left : m->cap[i];
        vs_used_add(r, m->heads[i], (uint32_t)len);
        left -= len;
    }
    vs_avail_rewind(r, used ? m->ends[used - 1] : m->start);
    zero_omitted(p, m->iov, m->niov);
    put_num_buffers(p, m->iov, m->niov, used);
    if (vs_logging(p->mem.log))
        vs_log_iov(p->mem.log, m->iov, m->gpa, m->niov, got); /* every chain's bytes: their iovecs are contiguous */
    r->st.packets++;
    r->st.bytes += got - p->hdr_len;
    r->st.chains += used;
}

/* With MRG_RXBUF (5.1.6.4): one packet over as many chains as it needs. */
int vs_rx_merge(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m)
{
    int rc = rx_collect(p, r, m);
    uint16_t seen = vs_avail_pos(r);
    if (rc < 0 || m->n == 0 || (rc == 0 && m->ndesc < r->num))
        vs_avail_rewind(r, m->start); /* nothing consumed */
    if (rc < 0)
        return rc;
    if (m->n == 0)
        return vs_rx_starved(p, r, seen);
    if (rc == 0 && m->ndesc < r->num)
        return vs_rx_starved(p, r, seen); /* the driver can still post more: wait for it */
    ssize_t got = host_read(p, m->iov, m->niov, m->cut);
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > m->total)
        vs_avail_rewind(r, m->start);
    if (got <= 0)
        return vs_rx_error(p, r, got, got < 0 ? rx_touch(p, m->iov, m->niov, errno) : 0);
    if (vs_logging(p->mem.log) && ((size_t)got < p->hdr_len || (uint64_t)got > m->total))
        vs_rx_log_dropped(p, m->iov, m->gpa, m->niov, (uint64_t)got, m->total);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > m->total)
        return vs_rx_oversize(r);
    rx_finish(p, r, m, (uint64_t)got);
    return 0;
}

/* Read the stream until the stage holds one whole frame: 1 whole, VS_RX_IDLE, VS_MORE or -errno. */
static int rx_fill(struct vs_pair *p)
{
    for (;;) {
        if (p->rx_stage_len >= 4) {
            uint32_t be;
            memcpy(&be, p->rx_stage, sizeof be);
            uint64_t flen = be32toh(be);
            if (flen + 4 > p->rx_stage_cap)
                return -EIO; /* not a frame length: the stream is out of step, or not QEMU's framing */
            if (p->rx_stage_len >= flen + 4)
                return 1;
        }
        /* SAFETY: len < cap here (a whole frame fits the stage, and it is not whole yet). */
        ssize_t n = read(p->host_fd, p->rx_stage + p->rx_stage_len, p->rx_stage_cap - p->rx_stage_len);
        if (n == 0)
            return -EPIPE;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return VS_RX_IDLE;
        if (n < 0)
            return errno == EINTR ? VS_MORE : vs_host_fatal(errno);
        p->rx_stage_len += (uint32_t)n;
    }
}

/* The whole frame at the front of the stage is delivered or dropped: move the rest up. */
static void rx_consume(struct vs_pair *p, uint64_t flen)
{
    uint32_t used = (uint32_t)(flen + 4);
    /* SAFETY: used <= rx_stage_len <= rx_stage_cap (rx_fill saw the whole frame). */
    memmove(p->rx_stage, p->rx_stage + used, p->rx_stage_len - used);
    p->rx_stage_len -= used;
}

/* Without MRG_RXBUF: the staged frame into one chain. */
static int rx_stream_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, uint64_t *gpa, uint64_t flen)
{
    struct vs_walk w = { .iov = iov, .gpa = gpa, .max = VS_MAX_IOV };
    uint64_t total = flen + p->hdr_len;
    int rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return vs_chain_fault(p, r, w.head, rc); /* the frame waits for the next chain */
    if (total > w.len) {
        vs_avail_rewind(r, w.at);
        rx_consume(p, flen);
        return vs_rx_oversize(r);
    }
    vs_iov_write(w.iov, w.niov, p->hdr_len, p->rx_stage + 4, flen);
    zero_omitted(p, w.iov, w.niov);
    put_num_buffers(p, w.iov, w.niov, 1);
    if (vs_logging(p->mem.log))
        vs_log_iov(p->mem.log, w.iov, gpa, w.niov, total);
    vs_used_add(r, w.head, (uint32_t)total);
    r->st.packets++;
    r->st.bytes += flen;
    r->st.chains++;
    rx_consume(p, flen);
    return 0;
}

/* With MRG_RXBUF: the staged frame over as many chains as it needs. */
static int rx_stream_merge(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m, uint64_t flen)
{
    uint64_t total = flen + p->hdr_len;
    int rc = rx_collect(p, r, m);
    uint16_t seen = vs_avail_pos(r);
    int wait = rc == 0 && m->total < total && m->ndesc < r->num; /* the driver can still post more */
    if (rc < 0 || m->n == 0 || wait)
        vs_avail_rewind(r, m->start);
    if (rc < 0)
        return rc;
    if (m->n == 0 || wait)
        return vs_rx_starved(p, r, seen);
    if (total > m->total) {
        vs_avail_rewind(r, m->start);
        rx_consume(p, flen);
        return vs_rx_oversize(r);
    }
    vs_iov_write(m->iov, m->niov, p->hdr_len, p->rx_stage + 4, flen);
    rx_finish(p, r, m, total);
    rx_consume(p, flen);
    return 0;
}

int vs_rx_stream(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m)
{
    int rc = vs_avail_pending(r);
    if (rc <= 0)
        return rc < 0 ? rc : vs_rx_starved(p, r, vs_avail_pos(r)); /* a staged frame waits for buffers */
    rc = rx_fill(p);
    if (rc != 1)
        return rc;
    uint32_t be;
    memcpy(&be, p->rx_stage, sizeof be);
    uint64_t flen = be32toh(be);
    return (r->flags & VS_RF_MRG) ? rx_stream_merge(p, r, m, flen) : rx_stream_single(p, r, m->iov, m->gpa, flen);
}
