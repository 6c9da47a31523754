/* udpbench: UDP servers and load for bench/udp (compiled by it at each run).
 *   udpbench echo|sink HOST PORT
 *   udpbench rr HOST PORT FLOWS SIZE SECONDS THREADS
 *   udpbench flood HOST PORT FLOWS SIZE SECONDS
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FLOOD_BATCH 32
#define MAXDGRAM 65536
#define HIST 1000000 /* latency buckets of 1 us, up to 1 s */
#define LOSS_NS 200000000ull
static const char STAT[] = "\xff" "STAT";

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static socklen_t resolve(const char *host, const char *port, struct sockaddr_storage *ss) {
    struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc) { fprintf(stderr, "%s %s: %s\n", host, port, gai_strerror(rc)); exit(2); }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    socklen_t len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return len;
}

static int udp_socket(int family, int size, int flags) {
    int fd = socket(family, SOCK_DGRAM | flags, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    return fd;
}

static int connected(const char *host, const char *port, int size, int flags) {
    struct sockaddr_storage ss;
    socklen_t len = resolve(host, port, &ss);
    int fd = udp_socket(ss.ss_family, size, flags);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) { perror("connect"); exit(2); }
    return fd;
}

/* echo: every datagram back to its sender, a batch at a time.
   sink: counts them; answers STAT with "datagrams bytes". */
static int serve(const char *host, const char *port, int sink) {
    static char bufs[BATCH][MAXDGRAM];
    static struct mmsghdr msgs[BATCH];
    static struct iovec iov[BATCH];
    static struct sockaddr_storage peers[BATCH];
    struct sockaddr_storage ss;
    socklen_t len = resolve(host, port, &ss);
    int fd = udp_socket(ss.ss_family, 16 << 20, 0);
    if (bind(fd, (struct sockaddr *)&ss, len) < 0) { perror("bind"); return 2; }
    unsigned long long datagrams = 0, bytes = 0;
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        msgs[i].msg_hdr.msg_name = &peers[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_len = MAXDGRAM;
            msgs[i].msg_hdr.msg_namelen = sizeof peers[i];
        }
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) continue;
        if (!sink) {
            for (int i = 0; i < n; i++) iov[i].iov_len = msgs[i].msg_len;
            for (int done = 0; done < n;) {
                int m = sendmmsg(fd, msgs + done, n - done, 0);
                if (m > 0) done += m;
                else if (errno != EINTR) done++; /* that one could not be sent: skip it */
            }
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (msgs[i].msg_len == sizeof STAT - 1 && !memcmp(bufs[i], STAT, sizeof STAT - 1)) {
                char out[64];
                int k = snprintf(out, sizeof out, "%llu %llu", datagrams, bytes);
                sendto(fd, out, k, 0, (struct sockaddr *)&peers[i], msgs[i].msg_hdr.msg_namelen);
            } else {
                datagrams++;
                bytes += msgs[i].msg_len;
            }
        }
    }
}

/* rr: FLOWS sockets, one datagram in flight each, over THREADS epoll loops. */
struct flow { int fd; uint32_t seq; uint64_t sent; };
struct worker {
    pthread_t thread;
    int first, count;
    uint64_t done, lost, stale, bad, errors;
    uint32_t *hist;
};
static struct flow *flows;
static int rr_size;
static uint64_t rr_end;

static void rr_send(struct worker *w, int i, char *out) {
    struct flow *f = &flows[i];
    uint32_t head[2] = {(uint32_t)i, f->seq};
    memcpy(out, head, sizeof head);
    f->sent = now_ns();
    if (send(f->fd, out, rr_size, 0) < 0) w->errors++; /* the loss timer sends the next */
}

static void *rr_worker(void *arg) {
    struct worker *w = arg;
    char *out = malloc(rr_size), *in = malloc(MAXDGRAM);
    memset(out, 0x5a, rr_size);
    w->hist = calloc(HIST + 1, sizeof *w->hist);
    int ep = epoll_create1(0);
    for (int i = w->first; i < w->first + w->count; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, flows[i].fd, &ev);
        rr_send(w, i, out);
    }
    struct epoll_event evs[256];
    uint64_t scan = now_ns() + LOSS_NS / 4;
    for (;;) {
        uint64_t now = now_ns();
        if (now >= rr_end) break;
        int n = epoll_wait(ep, evs, 256, 10);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            struct flow *f = &flows[i];
            for (;;) {
                ssize_t r = recv(f->fd, in, MAXDGRAM, 0);
                if (r < 0) {
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN && errno != EWOULDBLOCK) w->errors++;
                    break;
                }
                uint32_t head[2] = {0, 0};
                if (r != rr_size || (memcpy(head, in, sizeof head), in[r - 1] != 0x5a)) { w->bad++; continue; }
                if (head[0] != (uint32_t)i || head[1] != f->seq) { w->stale++; continue; }
                uint64_t us = (now_ns() - f->sent) / 1000;
                w->hist[us < HIST ? us : HIST]++;
                w->done++;
                f->seq++;
                rr_send(w, i, out);
            }
        }
        now = now_ns();
        if (now >= scan) {
            for (int i = w->first; i < w->first + w->count; i++)
                if (now - flows[i].sent > LOSS_NS) { w->lost++; flows[i].seq++; rr_send(w, i, out); }
            scan = now + LOSS_NS / 4;
        }
    }
    return NULL;
}

