/* vs_net_rx_batch.c - one RX batch (vs_rx_batch): frames one at a time (vs_net_rx.c), or, with the host
 * fd's io_uring on (vs_uring.c) and chains that each hold the largest frame the fd delivers (rx_max: no
 * merging needed), up to rx_burst chains taken and read by one io_uring_enter, a frame per chain; after a
 * batch that delivered at most one frame, one readv first (the trickle rule, rx_trickle).
 * Frames come in order; a read that got no frame (EAGAIN, or a frame dropped as short or oversize, a
 * dropped error) leaves a hole, and the frames after it move up into the earlier chains, so the chains
 * complete in the order taken, exactly as one readv per chain would have filled them; the chains left
 * over go back.  Only the buffers of chains given back may hold bytes one readv per frame would not have
 * written there (the device still owns them: the driver may not read them).  The dirty log as in
 * vs_net_rx.c: a frame moved up is logged where the read wrote it and where it lands.
 */
#include <errno.h>
#include <string.h>

#include "vs_api.h"

struct rx_slots {
    struct vs_walk w[VS_URING_BATCH];
    struct iovec *host[VS_URING_BATCH];
    uint32_t nhost[VS_URING_BATCH];
    int32_t res[VS_URING_BATCH];
    struct iovec cut[VS_MAX_IOV + 2 * VS_URING_BATCH]; /* each chain's host iovecs: + 1 split, + 1 scratch */
};

/* One frame the usual way (one readv): the check after a batch that read nothing, and a chain too
 * small for the batched path. */
static int rx_one(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m)
{
    return (r->flags & VS_RF_MRG) ? vs_rx_merge(p, r, m) : vs_rx_single(p, r, m->iov, m->gpa, m->cut);
}

/* Slot n's host iovecs in s->cut from h: the chain without the omitted header bytes, then the scratch. */
static uint32_t rx_slot_iov(struct vs_pair *p, struct rx_slots *s, uint32_t n, uint32_t h)
{
    const struct vs_walk *w = &s->w[n];
    struct iovec *c = s->cut + h;
    uint32_t k = w->niov;
    if (p->hdr_omit)
        k = vs_iov_cut(w->iov, w->niov, p->hdr_len - p->hdr_omit, p->hdr_omit, c);
    else
        memcpy(c, w->iov, w->niov * sizeof *c); /* SAFETY: h + niov + 2 <= the pool (rx_take_batch counts) */
    s->host[n] = c;
    s->nhost[n] = (uint32_t)vs_rx_with_scratch(p, c, k);
    return s->nhost[n];
}

/* Take up to max chains for one batch, each holding rx_max: how many.  A faulty first chain is
 * completed (count 0; with MRG_RXBUF the take goes on past it, as rx_collect does, and *skipped says so);
 * a faulty later one, or one that does not fit the iovecs left, starts the next batch; a first chain
 * smaller than rx_max sets *single (one frame the usual way).  *stop: -EBADMSG or the fault policy's
 * -EFAULT.  Budgets and positions come out as one vs_rx_single/vs_rx_merge per frame leaves them. */
static uint32_t rx_take_batch(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m, struct rx_slots *s,
                              uint32_t max, int *stop, int *single, int *skipped)
{
    uint64_t want = p->rx_max > p->hdr_len ? p->rx_max : p->hdr_len;
    uint32_t n = 0, g = 0, h = 0;
    while (n < max) {
        int rc = vs_avail_pending(r);
        if (rc <= 0) {
            *stop = rc;
            break;
        }
        struct vs_walk *w = &s->w[n];
        *w = (struct vs_walk){ .iov = m->iov + g, .gpa = m->gpa + g, .max = VS_GUEST_IOV - g };
        uint16_t before = vs_avail_pos(r);
        rc = vs_pop_chain(&p->mem, r, 1, w);
        if (rc < 0 && (r->flags & VS_RF_MRG))
            vs_avail_rewind(r, before); /* where a broken ring leaves the position, as vs_rx_merge does */
        if (rc == 0 && w->len < p->hdr_len)
            rc = VS_CHAIN_SHORT;
        if (rc > 0 && n == 0) {
            *stop = vs_chain_fault(p, r, w->head, rc);
            *skipped = *stop == 0 && (r->flags & VS_RF_MRG);
            if (*skipped)
                continue; /* rx_collect goes on past a faulty first chain within the same frame */
            break;
        }
        if (rc != 0 || w->len < want) {
            if (rc >= 0)
                vs_avail_rewind(r, w->at);
            *stop = rc < 0 ? rc : 0;
            *single = rc == 0 && n == 0;
            break;
        }
        g += w->niov;
        h += rx_slot_iov(p, s, n, h);
        n++;
    }
    return n;
}

