/* vs-ethtool: channels DEV | set-combined DEV N | stats DEV   (SIOCETHTOOL; prints KEY=VALUE / NAME VALUE;
   per-queue names in Linux 6.1's form on every kernel). Since Linux 6.10 virtio_net reports per-queue
   packets and bytes only through the netdev netlink family (qstats-get), not ethtool: `stats` then adds
   them from there, under the same rx_queue_N_packets / tx_queue_N_bytes names. */
#include <errno.h>
#include <linux/ethtool.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int sock;
static struct ifreq ifr;

static int eth(void *data, const char *what)
{
    ifr.ifr_data = data;
    if (ioctl(sock, SIOCETHTOOL, &ifr) == 0)
        return 0;
    fprintf(stderr, "vs-ethtool: %s %s: %s\n", what, ifr.ifr_name, strerror(errno));
    exit(1);
}

static void channels(void)
{
    struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
    eth(&ch, "ETHTOOL_GCHANNELS");
    printf("max_combined=%u combined=%u max_rx=%u rx=%u max_tx=%u tx=%u\n", ch.max_combined, ch.combined_count,
           ch.max_rx, ch.rx_count, ch.max_tx, ch.tx_count);
}

/* netdev netlink (include/uapi/linux/netdev.h, Linux 6.9+; absent from bookworm's 6.1 headers) */
enum {
    NETDEV_CMD_QSTATS_GET = 12,
    QS_IFINDEX = 1,
    QS_QUEUE_TYPE = 2,
    QS_QUEUE_ID = 3,
    QS_SCOPE = 4,
    QS_RX_PACKETS = 8,
    QS_RX_BYTES = 9,
    QS_TX_PACKETS = 10,
    QS_TX_BYTES = 11,
    QS_SCOPE_QUEUE = 1
};

struct nlreq {
    struct nlmsghdr n;
    struct genlmsghdr g;
    char attrs[64];
};

static void put_attr(struct nlreq *r, unsigned short type, const void *data, unsigned short len)
{
    struct nlattr *a = (struct nlattr *)((char *)r + NLMSG_ALIGN(r->n.nlmsg_len));
    a->nla_type = type;
    a->nla_len = (unsigned short)(NLA_HDRLEN + len);
    memcpy((char *)a + NLA_HDRLEN, data, len);
    r->n.nlmsg_len = NLMSG_ALIGN(r->n.nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static unsigned long long attr_uint(const struct nlattr *a)
{
    unsigned long long v = 0;
    if (a->nla_len == NLA_HDRLEN + 4) {
        __u32 x;
        memcpy(&x, (const char *)a + NLA_HDRLEN, 4);
        v = x;
    } else if (a->nla_len >= NLA_HDRLEN + 8)
        memcpy(&v, (const char *)a + NLA_HDRLEN, 8);
    return v;
}

/* Send R; call fn(attribute, arg) for every top-level attribute of every reply until DONE. 0 or -1. */
static int nl_talk(int fd, struct nlreq *r, void (*fn)(const struct nlattr *, void *), void *arg)
{
    static char buf[1 << 16];
    if (send(fd, r, r->n.nlmsg_len, 0) < 0)
        return -1;
    for (;;) {
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got <= 0)
            return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)got); h = NLMSG_NEXT(h, got)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return 0;
            if (h->nlmsg_type == NLMSG_ERROR)
                return ((struct nlmsgerr *)NLMSG_DATA(h))->error ? -1 : 0;
            int left = (int)h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
            const struct nlattr *a = (const struct nlattr *)((char *)NLMSG_DATA(h) + GENL_HDRLEN);
            for (; left >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= left;
                 left -= NLA_ALIGN(a->nla_len), a = (const struct nlattr *)((const char *)a + NLA_ALIGN(a->nla_len)))
                fn(a, arg);
            fn(NULL, arg);                        /* end of one reply message */
            if (!(r->n.nlmsg_flags & NLM_F_DUMP)) /* a dump ends with DONE (its parts need not say MULTI) */
                return 0;
        }
    }
}

static void family_id(const struct nlattr *a, void *arg)
{
    if (a && a->nla_type == CTRL_ATTR_FAMILY_ID)
        memcpy(arg, (const char *)a + NLA_HDRLEN, 2);
}

struct qrow {
    unsigned long long v[QS_TX_BYTES + 1];
    int have[QS_TX_BYTES + 1];
};

