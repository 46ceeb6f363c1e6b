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
 * vs_ring.c, vs_split.c and vs_packed.c are the ring layouts (split, packed) and know nothing of the
 * net device (their functions take the memory table and their ring), vs_layout.c dispatches to the
 * ring's layout; vs_uring.c submits a batch of reads or writes on the host fd through an io_uring;
 * vs_net.c, vs_net_tx.c and vs_net_rx.c move packets between a ring and the host fd; vs_pair.c is the
 * exported poll of one RX/TX pair.
 */
#ifndef VS_API_H
#define VS_API_H

#include <stdint.h>

/* ---- cdef begin ---- */
#define VS_API_VERSION 12
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
#define VS_LOG_PAGE_SHIFT 12 /* dirty log: one bit per 4 KiB page of guest-physical address */

/* struct vs_ring.flags: negotiated features that change the datapath */
#define VS_RF_EVENT_IDX 1
#define VS_RF_INDIRECT 2
#define VS_RF_MRG 4
#define VS_RF_PACKED 8    /* VIRTIO_F_RING_PACKED: vs_ring_start picks the packed layout */
#define VS_RF_IN_ORDER 16 /* VIRTIO_F_IN_ORDER: a packed batch of device-readable buffers gets one used entry */

/* vs_pair_poll() result bits */
#define VS_MORE 1
#define VS_TX_BLOCKED 2
#define VS_RX_STARVED 4
#define VS_PUBLISHED 8 /* a ring's used index moved: the poll completed chains (and may have signalled) */

/* struct vs_pair.host_flags: how the host fd behaves where fds differ */
#define VS_HOST_EMPTY_OK 1     /* a 0-byte read is an empty datagram (dropped), not the peer closing */
#define VS_HOST_REFUSED_DROP 2 /* ECONNREFUSED is one lost packet (connected UDP), not the end */
/* VS_HOST_STREAM: a byte stream: each frame is a 4-byte big-endian length, then the frame (QEMU -netdev
 * stream); needs the tx/rx stage buffers and hdr_omit == hdr_len */
#define VS_HOST_STREAM 4

/* struct vs_ring.broken: why the guest's ring is unusable (0 = not broken) */
#define VS_BROKEN_AVAIL_IDX 1
#define VS_BROKEN_HEAD 2
#define VS_BROKEN_NEXT 3
#define VS_BROKEN_LOOP 4
#define VS_BROKEN_CHAIN_LEN 5
#define VS_BROKEN_NESTED_INDIRECT 6
#define VS_BROKEN_WRAP 7 /* packed: a descriptor's AVAIL/USED flags contradict the wrap counters */

/* Packed ring positions (and the vhost-user packed vring state, each 16-bit half): index | wrap << 15 */
#define VS_PK_WRAP 0x8000
#define VS_PK_WRITABLE 0x10000 /* struct vs_ring.chain entries: the chain was device-writable */
#define VS_PK_WROTE 0x20000    /* ... and its used entry has a length > 0 (WRITE in its used flags) */

struct vs_layout; /* the ring layout's functions (vs_split.c, vs_packed.c): C only */

struct vs_region {
    uint64_t gpa; /* guest-physical address of byte 0 */
    uint64_t uva; /* front-end user address of byte 0 (ring addresses use these) */
    uint64_t size;
    uint8_t *hva; /* our address of byte 0 */
};

/* Dirty log for live migration (vhost-user "Migration"): bit p % 8 of byte p / 8 is page p of
 * guest-physical address.  Python maps it (SET_LOG_BASE) and keeps it alive; size is in bytes.
 * Every guest write is logged while `all` (VHOST_F_LOG_ALL acked) and base are set. */
struct vs_log {
    uint8_t *base;
    uint64_t size;
    uint32_t all;
    uint64_t overflow; /* log calls that reached past the log's end (those pages not marked) */
    uint64_t writes;   /* log calls that marked pages */
};

struct vs_mem {
    uint32_t n;
    struct vs_region r[VS_MAX_REGIONS];
    struct vs_log *log; /* NULL, or the dirty log every device store into this memory is marked in */
};

