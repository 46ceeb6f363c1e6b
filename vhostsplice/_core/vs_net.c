/* vs_net.c - virtio-net over a host packet fd: TX chains -> writev, readv -> RX chains.
 *
 * A tap with IFF_VNET_HDR and TUNSETVNETHDRSZ 12 carries the whole virtio-net header (hdr_len bytes,
 * virtio_net_hdr_v1) in front of every frame, so chains move to and from it whole, straight between
 * guest memory and the kernel.  Other host fds carry less of it (hdr_omit: the last 2 bytes for a
 * 10-byte vnet header, all of it for a socket without one): the iovecs then skip those bytes, and on
 * RX they are zeroed in the guest's buffer.  vs_pair_poll (vs_pair.c) calls one TX and one RX batch.
 *
 * Dirty log: RX chains are walked with their guest-physical addresses kept next to the iovecs, and a
 * delivered packet's bytes (frame, header, zeroed header bytes, num_buffers) are logged after the last
 * of those stores and before its used entry (vs_log_iov).  A frame dropped as short or oversize is logged
 * too, up to the buffers' length (readv did write there; more pages than needed is never wrong), so every
 * byte the device changes is in a marked page.  TX writes only the used ring (vs_split.c).
 *
 * The ring itself is reached only through the ring layout interface (vs_api.h): this file never
 * reads a descriptor or a ring index in guest memory.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vs_api.h"

/* Iovecs one walk may fill with guest pieces: readv/writev take at most UIO_MAXIOV (1024), and a header
 * split (iov_cut) and the RX scratch iovec may each add one. */
#define VS_GUEST_IOV (VS_MAX_IOV - 2)

#define VS_RX_IDLE 0x100   /* internal: the host fd has nothing to read */

/* Host fd errors that end the worker; a peer that went away is EPIPE. */
static int host_fatal(int err)
{
    if (err == ECONNREFUSED || err == ENOTCONN || err == ECONNRESET)
        return -EPIPE;
    if (err == EBADF)
        return -EBADFD;
    if (err == EBADFD || err == EIO || err == EPIPE)
        return -err;
    return -EIO;
}

/* The kernel refused this one packet: count it, the chain is done. A tap whose link is down answers
 * writes with EIO (tun_get_user); like vhost_net, drop and keep serving until it is up again. */
static int host_drops(const struct vs_pair *p, int err)
{
    if (err == ECONNREFUSED && (p->host_flags & VS_HOST_REFUSED_DROP))
        return 1; /* connected UDP: an ICMP port unreachable for an earlier datagram */
    return err == EINVAL || err == EMSGSIZE || err == ENOBUFS || err == EFAULT || err == ENETDOWN
        || err == EIO;
}

/* Copy the n iovecs of `in` to `out`, leaving out bytes [from, from + len) of the sequence.
 * Returns the count written: at most n + 1 (one iovec split in two). */
static uint32_t iov_cut(const struct iovec *in, uint32_t n, uint64_t from, uint64_t len, struct iovec *out)
{
    uint64_t pos = 0, to = from + len;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t a = pos, b = pos + in[i].iov_len;
        pos = b;
        if (b <= from || a >= to || len == 0) {
            out[k++] = in[i];
            continue;
        }
        if (a < from) {
            out[k].iov_base = in[i].iov_base;
            out[k++].iov_len = (size_t)(from - a);
        }
        if (b > to) {
            /* SAFETY: to - a < iov_len: the rest of this guest piece, still inside it. */
            out[k].iov_base = (uint8_t *)in[i].iov_base + (to - a);
            out[k++].iov_len = (size_t)(b - to);
        }
    }
    return k;
}

/* The iovecs the host fd reads or writes: the chain's, without the header bytes it does not carry.
 * `cut` holds VS_MAX_IOV + 2 entries (one split, one scratch). */
static struct iovec *host_iov(const struct vs_pair *p, struct iovec *iov, uint32_t *niov, struct iovec *cut)
{
    if (p->hdr_omit == 0)
        return iov;
    *niov = iov_cut(iov, *niov, p->hdr_len - p->hdr_omit, p->hdr_omit, cut);
    return cut;
}

/* Cache hint for a chain already walked: its first iovec's first line (a validated guest piece). */
static void prefetch_iov(const struct iovec *iov, uint32_t niov)
{
    /* SAFETY: iov[0] was built by vs_gpa_to_iov inside one region; only its first byte's line. */
    if (niov > 0 && iov[0].iov_len > 0)
        __builtin_prefetch(iov[0].iov_base, 0, 3);
}

/* Count a per-chain fault and give the chain back with used length 0; the pair's policy
 * (--on-guest-error) decides whether the poll goes on (0) or ends with -EFAULT. */
