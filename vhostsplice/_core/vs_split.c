/* vs_split.c - split virtqueue (virtio 1.2, 2.7): ring set-up, chain walking, used ring, notifications.
 *
 * The ring pointers were translated once (vs_ring_start/vs_ring_remap) for the full ring sizes, so an
 * index taken modulo num is always in bounds.  Descriptors are copied out of guest memory once and
 * checked on the copy: the guest may rewrite them concurrently.
 *
 * This file is the split layout only: it implements the ring layout interface of vs_api.h (its table,
 * vs_split_layout, is what vs_layout.c dispatches to for a split ring) and knows nothing of the net device (headers, host fd, fault policy).  Its functions take the memory table and
 * their ring.  Every used-ring store is logged (vs_log.c) at its offset in the used ring while m->log
 * is on.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "vs_api.h"

/* Split virtqueue layout (virtio 1.2, 2.7). All fields little-endian. */
struct vs_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};
struct vs_avail {
    uint16_t flags, idx;
    uint16_t ring[]; /* num entries, then used_event */
};
struct vs_used_elem {
    uint32_t id, len;
};
struct vs_used {
    uint16_t flags, idx;
    struct vs_used_elem ring[]; /* num entries, then avail_event */
};

#define VS_DESC_F_NEXT 1
#define VS_DESC_F_WRITE 2
#define VS_DESC_F_INDIRECT 4
#define VS_USED_F_NO_NOTIFY 1
#define VS_AVAIL_F_NO_INTERRUPT 1

static uint16_t ld16(const uint16_t *p)
{
    return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED));
}

static void st16(uint16_t *p, uint16_t v)
{
    __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED);
}

/* 2.7: Queue Size is a power of 2 up to 32768.  The one check of a ring size: the front-end's
 * SET_VRING_NUM and Datapath.start_ring ask this function (through datapath.ring_size_ok). */
static int split_num_ok(uint32_t num)
{
    return num != 0 && num <= VS_MAX_QUEUE_SIZE && (num & (num - 1)) == 0;
}

/* 2.7: desc 16-, avail 2-, used 4-byte aligned. */
static int split_check(const struct vs_ring *r)
{
    if ((r->desc_uva & 15) != 0 || (r->avail_uva & 1) != 0 || (r->used_uva & 3) != 0)
        return -EINVAL;
    return 0;
}

/* The three ring areas for the full size: desc 16 * num, avail 6 + 2 * num, used 6 + 8 * num bytes. */
static int split_map(const struct vs_mem *m, struct vs_ring *r)
{
    uint64_t n = r->num;
    return vs_ring_map(m, r, 16 * n, 6 + 2 * n, 6 + 8 * n, 1 << 8); /* descriptors are copied: any */
}

/* The rings are mapped: resume from used->idx (the chains after it were never completed). */
static int split_start(const struct vs_mem *m, struct vs_ring *r)
{
    (void)m;
    struct vs_used *u = r->used;
    /* SAFETY: used was translated for 6 + 8 * num bytes and idx sits at offset 2. */
    uint16_t pos = le16toh(__atomic_load_n(&u->idx, __ATOMIC_ACQUIRE));
    r->last_avail = r->used_idx = r->signalled_used = pos;
    return pos;
}

/* Chains the driver made available that we have not taken yet; -EBADMSG if avail->idx jumped. */
static int split_avail_pending(struct vs_ring *r)
{
    struct vs_avail *a = r->avail;
    /* SAFETY: avail was translated for 6 + 2 * num bytes and idx sits at offset 2. */
    uint16_t idx = le16toh(__atomic_load_n(&a->idx, __ATOMIC_ACQUIRE));
    uint16_t n = (uint16_t)(idx - r->last_avail);
    if (n > r->num)
        return vs_ring_fail(r, VS_BROKEN_AVAIL_IDX);
    return n;
}

/* A descriptor table being walked: the ring's own or one indirect table. */
struct desc_table {
    const uint8_t *base;
    uint32_t n;
    int indirect;
};