struct vs_ring_stats {
    uint64_t packets, bytes, chains;
    uint64_t drops_fault, drops_bad_desc, drops_short, drops_hostfd;
    uint64_t rx_starved, notify_sent, notify_suppressed, batches;
    uint64_t drops_oversize; /* RX: a frame larger than the buffers the driver gave (dropped, not cut) */
};

struct vs_ring {
    uint32_t num;
    uint32_t flags;      /* VS_RF_* */
    int call_fd, err_fd; /* -1: none */
    uint64_t desc_uva, avail_uva, used_uva;
    void *desc, *avail, *used; /* host pointers, set by vs_ring_start/vs_ring_remap */
    uint16_t last_avail, used_idx, signalled_used;
    uint8_t signalled_valid, running;
    int broken; /* 0 or VS_BROKEN_* */
    struct vs_ring_stats st;
    /* Dirty logging of this ring's used ring (SET_VRING_ADDR flag VHOST_VRING_F_LOG): split, every used-ring
     * store at offset off is logged at log_addr + off (log_addr is the front-end's, any value); packed, the
     * descriptor ring's stores at its own GPA (log_addr unused: QEMU names the device area there). */
    uint64_t log_addr;
    uint32_t log_used;
    /* Chosen once by vs_ring_start from VS_RF_PACKED: the layout every ring function dispatches to. */
    const struct vs_layout *layout;
    /* Packed only.  last_avail, used_idx and signalled_used hold positions (index | wrap << 15): the
     * device cannot read its used position back from guest memory.  chain is Python's table of
     * chain_cap (>= num) entries: for the chain taken at ring index i, chain[i] is its descriptor
     * count (| VS_PK_WRITABLE | VS_PK_WROTE), which its used entry skips.  used_last_id and batch_writable describe
     * the batch vs_used_publish makes visible. */
    uint32_t *chain;
    uint32_t chain_cap;
    uint16_t used_last_id;
    uint8_t batch_writable;
};

/* The ring-position state page (vhostsplice/device/statepage.py: its layout, validation and use; docs/design-notes.md):
 * a shared mapping that outlives the worker.  Python writes the header and, when a ring starts, its slot
 * (ring addresses, num, live, the start positions); C writes only seq and the positions, around each
 * publish (vs_net_publish): next_* and seq odd before the release store, avail/used_pos and seq even after. */
struct vs_ring_slot {
    uint64_t desc_uva, avail_uva, used_uva; /* the ring this slot describes */
    uint32_t num;
    uint32_t live;                  /* 1 from the ring's start until the front-end is given its positions */
    uint32_t seq;                   /* odd: a publish is between its two records */
    uint16_t avail_pos, used_pos;   /* after the last publish (vs_avail_pos, vs_used_pos) */
    uint16_t next_avail, next_used; /* seq odd: what the publish in progress makes visible */
    uint32_t reserved;
};
struct vs_ring_state {
    uint32_t magic, version, size, layout;
    uint64_t generation;         /* workers that have taken the page */
    struct vs_ring_slot ring[2]; /* virtqueue 0 (rx) and 1 (tx) */
};

/* The host fd's io_uring (vs_uring.c; docs/architecture.md "Batched host fd I/O"): one io_uring_enter per
 * batch of readv (RX) or writev (TX) on the host fd, registered as fixed file 0.  vs_uring_setup makes
 * the ring (disabled) and fills fd and the mapping sizes; Python maps the ring (offset 0, ring_len bytes)
 * and the SQE array (offset VS_URING_OFF_SQES, sqes_len bytes), keeps both alive and hands them to
 * vs_uring_attach; vs_uring_restrict registers the host fd and the restrictions (readv and writev on
 * the fixed file only) and enables the ring, before the worker confines itself.  Python closes fd. */
