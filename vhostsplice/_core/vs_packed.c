/* vs_packed.c - packed virtqueue (virtio 1.2, 2.8): ring set-up, chain walking, used descriptors,
 * event suppression.
 *
 * One descriptor ring of num 16-byte descriptors, and two 4-byte event suppression areas: the driver's
 * (SET_VRING_ADDR's avail address: may the device call?) and the device's (its used address: may the
 * driver kick?).  A descriptor is available in the lap of wrap counter w when its AVAIL flag is w and
 * its USED flag is not; the device marks a used descriptor by setting both to its used wrap counter.
 *
 * The device keeps its positions (index | wrap << 15, VS_PK_WRAP) in the ring: last_avail (the next
 * descriptor to take) and used_idx (where the next used descriptor goes: guest memory cannot tell it).
 * Chains complete in the order they were taken (the net files only give back the newest ones), so the
 * used descriptor of a chain lands on the slot of its first descriptor and skips as many slots as it
 * had; chain[] remembers that count from the walk.  With IN_ORDER a batch of device-readable buffers
 * gets one used descriptor carrying the id of its last buffer (2.8, "In-order use of descriptors";
 * DPDK's in-order driver relies on it).
 *
 * Descriptors are copied out of guest memory and checked on the copy; the ring was translated once
 * for 16 * num bytes (vs_ring_start/vs_ring_remap), so an index below num is in bounds.  Every store
 * into the descriptor ring is logged at the ring's own guest-physical address + offset, and the device
 * area's stores at its guest-physical address: never at log_addr, which for a packed ring names no
 * ring the device writes (QEMU passes vq->used_phys, the device area, as log_guest_addr).  This file
 * implements the ring layout interface of vs_api.h (vs_packed_layout) and knows nothing of the net
 * device.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "vs_api.h"

struct pk_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t id;
    uint16_t flags;
};
struct pk_event {
    uint16_t off_wrap; /* bits 0-14 descriptor index, bit 15 its wrap counter */
    uint16_t flags;    /* PK_EVENT_* */
};

#define PK_F_NEXT 1
#define PK_F_WRITE 2
#define PK_F_INDIRECT 4
#define PK_F_AVAIL (1 << 7)
#define PK_F_USED (1 << 15)
#define PK_EVENT_ENABLE 0
#define PK_EVENT_DISABLE 1
#define PK_EVENT_DESC 2   /* with EVENT_IDX: only when the descriptor at off_wrap is reached */
#define PK_DESC_LOG_OFF 8 /* len, id, flags: the bytes of a descriptor the device writes */

static uint32_t pk_idx(uint16_t pos)
{
    return pos & (VS_PK_WRAP - 1);
}

static uint32_t pk_wrap(uint16_t pos)
{
    return pos >> 15;
}

/* pos moved on by n <= num descriptors: the index wraps to 0 (and the counter flips) at num. */
static uint16_t pk_advance(const struct vs_ring *r, uint16_t pos, uint32_t n)
{
    uint32_t i = pk_idx(pos) + n, w = pk_wrap(pos);
    if (i >= r->num) {
        i -= r->num;
        w ^= 1;
    }
    return (uint16_t)(i | w << 15);
}

/* 2.8: any size up to 32768 (positions keep the index in 15 bits). */
static int pk_num_ok(uint32_t num)
{
    return num != 0 && num <= VS_MAX_QUEUE_SIZE;
}

static struct pk_desc *pk_slot(const struct vs_ring *r, uint32_t i)
{
    /* SAFETY: callers pass i < num; the ring was translated for 16 * num bytes. */
    return (struct pk_desc *)r->desc + i;
}

/* The flags of descriptor i, with acquire order: its other fields are read after them (2.8: the driver
 * makes a chain available by storing its first descriptor's flags last). */
static uint16_t pk_flags(const struct vs_ring *r, uint32_t i)
{
    return le16toh(__atomic_load_n(&pk_slot(r, i)->flags, __ATOMIC_ACQUIRE));
}

static void pk_load(const uint8_t *base, uint32_t i, struct pk_desc *d)
{
    /* SAFETY: callers pass i below the entries translated at base (16 bytes each). */
    memcpy(d, base + 16 * (uint64_t)i, sizeof *d);
    d->addr = le64toh(d->addr);
    d->len = le32toh(d->len);
    d->id = le16toh(d->id);
    d->flags = le16toh(d->flags);
}