static void desc_load(const struct desc_table *t, uint32_t i, struct vs_desc *d)
{
    /* SAFETY: callers pass i < t->n and the table was translated for 16 * n bytes. */
    memcpy(d, t->base + 16 * (uint64_t)i, sizeof *d);
    d->addr = le64toh(d->addr);
    d->len = le32toh(d->len);
    d->flags = le16toh(d->flags);
    d->next = le16toh(d->next);
}

/* 2.7.5.3: switch to the table an INDIRECT descriptor points at. */
static int enter_indirect(const struct vs_mem *m, struct vs_ring *r, struct desc_table *t, const struct vs_desc *d)
{
    if (t->indirect) /* 2.7.5.3.1: the driver MUST NOT set INDIRECT within an indirect table */
        return vs_ring_fail(r, VS_BROKEN_NESTED_INDIRECT);
    if (!(r->flags & VS_RF_INDIRECT) || (d->flags & VS_DESC_F_NEXT) || d->len == 0 || d->len % 16)
        return VS_CHAIN_BAD_DESC;
    const uint8_t *tab = vs_gpa_to_hva(m, d->addr, d->len);
    if (tab == NULL)
        return VS_CHAIN_FAULT;
    t->base = tab;
    t->n = d->len / 16;
    t->indirect = 1;
    return 0;
}

/* Add one data descriptor to the chain's iovecs. */
static int desc_to_iov(const struct vs_mem *m, int writable, const struct vs_desc *d, struct vs_walk *w)
{
    return vs_walk_add(m, writable, d->flags & VS_DESC_F_WRITE, d->addr, d->len, w);
}

/* Walk the chain at w->head into iovecs: 0, a per-chain VS_CHAIN_* fault, or -EBADMSG.
 * 2.7.5.3.1: a chain is never longer than the queue size, indirect entries included; a walk that
 * visits more descriptors than that (or than its table holds) is looping. A per-chain fault in a data
 * descriptor is remembered, and the walk goes on to the chain's end: a loop past it (say, after the
 * iovecs ran out on a ring larger than VS_MAX_IOV) still breaks the ring. */
static int walk(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w)
{
    struct desc_table t = { r->desc, r->num, 0 };
    uint32_t i = w->head, seen = 0, total = 0;
    int fault = 0;
    w->niov = 0;
    w->len = 0;
    w->ndesc = 0;
    for (;;) {
        struct vs_desc d;
        if (++seen > t.n || ++total > r->num)
            return vs_ring_fail(r, t.indirect ? VS_BROKEN_CHAIN_LEN : VS_BROKEN_LOOP);
        desc_load(&t, i, &d);
        w->ndesc += !t.indirect;
        int rc = (d.flags & VS_DESC_F_INDIRECT) ? enter_indirect(m, r, &t, &d)
                                                : (fault ? 0 : desc_to_iov(m, writable, &d, w));
        if (rc < 0 || (rc > 0 && (d.flags & VS_DESC_F_INDIRECT)))
            return rc; /* an unusable indirect table ends the walk: nothing to follow */
        if (rc > 0)
            fault = rc;
        if (d.flags & VS_DESC_F_INDIRECT) {
            i = 0;
            seen = 0;
            continue;
        }
        if (!(d.flags & VS_DESC_F_NEXT))
            return fault;
        i = d.next;
        if (i >= t.n)
            return vs_ring_fail(r, VS_BROKEN_NEXT);
    }
}

/* Take the next available chain (the caller saw split_avail_pending() > 0). */
static int split_pop_chain(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w)
{
    struct vs_avail *a = r->avail;
    w->at = r->last_avail;
    /* SAFETY: last_avail % num indexes one of the num ring entries translated with avail. */
    uint16_t head = ld16(&a->ring[r->last_avail & (r->num - 1)]);
    w->head = head;
    w->niov = 0;
    w->len = 0;
    if (head >= r->num)
        return vs_ring_fail(r, VS_BROKEN_HEAD);
    r->last_avail++;
    return walk(m, r, writable, w);
}