#define VS_URING_BATCH 32            /* most reads or writes one io_uring_enter submits (the SQ size) */
#define VS_URING_OFF_SQES 0x10000000 /* IORING_OFF_SQES */
struct vs_uring {
    int fd;                      /* the ring (Python's: it closes it), or -1 */
    uint32_t on;                 /* 1: batches go through the ring (vs_uring_restrict); C clears it on a failure */
    int failed;                  /* the -errno that turned the ring off (0: none) */
    uint32_t entries;            /* SQ entries */
    uint32_t ring_len, sqes_len; /* the two mappings Python makes */
    uint32_t o_sq_head, o_sq_tail, o_sq_mask, o_sq_array, o_cq_head, o_cq_tail, o_cq_mask, o_cqes;
    uint32_t *sq_head, *sq_tail, *sq_array, *cq_head, *cq_tail; /* inside Python's mapping */
    uint32_t sq_mask, cq_mask;
    void *sqes, *cqes;
    uint32_t seq;      /* batches submitted: the high half of each SQE's user_data */
    uint32_t rx_burst; /* reads the next RX batch asks for: twice the frames of the last, 2..entries */
    uint32_t rx_last;  /* frames the last RX batch delivered (2: more): at most 1, the next is a trickle's */
    uint64_t enters, tx_sqes, rx_sqes;
    uint64_t rx_copies;      /* RX frames moved to an earlier chain of their batch (a hole before them) */
    uint64_t confirms;       /* a batch that moved nothing re-checked by one readv/writev */
    uint64_t trickles;       /* RX batches begun by one readv (the trickle rule, vs_net_rx_batch.c) */
    uint64_t trickle_bursts; /* ... whose readv got a frame right after a batch of one: on to io_uring */
    uint64_t tx_raced;       /* TX chains dropped because a later write of their batch went out first */
};

struct vs_pair {
    struct vs_mem mem;
    struct vs_ring rx, tx; /* virtqueue 0 and 1 */
    int host_fd;
    uint32_t hdr_len; /* virtio-net header bytes in the guest's buffers: VS_NET_HDR_LEN */
    uint32_t rx_max;  /* largest packet the host fd can deliver, header included */
    uint32_t tx_budget, rx_budget;
    int fault_exit;   /* per-chain guest faults end the poll with -EFAULT */
    uint8_t *scratch; /* Python's buffer behind the guest's RX iovecs: catches oversize frames */
    uint32_t scratch_len;
    uint32_t hdr_omit;   /* last bytes of the guest's header the host fd does not carry: 0 (vnet
                                   header of hdr_len), 2 (10-byte legacy vnet header), hdr_len (none) */
    uint32_t host_flags; /* VS_HOST_* */
    /* VS_HOST_STREAM only: Python's buffers for the unsent tail of a partly written frame (len bytes
     * from off) and for stream bytes read but not yet delivered (len bytes, length prefixes included). */
    uint8_t *tx_stage;
    uint32_t tx_stage_cap, tx_stage_len, tx_stage_off;
    uint8_t *rx_stage;
    uint32_t rx_stage_cap, rx_stage_len;
    struct vs_log log;           /* mem.log points here (Python sets it once) */
    struct vs_ring_state *state; /* NULL, or the ring-position state page (vhostsplice/device/statepage.py) */
    struct vs_uring uring;       /* uring.on: the host fd's reads and writes go in batches through it */
};

/* The worker loop's wait (vs_pair_wait; docs/architecture.md "The loop in C"): epoll_wait on the loop's
 * epoll, and as long as every wake-up is traffic (a kick of a ring epoll watches, the host fd readable and
 * nothing else) C serves it itself: kicks drained, vs_pair_rounds run, and back to epoll_wait, no Python
 * in between.  It returns to Python for anything else: a wake-up with any other event (a message, a signal,
 * a connection, a host fd error or room to write: handed over untouched, no kick drained, no batch run), a
 * batch that changed what epoll must watch (RX starved or fed, TX blocked or not), a timeout, the time
 * Python gave (until_ns), an error.  A signal is an event: the loop's signal fd.  Counts accumulate over a
 * call. */
#define VS_WAIT_EVENTS 16 /* most events one epoll_wait takes (the loop watches fewer fds) */
/* --busy-poll auto (struct vs_wait.spin_us): after a served wake-up's poll that published, the wait spins
 * for the adaptive window of what it published (RX: the guest's answer is a kick; TX only: the host's is a
 * frame).  A window is judged by when the next wake-up came: while spinning, kept; later but within
 * VS_AUTO_MAX_NS, doubled (from VS_AUTO_START_NS), so an answer that fast is caught next time; later
 * still, closed to 0, so a slow peer or a quiet ring costs no spinning once it is closed (the shape of QEMU's adaptive
 * AioContext polling, whose poll-max-ns default is 32 us). */
