/* vs_uring.c - the host fd's reads and writes in batches: one io_uring_enter for up to VS_URING_BATCH
 * readv or writev SQEs on the host fd (fixed file 0), each with RWF_NOWAIT, so that every one completes
 * inline during the enter (data, or -EAGAIN at once: never a poll armed, never a worker thread).
 *
 * Set-up, before the worker confines itself (docs/security.md, "The io_uring"): vs_uring_setup makes
 * the ring with IORING_SETUP_R_DISABLED (restrictions can only be registered on a ring that starts
 * disabled); Python maps its two areas and vs_uring_attach finds the ring's fields in them;
 * vs_uring_restrict registers the host fd as fixed file 0, then the restrictions (SQE opcodes READV
 * and WRITEV only, IOSQE_FIXED_FILE required and no other SQE flag allowed, no register opcode at all),
 * then enables the ring.  From then on the ring can do nothing but read and write the host fd, and
 * nothing can be registered on it again.  C owns no lifetime here either: Python maps, keeps and closes.
 */
#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vs_api.h"

_Static_assert(VS_URING_OFF_SQES == IORING_OFF_SQES, "the SQE array's mmap offset");

#define URING_NEEDS (IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_SUBMIT_STABLE)

static int uring_setup_flags(uint32_t entries, uint32_t flags, struct io_uring_params *prm)
{
    memset(prm, 0, sizeof *prm);
    prm->flags = flags;
    return (int)syscall(__NR_io_uring_setup, entries, prm);
}

/* Make the ring, disabled: its fd (which Python owns from here on) or -errno; ENOTSUP for a kernel
 * without one mapping for both rings, stable submissions (the iovec arrays are read during the
 * enter) or no dropped completions. */
int vs_uring_setup(struct vs_uring *u, uint32_t entries)
{
    struct io_uring_params prm;
    if (entries == 0 || entries > VS_URING_BATCH)
        return -EINVAL;
    int fd = uring_setup_flags(entries, IORING_SETUP_R_DISABLED | IORING_SETUP_SINGLE_ISSUER, &prm);
    if (fd < 0 && errno == EINVAL)
        fd = uring_setup_flags(entries, IORING_SETUP_R_DISABLED, &prm); /* before 6.0 */
    if (fd < 0)
        return -errno;
    if ((prm.features & URING_NEEDS) != URING_NEEDS) {
        close(fd);
        return -ENOTSUP;
    }
    uint64_t sq_len = prm.sq_off.array + (uint64_t)prm.sq_entries * sizeof(uint32_t);
    uint64_t cq_len = prm.cq_off.cqes + (uint64_t)prm.cq_entries * sizeof(struct io_uring_cqe);
    u->fd = fd;
    u->on = 0;
    u->entries = prm.sq_entries;
    u->ring_len = (uint32_t)(sq_len > cq_len ? sq_len : cq_len);
    u->sqes_len = prm.sq_entries * (uint32_t)sizeof(struct io_uring_sqe);
    u->o_sq_head = prm.sq_off.head;
    u->o_sq_tail = prm.sq_off.tail;
    u->o_sq_mask = prm.sq_off.ring_mask;
    u->o_sq_array = prm.sq_off.array;
    u->o_cq_head = prm.cq_off.head;
    u->o_cq_tail = prm.cq_off.tail;
    u->o_cq_mask = prm.cq_off.ring_mask;
    u->o_cqes = prm.cq_off.cqes;
    return fd;
}

/* Python mapped the ring (ring_len bytes at offset 0) and the SQE array: find the fields. */
int vs_uring_attach(struct vs_uring *u, void *ring, uint64_t ring_len, void *sqes, uint64_t sqes_len)
{
    if (u->fd < 0 || ring == NULL || sqes == NULL || ring_len < u->ring_len || sqes_len < u->sqes_len)
        return -EINVAL;
    uint8_t *base = ring;
    /* SAFETY: every offset is the kernel's, inside the ring_len bytes it said the mapping holds. */
    u->sq_head = (uint32_t *)(base + u->o_sq_head);
    u->sq_tail = (uint32_t *)(base + u->o_sq_tail);
    u->sq_array = (uint32_t *)(base + u->o_sq_array);
    u->cq_head = (uint32_t *)(base + u->o_cq_head);
    u->cq_tail = (uint32_t *)(base + u->o_cq_tail);
    u->sq_mask = *(uint32_t *)(base + u->o_sq_mask);
    u->cq_mask = *(uint32_t *)(base + u->o_cq_mask);
    u->cqes = base + u->o_cqes;
    u->sqes = sqes;
    if (u->sq_mask + 1 != u->entries)
        return -EINVAL;
    return 0;
}

static int uring_register(int fd, unsigned op, const void *arg, unsigned n)
{
    return syscall(__NR_io_uring_register, fd, op, arg, n) < 0 ? -errno : 0;
}