/* Move len bytes from the start of src's pieces to the start of dst's (memmove: a hostile driver may
 * make two chains overlap). */
static void iov_move(const struct iovec *dst, uint32_t nd, const struct iovec *src, uint32_t ns, uint64_t len)
{
    uint32_t di = 0, si = 0;
    uint64_t doff = 0, soff = 0;
    while (len > 0 && di < nd && si < ns) {
        uint64_t dk = dst[di].iov_len - doff, sk = src[si].iov_len - soff;
        uint64_t k = dk < sk ? dk : sk;
        k = k < len ? k : len;
        /* SAFETY: doff <= dst[di].iov_len, soff <= src[si].iov_len and k fits what is left of both pieces,
         * each built by vs_gpa_to_iov inside one region. */
        memmove((uint8_t *)dst[di].iov_base + doff, (const uint8_t *)src[si].iov_base + soff, k);
        len -= k;
        doff += k;
        soff += k;
        if (doff == dst[di].iov_len) {
            di++;
            doff = 0;
        }
        if (soff == src[si].iov_len) {
            si++;
            soff = 0;
        }
    }
}

/* Slot i read res: 1 a frame of *got bytes, 0 a hole (dropped, counted), VS_RX_IDLE (no frame there),
 * or -errno. */
static int rx_slot_result(struct vs_pair *p, struct vs_ring *r, const struct vs_walk *w, int32_t res, uint64_t *got)
{
    if (res == -ECANCELED)
        return VS_RX_IDLE; /* the kernel did not take it */
    if (res == -EOPNOTSUPP) {
        vs_uring_off(&p->uring, res); /* RWF_NOWAIT refused: this fd cannot take the batched path */
        return VS_RX_IDLE;
    }
    if (res <= 0) {
        int rc = vs_rx_error(p, r, res < 0 ? -1 : 0, -res);
        return rc == VS_MORE ? VS_RX_IDLE : rc;
    }
    *got = (uint64_t)res + p->hdr_omit;
    if (*got >= p->hdr_len && *got <= w->len)
        return 1;
    if (vs_logging(p->mem.log))
        vs_rx_log_dropped(p, w->iov, w->gpa, w->niov, *got, w->len);
    if (*got < p->hdr_len)
        r->st.drops_short++;
    else
        vs_rx_oversize(r);
    return 0;
}

/* Complete the batch: the frames in order into the first chains, the rest given back.  *frames gets
 * the chains completed; returns 0, VS_RX_IDLE (a read found no frame) or -errno. */
static int rx_settle(struct vs_pair *p, struct vs_ring *r, struct rx_slots *s, uint32_t n, uint32_t *frames)
{
    uint32_t t = 0;
    int out = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t got = 0;
        int rc = rx_slot_result(p, r, &s->w[i], s->res[i], &got);
        if (rc < 0) {
            out = rc;
            break;
        }
        out = rc == VS_RX_IDLE ? rc : out;
        if (rc != 1)
            continue;
        if (i != t && vs_logging(p->mem.log))
            vs_log_iov(p->mem.log, s->w[i].iov, s->w[i].gpa, s->w[i].niov, got); /* the read wrote there */
        if (i != t && got > s->w[t].len) {
            vs_rx_oversize(r); /* one readv into chain t would not have held it either */
            continue;
        }
        if (i != t) {
            iov_move(s->w[t].iov, s->w[t].niov, s->w[i].iov, s->w[i].niov, got);
            p->uring.rx_copies++;
        }
        vs_rx_deliver(p, r, &s->w[t++], got);
    }
    if (t < n)
        vs_avail_rewind(r, s->w[t].at);
    *frames = t;
    return out;
}

/* Up to `room` chains in one io_uring_enter; *done counts the chains taken.  0, VS_RX_IDLE,
 * VS_RX_STARVED, VS_MORE or -errno.  A batch that read nothing is checked by one readv (rx_one): an
 * empty queue says EAGAIN there too, and a fd the ring cannot drive still moves; not when the RX batch
 * (vs_rx_batch) already delivered a frame (`moved`): the fd moved, and if the ring cannot drive it the
 * batches deliver one frame each, so each next one starts with the trickle's readv. */
