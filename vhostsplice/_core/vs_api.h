/* vs_api.h - the interface of the vhostsplice C core.
 *
 * The section between the "cdef begin" and "cdef end" markers is read verbatim by cffi's cdef
 * (vhostsplice/_core_build.py), so it holds only plain declarations and integer #defines.  The rest
 * of the file is for the C sources only.
 *
 * Ownership: C owns no lifetimes.  Python allocates struct vs_pair, maps guest memory and keeps every
 * buffer alive while a region table refers to it; C never allocates, maps, keeps globals or calls back.
 * Every exported function returns >= 0 or -errno and does at most one batch of work.
 *
 * Layers (docs/architecture.md): vs_mem.c translates guest addresses; vs_log.c marks the dirty log;
 * vs_split.c is the split ring layout and knows nothing of the net device (its functions take the
 * memory table and their ring); vs_net.c, vs_net_tx.c and vs_net_rx.c move packets between a ring
 * and the host fd; vs_pair.c is the exported poll of one RX/TX pair.
 */
#ifndef VS_API_H
#define VS_API_H

#include <stdint.h>

/* ---- cdef begin ---- */
#define VS_API_VERSION 6
/* Memory slots (vhost-user CONFIGURE_MEM_SLOTS): the size of the region table, which GET_MAX_MEM_SLOTS
 * advertises: 509, libvhost-user's VHOST_USER_MAX_RAM_SLOTS (KVM's old x86 limit, 512 less 3 it used
 * itself); QEMU uses at most its own limit (x86: 256 ACPI DIMM slots).  Python hands a table of more
 * than VS_LINEAR_REGIONS sorted by gpa, and a guest-physical lookup there is a binary search; a smaller
 * one is walked. */
#define VS_MAX_REGIONS 509
#define VS_LINEAR_REGIONS 8
#define VS_MAX_IOV 1024
#define VS_MAX_QUEUE_SIZE 32768
#define VS_NET_HDR_LEN 12
#define VS_LOG_PAGE_SHIFT 12     /* dirty log: one bit per 4 KiB page of guest-physical address */

/* struct vs_ring.flags: negotiated features that change the datapath */
#define VS_RF_EVENT_IDX 1
#define VS_RF_INDIRECT 2
#define VS_RF_MRG 4

/* vs_pair_poll() result bits */
#define VS_MORE 1
#define VS_TX_BLOCKED 2
#define VS_RX_STARVED 4

/* struct vs_pair.host_flags: how the host fd behaves where fds differ */
#define VS_HOST_EMPTY_OK 1      /* a 0-byte read is an empty datagram (dropped), not the peer closing */
#define VS_HOST_REFUSED_DROP 2  /* ECONNREFUSED is one lost packet (connected UDP), not the end */
#define VS_HOST_STREAM 4        /* a byte stream: each frame is a 4-byte big-endian length, then the frame
                                   (QEMU -netdev stream); needs the tx/rx stage buffers and hdr_omit == hdr_len */

/* struct vs_ring.broken: why the guest's ring is unusable (0 = not broken) */
#define VS_BROKEN_AVAIL_IDX 1
#define VS_BROKEN_HEAD 2
#define VS_BROKEN_NEXT 3
#define VS_BROKEN_LOOP 4
#define VS_BROKEN_CHAIN_LEN 5
#define VS_BROKEN_NESTED_INDIRECT 6

struct vs_region {
    uint64_t gpa;       /* guest-physical address of byte 0 */
    uint64_t uva;       /* front-end user address of byte 0 (ring addresses use these) */
    uint64_t size;
    uint8_t *hva;       /* our address of byte 0 */
};

/* Dirty log for live migration (vhost-user "Migration"): bit p % 8 of byte p / 8 is page p of
 * guest-physical address.  Python maps it (SET_LOG_BASE) and keeps it alive; size is in bytes.
 * Every guest write is logged while `all` (VHOST_F_LOG_ALL acked) and base are set. */
