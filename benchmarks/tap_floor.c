/* tap_floor.c - the floor a tap allows one thread: one readv (RX) or writev (TX) per frame on a queue
 * of a multi-queue tap, with or without the 12-byte virtio-net header, nothing else per frame (no ring,
 * no notification, no poll while frames wait). With a batch size B > 0 the same reads or writes go
 * through io_uring, B per io_uring_enter (reads with RWF_NOWAIT: inline, in order, -EAGAIN once the
 * queue is empty). Compiled by benchmarks/tap_floor.py at benchmark time; never committed as a binary.
 *
 *   tap_floor rx|tx TAP HDR SIZE BATCH
 *     HDR    virtio-net header bytes on the queue (12: IFF_VNET_HDR + TUNSETVNETHDRSZ 12, as the worker's
 *            default tap; 0: no IFF_VNET_HDR, as `--no-offloads`); TUNSETOFFLOAD 0 (nothing acked)
 *     SIZE   tx: frame bytes written (an IPv4/UDP frame like testpmd txonly's); rx: ignored
 *     BATCH  0: readv/writev, one syscall per frame; B: io_uring, B reads or writes per enter
 *
 * It attaches its queue, prints "ready", waits for a line on stdin, then moves frames until SIGTERM
 * (tx) or SIGTERM (rx; an empty queue is waited for with poll, so the drain's tail costs no spinning)
 * and prints one JSON line of counts. RX reads land in a pool of 256 buffers used in turn, as a guest's
 * RX ring of 256 would be, laid out as testpmd virtio-user's mbufs are: the frame at 128 bytes into a
 * 2304-byte slot (cache-line aligned), the header just before it, room for 2048 frame bytes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define POOL 256
#define BUF 2048  /* frame bytes a buffer takes */
#define SLOT 2304 /* bytes per buffer in the pool */
#define DATA 128  /* where the frame starts in a slot (DPDK's RTE_PKTMBUF_HEADROOM) */
#define MAX_BATCH 256

static volatile sig_atomic_t stopping;

struct counts {
    unsigned long long frames, bytes, syscalls, eagain, errors, enters;
};

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "tap_floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Attach a queue of the multi-queue tap NAME with the worker's flags. */
static int open_tap(const char *name, int hdr)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        die("open /dev/net/tun");
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE | (hdr ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0)
        die("TUNSETIFF");
    if (hdr && ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0)
        die("TUNSETVNETHDRSZ");
    if (ioctl(fd, TUNSETOFFLOAD, 0) < 0)
        die("TUNSETOFFLOAD");
    return fd;
}

static uint16_t csum(const uint8_t *p, size_t n)
{
    uint32_t s = 0;
    for (size_t i = 0; i + 1 < n; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* An IPv4/UDP frame of SIZE bytes as testpmd txonly builds it (198.18.0.1:9 -> 198.18.0.2:9, to a MAC
 * that is not the tap's), behind HDR zero header bytes. */
static size_t build_frame(uint8_t *f, int hdr, size_t size)
{
    static const uint8_t eth[14] = { 0x02, 0, 0, 0, 0, 0, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0x01, 0x08, 0x00 };
    uint8_t *ip = f + hdr + 14, *udp = ip + 20;
    size_t ip_len = size - 14, udp_len = size - 34;
    memset(f, 0, (size_t)hdr + size);
    memcpy(f + hdr, eth, sizeof eth);
    ip[0] = 0x45;
    ip[2] = (uint8_t)(ip_len >> 8), ip[3] = (uint8_t)ip_len;
    ip[8] = 64, ip[9] = 17;
    ip[12] = 198, ip[13] = 18, ip[14] = 0, ip[15] = 1;
    ip[16] = 198, ip[17] = 18, ip[18] = 0, ip[19] = 2;
    uint16_t c = csum(ip, 20);
    ip[10] = (uint8_t)(c >> 8), ip[11] = (uint8_t)c;
    udp[1] = 9, udp[3] = 9;
    udp[4] = (uint8_t)(udp_len >> 8), udp[5] = (uint8_t)udp_len;
    return (size_t)hdr + size;
}

static void wait_readable(int fd, struct counts *c)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    c->eagain++;
    poll(&p, 1, 50);
}

/* RX buffer I of the pool: the header's bytes, then room for BUF frame bytes at DATA. */
static struct iovec rx_buf(uint8_t *pool, int hdr, unsigned long i)
{
    return (struct iovec){ pool + (i % POOL) * SLOT + DATA - hdr, (size_t)hdr + BUF };
}

static void rx_readv(int fd, uint8_t *pool, int hdr, struct counts *c)
{
    for (unsigned long i = 0; !stopping; i++) {
        struct iovec iov = rx_buf(pool, hdr, i);
        ssize_t n = readv(fd, &iov, 1);
        c->syscalls++;
        if (n > 0)
            c->frames++, c->bytes += (unsigned long long)n;
        else if (n < 0 && errno == EAGAIN)
            wait_readable(fd, c);
        else if (n < 0 && errno != EINTR)
            c->errors++;
    }
}

static void tx_writev(int fd, uint8_t *frame, size_t len, struct counts *c)
{
    struct iovec iov = { frame, len };
    while (!stopping) {
        ssize_t n = writev(fd, &iov, 1);
        c->syscalls++;
        if (n > 0)
            c->frames++, c->bytes += (unsigned long long)n;
        else if (n < 0 && errno != EINTR)
            c->errors++;
    }
}

/* ---------------------------------------------------------------------------------- io_uring, raw */

struct uring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static void uring_setup(struct uring *u, unsigned entries, int cpu)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    u->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (u->fd < 0)
        die("io_uring_setup");
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    uint8_t *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_SQ_RING);
    uint8_t *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd, IORING_OFF_CQ_RING);
    u->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   u->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || u->sqes == MAP_FAILED)
        die("mmap io_uring");
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail), u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head), u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    cpu_set_t set; /* any io-wq worker on the loop's CPU (none expected: O_NONBLOCK tun is nowait) */
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    syscall(__NR_io_uring_register, u->fd, IORING_REGISTER_IOWQ_AFF, &set, sizeof set);
}