/* Prefetch the first data lines of one descriptor: only bytes vs_gpa_to_hva validated inside a region. */
static void prefetch_desc(const struct vs_mem *m, const struct vs_desc *d)
{
    uint64_t len = d->len < 128 ? d->len : 128;
    if (len == 0)
        return;
    const uint8_t *h = vs_gpa_to_hva(m, d->addr, len);
    if (h == NULL)
        return;
    /* SAFETY: [h, h + len) lies inside one mapped region; h + 64 < h + len when len > 64. */
    __builtin_prefetch(h, 0, 3);
    if (len > 64)
        __builtin_prefetch(h + 64, 0, 3);
}

/* A read cache hint (TX) for the chain at avail index `at`, if the driver published it: the first lines
 * of its first two descriptors (one indirect level).  Read-only: no ring state, counter or error path
 * changes.  Every index is checked as the walk checks it, every data address is translated (bounds-
 * checked) before the hint, and anything out of bounds just ends it; the walk validates again. */
static void split_prefetch_chain(const struct vs_mem *m, const struct vs_ring *r, uint16_t at)
{
    const struct vs_avail *a = r->avail;
    /* SAFETY: avail was translated for 6 + 2 * num bytes and idx sits at offset 2. */
    uint16_t idx = le16toh(__atomic_load_n(&a->idx, __ATOMIC_ACQUIRE));
    uint16_t n = (uint16_t)(idx - at);
    if (n == 0 || n > r->num)
        return;
    /* SAFETY: the index is taken modulo num: one of the num ring entries translated with avail. */
    uint16_t head = ld16(&a->ring[at & (r->num - 1)]);
    if (head >= r->num)
        return;
    struct desc_table t = { r->desc, r->num, 0 };
    struct vs_desc d;
    desc_load(&t, head, &d);
    if (d.flags & VS_DESC_F_INDIRECT) {
        if (!(r->flags & VS_RF_INDIRECT) || d.len < 16)
            return;
        uint32_t tn = d.len >= 32 ? 2 : 1;
        const uint8_t *tab = vs_gpa_to_hva(m, d.addr, 16 * (uint64_t)tn);
        if (tab == NULL)
            return;
        t.base = tab;
        t.n = tn;
        t.indirect = 1;
        desc_load(&t, 0, &d);
        if (d.flags & VS_DESC_F_INDIRECT)
            return;
    }
    prefetch_desc(m, &d);
    if (!(d.flags & VS_DESC_F_NEXT) || d.next >= t.n)
        return;
    desc_load(&t, d.next, &d);
    if (!(d.flags & VS_DESC_F_INDIRECT))
        prefetch_desc(m, &d);
}

static void split_used_add(struct vs_ring *r, uint16_t head, uint32_t len)
{
    struct vs_used *u = r->used;
    /* SAFETY: used_idx % num indexes one of the num elements translated with used. */
    struct vs_used_elem *e = &u->ring[r->used_idx & (r->num - 1)];
    __atomic_store_n(&e->id, htole32((uint32_t)head), __ATOMIC_RELAXED);
    __atomic_store_n(&e->len, htole32(len), __ATOMIC_RELAXED);
    r->used_idx++;
}

/* 2.7.7.2 / 2.7.10: does the driver want a used-buffer notification for this batch? */
static int need_call(struct vs_ring *r)
{
    struct vs_avail *a = r->avail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!(r->flags & VS_RF_EVENT_IDX))
        /* SAFETY: avail flags sit at offset 0 of the translated avail ring. */
        return !(ld16(&a->flags) & VS_AVAIL_F_NO_INTERRUPT);
    uint16_t old = r->signalled_used, new = r->used_idx;
    int valid = r->signalled_valid;
    r->signalled_used = new;
    r->signalled_valid = 1;
    if (!valid)
        return 1;
    /* SAFETY: used_event is entry num of avail->ring, inside the 6 + 2 * num bytes translated. */
    uint16_t event = ld16(&a->ring[r->num]);
    return (uint16_t)(new - event - 1) < (uint16_t)(new - old);
}