static int rx_many(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m, uint32_t room, uint32_t *done,
                   int moved)
{
    struct rx_slots s;
    struct vs_uring *u = &p->uring;
    int stop = 0, single = 0, skipped = 0;
    int rc = vs_avail_pending(r);
    if (rc <= 0) {
        *done += 1;
        return rc < 0 ? rc : vs_rx_starved(p, r, vs_avail_pos(r));
    }
    uint32_t n = rx_take_batch(p, r, m, &s, room < u->rx_burst ? room : u->rx_burst, &stop, &single, &skipped);
    *done += n ? n : 1;
    if (n == 0 && stop == 0 && !single && skipped)
        return vs_rx_starved(p, r, vs_avail_pos(r)); /* faulty chains only, then none: as vs_rx_merge */
    if (n == 0)
        return stop != 0 ? stop : single ? rx_one(p, r, m) : 0;
    rc = vs_uring_rw(u, 0, s.host, s.nhost, n, s.res);
    if (rc <= 0 && rc != -EINTR)
        vs_uring_off(u, rc < 0 ? rc : -EAGAIN); /* the kernel took nothing: per frame from now on */
    if (rc <= 0) {
        vs_avail_rewind(r, s.w[0].at);
        return rc == -EINTR ? VS_MORE : 0;
    }
    uint32_t frames = 0;
    rc = rx_settle(p, r, &s, n, &frames);
    u->rx_burst = frames < 1 ? 2 : frames * 2 > u->entries ? u->entries : frames * 2;
    if (frames == 0 && rc == VS_RX_IDLE && !moved) {
        u->confirms++;
        rc = rx_one(p, r, m);
    }
    return rc != 0 ? rc : stop;
}

/* The trickle rule (docs/architecture.md, "Batched host fd I/O"), where batches go through the io_uring:
 * a batch after one that delivered at most one frame (rx_last: a ping, a request, any trickle, where a
 * wake-up carries one frame) starts with one readv (rx_one) instead of an io_uring_enter of rx_burst
 * reads.  It goes on to the io_uring batches only when that readv got a frame right after a batch that
 * delivered one: two frames back to back, a burst may be starting.  Otherwise it ends the batch, the
 * frame published at once: VS_MORE when it got one (the next batch, a trickle's again, looks for more),
 * VS_RX_IDLE, VS_RX_STARVED or -errno as the readv said.  A lone frame so costs one readv, and the look
 * after it another; no io_uring_enter, whose cost (submission, completion) a single read does not repay. */
static int rx_trickle(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m, uint32_t *done)
{
    struct vs_uring *u = &p->uring;
    uint64_t before = r->st.packets;
    u->trickles++;
    *done += 1;
    int rc = rx_one(p, r, m);
    if (rc != 0)
        return rc;
    if (r->st.packets == before || u->rx_last == 0)
        return VS_MORE;
    u->trickle_bursts++;
    return 0;
}

int vs_rx_batch(struct vs_pair *p)
{
    struct vs_ring *r = &p->rx;
    struct vs_rx_merge m;
    uint16_t old = vs_used_pos(r);
    uint64_t before = r->st.packets;
    uint32_t done = 0;
    int rc = 0;
    vs_notify_disable(&p->mem, r);
    if (p->uring.rx_last <= 1 && vs_batch_room(p, p->rx_budget) > 1)
        rc = rx_trickle(p, r, &m, &done);
    while (rc == 0) {
        if (done >= p->rx_budget) {
            rc = VS_MORE;
            break;
        }
        uint32_t room = vs_batch_room(p, p->rx_budget - done);
        if (room > 1) {
            rc = rx_many(p, r, &m, room, &done, r->st.packets != before);
            continue;
        }
        done++;
        if (p->host_flags & VS_HOST_STREAM)
            rc = vs_rx_stream(p, r, &m);
        else
            rc = (r->flags & VS_RF_MRG) ? vs_rx_merge(p, r, &m) : vs_rx_single(p, r, m.iov, m.gpa, m.cut);
    }
    vs_net_publish(p, r, old);
    r->st.batches++;
    p->uring.rx_last = r->st.packets - before > 1 ? 2 : (uint32_t)(r->st.packets - before);
    return rc == VS_RX_IDLE ? 0 : rc;
}