static int chain_fault(const struct vs_pair *p, struct vs_ring *r, uint16_t head, int fault)
{
    switch (fault) {
    case VS_CHAIN_FAULT:
        r->st.drops_fault++;
        break;
    case VS_CHAIN_SHORT:
        r->st.drops_short++;
        break;
    default:
        r->st.drops_bad_desc++;
        break;
    }
    r->st.chains++;
    vs_used_add(r, head, 0);
    return p->fault_exit ? -EFAULT : 0;
}

static int tx_error(struct vs_pair *p, struct vs_ring *r, uint16_t head, int err)
{
    if (err == EAGAIN || err == EWOULDBLOCK) {
        r->last_avail--; /* not consumed: it goes out when the fd is writable */
        return VS_TX_BLOCKED;
    }
    if (err == EINTR) {
        r->last_avail--;
        return VS_MORE;
    }
    if (!host_drops(p, err))
        return host_fatal(err);
    r->st.drops_hostfd++;
    r->st.chains++;
    vs_used_add(r, head, 0);
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
            return errno == EINTR ? VS_MORE : host_fatal(errno);
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
    uint32_t n = 1 + iov_cut(w->iov, w->niov, 0, p->hdr_len, cut + 1);
    /* SAFETY: guest iovecs narrowed by iov_cut plus the local prefix; n <= VS_MAX_IOV + 2. */
    ssize_t sent = writev(p->host_fd, cut, (int)n);
    if (sent < 0)
        return tx_error(p, r, w->head, errno);
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
        return chain_fault(p, r, w.head, rc);
    if (p->host_flags & VS_HOST_STREAM)
        return tx_stream(p, r, &w, cut);
    uint32_t niov = w.niov;
    struct iovec *out = host_iov(p, iov, &niov, cut);
    prefetch_iov(iov, w.niov);
    vs_prefetch_chain(&p->mem, r, r->last_avail); /* the next chain: in cache by the time it is sent */
    /* SAFETY: every iovec was built by vs_gpa_to_iov inside one region (iov_cut only narrows them);
     * niov <= VS_GUEST_IOV + 1 <= UIO_MAXIOV. */
    ssize_t n = writev(p->host_fd, out, (int)niov);
    if (n < 0)
        return tx_error(p, r, w.head, errno);
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
    uint16_t old = r->used_idx;
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
            n = vs_notify_enable(&p->mem, r, r->last_avail);
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
    vs_used_publish(&p->mem, r, old);
    r->st.batches++;
    return rc;
}

/* ------------------------------------------------------------------------------------------ RX */

static void put_num_buffers(const struct vs_pair *p, const struct iovec *iov, uint32_t niov,
                            uint16_t n)
{
    uint16_t le = htole16(n);
    if (p->hdr_len >= VS_NUM_BUFFERS_OFF + 2)
        vs_iov_write(iov, niov, VS_NUM_BUFFERS_OFF, &le, sizeof le);
}

/* readv failed (or hit end of file). */
static int rx_error(const struct vs_pair *p, struct vs_ring *r, ssize_t got, int err)
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
    if (!host_drops(p, err))
        return host_fatal(err);
    r->st.drops_hostfd++;
    return 0;
}

/* Put the scratch buffer behind the guest's iovecs, so a frame longer than the guest's buffers is
 * seen whole (and dropped) instead of silently cut short by readv. Returns the iovec count to read. */
static int rx_with_scratch(struct vs_pair *p, struct iovec *iov, uint32_t niov)
{
    if (p->scratch == NULL || p->scratch_len == 0)
        return (int)niov;
    /* SAFETY: the iovec arrays hold VS_MAX_IOV + 1 entries; scratch is Python's, scratch_len long. */
    iov[niov].iov_base = p->scratch;
    iov[niov].iov_len = p->scratch_len;
    return (int)niov + 1;
}

/* One readv from the host fd into the guest's iovecs (`cut`: see host_iov). Returns the length as
 * the guest's buffers see it (the omitted header bytes counted), or readv's result when <= 0. */