/* ------------------------------------------------------------------------------- used ring, notify */

/* Log the used elements [old, used_idx) (one or two ranges: the ring wraps) and used->idx. */
static void log_used_batch(struct vs_log *l, const struct vs_ring *r, uint16_t old)
{
    uint64_t num = r->num, n = (uint16_t)(r->used_idx - old), start = old & (r->num - 1);
    if (n >= num)
        vs_log_ring(l, r, 4, 8 * num);
    else if (start + n <= num)
        vs_log_ring(l, r, 4 + 8 * start, 8 * n);
    else {
        vs_log_ring(l, r, 4 + 8 * start, 8 * (num - start));
        vs_log_ring(l, r, 4, 8 * (start + n - num));
    }
    vs_log_ring(l, r, 2, 2);
}

/* Publish the batch's used entries with one release store, then call the driver if it wants. */
static void split_used_publish(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used)
{
    struct vs_used *u = r->used;
    if (r->used_idx == old_used)
        return;
    /* SAFETY: used idx sits at offset 2 of the translated used ring. */
    __atomic_store_n(&u->idx, htole16(r->used_idx), __ATOMIC_RELEASE);
    if (vs_logging(m->log))
        log_used_batch(m->log, r, old_used);
    vs_ring_call(r, need_call(r));
}

/* While we process, the driver need not kick (2.7.10). With EVENT_IDX avail_event stays behind. */
static void split_notify_disable(const struct vs_mem *m, struct vs_ring *r)
{
    struct vs_used *u = r->used;
    if (r->flags & VS_RF_EVENT_IDX)
        return;
    /* SAFETY: used flags sit at offset 0 of the translated used ring. */
    if (!(ld16(&u->flags) & VS_USED_F_NO_NOTIFY)) {
        st16(&u->flags, VS_USED_F_NO_NOTIFY);
        if (vs_logging(m->log))
            vs_log_ring(m->log, r, 0, 2);
    }
}

/* Ask for a kick once avail->idx moves past `seen`, then re-check (the driver may have added
 * chains before it saw the request).  Returns chains pending (> 0: keep going), 0, or -EBADMSG. */
static int split_notify_enable(const struct vs_mem *m, struct vs_ring *r, uint16_t seen)
{
    struct vs_used *u = r->used;
    if (r->flags & VS_RF_EVENT_IDX) {
        /* SAFETY: avail_event follows the num used elements, inside 6 + 8 * num bytes. */
        st16((uint16_t *)&u->ring[r->num], seen);
        if (vs_logging(m->log))
            vs_log_ring(m->log, r, 4 + 8 * (uint64_t)r->num, 2);
    } else {
        /* SAFETY: used flags sit at offset 0 of the translated used ring. */
        st16(&u->flags, 0);
        if (vs_logging(m->log))
            vs_log_ring(m->log, r, 0, 2);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    struct vs_avail *a = r->avail;
    /* SAFETY: avail idx sits at offset 2 of the translated avail ring. */
    uint16_t idx = le16toh(__atomic_load_n(&a->idx, __ATOMIC_ACQUIRE));
    if (idx == seen)
        return 0;
    split_notify_disable(m, r);
    return split_avail_pending(r);
}

const struct vs_layout vs_split_layout = {
    .num_ok = split_num_ok,
    .check = split_check,
    .map = split_map,
    .start = split_start,
    .avail_pending = split_avail_pending,
    .pop_chain = split_pop_chain,
    .prefetch_chain = split_prefetch_chain,
    .used_add = split_used_add,
    .used_publish = split_used_publish,
    .notify_disable = split_notify_disable,
    .notify_enable = split_notify_enable,
};
