/* vs_net.c - virtio-net over a host packet fd: what TX (vs_net_tx.c) and RX (vs_net_rx.c) share.
 *
 * A tap with IFF_VNET_HDR and TUNSETVNETHDRSZ 12 carries the whole virtio-net header (hdr_len bytes,
 * virtio_net_hdr_v1) in front of every frame, so chains move to and from it whole, straight between
 * guest memory and the kernel.  Other host fds carry less of it (hdr_omit: the last 2 bytes for a
 * 10-byte vnet header, all of it for a socket without one): the iovecs then skip those bytes, and on
 * RX they are zeroed in the guest's buffer.  vs_pair_poll (vs_pair.c) calls one TX and one RX batch.
 *
 * The ring itself is reached only through the ring layout interface (vs_api.h): the net files never
 * read a descriptor or a ring index in guest memory.
 */
#include <errno.h>

#include "vs_api.h"

/* Host fd errors that end the worker; a peer that went away is EPIPE. */
int vs_host_fatal(int err)
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
int vs_host_drops(const struct vs_pair *p, int err)
{
    if (err == ECONNREFUSED && (p->host_flags & VS_HOST_REFUSED_DROP))
        return 1; /* connected UDP: an ICMP port unreachable for an earlier datagram */
    return err == EINVAL || err == EMSGSIZE || err == ENOBUFS || err == EFAULT || err == ENETDOWN || err == EIO;
}

/* Copy the n iovecs of `in` to `out`, leaving out bytes [from, from + len) of the sequence.
 * Returns the count written: at most n + 1 (one iovec split in two). */
uint32_t vs_iov_cut(const struct iovec *in, uint32_t n, uint64_t from, uint64_t len, struct iovec *out)
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
struct iovec *vs_host_iov(const struct vs_pair *p, struct iovec *iov, uint32_t *niov, struct iovec *cut)
{
    if (p->hdr_omit == 0)
        return iov;
    *niov = vs_iov_cut(iov, *niov, p->hdr_len - p->hdr_omit, p->hdr_omit, cut);
    return cut;
}

/* Count a per-chain fault and give the chain back with used length 0; the pair's policy
 * (--on-guest-error) decides whether the poll goes on (0) or ends with -EFAULT. */
int vs_chain_fault(const struct vs_pair *p, struct vs_ring *r, uint16_t head, int fault)
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

/* Publish a batch's completions (vs_used_publish) and record the ring's positions in the state page
 * around it, so that a replacement worker knows exactly what the driver has seen even if this one is
 * killed between any two instructions: next_* and an odd seq before the release store, the positions
 * and an even seq after it.  A killed publish leaves seq odd, and the replacement decides from guest
 * memory (split: used->idx; packed: the flags of the first descriptor the batch wrote) which of the two
 * records the driver saw (vhostsplice/device/statepage.py).  The reader is a later process, so compiler
 * barriers give the order; a few stores per batch, no syscall. */
void vs_net_publish(struct vs_pair *p, struct vs_ring *r, uint16_t old_used)
{
    struct vs_ring_slot *s = p->state != NULL ? &p->state->ring[r == &p->tx] : NULL;
    uint16_t avail = vs_avail_pos(r), used = vs_used_pos(r);
    if (s == NULL || !s->live || (s->avail_pos == avail && s->used_pos == used && !(s->seq & 1))) {
        vs_used_publish(&p->mem, r, old_used);
        return;
    }
    s->next_avail = avail;
    s->next_used = used;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    s->seq |= 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    vs_used_publish(&p->mem, r, old_used);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    s->avail_pos = avail;
    s->used_pos = used;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    s->seq++;
}

/* How many chains the next batch may take through the host fd's io_uring (at most `left`, the budget
 * still open): 0 when the ring is off or the fd is a byte stream (one readv/writev per frame then). */
uint32_t vs_batch_room(const struct vs_pair *p, uint32_t left)
{
    if (!p->uring.on || (p->host_flags & VS_HOST_STREAM))
        return 0;
    uint32_t room = p->uring.entries < VS_URING_BATCH ? p->uring.entries : VS_URING_BATCH;
    return left < room ? left : room;
}