static ssize_t host_read(struct vs_pair *p, struct iovec *iov, uint32_t niov, struct iovec *cut)
{
    struct iovec *in = host_iov(p, iov, &niov, cut);
    /* SAFETY: guest iovecs from vs_gpa_to_iov (narrowed by iov_cut), plus scratch; the arrays hold
     * VS_MAX_IOV + 2 entries and niov <= VS_MAX_IOV + 1 before the scratch entry. */
    ssize_t got = readv(p->host_fd, in, rx_with_scratch(p, in, niov));
    return got <= 0 ? got : got + (ssize_t)p->hdr_omit;
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
static void rx_log_dropped(struct vs_pair *p, const struct iovec *iov, const uint64_t *gpa, uint32_t niov,
                           uint64_t got, uint64_t cap)
{
    vs_log_iov(p->mem.log, iov, gpa, niov, got < cap ? got : cap);
}

/* The frame did not fit the guest's buffers: count it; the caller gives the chains back. */
static int rx_oversize(struct vs_ring *r)
{
    r->st.drops_oversize++;
    return 0;
}

/* No (or too few) RX buffers: ask for a kick past `seen`; 0 if buffers raced in meanwhile. */
static int rx_starved(struct vs_pair *p, struct vs_ring *r, uint16_t seen)
{
    int n = vs_notify_enable(&p->mem, r, seen);
    if (n != 0)
        return n < 0 ? n : 0;
    r->st.rx_starved++;
    return VS_RX_STARVED;
}

/* Without MRG_RXBUF: one packet into one chain. */
static int rx_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, uint64_t *gpa,
                     struct iovec *cut)
{
    struct vs_walk w = { .iov = iov, .gpa = gpa, .max = VS_GUEST_IOV };
    int rc = vs_avail_pending(r);
    if (rc <= 0)
        return rc < 0 ? rc : rx_starved(p, r, r->last_avail);
    rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return chain_fault(p, r, w.head, rc);
    ssize_t got = host_read(p, iov, w.niov, cut);
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > w.len)
        r->last_avail--; /* the chain stays for the next packet */
    if (got <= 0)
        return rx_error(p, r, got, errno);
    if (vs_logging(p->mem.log) && ((size_t)got < p->hdr_len || (uint64_t)got > w.len))
        rx_log_dropped(p, iov, gpa, w.niov, (uint64_t)got, w.len);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > w.len)
        return rx_oversize(r);
    zero_omitted(p, iov, w.niov);
    put_num_buffers(p, iov, w.niov, 1);
    if (vs_logging(p->mem.log))
        vs_log_iov(p->mem.log, iov, gpa, w.niov, (uint64_t)got);   /* the frame, the header and its fix-ups */
    vs_used_add(r, w.head, (uint32_t)got);
    r->st.packets++;
    r->st.bytes += (uint64_t)got - p->hdr_len;
    r->st.chains++;
    return 0;
}

/* With MRG_RXBUF (5.1.6.4): one packet over as many chains as it needs. */
struct rx_merge {
    struct iovec iov[VS_MAX_IOV + 1];   /* + 1: the scratch iovec */
    struct iovec cut[VS_MAX_IOV + 2];   /* iov without the omitted header bytes (+ 1 split, + 1 scratch) */
    uint64_t gpa[VS_MAX_IOV + 1];       /* guest-physical address of each iov (the dirty log's) */
    uint16_t heads[VS_MAX_IOV];
    uint64_t cap[VS_MAX_IOV];
    uint32_t n, niov, ndesc;
    uint64_t total;
    uint16_t start;         /* last_avail before the first collected chain */
};

/* What rx_take did with the next chain (or < 0: -errno). */
enum rx_take_result {
    RX_TAKE_SKIPPED = 0,    /* a faulty first chain, completed with length 0 */
    RX_TAKE_TAKEN,          /* added to the merge */
    RX_TAKE_STOP,           /* a faulty chain after the first: left to start the next packet */
};

/* Add one chain to the merge: an rx_take_result, or < 0. */
static int rx_take(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m)
{
    struct vs_walk w = { .iov = m->iov + m->niov, .gpa = m->gpa + m->niov, .max = VS_GUEST_IOV - m->niov };
    int rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT; /* 5.1.6.3.1: each buffer holds at least the header */
    if (rc > 0 && m->n > 0) {
        r->last_avail--; /* leave it to start the next packet */
        return RX_TAKE_STOP;
    }
    if (rc > 0) {
        m->start = r->last_avail; /* the faulty chain is completed: never rewind over it */
        rc = chain_fault(p, r, w.head, rc);
        return rc < 0 ? rc : RX_TAKE_SKIPPED;
    }
    if (m->n == 0)
        m->start = (uint16_t)(r->last_avail - 1);
    m->heads[m->n] = w.head;
    m->cap[m->n++] = w.len;
    m->niov += w.niov;
    m->ndesc += w.ndesc;
    m->total += w.len;
    return RX_TAKE_TAKEN;
}