#define VS_SPIN_AUTO 0xffffffffu
#define VS_AUTO_START_NS 4000u
#define VS_AUTO_MAX_NS 32000u
struct vs_wait_event {
    int32_t fd;
    uint32_t events;
};
struct vs_wait {
    /* Python's: what epoll watches, kept current by the loop */
    int epfd;        /* the loop's epoll */
    int kick_fd[2];  /* ring i's kick eventfd while epoll watches it, else -1 */
    int host_fd;     /* the host fd: EPOLLIN alone is traffic; -1: never */
    uint32_t live;   /* 1: the rings run (with nothing ready and timeout 0, C runs the rounds itself) */
    uint32_t synced; /* the VS_RX_STARVED | VS_TX_BLOCKED bits epoll's watch set follows */
    /* Python's, each call */
    int safety_ms;     /* the timeout of a wait after traffic (the safety poll's; -1: none) */
    uint64_t until_ns; /* return by then, CLOCK_MONOTONIC (0: no limit) */
    uint32_t spin_us;  /* --busy-poll: after a poll that published, the next wait spins this long; VS_SPIN_AUTO */
    /* C's, kept across calls: --busy-poll auto */
    uint32_t auto_ns[2];   /* the window after a poll that published RX [0], only TX [1] */
    int32_t auto_key;      /* the window the last wait opened, judged at the next wake-up; -1: none (Python's start) */
    uint32_t auto_spun_ns; /* its length then */
    uint64_t auto_from_ns; /* when that wait began */
    /* out: how the call ended */
    uint32_t took;          /* 1: on a wake-up C served (its rounds' bits below) */
    uint32_t rounds;        /* polls the last served wake-up ran: 1, or 2 with the re-check */
    int32_t round, recheck; /* their bits */
    uint32_t n;             /* events handed to Python in ev */
    struct vs_wait_event ev[VS_WAIT_EVENTS];
    /* out: counts over the call (Python adds them to its own) */
    uint64_t wakeups;                          /* epoll_waits that returned (a spin that ran out: not one) */
    uint64_t served;                           /* wake-ups of traffic C served, and pending polls it ran */
    uint64_t kicks[2];                         /* kicks drained, per ring */
    uint64_t rechecks, recheck_found;          /* re-checks run, and those that published */
    uint64_t spin_polls, spin_found, spin_out; /* --busy-poll: epoll_wait(0)s; windows that found work, ran out */
};

/* vs_pair.c */
int vs_api_version(void);
int vs_pair_poll(struct vs_pair *p);
int vs_pair_rounds(struct vs_pair *p, struct vs_wait *w);
int vs_pair_wait(struct vs_pair *p, struct vs_wait *w, int timeout_ms, uint32_t spin_us, int pending);
uint32_t vs_auto_window(uint32_t window, uint32_t spun, uint64_t gap);
int vs_drain_eventfd(int fd);
/* vs_layout.c: the ring layout (also declared for the C sources below) */
int vs_ring_num_ok(uint32_t num, uint32_t flags);
int vs_ring_start(const struct vs_mem *m, struct vs_ring *r);
int vs_ring_remap(const struct vs_mem *m, struct vs_ring *r);
/* vs_log.c */
int vs_log_write(struct vs_log *l, uint64_t gpa, uint64_t len);
/* vs_uring.c: the host fd's io_uring, set up before confinement */
int vs_uring_setup(struct vs_uring *u, uint32_t entries);
int vs_uring_attach(struct vs_uring *u, void *ring, uint64_t ring_len, void *sqes, uint64_t sqes_len);
int vs_uring_restrict(struct vs_uring *u, int host_fd);
/* ---- cdef end ---- */

/* ------------------------------------------------------------------ internal (C sources only) */
#include <stddef.h>
#include <sys/uio.h>

#define VS_NUM_BUFFERS_OFF 10 /* virtio_net_hdr_v1.num_buffers */

/* Per-chain outcome of a walk (> 0); a broken ring is -EBADMSG. */
enum vs_chain_result {
    VS_CHAIN_OK = 0,
    VS_CHAIN_FAULT,    /* address outside guest memory: drops_fault */
    VS_CHAIN_BAD_DESC, /* wrong direction, bad indirect: drops_bad_desc */
    VS_CHAIN_TOO_MANY, /* more than the iovecs left: drops_bad_desc (or stop a merge) */
    VS_CHAIN_SHORT,    /* shorter than the virtio-net header: drops_short */
};