static void qstats_row(const struct nlattr *a, void *arg)
{
    struct qrow *q = arg;
    static const char *names[] = {
        [QS_RX_PACKETS] = "packets", [QS_RX_BYTES] = "bytes", [QS_TX_PACKETS] = "packets", [QS_TX_BYTES] = "bytes"
    };
    if (a == NULL) { /* one queue done: print what it had */
        const char *dir = q->v[QS_QUEUE_TYPE] ? "tx" : "rx";
        for (int t = QS_RX_PACKETS; t <= QS_TX_BYTES; t++)
            if (q->have[t])
                printf("%s_queue_%llu_%s %llu\n", dir, q->v[QS_QUEUE_ID], names[t], q->v[t]);
        memset(q, 0, sizeof *q);
        return;
    }
    if (a->nla_type <= QS_TX_BYTES) {
        q->v[a->nla_type] = attr_uint(a);
        q->have[a->nla_type] = 1;
    }
}

/* Per-queue packets/bytes from the netdev family (silently nothing on kernels without it). */
static void qstats(unsigned ifindex)
{
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0)
        return;
    struct nlreq r = {
        .n = { .nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN), .nlmsg_type = GENL_ID_CTRL, .nlmsg_flags = NLM_F_REQUEST },
        .g = { .cmd = CTRL_CMD_GETFAMILY, .version = 1 }
    };
    put_attr(&r, CTRL_ATTR_FAMILY_NAME, "netdev", 7);
    __u16 id = 0;
    if (nl_talk(fd, &r, family_id, &id) == 0 && id) {
        struct nlreq q = { .n = { .nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN),
                                  .nlmsg_type = id,
                                  .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP },
                           .g = { .cmd = NETDEV_CMD_QSTATS_GET, .version = 1 } };
        __u32 scope = QS_SCOPE_QUEUE;
        put_attr(&q, QS_IFINDEX, &ifindex, 4);
        put_attr(&q, QS_SCOPE, &scope, 4);
        struct qrow row = { 0 };
        if (nl_talk(fd, &q, qstats_row, &row) < 0)
            fprintf(stderr, "vs-ethtool: netdev qstats-get %s: %s\n", ifr.ifr_name, strerror(errno));
    }
    close(fd);
}

static void stats(void)
{
    struct ethtool_sset_info *info = calloc(1, sizeof(*info) + sizeof(__u32));
    info->cmd = ETHTOOL_GSSET_INFO;
    info->sset_mask = 1ULL << ETH_SS_STATS;
    eth(info, "ETHTOOL_GSSET_INFO");
    __u32 n = info->sset_mask ? info->data[0] : 0;
    struct ethtool_gstrings *names = calloc(1, sizeof(*names) + (size_t)n * ETH_GSTRING_LEN);
    struct ethtool_stats *values = calloc(1, sizeof(*values) + (size_t)n * sizeof(__u64));
    names->cmd = ETHTOOL_GSTRINGS;
    names->string_set = ETH_SS_STATS;
    names->len = n;
    eth(names, "ETHTOOL_GSTRINGS");
    values->cmd = ETHTOOL_GSTATS;
    values->n_stats = n;
    eth(values, "ETHTOOL_GSTATS");
    int queue_packets = 0;
    for (__u32 i = 0; i < n; i++) {
        char name[2 * ETH_GSTRING_LEN], dir[3], rest[ETH_GSTRING_LEN + 1];
        unsigned q;
        snprintf(name, sizeof name, "%.*s", ETH_GSTRING_LEN, (char *)names->data + (size_t)i * ETH_GSTRING_LEN);
        /* Linux 6.10+ virtio_net says rx0_packets where 6.1 says rx_queue_0_packets: print 6.1's names */
        if (sscanf(name, "%2[rxt]%u_%s", dir, &q, rest) == 3 && (!strcmp(dir, "rx") || !strcmp(dir, "tx")))
            snprintf(name, sizeof name, "%s_queue_%u_%s", dir, q, rest);
        printf("%s %llu\n", name, (unsigned long long)values->data[i]);
        queue_packets |= strstr(name, "_queue_") && strstr(name, "_packets") && !strstr(name, "xdp");
    }
    if (!queue_packets)
        qstats(if_nametoindex(ifr.ifr_name));
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "set-combined") == 0 && argc < 4)) {
        fprintf(stderr, "usage: vs-ethtool channels DEV | set-combined DEV N | stats DEV\n");
        return 2;
    }
    sock = socket(AF_INET, SOCK_DGRAM, 0);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[2]);
    if (strcmp(argv[1], "channels") == 0) {
        channels();
    } else if (strcmp(argv[1], "set-combined") == 0) {
        struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
        eth(&ch, "ETHTOOL_GCHANNELS");
        ch.cmd = ETHTOOL_SCHANNELS;
        ch.combined_count = (__u32)strtoul(argv[3], NULL, 10);
        eth(&ch, "ETHTOOL_SCHANNELS");
        channels();
    } else if (strcmp(argv[1], "stats") == 0) {
        stats();
    } else {
        fprintf(stderr, "vs-ethtool: unknown command %s\n", argv[1]);
        return 2;
    }
    return 0;
}