struct vs_log {
    uint8_t *base;
    uint64_t size;
    uint32_t all;
    uint64_t overflow;          /* log calls that reached past the log's end (those pages not marked) */
    uint64_t writes;            /* log calls that marked pages */
};

struct vs_mem {
    uint32_t n;
    struct vs_region r[VS_MAX_REGIONS];
    struct vs_log *log;         /* NULL, or the dirty log every device store into this memory is marked in */
};

struct vs_ring_stats {
    uint64_t packets, bytes, chains;
    uint64_t drops_fault, drops_bad_desc, drops_short, drops_hostfd;
    uint64_t rx_starved, notify_sent, notify_suppressed, batches;
    uint64_t drops_oversize;    /* RX: a frame larger than the buffers the driver gave (dropped, not cut) */
};

struct vs_ring {
    uint32_t num;
    uint32_t flags;             /* VS_RF_* */
    int call_fd, err_fd;        /* -1: none */
    uint64_t desc_uva, avail_uva, used_uva;
    void *desc, *avail, *used;  /* host pointers, set by vs_ring_start/vs_ring_remap */
    uint16_t last_avail, used_idx, signalled_used;
    uint8_t signalled_valid, running;
    int broken;                 /* 0 or VS_BROKEN_* */
    struct vs_ring_stats st;
    /* Dirty logging of this ring's used ring (SET_VRING_ADDR flag VHOST_VRING_F_LOG): every used-ring
     * store at offset off is logged at log_addr + off (log_addr is the front-end's, any value). */
    uint64_t log_addr;
    uint32_t log_used;
};

struct vs_pair {
    struct vs_mem mem;
    struct vs_ring rx, tx;      /* virtqueue 0 and 1 */
    int host_fd;
    uint32_t hdr_len;           /* virtio-net header bytes in the guest's buffers: VS_NET_HDR_LEN */
    uint32_t rx_max;            /* largest packet the host fd can deliver, header included */
    uint32_t tx_budget, rx_budget;
    int fault_exit;             /* per-chain guest faults end the poll with -EFAULT */
    uint8_t *scratch;           /* Python's buffer behind the guest's RX iovecs: catches oversize frames */
    uint32_t scratch_len;
    uint32_t hdr_omit;          /* last bytes of the guest's header the host fd does not carry: 0 (vnet
                                   header of hdr_len), 2 (10-byte legacy vnet header), hdr_len (none) */
    uint32_t host_flags;        /* VS_HOST_* */
    /* VS_HOST_STREAM only: Python's buffers for the unsent tail of a partly written frame (len bytes
     * from off) and for stream bytes read but not yet delivered (len bytes, length prefixes included). */
    uint8_t *tx_stage;
    uint32_t tx_stage_cap, tx_stage_len, tx_stage_off;
    uint8_t *rx_stage;
    uint32_t rx_stage_cap, rx_stage_len;
    struct vs_log log;          /* mem.log points here (Python sets it once) */
};

/* vs_pair.c */
int vs_api_version(void);
int vs_pair_poll(struct vs_pair *p);
int vs_drain_eventfd(int fd);
/* vs_split.c: the ring layout (also declared for the C sources below) */
int vs_ring_num_ok(uint32_t num);
int vs_ring_start(const struct vs_mem *m, struct vs_ring *r);
int vs_ring_remap(const struct vs_mem *m, struct vs_ring *r);
/* vs_log.c */
int vs_log_write(struct vs_log *l, uint64_t gpa, uint64_t len);
/* ---- cdef end ---- */

/* ------------------------------------------------------------------ internal (C sources only) */
#include <stddef.h>
#include <sys/uio.h>

#define VS_NUM_BUFFERS_OFF 10     /* virtio_net_hdr_v1.num_buffers */

/* Per-chain outcome of a walk (> 0); a broken ring is -EBADMSG. */
enum vs_chain_result {
    VS_CHAIN_OK = 0,
    VS_CHAIN_FAULT,         /* address outside guest memory: drops_fault */
    VS_CHAIN_BAD_DESC,      /* wrong direction, bad indirect: drops_bad_desc */
    VS_CHAIN_TOO_MANY,      /* more than the iovecs left: drops_bad_desc (or stop a merge) */
    VS_CHAIN_SHORT,         /* shorter than the virtio-net header: drops_short */
};