/* vs_mem.c: guest address translation */
uint8_t *vs_uva_to_hva(const struct vs_mem *m, uint64_t uva, uint64_t len);
uint8_t *vs_gpa_to_hva(const struct vs_mem *m, uint64_t gpa, uint64_t len);
int vs_uva_to_gpa(const struct vs_mem *m, uint64_t uva, uint64_t len, uint64_t *gpa);
int vs_gpa_to_iov(const struct vs_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, uint64_t *gpas, uint32_t *niov,
                  uint32_t max);
void vs_iov_write(const struct iovec *iov, uint32_t niov, uint64_t off, const void *src, size_t n);

/* vs_log.c: the dirty log (live migration).  Callers test vs_logging() first: with logging off each
 * logging site costs one branch. */
static inline int vs_logging(const struct vs_log *l)
{
    return l != NULL && l->all;
}
void vs_log_iov(struct vs_log *l, const struct iovec *iov, const uint64_t *gpa, uint32_t niov, uint64_t len);
void vs_log_ring(struct vs_log *l, const struct vs_ring *r, uint64_t off, uint64_t len);

/* ---- the ring layout interface: vs_split.c implements it for the split virtqueue, vs_packed.c for
 * the packed one (virtio 1.2 2.8); vs_ring_start picks one (VS_RF_PACKED) and vs_layout.c dispatches
 * every function below through the ring's table.  Every function takes the memory table and its ring,
 * never the net device (docs/architecture.md). ---- */
struct vs_walk {
    struct iovec *iov; /* where the chain's iovecs go */
    uint64_t *gpa;     /* NULL, or where each iovec's guest-physical address goes (RX: dirty log) */
    uint32_t max;      /* room in iov */
    uint32_t niov;     /* out */
    uint64_t len;      /* out: total bytes */
    uint32_t ndesc;    /* out: ring descriptors the chain holds (an indirect table counts 1) */
    uint16_t head;     /* out: split, the head index; packed, the buffer id */
    uint16_t at;       /* out: the chain's avail position (vs_avail_rewind(r, at) gives it back) */
};
/* vs_ring_num_ok, vs_ring_start, vs_ring_remap: declared in the cdef section above */
int vs_avail_pending(struct vs_ring *r);
uint16_t vs_avail_pos(const struct vs_ring *r);
void vs_avail_rewind(struct vs_ring *r, uint16_t pos);
uint16_t vs_used_pos(const struct vs_ring *r);
int vs_pop_chain(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w);
void vs_prefetch_chain(const struct vs_mem *m, const struct vs_ring *r, uint16_t at);
void vs_used_add(struct vs_ring *r, uint16_t head, uint32_t len);
void vs_used_publish(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used);
void vs_notify_disable(const struct vs_mem *m, struct vs_ring *r);
int vs_notify_enable(const struct vs_mem *m, struct vs_ring *r, uint16_t seen);

/* vs_ring.c: what both layouts share */
int vs_ring_fail(struct vs_ring *r, int reason);
void vs_ring_call(struct vs_ring *r, int want);
int vs_ring_map(const struct vs_mem *m, struct vs_ring *r, uint64_t desc_len, uint64_t avail_len, uint64_t used_len,
                uint32_t masks);
int vs_walk_add(const struct vs_mem *m, int writable, int desc_writable, uint64_t addr, uint32_t len,
                struct vs_walk *w);

/* One layout: the functions above, each with the same contract. */
struct vs_layout {
    int (*num_ok)(uint32_t num);
    int (*check)(const struct vs_ring *r);                   /* alignment, the layout's fields */
    int (*map)(const struct vs_mem *m, struct vs_ring *r);   /* translate the ring areas */
    int (*start)(const struct vs_mem *m, struct vs_ring *r); /* mapped: the positions to resume from */
    int (*avail_pending)(struct vs_ring *r);
    int (*pop_chain)(const struct vs_mem *m, struct vs_ring *r, int writable, struct vs_walk *w);
    void (*prefetch_chain)(const struct vs_mem *m, const struct vs_ring *r, uint16_t at);
    void (*used_add)(struct vs_ring *r, uint16_t head, uint32_t len);
    void (*used_publish)(const struct vs_mem *m, struct vs_ring *r, uint16_t old_used);
    void (*notify_disable)(const struct vs_mem *m, struct vs_ring *r);
    int (*notify_enable)(const struct vs_mem *m, struct vs_ring *r, uint16_t seen);
};
extern const struct vs_layout vs_split_layout;  /* vs_split.c */
extern const struct vs_layout vs_packed_layout; /* vs_packed.c */