static double percentile(uint64_t *hist, uint64_t total, double p) {
    uint64_t want = (uint64_t)(total * p), seen = 0;
    for (int us = 0; us <= HIST; us++) {
        seen += hist[us];
        if (seen > want) return us;
    }
    return HIST;
}

static int rr(const char *host, const char *port, int nflows, int size, double seconds, int threads) {
    if (size < 16 || size > 65507 || nflows < 1 || threads < 1) { fprintf(stderr, "rr: bad arguments\n"); return 2; }
    rr_size = size;
    flows = calloc(nflows, sizeof *flows);
    for (int i = 0; i < nflows; i++) flows[i].fd = connected(host, port, 1 << 20, SOCK_NONBLOCK);
    if (threads > nflows) threads = nflows;
    struct worker *ws = calloc(threads, sizeof *ws);
    uint64_t start = now_ns();
    rr_end = start + (uint64_t)(seconds * 1e9);
    for (int t = 0, first = 0; t < threads; t++) {
        ws[t].first = first;
        ws[t].count = nflows / threads + (t < nflows % threads);
        first += ws[t].count;
        pthread_create(&ws[t].thread, NULL, rr_worker, &ws[t]);
    }
    uint64_t done = 0, lost = 0, stale = 0, bad = 0, errors = 0;
    uint64_t *hist = calloc(HIST + 1, sizeof *hist);
    for (int t = 0; t < threads; t++) {
        pthread_join(ws[t].thread, NULL);
        done += ws[t].done; lost += ws[t].lost; stale += ws[t].stale; bad += ws[t].bad; errors += ws[t].errors;
        for (int us = 0; us <= HIST; us++) hist[us] += ws[t].hist[us];
    }
    double elapsed = (now_ns() - start) / 1e9;
    char p50[32] = "null", p99[32] = "null";
    if (done) {
        snprintf(p50, sizeof p50, "%.0f", percentile(hist, done, 0.5));
        snprintf(p99, sizeof p99, "%.0f", percentile(hist, done, 0.99));
    }
    printf("{\"round_trips\": %llu, \"per_s\": %.1f, \"p50_us\": %s, \"p99_us\": %s, \"lost\": %llu, "
           "\"stale\": %llu, \"bad\": %llu, \"errors\": %llu, \"seconds\": %.3f}\n",
           (unsigned long long)done, done / elapsed, p50, p99,
           (unsigned long long)lost, (unsigned long long)stale, (unsigned long long)bad,
           (unsigned long long)errors, elapsed);
    return 0;
}

/* flood: FLOWS blocking sockets, FLOOD_BATCH datagrams per sendmmsg, round robin. */
static int flood(const char *host, const char *port, int nflows, int size, double seconds) {
    if (size < 16 || size > 65507 || nflows < 1) { fprintf(stderr, "flood: bad arguments\n"); return 2; }
    int *fds = calloc(nflows, sizeof *fds);
    struct timeval limit = {.tv_sec = 1};
    for (int i = 0; i < nflows; i++) {
        fds[i] = connected(host, port, 4 << 20, 0);
        setsockopt(fds[i], SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    }
    char *buf = malloc(size);
    memset(buf, 0x5a, size);
    struct iovec iov = {.iov_base = buf, .iov_len = size};
    struct mmsghdr msgs[FLOOD_BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < FLOOD_BATCH; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
    uint64_t sent = 0, errors = 0, start = now_ns(), end = start + (uint64_t)(seconds * 1e9);
    while (now_ns() < end) {
        for (int i = 0; i < nflows; i++) {
            int m = sendmmsg(fds[i], msgs, FLOOD_BATCH, 0);
            if (m > 0) sent += m; else errors++;
        }
    }
    double elapsed = (now_ns() - start) / 1e9;
    printf("{\"sent\": %llu, \"errors\": %llu, \"seconds\": %.3f}\n",
           (unsigned long long)sent, (unsigned long long)errors, elapsed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && (!strcmp(argv[1], "echo") || !strcmp(argv[1], "sink")))
        return serve(argv[2], argv[3], !strcmp(argv[1], "sink"));
    if (argc == 8 && !strcmp(argv[1], "rr"))
        return rr(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atof(argv[6]), atoi(argv[7]));
    if (argc == 7 && !strcmp(argv[1], "flood"))
        return flood(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), atof(argv[6]));
    fprintf(stderr, "usage: udpbench echo|sink HOST PORT | rr HOST PORT FLOWS SIZE SECONDS THREADS"
                    " | flood HOST PORT FLOWS SIZE SECONDS\n");
    return 2;
}