/* 1 available in the lap of wrap counter w, 0 not (yet), -1 contradictory: used in this lap before the
 * device took it (the device writes used flags only behind last_avail). */
static int pk_avail_state(uint16_t flags, uint32_t w)
{
    uint32_t a = !!(flags & PK_F_AVAIL), u = !!(flags & PK_F_USED);
    if (a != w)
        return 0;
    return u != w ? 1 : -1;
}

/* 2.8: desc 16-, both event areas 4-byte aligned; Python's chain table holds num entries; the
 * positions Python set (vhost-user packed vring state) index the ring. */
static int pk_check(const struct vs_ring *r)
{
    if (r->chain == NULL || r->chain_cap < r->num)
        return -EINVAL;
    if ((r->desc_uva & 15) != 0 || (r->avail_uva & 3) != 0 || (r->used_uva & 3) != 0)
        return -EINVAL;
    if (pk_idx(r->last_avail) >= r->num || pk_idx(r->used_idx) >= r->num)
        return -ERANGE;
    return 0;
}

/* The descriptor ring (16 * num bytes) and the two 4-byte event suppression areas.  Our mapping of the
 * ring must be 16-aligned like the guest's (2.8.10.1): pk_slot's struct pk_desc pointers and the atomics
 * on their fields need it (a region whose host buffer is shifted against its uva, an odd mmap offset,
 * would give 4- or 8-aligned pointers: UB, not just slow). */
static int pk_map(const struct vs_mem *m, struct vs_ring *r)
{
    return vs_ring_map(m, r, 16 * (uint64_t)r->num, sizeof(struct pk_event), sizeof(struct pk_event), 3 << 8 | 15);
}

/* The rings are mapped: start at the used position Python set.  Buffers between it and the old avail
 * position were taken and never completed, and are still marked available, so they are taken again
 * (like split, which resumes from used->idx).  Returns the position. */
static int pk_start(const struct vs_mem *m, struct vs_ring *r)
{
    (void)m;
    r->last_avail = r->signalled_used = r->used_idx;
    r->batch_writable = 0;
    return r->used_idx;
}

/* 1 if the driver made a chain available at last_avail (the count is not known without walking), 0,
 * or -EBADMSG when its flags contradict the wrap counter. */
static int pk_avail_pending(struct vs_ring *r)
{
    int st = pk_avail_state(pk_flags(r, pk_idx(r->last_avail)), pk_wrap(r->last_avail));
    return st < 0 ? vs_ring_fail(r, VS_BROKEN_WRAP) : st;
}

/* Add one data descriptor to the chain's iovecs. */
static int pk_to_iov(const struct vs_mem *m, int writable, const struct pk_desc *d, struct vs_walk *w)
{
    return vs_walk_add(m, writable, d->flags & PK_F_WRITE, d->addr, d->len, w);
}

/* 2.8, "Indirect Flag": a table of len / 16 descriptors, used in order (their NEXT flag means nothing).
 * INDIRECT only on a chain's first and only ring descriptor (a per-chain fault otherwise); INDIRECT
 * inside the table breaks the ring (like split).  The table is the list: at most the queue size of
 * descriptors (2.8.5, "If not limited, the maximum number of descriptors in a list is the virt queue
 * size"; the ring descriptor that points at it is not one of them). */
static int pk_indirect(const struct vs_mem *m, struct vs_ring *r, int writable, const struct pk_desc *d, uint32_t seen,
                       struct vs_walk *w)
{
    if (seen != 1 || (d->flags & PK_F_NEXT) || !(r->flags & VS_RF_INDIRECT) || d->len == 0 || d->len % 16)
        return VS_CHAIN_BAD_DESC;
    uint32_t n = d->len / 16;
    if (n > r->num)
        return vs_ring_fail(r, VS_BROKEN_CHAIN_LEN);
    const uint8_t *tab = vs_gpa_to_hva(m, d->addr, d->len);
    if (tab == NULL)
        return VS_CHAIN_FAULT;
    int fault = 0;
    for (uint32_t k = 0; k < n; k++) {
        struct pk_desc e;
        pk_load(tab, k, &e);
        if (e.flags & PK_F_INDIRECT)
            return vs_ring_fail(r, VS_BROKEN_NESTED_INDIRECT);
        if (!fault)
            fault = pk_to_iov(m, writable, &e, w);
    }
    return fault;
}

