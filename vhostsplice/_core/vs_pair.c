/* vs_pair.c - the exported entry points: one poll of an RX/TX queue pair, the worker loop's wait, and the
 * helpers Python calls.
 *
 * vs_pair_poll checks the pair's configuration (Python's, but checked once per poll so that a wrong
 * field can never reach an index), then runs one TX and one RX batch (vs_net_tx.c, vs_net_rx_batch.c) on the rings
 * that run.  vs_pair_rounds is the loop's poll: one, and the re-check after one that published.
 * vs_pair_wait is the loop's epoll_wait, taking a wake-up of traffic alone in C.
 */
#include <errno.h>
#include <limits.h>
#include <sys/epoll.h>
#include <time.h>
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

/* One vs_pair_poll and, when it published, one more right away (the re-check), counted in w.  The batch
 * published used entries and may have signalled the guest, which takes a while: frames that reached the
 * host fd and chains the driver added meanwhile are taken now instead of after another trip through epoll
 * (the window Linux vhost_net closed in November 2025), and a trickle's frame, published on its own, has
 * the guest's answer taken here.  One re-check only: a flood still goes back to epoll, so messages and
 * signals keep their turn.  0, or the -errno of a poll (w->rounds says how many ran). */
static int pair_rounds(struct vs_pair *p, struct vs_wait *w)
{
    w->rounds = 1;
    w->round = vs_pair_poll(p);
    if (w->round < 0)
        return w->round;
    if (!(w->round & VS_PUBLISHED))
        return 0;
    w->rounds = 2;
    w->rechecks++;
    w->recheck = vs_pair_poll(p);
    if (w->recheck < 0)
        return w->recheck;
    w->recheck_found += (w->recheck & VS_PUBLISHED) != 0;
    return 0;
}

static void wait_reset(struct vs_wait *w)
{
    w->took = w->rounds = w->n = 0;
    w->wakeups = w->served = w->kicks[0] = w->kicks[1] = w->rechecks = w->recheck_found = 0;
    w->spin_polls = w->spin_found = w->spin_out = 0;
}