/* vs_mem.c: guest address translation */
uint8_t *vs_uva_to_hva(const struct vs_mem *m, uint64_t uva, uint64_t len);
uint8_t *vs_gpa_to_hva(const struct vs_mem *m, uint64_t gpa, uint64_t len);
int vs_gpa_to_iov(const struct vs_mem *m, uint64_t gpa, uint64_t len,
                  struct iovec *iov, uint64_t *gpas, uint32_t *niov, uint32_t max);
void vs_iov_write(const struct iovec *iov, uint32_t niov, uint64_t off, const void *src, size_t n);

/* vs_log.c: the dirty log (live migration).  Callers test vs_logging() first: with logging off each
 * logging site costs one branch. */
static inline int vs_logging(const struct vs_log *l)
{
    return l != NULL && l->all;
}
void vs_log_iov(struct vs_log *l, const struct iovec *iov, const uint64_t *gpa, uint32_t niov, uint64_t len);
void vs_log_ring(struct vs_log *l, const struct vs_ring *r, uint64_t off, uint64_t len);

/* ---- the ring layout interface: vs_split.c implements it for the split virtqueue; a second layout
 * (packed, virtio 1.2 2.8) provides the same functions over its own struct vs_ring fields.  Every
 * function takes the memory table and its ring, never the net device (docs/architecture.md). ---- */
struct vs_walk {
    struct iovec *iov;      /* where the chain's iovecs go */
    uint64_t *gpa;          /* NULL, or where each iovec's guest-physical address goes (RX: dirty log) */
    uint32_t max;           /* room in iov */
    uint32_t niov;          /* out */
    uint64_t len;           /* out: total bytes */
    uint32_t ndesc;         /* out: ring descriptors the chain holds (an indirect table counts 1) */
    uint16_t head;          /* out */
    uint16_t at;            /* out: the chain's avail position (vs_avail_rewind(r, at) gives it back) */
};
/* vs_ring_num_ok, vs_ring_start, vs_ring_remap: declared in the cdef section above */
int vs_avail_pending(struct vs_ring *r);
uint16_t vs_avail_pos(const struct vs_ring *r);
void vs_avail_rewind(struct vs_ring *r, uint16_t pos);
uint16_t vs_used_pos(const struct vs_ring *r);
int vs_ring_fail(struct vs_ring *r, int reason);
int vs_pop_chain(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w);
void vs_prefetch_chain(const struct vs_mem *m, const struct vs_ring *r, uint16_t at);
void vs_used_add(struct vs_ring *r, uint16_t head, uint32_t len);
void vs_used_publish(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used);
void vs_notify_disable(const struct vs_mem *m, struct vs_ring *r);
int vs_notify_enable(const struct vs_mem *m, struct vs_ring *r, uint16_t seen);

/* vs_net.c: what the net device's TX and RX share (host fd errors, the header bytes it carries) */
/* Iovecs one walk may fill with guest pieces: readv/writev take at most UIO_MAXIOV (1024), and a header
 * split (vs_iov_cut) and the RX scratch iovec may each add one. */
#define VS_GUEST_IOV (VS_MAX_IOV - 2)
int vs_host_fatal(int err);
int vs_host_drops(const struct vs_pair *p, int err);
uint32_t vs_iov_cut(const struct iovec *in, uint32_t n, uint64_t from, uint64_t len, struct iovec *out);
struct iovec *vs_host_iov(const struct vs_pair *p, struct iovec *iov, uint32_t *niov, struct iovec *cut);
int vs_chain_fault(const struct vs_pair *p, struct vs_ring *r, uint16_t head, int fault);
/* vs_net_tx.c, vs_net_rx.c: one batch of each direction */
int vs_tx_batch(struct vs_pair *p);
int vs_rx_batch(struct vs_pair *p);

#endif /* VS_API_H */
