/* tap_syscall_bench.c - the floor a tap allows (benchmarks/tap_syscall_bench.py runs it): a tap with a
 * 12-byte vnet header, one writev/readv per frame against io_uring batches of READV/WRITEV SQEs
 * (RWF_NOWAIT, the tap as fixed file 0), optionally under an allow-everything seccomp filter.
 *   tapbench tx|rxwait BATCH FILTER FRAMES SIZE [LINK]    (BATCH 0: one syscall per frame)
 * rxwait prints "ready", waits for a line on stdin (the backlog is queued meanwhile), then drains. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/if_tun.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

struct ring {
    int fd;
    unsigned *sqh, *sqt, *sqm, *sqa, *cqh, *cqt, *cqm;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static int ring_init(struct ring *r, unsigned entries, int hostfd)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = getenv("DEFER")   ? IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
              : getenv("PLAIN") ? 0
                                : IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
    r->fd = syscall(__NR_io_uring_setup, entries, &p);
    if (r->fd < 0) {
        perror("setup");
        return -1;
    }
    size_t sqsz = p.sq_off.array + p.sq_entries * 4, cqsz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (cqsz > sqsz)
        sqsz = cqsz;
    char *sq = mmap(0, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    r->sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, IORING_OFF_SQES);
    r->sqh = (void *)(sq + p.sq_off.head);
    r->sqt = (void *)(sq + p.sq_off.tail);
    r->sqm = (void *)(sq + p.sq_off.ring_mask);
    r->sqa = (void *)(sq + p.sq_off.array);
    r->cqh = (void *)(sq + p.cq_off.head);
    r->cqt = (void *)(sq + p.cq_off.tail);
    r->cqm = (void *)(sq + p.cq_off.ring_mask);
    r->cqes = (void *)(sq + p.cq_off.cqes);
    int fds[1] = { hostfd };
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_FILES, fds, 1) < 0) {
        perror("reg");
        return -1;
    }
    return 0;
}

/* submit n rw sqes, wait for all; returns successes */
static int ring_batch(struct ring *r, int op, struct iovec *iov, int n, int link, int nowait, int *res)
{
    unsigned tail = *r->sqt, mask = *r->sqm;
    for (int i = 0; i < n; i++) {
        struct io_uring_sqe *s = &r->sqes[(tail + i) & mask];
        memset(s, 0, sizeof *s);
        s->opcode = op;
        s->fd = 0;
        s->flags = IOSQE_FIXED_FILE | (link && i < n - 1 ? IOSQE_IO_LINK : 0);
        s->addr = (uintptr_t)&iov[i];
        s->len = 1;
        s->rw_flags = nowait ? RWF_NOWAIT : 0;
        s->user_data = i;
        r->sqa[(tail + i) & mask] = (tail + i) & mask;
    }
    __atomic_store_n(r->sqt, tail + n, __ATOMIC_RELEASE);
    int rc = syscall(__NR_io_uring_enter, r->fd, n, n, IORING_ENTER_GETEVENTS, NULL, 0);
    if (rc < 0) {
        perror("enter");
        exit(1);
    }
    unsigned h = *r->cqh, t = __atomic_load_n(r->cqt, __ATOMIC_ACQUIRE);
    int ok = 0;
    for (; h != t; h++) {
        struct io_uring_cqe *c = &r->cqes[h & *r->cqm];
        res[c->user_data] = c->res;
        ok += c->res > 0;
    }
    __atomic_store_n(r->cqh, h, __ATOMIC_RELEASE);
    return ok;
}

static void allow_all(void)
{
    struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
    struct sock_fprog pr = { 1, f };
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &pr))
        perror("seccomp");
}

int main(int argc, char **argv)
{
    const char *mode = argv[1];
    int batch = atoi(argv[2]);
    int filt = atoi(argv[3]);
    long n = atol(argv[4]);
    int size = atoi(argv[5]);
    int link = argc > 6 ? atoi(argv[6]) : 0;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "ubt0");
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("TUNSETIFF");
        return 1;
    }
    int hl = 12;
    ioctl(fd, TUNSETVNETHDRSZ, &hl);
    {
        int sk = socket(AF_INET, SOCK_DGRAM, 0);
        struct ifreq q;
        memset(&q, 0, sizeof q);
        strcpy(q.ifr_name, "ubt0");
        q.ifr_qlen = 200000;
        if (ioctl(sk, SIOCSIFTXQLEN, &q))
            perror("txqlen");
        ioctl(sk, SIOCGIFFLAGS, &q);
        q.ifr_flags |= IFF_UP;
        if (ioctl(sk, SIOCSIFFLAGS, &q))
            perror("up");
        close(sk);
    }
    if (filt)
        allow_all();
    static char bufs[64][2048 + 12];
    struct iovec iov[64];
    int res[64];
    for (int i = 0; i < 64; i++) {
        memset(bufs[i], 0, sizeof bufs[i]);
        memset(bufs[i] + 12, 0xff, 6);
        bufs[i][12 + 12] = 0x08;
    }
    struct ring r = { .fd = -1 };
    if (batch > 0 && ring_init(&r, 64, fd))
        return 1;
    if (!strcmp(mode, "rxwait")) { /* wait for backlog to be filled by the script */
        printf("ready\n");
        fflush(stdout);
        getchar();
    }
    int tx = mode[0] == 't';
    for (int i = 0; i < 64; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = tx ? 12 + size : sizeof bufs[i];
    }
    double t0 = now();
    long done = 0, calls = 0;
    while (done < n) {
        if (batch == 0) {
            ssize_t k = tx ? writev(fd, iov, 1) : readv(fd, iov, 1);
            calls++;
            if (k <= 0) {
                if (!tx && errno == EAGAIN)
                    break;
                perror("rw");
                return 1;
            }
            done++;
        } else {
            int ok = ring_batch(&r, tx ? IORING_OP_WRITEV : IORING_OP_READV, iov, batch, link, 1, res);
            if (!tx && ok < batch) {
                done += ok;
                break;
            }
            calls++;
            if (ok == 0) {
                if (!tx)
                    break;
                fprintf(stderr, "res %d\n", res[0]);
                return 1;
            }
            done += ok;
        }
    }
    double dt = now() - t0;
    printf("%s batch=%d filter=%d link=%d size=%d: %ld pkts %.1f ns/pkt calls %ld\n", mode, batch, filt, link, size,
           done, dt * 1e9 / done, calls);
    return 0;
}