/* One ring descriptor of the chain: its table or its data.  0, a VS_CHAIN_* fault, or -EBADMSG. */
static int pk_desc_walk(const struct vs_mem *m, struct vs_ring *r, int writable, const struct pk_desc *d, uint32_t seen,
                        int fault, struct vs_walk *w)
{
    if (d->flags & PK_F_INDIRECT)
        return pk_indirect(m, r, writable, d, seen, w);
    return fault ? 0 : pk_to_iov(m, writable, d, w);
}

/* Take the chain at last_avail (the caller saw vs_avail_pending() > 0): its descriptors are the next
 * ones in the ring while NEXT is set, each available in its own lap; the buffer id is the last one's.
 * A per-chain fault is remembered and the walk goes on to the chain's end, which the ring position
 * needs.  0, a VS_CHAIN_* fault, or -EBADMSG. */
static int pk_pop_chain(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w)
{
    uint16_t at = r->last_avail;
    uint32_t i = pk_idx(at), wrap = pk_wrap(at), seen = 0;
    struct pk_desc d;
    int fault = 0;
    w->at = at;
    w->niov = 0;
    w->len = 0;
    w->ndesc = 0;
    w->head = 0;
    do {
        if (++seen > r->num)
            return vs_ring_fail(r, VS_BROKEN_LOOP); /* 2.8: never longer than the queue */
        uint16_t flags = pk_flags(r, i);
        if (pk_avail_state(flags, wrap) != 1)
            return vs_ring_fail(r, VS_BROKEN_WRAP); /* a chain into descriptors not made available */
        pk_load(r->desc, i, &d);
        d.flags = flags;
        int rc = pk_desc_walk(m, r, writable, &d, seen, fault, w);
        if (rc < 0)
            return rc;
        if (fault == 0)
            fault = rc;
        if (++i == r->num) {
            i = 0;
            wrap ^= 1;
        }
    } while (d.flags & PK_F_NEXT);
    if (d.id >= r->num)
        return vs_ring_fail(r, VS_BROKEN_HEAD);
    w->head = d.id;
    w->ndesc = seen;
    r->chain[pk_idx(at)] = seen | (writable ? VS_PK_WRITABLE : 0); /* SAFETY: pk_idx(at) < num <= chain_cap */
    r->last_avail = pk_advance(r, at, seen);
    return fault;
}

/* A read cache hint (TX) for the chain at `at`, if the driver made it available: the first lines of its
 * first descriptor's data (not through an indirect table).  Read-only; every address is translated. */
static void pk_prefetch_chain(const struct vs_mem *m, const struct vs_ring *r, uint16_t at)
{
    uint32_t i = pk_idx(at);
    if (i >= r->num)
        return;
    uint16_t flags = pk_flags(r, i);
    if (pk_avail_state(flags, pk_wrap(at)) != 1 || (flags & PK_F_INDIRECT))
        return;
    struct pk_desc d;
    pk_load(r->desc, i, &d);
    uint64_t len = d.len < 128 ? d.len : 128;
    const uint8_t *h = len ? vs_gpa_to_hva(m, d.addr, len) : NULL;
    if (h == NULL)
        return;
    /* SAFETY: [h, h + len) lies inside one mapped region; h + 64 < h + len when len > 64. */
    __builtin_prefetch(h, 0, 3);
    if (len > 64)
        __builtin_prefetch(h + 64, 0, 3);
}

/* Descriptors the chain taken at ring index i held (1 for an index never taken: cannot happen). */
static uint32_t pk_chain_len(const struct vs_ring *r, uint32_t i)
{
    uint32_t n = r->chain[i] & (VS_PK_WRITABLE - 1); /* SAFETY: i < num <= chain_cap */
    return n == 0 || n > r->num ? 1 : n;
}

/* Complete the oldest chain taken: its id and length on the slot of its first descriptor, its flags
 * only when the batch is published (WRITE if the device wrote bytes into it: VS_PK_WROTE). */
