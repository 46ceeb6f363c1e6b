/* vs_net.c - virtio-net over a host packet fd: TX chains -> writev, readv -> RX chains.
 *
 * The host fd carries the virtio-net header (hdr_len bytes, virtio_net_hdr_v1) in front of every frame
 * (a tap with IFF_VNET_HDR and TUNSETVNETHDRSZ 12), so chains move to and from it whole, straight
 * between guest memory and the kernel.  One call of vs_pair_poll does one TX and one RX batch.
 */
#include <endian.h>
#include <errno.h>
#include <limits.h>
#include <unistd.h>

#include "vs_api.h"

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
static int host_drops(int err)
{
    return err == EINVAL || err == EMSGSIZE || err == ENOBUFS || err == EFAULT || err == ENETDOWN
        || err == EIO;
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
    if (!host_drops(err))
        return host_fatal(err);
    (void)p;
    r->st.drops_hostfd++;
    r->st.chains++;
    vs_used_add(r, head, 0);
    return 0;
}

/* One TX chain -> one writev. 0, VS_TX_BLOCKED, VS_MORE, or -errno. */
static int tx_one(struct vs_pair *p, struct vs_ring *r, struct iovec *iov)
{
    struct vs_walk w = { .iov = iov, .max = VS_MAX_IOV };
    int rc = vs_pop_chain(p, r, 0, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return vs_chain_fault(p, r, w.head, rc);
    /* SAFETY: every iovec was built by vs_gpa_to_iov inside one region; niov <= VS_MAX_IOV. */
    ssize_t n = writev(p->host_fd, iov, (int)w.niov);
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
    uint16_t old = r->used_idx;
    uint32_t done = 0;
    int rc = 0;
    vs_notify_disable(r);
    while (rc == 0) {
        int n = vs_avail_pending(r);
        if (n == 0)
            n = vs_notify_enable(r, r->last_avail);
        if (n <= 0) {
            rc = n;
            break;
        }
        if (done++ >= p->tx_budget) {
            rc = VS_MORE;
            break;
        }
        rc = tx_one(p, r, iov);
    }
    vs_used_publish(r, old);
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
static int rx_error(struct vs_ring *r, ssize_t got, int err)
{
    if (got == 0)
        return -EPIPE; /* the peer closed: a tap never reads 0 */
    if (err == EAGAIN || err == EWOULDBLOCK)
        return VS_RX_IDLE;
    if (err == EINTR)
        return VS_MORE;
    if (!host_drops(err))
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

/* The frame did not fit the guest's buffers: count it; the caller gives the chains back. */
static int rx_oversize(struct vs_ring *r)
{
    r->st.drops_oversize++;
    return 0;
}

/* No (or too few) RX buffers: ask for a kick past `seen`; 0 if buffers raced in meanwhile. */
static int rx_starved(struct vs_ring *r, uint16_t seen)
{
    int n = vs_notify_enable(r, seen);
    if (n != 0)
        return n < 0 ? n : 0;
    r->st.rx_starved++;
    return VS_RX_STARVED;
}

/* Without MRG_RXBUF: one packet into one chain. */
static int rx_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov)
{
    struct vs_walk w = { .iov = iov, .max = VS_MAX_IOV };
    int rc = vs_avail_pending(r);
    if (rc <= 0)
        return rc < 0 ? rc : rx_starved(r, r->last_avail);
    rc = vs_pop_chain(p, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT;
    if (rc > 0)
        return vs_chain_fault(p, r, w.head, rc);
    /* SAFETY: every iovec was built by vs_gpa_to_iov inside one region; niov <= VS_MAX_IOV. */
    ssize_t got = readv(p->host_fd, iov, rx_with_scratch(p, iov, w.niov));
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > w.len)
        r->last_avail--; /* the chain stays for the next packet */
    if (got <= 0)
        return rx_error(r, got, errno);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > w.len)
        return rx_oversize(r);
    put_num_buffers(p, iov, w.niov, 1);
    vs_used_add(r, w.head, (uint32_t)got);
    r->st.packets++;
    r->st.bytes += (uint64_t)got - p->hdr_len;
    r->st.chains++;
    return 0;
}

/* With MRG_RXBUF (5.1.6.4): one packet over as many chains as it needs. */
struct rx_merge {
    struct iovec iov[VS_MAX_IOV + 1];   /* + 1: the scratch iovec */
    uint16_t heads[VS_MAX_IOV];
    uint64_t cap[VS_MAX_IOV];
    uint32_t n, niov, ndesc;
    uint64_t total;
    uint16_t start;         /* last_avail before the first collected chain */
};

/* Add one chain to the merge: 1 taken, 0 skipped (a faulty first chain), 2 stop before it, < 0. */
static int rx_take(struct vs_pair *p, struct vs_ring *r, struct rx_merge *m)
{
    struct vs_walk w = { .iov = m->iov + m->niov, .max = VS_MAX_IOV - m->niov };
    int rc = vs_pop_chain(p, r, 1, &w);
    if (rc < 0)
        return rc;
    if (rc == 0 && w.len < p->hdr_len)
        rc = VS_CHAIN_SHORT; /* 5.1.6.3.1: each buffer holds at least the header */
    if (rc > 0 && m->n > 0) {
        r->last_avail--; /* leave it to start the next packet */
        return 2;
    }
    if (rc > 0) {
        m->start = r->last_avail; /* the faulty chain is completed: never rewind over it */
        return vs_chain_fault(p, r, w.head, rc);
    }
    if (m->n == 0)
        m->start = (uint16_t)(r->last_avail - 1);
    m->heads[m->n] = w.head;
    m->cap[m->n++] = w.len;
    m->niov += w.niov;
    m->ndesc += w.ndesc;
    m->total += w.len;
    return 1;
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
        if (m->niov >= VS_MAX_IOV)
            return 1;
        rc = rx_take(p, r, m);
        if (rc < 0 || rc == 2)
            return rc < 0 ? rc : 1;
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
    put_num_buffers(p, m->iov, m->niov, used);
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
        return rx_starved(r, seen);
    if (rc == 0 && m->ndesc < r->num)
        return rx_starved(r, seen); /* the driver can still post more: wait for it */
    /* SAFETY: the iovecs of all collected chains lie inside regions; niov <= VS_MAX_IOV. */
    ssize_t got = readv(p->host_fd, m->iov, rx_with_scratch(p, m->iov, m->niov));
    if (got <= 0 || (size_t)got < p->hdr_len || (uint64_t)got > m->total)
        r->last_avail = m->start;
    if (got <= 0)
        return rx_error(r, got, errno);
    if ((size_t)got < p->hdr_len) {
        r->st.drops_short++;
        return 0;
    }
    if ((uint64_t)got > m->total)
        return rx_oversize(r);
    rx_finish(p, r, m, (uint64_t)got);
    return 0;
}

int vs_rx_batch(struct vs_pair *p)
{
    struct vs_ring *r = &p->rx;
    struct rx_merge m;
    uint16_t old = r->used_idx;
    uint32_t done = 0;
    int rc = 0;
    vs_notify_disable(r);
    while (rc == 0) {
        if (done++ >= p->rx_budget) {
            rc = VS_MORE;
            break;
        }
        rc = (r->flags & VS_RF_MRG) ? rx_merge(p, r, &m) : rx_single(p, r, m.iov);
    }
    vs_used_publish(r, old);
    r->st.batches++;
    return rc == VS_RX_IDLE ? 0 : rc;
}

/* ------------------------------------------------------------------------------------ exported */

int vs_pair_poll(struct vs_pair *p)
{
    int out = 0, rc;
    if (p->tx.broken || p->rx.broken)
        return -EBADMSG;
    if (p->tx.running) {
        rc = vs_tx_batch(p);
        if (rc < 0)
            return rc;
        out |= rc;
    }
    if (p->rx.running) {
        rc = vs_rx_batch(p);
        if (rc < 0)
            return rc;
        out |= rc;
    }
    return out;
}

int vs_drain_eventfd(int fd)
{
    uint64_t v = 0;
    ssize_t n = read(fd, &v, sizeof v);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    if (n != sizeof v)
        return -EIO;
    return v > INT_MAX ? INT_MAX : (int)v;
}
