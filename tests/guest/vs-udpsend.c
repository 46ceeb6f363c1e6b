/* vs-udpsend: DST_IP PORT MBYTES SIZE gso|plain   (the guest's UDP sender for benchmarks/uso_bench.py)
 *
 * Sends MBYTES MiB of UDP payload to DST_IP:PORT in datagrams of SIZE bytes, then prints one line
 * "bytes=N seconds=S calls=C drops=D mode=M". gso: UDP_SEGMENT = SIZE on the socket and up to 64
 * datagrams (at most 65000 bytes) per send(): the kernel segments them, or the device does when the
 * driver has HOST_USO. plain: sendmmsg() of 64 single datagrams. Debian 12's iperf3 cannot do the
 * first. ENOBUFS / EAGAIN (a full queue) or ECONNREFUSED (an earlier datagram found no listener) is
 * counted in drops and the send is retried after a yield.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define BATCH 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: vs-udpsend DST_IP PORT MBYTES SIZE gso|plain\n");
    return 2;
}

/* One send of up to `want` payload bytes; returns the bytes sent, 0 on a full queue, -1 on error. */
static long send_batch(int fd, char *buf, long want, int size, int gso)
{
    if (gso) {
        ssize_t n = send(fd, buf, (size_t)want, 0);
        if (n < 0)
            return (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) ? 0 : -1;
        return (long)n;
    }
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int count = (int)(want / size);
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = buf + (long)i * size;
        iov[i].iov_len = (size_t)size;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = sendmmsg(fd, msgs, (unsigned)count, 0);
    if (n < 0)
        return (errno == ENOBUFS || errno == EAGAIN || errno == ECONNREFUSED) ? 0 : -1;
    return (long)n * size;
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return usage();
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
    long total = atol(argv[3]) << 20;
    int size = atoi(argv[4]), gso = strcmp(argv[5], "gso") == 0;
    if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1 || total <= 0 || size < 1 || size > 8972
        || (!gso && strcmp(argv[5], "plain") != 0))
        return usage();
    int per = BATCH;
    while ((long)per * size > 65000)
        per--;
    long batch = (long)per * size;
    char *buf = calloc(1, (size_t)batch);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (!buf || fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
        perror("vs-udpsend: socket/connect");
        return 1;
    }
    if (gso && setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &size, sizeof(size)) < 0) {
        perror("vs-udpsend: UDP_SEGMENT");
        return 1;
    }
    long sent = 0, calls = 0, drops = 0;
    double t0 = now();
    while (sent < total) {
        long want = total - sent < batch ? total - sent : batch;
        want -= want % size;
        if (want == 0)
            break;
        long n = send_batch(fd, buf, want, size, gso);
        if (n < 0) {
            perror("vs-udpsend: send");
            return 1;
        }
        calls++;
        if (n == 0) {
            drops++;
            sched_yield();
        }
        sent += n;
    }
    printf("bytes=%ld seconds=%.6f calls=%ld drops=%ld mode=%s\n", sent, now() - t0, calls, drops, argv[5]);
    return 0;
}