static void pk_used_add(struct vs_ring *r, uint16_t id, uint32_t len)
{
    uint32_t i = pk_idx(r->used_idx);
    struct pk_desc *d = pk_slot(r, i);
    __atomic_store_n(&d->id, htole16(id), __ATOMIC_RELAXED);
    __atomic_store_n(&d->len, htole32(len), __ATOMIC_RELAXED);
    r->used_last_id = id;
    if ((r->chain[i] & VS_PK_WRITABLE) && len > 0)
        r->chain[i] |= VS_PK_WROTE; /* SAFETY: i < num <= chain_cap */
    r->batch_writable |= !!(r->chain[i] & VS_PK_WRITABLE);
    r->used_idx = pk_advance(r, r->used_idx, pk_chain_len(r, i));
}

/* The flags of a used descriptor at pos: AVAIL and USED both the used wrap counter (2.8.1), WRITE when
 * the device wrote data into the buffer (2.8.3: a device-writable chain completed with length 0, a
 * per-chain fault, has none). */
static uint16_t pk_used_flags(const struct vs_ring *r, uint16_t pos)
{
    uint16_t f = pk_wrap(pos) ? (PK_F_AVAIL | PK_F_USED) : 0;
    return f | ((r->chain[pk_idx(pos)] & VS_PK_WROTE) ? PK_F_WRITE : 0); /* SAFETY: index < num <= chain_cap */
}

/* Store (flags) or, with desc_gpa the descriptor ring's guest-physical address, log every entry of the
 * batch [old, used_idx) after the first; the walk follows the chain lengths and never takes more than num
 * steps. */
static void pk_batch_rest(const struct vs_mem *m, struct vs_ring *r, uint16_t old, int store, uint64_t desc_gpa)
{
    uint16_t pos = old;
    for (uint32_t k = 0; k < r->num; k++) {
        if (!store)
            vs_log_write(m->log, desc_gpa + 16 * (uint64_t)pk_idx(pos) + PK_DESC_LOG_OFF, 8);
        pos = pk_advance(r, pos, pk_chain_len(r, pk_idx(pos)));
        if (pos == r->used_idx)
            return;
        if (store)
            __atomic_store_n(&pk_slot(r, pk_idx(pos))->flags, htole16(pk_used_flags(r, pos)), __ATOMIC_RELEASE);
    }
}

/* 2.8, "Event Suppression": is the event the driver asked for (descriptor ev, in DESC mode) inside
 * [old, new)?  Positions are compared within the lap that ends at new (at most num descriptors since
 * the last check). */
static int pk_event_crossed(const struct vs_ring *r, uint16_t ev, uint16_t old, uint16_t new)
{
    int32_t num = (int32_t)r->num, n = (int32_t)pk_idx(new);
    int32_t o = (int32_t)pk_idx(old) - (pk_wrap(old) != pk_wrap(new) ? num : 0);
    int32_t e = (int32_t)pk_idx(ev) - (pk_wrap(ev) != pk_wrap(new) ? num : 0);
    return o <= e && e < n;
}

/* Does the driver want a used-buffer notification for this batch (its event suppression area)? */
static int pk_need_call(struct vs_ring *r)
{
    struct pk_event *drv = r->avail;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint16_t old = r->signalled_used, new = r->used_idx;
    int valid = r->signalled_valid;
    r->signalled_used = new;
    r->signalled_valid = 1;
    /* SAFETY: the driver area was translated for its 4 bytes. */
    uint16_t flags = le16toh(__atomic_load_n(&drv->flags, __ATOMIC_RELAXED)) & 3;
    if (flags == PK_EVENT_DISABLE)
        return 0;
    if (flags != PK_EVENT_DESC || !(r->flags & VS_RF_EVENT_IDX) || !valid)
        return 1; /* ENABLE (and the reserved 3, or DESC without EVENT_IDX: notifying is never wrong) */
    uint16_t ev = le16toh(__atomic_load_n(&drv->off_wrap, __ATOMIC_RELAXED));
    return pk_event_crossed(r, ev, old, new);
}

/* Log the batch's used descriptors (VHOST_VRING_F_LOG) at the descriptor ring's guest-physical address:
 * the ring lies in one region (vs_ring_map translated it whole), so it translates; if the region table
 * changed under a stopped ring it does not, and the miss is counted as an overflow. */