/* Collect chains until they hold rx_max bytes: 1 enough, 0 the driver has no more, < 0 fatal. */
static int rx_collect(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m)
{
    uint64_t want = p->rx_max > p->hdr_len ? p->rx_max : p->hdr_len;
    m->n = m->niov = m->ndesc = 0;
    m->total = 0;
    m->start = r->last_avail;
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
static void rx_finish(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m, uint64_t got)
{
    uint64_t left = got;
    uint16_t used = 0;
    for (uint32_t i = 0; i < m->n && left > 0; i++, used++) {
        uint64_t len = left < m->cap[i] ? left : m->cap[i];
        vs_used_add(r, m->heads[i], (uint32_t)len);
        left -= len;
    }
    r->last_avail = (uint16_t)(m->start + used);
    zero_omitted(p, m->iov, m->niov);
    put_num_buffers(p, m->iov, m->niov, used);
    if (vs_logging(p->mem.log))
        vs_log_iov(p->mem.log, m->iov, m->gpa, m->niov, got);   /* every chain's bytes: their iovecs are contiguous */
    r->st.packets++;
    r->st.bytes += got - p->hdr_len;
    r->st.chains += used;
}

static int rx_merge(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m)
{
    int rc = rx_collect(p, r, m);
    uint16_t seen = r->last_avail;
    if (rc < 0 || m->n == 0 || (rc == 0 && m->ndesc < r->num))
        r->last_avail = m->start; /* nothing consumed */
    if (rc < 0)
        return rc;
    if (m->n == 0)
        return rx_starved(p, r, seen);
    if (rc == 0 && m->ndesc < r->num)
        return rx_starved(p, r, seen); /* the driver can still post more: wait for it */
    ssize_t got = host_read(p, m->iov, m->niov, m->cut);
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > m->total)
        r->last_avail = m->start;
    if (got <= 0)
        return rx_error(p, r, got, errno);
    if (vs_logging(p->mem.log) && ((size_t)got < p->hdr_len || (uint64_t)got > m->total))
        rx_log_dropped(p, m->iov, m->gpa, m->niov, (uint64_t)got, m->total);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > m->total)
        return rx_oversize(r);
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
            return errno == EINTR ? VS_MORE : host_fatal(errno);
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
static int rx_stream_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, uint64_t *gpa,
                            uint64_t flen)
{
    struct vs_walk w = { .iov = iov, .gpa = gpa, .max = VS_MAX_IOV };
    uint64_t total = flen + p->hdr_len;
    int rc = vs_pop_chain(&p->mem, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return chain_fault(p, r, w.head, rc); /* the frame waits for the next chain */
    if (total > w.len) {
        r->last_avail--;
        rx_consume(p, flen);
        return rx_oversize(r);
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
static int rx_stream_merge(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m, uint64_t flen)
{
    uint64_t total = flen + p->hdr_len;
    int rc = rx_collect(p, r, m);
    uint16_t seen = r->last_avail;
    int wait = rc == 0 && m->total < total && m->ndesc < r->num; /* the driver can still post more */
    if (rc < 0 || m->n == 0 || wait)
        r->last_avail = m->start;
    if (rc < 0)
        return rc;
    if (m->n == 0 || wait)
        return rx_starved(p, r, seen);
    if (total > m->total) {
        r->last_avail = m->start;
        rx_consume(p, flen);
        return rx_oversize(r);
    }
    vs_iov_write(m->iov, m->niov, p->hdr_len, p->rx_stage + 4, flen);
    rx_finish(p, r, m, total);
    rx_consume(p, flen);
    return 0;
}

static int rx_stream(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m)
{
    int rc = vs_avail_pending(r);
    if (rc <= 0)
        return rc < 0 ? rc : rx_starved(p, r, r->last_avail); /* a staged frame waits for buffers */
    rc = rx_fill(p);
    if (rc != 1)
        return rc;
    uint32_t be;
    memcpy(&be, p->rx_stage, sizeof be);
    uint64_t flen = be32toh(be);
    return (r->flags & VS_RF_MRG) ? rx_stream_merge(p, r, m, flen) : rx_stream_single(p, r, m->iov, m->gpa, flen);
}

int vs_rx_batch(struct vs_pair *p)
{
    struct vs_ring *r = &p->rx;
    struct rx_merge m;
    uint16_t old = r->used_idx;
    uint32_t done = 0;
    int rc = 0;
    vs_notify_disable(&p->mem, r);
    while (rc == 0) {
        if (done++ >= p->rx_budget) {
            rc = VS_MORE;
            break;
        }
        if (p->host_flags & VS_HOST_STREAM)
            rc = rx_stream(p, r, &m);
        else
            rc = (r->flags & VS_RF_MRG) ? rx_merge(p, r, &m) : rx_single(p, r, m.iov, m.gpa, m.cut);
    }
    vs_used_publish(&p->mem, r, old);
    r->st.batches++;
    return rc == VS_RX_IDLE ? 0 : rc;
}