/* vs_uring.c: n reads (write 0) or writes of the host fd in one io_uring_enter; res[i] is slot i's
 * result (bytes or -errno; -ECANCELED for one the kernel did not take or complete).  Returns the count submitted or
 * -errno (nothing submitted). */
int vs_uring_rw(struct vs_uring *u, int write, struct iovec *const *iov, const uint32_t *niov, uint32_t n,
                int32_t *res);
void vs_uring_off(struct vs_uring *u, int err);

/* vs_net.c: what the net device's TX and RX share (host fd errors, the header bytes it carries) */
/* Iovecs one walk may fill with guest pieces: readv/writev take at most UIO_MAXIOV (1024), and a header
 * split (vs_iov_cut) and the RX scratch iovec may each add one. */
#define VS_GUEST_IOV (VS_MAX_IOV - 2)
int vs_host_fatal(int err);
int vs_host_drops(const struct vs_pair *p, int err);
uint32_t vs_iov_cut(const struct iovec *in, uint32_t n, uint64_t from, uint64_t len, struct iovec *out);
struct iovec *vs_host_iov(const struct vs_pair *p, struct iovec *iov, uint32_t *niov, struct iovec *cut);
int vs_chain_fault(const struct vs_pair *p, struct vs_ring *r, uint16_t head, int fault);
uint32_t vs_batch_room(const struct vs_pair *p, uint32_t left);
void vs_net_publish(struct vs_pair *p, struct vs_ring *r, uint16_t old_used);
/* vs_net_tx.c, vs_net_rx_batch.c: one batch of each direction */
int vs_tx_batch(struct vs_pair *p);
int vs_rx_batch(struct vs_pair *p);
/* vs_net_rx.c: RX one frame at a time, the steps vs_net_rx_batch.c's io_uring batches reuse */
#define VS_RX_IDLE 0x100 /* internal: the host fd has nothing to read */
/* The chains one frame fills with MRG_RXBUF (5.1.6.4), collected by vs_rx_merge. */
struct vs_rx_merge {
    struct iovec iov[VS_MAX_IOV + 1]; /* + 1: the scratch iovec */
    struct iovec cut[VS_MAX_IOV + 2]; /* iov without the omitted header bytes (+ 1 split, + 1 scratch) */
    uint64_t gpa[VS_MAX_IOV + 1];     /* guest-physical address of each iov (the dirty log's) */
    uint16_t heads[VS_MAX_IOV];
    uint64_t cap[VS_MAX_IOV];
    uint32_t n, niov, ndesc;
    uint64_t total;
    uint16_t ends[VS_MAX_IOV]; /* the avail position after each collected chain */
    uint16_t start;            /* the avail position before the first collected chain */
};
int vs_rx_error(const struct vs_pair *p, struct vs_ring *r, ssize_t got, int err);
int vs_rx_with_scratch(struct vs_pair *p, struct iovec *iov, uint32_t niov);
void vs_rx_log_dropped(struct vs_pair *p, const struct iovec *iov, const uint64_t *gpa, uint32_t niov, uint64_t got,
                       uint64_t cap);
int vs_rx_oversize(struct vs_ring *r);
int vs_rx_starved(struct vs_pair *p, struct vs_ring *r, uint16_t seen);
void vs_rx_deliver(struct vs_pair *p, struct vs_ring *r, const struct vs_walk *w, uint64_t got);
int vs_rx_single(struct vs_pair *p, struct vs_ring *r, struct iovec *iov, uint64_t *gpa, struct iovec *cut);
int vs_rx_merge(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m);
int vs_rx_stream(struct vs_pair *p, struct vs_ring *r, struct vs_rx_merge *m);

#endif /* VS_API_H */