static void pk_log_batch(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used)
{
    uint64_t gpa;
    if (!vs_logging(m->log) || !r->log_used)
        return;
    if (vs_uva_to_gpa(m, r->desc_uva, 16 * (uint64_t)r->num, &gpa) != 0) {
        if (m->log->base != NULL)
            m->log->overflow++;
        return;
    }
    pk_batch_rest(m, r, old_used, 0, gpa);
}

/* Make the batch visible: every entry's flags, the first's last (release), so the driver, which reads
 * in order, sees none before all.  IN_ORDER and no device-writable buffer: one used descriptor for the
 * batch, with the id of its last buffer. */
static void pk_used_publish(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used)
{
    if (r->used_idx == old_used)
        return;
    struct pk_desc *first = pk_slot(r, pk_idx(old_used));
    if ((r->flags & VS_RF_IN_ORDER) && !r->batch_writable) {
        __atomic_store_n(&first->id, htole16(r->used_last_id), __ATOMIC_RELAXED);
        __atomic_store_n(&first->len, 0, __ATOMIC_RELAXED);
    } else {
        pk_batch_rest(m, r, old_used, 1, 0);
    }
    __atomic_store_n(&first->flags, htole16(pk_used_flags(r, old_used)), __ATOMIC_RELEASE);
    pk_log_batch(m, r, old_used);
    r->batch_writable = 0;
    vs_ring_call(r, pk_need_call(r));
}

/* Log a store into the device event suppression area (at its guest-physical address). */
static void pk_log_dev(const struct vs_mem *m, const struct vs_ring *r)
{
    uint64_t gpa;
    if (vs_logging(m->log) && r->log_used && vs_uva_to_gpa(m, r->used_uva, sizeof(struct pk_event), &gpa) == 0)
        vs_log_write(m->log, gpa, sizeof(struct pk_event));
}

/* While we process, the driver need not kick.  With EVENT_IDX the event stays behind (as in split). */
static void pk_notify_disable(const struct vs_mem *m, struct vs_ring *r)
{
    struct pk_event *dev = r->used;
    if (r->flags & VS_RF_EVENT_IDX)
        return;
    /* SAFETY: the device area was translated for its 4 bytes. */
    if ((le16toh(__atomic_load_n(&dev->flags, __ATOMIC_RELAXED)) & 3) != PK_EVENT_DISABLE) {
        __atomic_store_n(&dev->flags, htole16(PK_EVENT_DISABLE), __ATOMIC_RELAXED);
        pk_log_dev(m, r);
    }
}

/* Ask for a kick once the descriptor at `seen` is made available (EVENT_IDX: DESC mode with off_wrap
 * seen; otherwise ENABLE), then re-check.  Chains pending (> 0), 0, or -EBADMSG. */
static int pk_notify_enable(const struct vs_mem *m, struct vs_ring *r, uint16_t seen)
{
    struct pk_event *dev = r->used;
    /* SAFETY: the device area was translated for its 4 bytes. */
    if (r->flags & VS_RF_EVENT_IDX) {
        __atomic_store_n(&dev->off_wrap, htole16(seen), __ATOMIC_RELAXED);
        __atomic_store_n(&dev->flags, htole16(PK_EVENT_DESC), __ATOMIC_RELEASE);
    } else {
        __atomic_store_n(&dev->flags, htole16(PK_EVENT_ENABLE), __ATOMIC_RELAXED);
    }
    pk_log_dev(m, r);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (pk_idx(seen) >= r->num || pk_avail_state(pk_flags(r, pk_idx(seen)), pk_wrap(seen)) == 0)
        return 0;
    pk_notify_disable(m, r);
    return pk_avail_pending(r);
}

const struct vs_layout vs_packed_layout = {
    .num_ok = pk_num_ok,
    .check = pk_check,
    .map = pk_map,
    .start = pk_start,
    .avail_pending = pk_avail_pending,
    .pop_chain = pk_pop_chain,
    .prefetch_chain = pk_prefetch_chain,
    .used_add = pk_used_add,
    .used_publish = pk_used_publish,
    .notify_disable = pk_notify_disable,
    .notify_enable = pk_notify_enable,
};