/* Queue B read/write SQEs (IORING_OP_READV with RWF_NOWAIT, or WRITEV), enter once, reap B CQEs.
 * Returns how many found an empty queue (-EAGAIN). */
static unsigned uring_batch(struct uring *u, int fd, int op, struct iovec *iov, unsigned b, struct counts *c)
{
    unsigned tail = *u->sq_tail, again = 0;
    for (unsigned i = 0; i < b; i++) {
        unsigned idx = (tail + i) & *u->sq_mask;
        struct io_uring_sqe *s = &u->sqes[idx];
        memset(s, 0, sizeof *s);
        s->opcode = (uint8_t)op, s->fd = fd, s->addr = (uint64_t)(uintptr_t)&iov[i], s->len = 1;
        s->rw_flags = op == IORING_OP_READV ? RWF_NOWAIT : 0;
        u->sq_array[idx] = idx;
    }
    __atomic_store_n(u->sq_tail, tail + b, __ATOMIC_RELEASE);
    int n = (int)syscall(__NR_io_uring_enter, u->fd, b, b, IORING_ENTER_GETEVENTS, NULL, 0);
    c->syscalls++, c->enters++;
    if (n < 0 && errno != EINTR)
        die("io_uring_enter");
    unsigned head = *u->cq_head, end = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    for (; head != end; head++) {
        int res = u->cqes[head & *u->cq_mask].res;
        if (res > 0)
            c->frames++, c->bytes += (unsigned long long)res;
        else if (res == -EAGAIN)
            again++;
        else
            c->errors++;
    }
    __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    return again;
}

static void uring_loop(int fd, int rx, uint8_t *mem, int hdr, size_t len, unsigned b, struct counts *c)
{
    struct uring u;
    struct iovec iov[MAX_BATCH];
    uring_setup(&u, b, sched_getcpu());
    for (unsigned long i = 0; !stopping; i++) {
        for (unsigned k = 0; k < b; k++)
            iov[k] = rx ? rx_buf(mem, hdr, i * b + k) : (struct iovec){ mem + DATA - hdr, len };
        if (uring_batch(&u, fd, rx ? IORING_OP_READV : IORING_OP_WRITEV, iov, b, c) && rx)
            wait_readable(fd, c);
    }
}

int main(int argc, char **argv)
{
    if (argc != 6 || (strcmp(argv[1], "rx") && strcmp(argv[1], "tx"))) {
        fprintf(stderr, "usage: tap_floor rx|tx TAP HDR SIZE BATCH\n");
        return 2;
    }
    int rx = !strcmp(argv[1], "rx"), hdr = atoi(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    unsigned batch = (unsigned)atoi(argv[5]);
    if ((hdr != 0 && hdr != 12) || size < 60 || size > BUF || batch > MAX_BATCH) {
        fprintf(stderr, "tap_floor: HDR 0 or 12, SIZE 60..%d, BATCH 0..%d\n", BUF, MAX_BATCH);
        return 2;
    }
    struct sigaction sa = { .sa_handler = on_term };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int fd = open_tap(argv[2], hdr);
    uint8_t *mem = aligned_alloc(4096, POOL * SLOT);
    if (mem == NULL)
        die("aligned_alloc");
    memset(mem, 0, POOL * SLOT); /* fault the pool in before the clock starts */
    size_t len = rx ? 0 : build_frame(mem + DATA - hdr, hdr, size);
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof line, stdin) == NULL)
        return 0;
    struct counts c = { 0 };
    if (batch)
        uring_loop(fd, rx, mem, hdr, len, batch, &c);
    else if (rx)
        rx_readv(fd, mem, hdr, &c);
    else
        tx_writev(fd, mem + DATA - hdr, len, &c);
    printf("{\"frames\": %llu, \"bytes\": %llu, \"syscalls\": %llu, \"eagain\": %llu, \"errors\": %llu, "
           "\"enters\": %llu}\n",
           c.frames, c.bytes, c.syscalls, c.eagain, c.errors, c.enters);
    return 0;
}