/* The loop's poll outside a wait (after the events Python handled): pair_rounds, its counts in w. */
int vs_pair_rounds(struct vs_pair *p, struct vs_wait *w)
{
    wait_reset(w);
    return pair_rounds(p, w);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* the vDSO: no syscall, nothing for the sandbox to allow */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* timeout_ms, shortened to end at until_ns (rounded up: the wait never ends before it). */
static int bounded(const struct vs_wait *w, int timeout_ms)
{
    if (!w->until_ns || timeout_ms == 0)
        return timeout_ms;
    uint64_t now = mono_ns();
    if (now >= w->until_ns)
        return 0;
    uint64_t left = (w->until_ns - now + 999999u) / 1000000u;
    if (timeout_ms >= 0 && left >= (uint64_t)timeout_ms)
        return timeout_ms;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/* epoll_wait for timeout_ms (bounded), again after EINTR for what is left of it.  EINTR is no event: a
 * signal the loop handles writes its byte to the loop's signal fd (Python's set_wakeup_fd, from the
 * C-level handler, before the syscall returns), which the next epoll_wait reports; and the host fd's
 * io_uring task work interrupts a sleep with no signal at all. */
static int sleep_events(struct vs_wait *w, struct epoll_event *ev, int timeout_ms)
{
    uint64_t end = timeout_ms > 0 ? mono_ns() + (uint64_t)timeout_ms * 1000000u : 0;
    for (;;) {
        int n = epoll_wait(w->epfd, ev, VS_WAIT_EVENTS, bounded(w, timeout_ms));
        if (n >= 0 || errno != EINTR)
            return n < 0 ? -errno : n;
        if (timeout_ms > 0) {
            uint64_t now = mono_ns();
            if (now >= end)
                return 0;
            timeout_ms = (int)((end - now + 999999u) / 1000000u);
        }
    }
}

/* epoll_wait once (sleep_events), or (spin_ns > 0) without sleeping until an event or spin_ns passed
 * (--busy-poll's window; at least one look).  The count of events, or -errno. */
static int wait_events(struct vs_wait *w, struct epoll_event *ev, int timeout_ms, uint64_t spin_ns)
{
    int n;
    if (!spin_ns)
        return sleep_events(w, ev, timeout_ms);
    uint64_t deadline = mono_ns() + spin_ns;
    if (w->until_ns && w->until_ns < deadline)
        deadline = w->until_ns; /* Python's time (a --stats-interval rewrite) is never spun past */
    do {
        w->spin_polls++;
        n = epoll_wait(w->epfd, ev, VS_WAIT_EVENTS, 0);
        if (n < 0 && errno == EINTR)
            n = 0;
    } while (n == 0 && mono_ns() < deadline);
    if (n > 0)
        w->spin_found++;
    else if (n == 0)
        w->spin_out++;
    return n < 0 ? -errno : n;
}

/* --busy-poll auto: a window of `window` ns that could spin `spun` ns, judged by a wake-up `gap` ns after
 * it opened: the window next time (VS_SPIN_AUTO). */
uint32_t vs_auto_window(uint32_t window, uint32_t spun, uint64_t gap)
{
    if (gap <= spun)
        return window; /* caught while spinning */
    if (gap > VS_AUTO_MAX_NS)
        return 0;
    return window == 0 ? VS_AUTO_START_NS : (window >= VS_AUTO_MAX_NS / 2 ? VS_AUTO_MAX_NS : window * 2);
}

/* --busy-poll auto: judge the window the last wait opened by the wake-up that ends it.  ANSWERED (traffic):
 * vs_auto_window's rule.  Not answered (a wait that ended with nothing): a window left unanswered for longer
 * than VS_AUTO_MAX_NS closes, as a late answer closes it; a shorter wait (cut short by until_ns) judges
 * nothing. */
static void auto_judge(struct vs_wait *w, int answered)
{
    if (w->auto_key == 0 || w->auto_key == 1) {
        uint32_t *win = &w->auto_ns[w->auto_key];
        int64_t gap = (int64_t)(mono_ns() - w->auto_from_ns);
        if (answered)
            *win = vs_auto_window(*win, w->auto_spun_ns, (uint64_t)gap);
        else if (gap > (int64_t)VS_AUTO_MAX_NS)
            *win = 0;
    }
    w->auto_key = -1;
}

/* The window after a served poll that published (rx_published: the RX ring's used position moved), in ns:
 * --busy-poll's, or the adaptive one of what was published, which the next wake-up judges. */
static uint64_t window_ns(struct vs_wait *w, int rx_published)
{
    if (w->spin_us != VS_SPIN_AUTO)
        return (uint64_t)w->spin_us * 1000u;
    w->auto_key = rx_published ? 0 : 1;
    w->auto_spun_ns = w->auto_ns[w->auto_key];
    w->auto_from_ns = mono_ns();
    return w->auto_spun_ns;
}

/* Bits of the rings whose kick fd this is (both, if a front-end gave one eventfd to both). */
static uint32_t kick_bits(const struct vs_wait *w, int fd)
{
    return (fd == w->kick_fd[0] ? 1u : 0u) | (fd == w->kick_fd[1] ? 2u : 0u);
}

/* Is every event traffic C serves alone: a watched kick, or the host fd readable and nothing else? */
static int only_traffic(const struct vs_wait *w, const struct epoll_event *ev, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = ev[i].data.fd;
        if (fd < 0 || !(kick_bits(w, fd) || (fd == w->host_fd && ev[i].events == EPOLLIN)))
            return 0;
    }
    return 1;
}

static void hand_over(struct vs_wait *w, const struct epoll_event *ev, int n)
{
    for (int i = 0; i < n; i++) {
        w->ev[i].fd = ev[i].data.fd;
        w->ev[i].events = ev[i].events;
    }
    w->n = (uint32_t)n;
}

/* Drain the kicks of a wake-up of traffic (before its rounds: a kick after them wakes the next wait).  0,
 * or -1: a kick fd that could not be read (an anonymous inode that is no eventfd reads EINVAL), which the
 * loop's own kick handler then reads and reports. */
static int drain_kicks(struct vs_wait *w, const struct epoll_event *ev, int n)
{
    for (int i = 0; i < n; i++) {
        uint32_t bits = kick_bits(w, ev[i].data.fd);
        if (!bits)
            continue;
        if (vs_drain_eventfd(ev[i].data.fd) < 0)
            return -1;
        w->kicks[0] += bits & 1u;
        w->kicks[1] += bits >> 1;
    }
    return 0;
}

/* Where a served wake-up leaves the loop in C: VS_MORE (poll again at once), 0 (wait), or -1 (return to
 * Python: a batch changed what epoll must watch, or Python's time is up). */
static int after_rounds(const struct vs_wait *w)
{
    int32_t last = w->rounds == 2 ? w->recheck : w->round;
    if ((uint32_t)(last & (VS_RX_STARVED | VS_TX_BLOCKED)) != w->synced)
        return -1;
    if (w->until_ns && mono_ns() >= w->until_ns)
        return -1;
    return last & VS_MORE;
}

/* The worker loop's wait (struct vs_wait): timeout_ms and spin_us are the first epoll_wait's (pending: a
 * poll is due first, the loop's MORE, which C runs); after a served wake-up the next wait is MORE's poll,
 * a --busy-poll window once the polls since the last window published and none asks for more, or
 * safety_ms.  Returns 0 (w says how it ended) or -errno: a failed poll when w->took (Python raises the
 * datapath's error), else epoll's. */
int vs_pair_wait(struct vs_pair *p, struct vs_wait *w, int timeout_ms, uint32_t spin_us, int pending)
{
    struct epoll_event ev[VS_WAIT_EVENTS];
    uint64_t spin_ns = pending ? 0 : (uint64_t)spin_us * 1000u;
    int published = 0, rx_published = 0; /* since the last window: the polls' PUBLISHED, RX's used moved */
    wait_reset(w);
    for (;;) {
        w->took = 0;
        int n = wait_events(w, ev, pending ? 0 : timeout_ms, spin_ns);
        if (n < 0)
            return n;
        if (n == 0 && spin_ns) { /* the window ran out: now a wait that sleeps */
            spin_ns = 0;
            continue;
        }
        w->wakeups++;
        if (n > 0 && (!only_traffic(w, ev, n) || drain_kicks(w, ev, n) < 0)) {
            w->auto_key = -1; /* a message, a signal...: no answer to judge a window by */
            hand_over(w, ev, n);
            return 0;
        }
        if (n == 0 && (!pending || !w->live)) {
            auto_judge(w, 0);
            return 0; /* timed out (the safety poll, Python's), or no rings to poll */
        }
        auto_judge(w, 1); /* traffic: the peer's answer, or the next frame */
        uint16_t rx_used = vs_used_pos(&p->rx);
        w->took = 1;
        w->served++;
        int rc = pair_rounds(p, w);
        if (rc < 0)
            return rc;
        published |= w->round & VS_PUBLISHED;
        rx_published |= vs_used_pos(&p->rx) != rx_used;
        rc = after_rounds(w);
        if (rc < 0)
            return 0;
        pending = rc != 0;
        spin_ns = 0;
        if (!pending && published && !(w->synced & VS_TX_BLOCKED)) { /* a full host fd waits for EPOLLOUT */
            spin_ns = window_ns(w, rx_published);
            published = rx_published = 0;
        }
        timeout_ms = w->safety_ms;
    }
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