/* The host fd as fixed file 0, the restrictions, then the ring enabled: 0 or -errno. */
int vs_uring_restrict(struct vs_uring *u, int host_fd)
{
    const int files[1] = { host_fd };
    struct io_uring_restriction allow[4];
    memset(allow, 0, sizeof allow);
    allow[0].opcode = IORING_RESTRICTION_SQE_OP;
    allow[0].sqe_op = IORING_OP_READV;
    allow[1].opcode = IORING_RESTRICTION_SQE_OP;
    allow[1].sqe_op = IORING_OP_WRITEV;
    allow[2].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    allow[2].sqe_flags = IOSQE_FIXED_FILE;
    allow[3].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
    allow[3].sqe_flags = IOSQE_FIXED_FILE;
    if (u->fd < 0 || u->sqes == NULL)
        return -EINVAL;
    int rc = uring_register(u->fd, IORING_REGISTER_FILES, files, 1);
    if (rc == 0)
        rc = uring_register(u->fd, IORING_REGISTER_RESTRICTIONS, allow, 4);
    if (rc == 0)
        rc = uring_register(u->fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (rc < 0)
        return rc;
    u->seq = 0;
    u->rx_burst = 2;
    u->rx_last = 0;
    u->failed = 0;
    u->on = 1;
    return 0;
}

/* The ring failed (an enter refused, an opcode or flag the kernel cannot do): batches go back to one
 * readv/writev per frame for good; err says why (the stats show it). */
void vs_uring_off(struct vs_uring *u, int err)
{
    u->on = 0;
    u->failed = err;
}

/* Take the completions of batch `seq` into res: how many. */
static uint32_t uring_reap(struct vs_uring *u, uint32_t n, int32_t *res)
{
    uint32_t head = *u->cq_head, got = 0;
    uint32_t tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    const struct io_uring_cqe *cqes = u->cqes;
    for (; head != tail; head++) {
        /* SAFETY: the index is masked by the CQ ring's mask; the kernel sized the mapping for it. */
        const struct io_uring_cqe *c = &cqes[head & u->cq_mask];
        uint64_t slot = c->user_data & 0xffffffffu;
        if (c->user_data >> 32 != u->seq || slot >= n)
            continue; /* an earlier batch's, completed late: its slots were already settled */
        res[slot] = c->res;
        got++;
    }
    __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    return got;
}

static void uring_sqe(struct vs_uring *u, uint32_t at, int write, const struct iovec *iov, uint32_t niov, uint32_t slot)
{
    uint32_t i = at & u->sq_mask;
    /* SAFETY: i <= sq_mask < entries, the SQE array holds entries SQEs (vs_uring_attach checked both). */
    struct io_uring_sqe *s = (struct io_uring_sqe *)u->sqes + i;
    memset(s, 0, sizeof *s);
    s->opcode = write ? IORING_OP_WRITEV : IORING_OP_READV;
    s->flags = IOSQE_FIXED_FILE;
    s->fd = 0;
    s->addr = (uint64_t)(uintptr_t)iov;
    s->len = niov;
    s->rw_flags = RWF_NOWAIT;
    s->user_data = (uint64_t)u->seq << 32 | slot;
    u->sq_array[i] = i; /* SAFETY: the SQ index array holds entries entries, i < entries */
}

int vs_uring_rw(struct vs_uring *u, int write, struct iovec *const *iov, const uint32_t *niov, uint32_t n, int32_t *res)
{
    if (n == 0 || n > u->entries)
        return -EINVAL;
    uint32_t tail = *u->sq_tail;
    u->seq++;
    for (uint32_t k = 0; k < n; k++) {
        res[k] = -ECANCELED; /* until its completion says otherwise: the kernel did not take it */
        uring_sqe(u, tail + k, write, iov[k], niov[k], k);
    }
    __atomic_store_n(u->sq_tail, tail + n, __ATOMIC_RELEASE);
    long rc = syscall(__NR_io_uring_enter, u->fd, n, n, IORING_ENTER_GETEVENTS, NULL, 0);
    int err = rc < 0 ? errno : 0;
    if (rc < 0 || (uint32_t)rc < n) /* what the kernel did not take must not go out with the next batch */
        __atomic_store_n(u->sq_tail, __atomic_load_n(u->sq_head, __ATOMIC_ACQUIRE), __ATOMIC_RELEASE);
    u->enters++;
    if (rc < 0)
        return -err;
    uint32_t got = uring_reap(u, n, res);
    for (int tries = 0; got < (uint32_t)rc && tries < 4; tries++) { /* an enter cut short by a signal */
        syscall(__NR_io_uring_enter, u->fd, 0, (uint32_t)rc - got, IORING_ENTER_GETEVENTS, NULL, 0);
        got += uring_reap(u, n, res);
    }
    if (write)
        u->tx_sqes += (uint64_t)rc;
    else
        u->rx_sqes += (uint64_t)rc;
    return (int)rc;
}
