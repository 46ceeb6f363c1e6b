/* vs_pair.c - the exported entry points: one poll of an RX/TX queue pair, and the helpers Python calls.
 *
 * vs_pair_poll checks the pair's configuration (Python's, but checked once per poll so that a wrong
 * field can never reach an index), then runs one TX and one RX batch (vs_net_tx.c, vs_net_rx_batch.c) on the rings
 * that run.
 */
#include <errno.h>
#include <limits.h>
#include <unistd.h>

#include "vs_api.h"

int vs_api_version(void)
{
    return VS_API_VERSION;
}

/* The header and stream fields the batches index with: 0 or -EINVAL. */
static int pair_check(const struct vs_pair *p)
{
    if (p->hdr_len > VS_NET_HDR_LEN || p->hdr_omit > p->hdr_len)
        return -EINVAL;
    if (!(p->host_flags & VS_HOST_STREAM))
        return 0;
    if (p->hdr_omit != p->hdr_len || p->tx_stage == NULL || p->rx_stage == NULL || p->tx_stage_cap < 4
        || p->rx_stage_cap < 4 || p->rx_stage_len > p->rx_stage_cap || p->tx_stage_len > p->tx_stage_cap)
        return -EINVAL;
    return 0;
}

/* One TX batch, then one RX batch: the MORE, TX_BLOCKED and RX_STARVED bits of both, and PUBLISHED when
 * either completed chains (the loop's re-check and busy polling follow a poll that published).
 * Comparing used positions is exact: a ring's batch publishes once, at its end, so it completes at most
 * the num descriptors a driver can have outstanding (it reuses a slot only once it sees it used), short of
 * a lap (split: 65536 used indices, num <= 32768; packed: 2 * num positions, index and wrap bit). Only a
 * driver that breaks that rule could hide a lap, and it costs that driver's own re-check, nothing else. */
int vs_pair_poll(struct vs_pair *p)
{
    int out = 0, rc;
    if (p->tx.broken || p->rx.broken)
        return -EBADMSG;
    rc = pair_check(p);
    if (rc < 0)
        return rc;
    uint16_t tx_used = vs_used_pos(&p->tx), rx_used = vs_used_pos(&p->rx);
    if (p->tx.running) {
        rc = vs_tx_batch(p);
        if (rc < 0)
            return rc;
        out |= rc;
    }
    if (p->rx.running) {
        rc = vs_rx_batch(p);
        if (rc < 0)
            return rc;
        out |= rc;
    }
    if (vs_used_pos(&p->tx) != tx_used || vs_used_pos(&p->rx) != rx_used)
        out |= VS_PUBLISHED;
    return out;
}

int vs_drain_eventfd(int fd)
{
    uint64_t v = 0;
    ssize_t n = read(fd, &v, sizeof v);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    if (n != sizeof v)
        return -EIO;
    return v > INT_MAX ? INT_MAX : (int)v;
}
