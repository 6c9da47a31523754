/* wspeer: WebSocket echo server and small-message load for bench/websocket
 * (compiled by it at each run, linked with libcrypto for the handshake's SHA-1).
 *   wspeer echo HOST PORT
 *       accepts, answers the upgrade (101, Sec-WebSocket-Accept), and echoes
 *       every frame back unmasked, until killed; on /sink it counts the
 *       binary payload instead (frames of any size, never buffered whole)
 *       and answers a text message with the total, as text
 *   wspeer stream HOST PORT MIB
 *       one client sends MIB MiB to /sink in 1 MiB masked binary messages,
 *       then "done", and checks the total it is told; prints
 *       {"mib": MIB, "mib_per_second": R} (status 1 if the total differs)
 *   wspeer small HOST PORT CONNECTIONS SECONDS
 *       CONNECTIONS clients, each sending a masked 64-byte binary message and
 *       waiting for its echo, again and again for SECONDS; prints
 *       {"messages": N, "per_second": R, "errors": E} (an echo that differs,
 *       or a connection that fails, is an error)
 * One thread, epoll, non-blocking sockets: fast enough that the proxy in the
 * middle, not the peers, sets the pace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 64
#define BUFSZ 65536

struct conn {
    int fd;
    int upgraded;
    int sink;
    size_t remaining;          /* sink: payload bytes of the current frame still to come */
    unsigned long long total;  /* sink: payload bytes counted */
    size_t have;
    unsigned char buf[BUFSZ];
};

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int send_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                usleep(50);
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static struct sockaddr_in address(const char *host, int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    inet_pton(AF_INET, host, &a.sin_addr);
    return a;
}

/* A whole frame at the front of buf: its header and payload lengths, or 0 if incomplete. */
static size_t frame(const unsigned char *buf, size_t have, size_t *header, size_t *payload)
{
    if (have < 2)
        return 0;
    size_t len = buf[1] & 0x7F, h = 2;
    if (len == 126) {
        if (have < 4)
            return 0;
        len = ((size_t)buf[2] << 8) | buf[3];
        h = 4;
    } else if (len == 127) {
        if (have < 10)
            return 0;
        len = 0;
        for (int i = 0; i < 8; i++)
            len = (len << 8) | buf[2 + i];
        h = 10;
    }
    if (buf[1] & 0x80)
        h += 4;
    if (have < h + len)
        return 0;
    *header = h;
    *payload = len;
    return h + len;
}

static void accept_key(const char *key, char *out)
{
    char joined[128];
    unsigned char digest[SHA_DIGEST_LENGTH];
    snprintf(joined, sizeof(joined), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    SHA1((const unsigned char *)joined, strlen(joined), digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
}

/* /sink: binary payload counted as it streams in; a text frame asks for the total. */
static int sink(struct conn *c)
{
    size_t off = 0;
    while (off < c->have) {
        if (c->remaining > 0) {
            size_t take = c->have - off < c->remaining ? c->have - off : c->remaining;
            c->total += take;
            c->remaining -= take;
            off += take;
            continue;
        }
        unsigned char *b = c->buf + off;
        size_t avail = c->have - off, len = b[1] & 0x7F, h = 2;
        if (avail < 2)
            break;
        if (len == 126) {
            if (avail < 4)
                break;
            len = ((size_t)b[2] << 8) | b[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | b[2 + i];
            h = 10;
        }
        if (b[1] & 0x80)
            h += 4;
        if (avail < h)
            break;
        int op = b[0] & 0x0F;
        if (op == 8)
            return -1;
        if (op == 1) {
            if (avail < h + len)
                break;
            char text[32];
            int n = snprintf(text, sizeof(text), "%llu", c->total);
            unsigned char out[2 + 32] = { 0x81, (unsigned char)n };
            memcpy(out + 2, text, (size_t)n);
            if (send_all(c->fd, out, 2 + (size_t)n) < 0)
                return -1;
            off += h + len;
            continue;
        }
        off += h;
        c->remaining = len;
    }
    memmove(c->buf, c->buf + off, c->have - off);
    c->have -= off;
    return 0;
}

/* Server side of one readable connection: the upgrade, then echoes. */
static int serve(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->have, BUFSZ - c->have, MSG_DONTWAIT);
        if (n == 0)
            return -1;
        if (n < 0)
            return (errno == EAGAIN) ? 0 : -1;
        c->have += (size_t)n;
        if (!c->upgraded) {
            c->buf[c->have < BUFSZ ? c->have : BUFSZ - 1] = 0;
            char *end = strstr((char *)c->buf, "\r\n\r\n");
            if (!end)
                continue;
            char *key = strcasestr((char *)c->buf, "Sec-WebSocket-Key:");
            if (!key)
                return -1;
            key += 18;
            while (*key == ' ')
                key++;
            char k[64] = {0}, accept[64] = {0}, reply[256];
            size_t kl = strcspn(key, "\r\n");
            memcpy(k, key, kl < 63 ? kl : 63);
            accept_key(k, accept);
            int len = snprintf(reply, sizeof(reply),
                               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
            if (send_all(c->fd, reply, (size_t)len) < 0)
                return -1;
            size_t used = (size_t)(end + 4 - (char *)c->buf);
            c->sink = strncmp((char *)c->buf, "GET /sink", 9) == 0;
            memmove(c->buf, c->buf + used, c->have - used);
            c->have -= used;
            c->upgraded = 1;
        }
        if (c->sink) {
            if (sink(c) < 0)
                return -1;
            continue;
        }
        size_t header, payload, whole;
        while ((whole = frame(c->buf, c->have, &header, &payload)) > 0) {
            unsigned char out[10 + BUFSZ];
            size_t h = 2;
            out[0] = c->buf[0];
            if (payload < 126) {
                out[1] = (unsigned char)payload;
            } else {
                out[1] = 126;
                out[2] = (unsigned char)(payload >> 8);
                out[3] = (unsigned char)payload;
                h = 4;
            }
            const unsigned char *mask = (c->buf[1] & 0x80) ? c->buf + header - 4 : NULL;
            for (size_t i = 0; i < payload; i++)
                out[h + i] = c->buf[header + i] ^ (mask ? mask[i % 4] : 0);
            if ((c->buf[0] & 0x0F) == 8) /* close: answer it and end */
                return send_all(c->fd, out, h + payload) < 0 ? -1 : -1;
            if (send_all(c->fd, out, h + payload) < 0)
                return -1;
            memmove(c->buf, c->buf + whole, c->have - whole);
            c->have -= whole;
        }
    }
}

static int echo_server(const char *host, int port)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = address(host, port);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 4096) < 0) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("ready %d\n", port);
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct conn *nc = calloc(1, sizeof(*nc));
                    nc->fd = fd;
                    struct epoll_event cev = { .events = EPOLLIN, .data.ptr = nc };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            if (serve(c) < 0) {
                close(c->fd);
                free(c);
            }
        }
    }
}

static int small_load(const char *host, int port, int count, double seconds)
{
    struct conn *conns = calloc((size_t)count, sizeof(*conns));
    int ep = epoll_create1(0), one = 1;
    unsigned char message[PAYLOAD];
    for (int i = 0; i < PAYLOAD; i++)
        message[i] = (unsigned char)(i * 7 + 3);
    unsigned char frame_out[2 + 4 + PAYLOAD] = { 0x82, 0x80 | PAYLOAD, 1, 2, 3, 4 };
    for (int i = 0; i < PAYLOAD; i++)
        frame_out[6 + i] = message[i] ^ frame_out[2 + i % 4];
    long messages = 0, errors = 0;
    for (int k = 0; k < count; k++) {
        struct conn *c = &conns[k];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct sockaddr_in a = address(host, port);
        char request[256];
        int len = snprintf(request, sizeof(request),
                           "GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", host, port);
        if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0 || send_all(c->fd, request, (size_t)len) < 0) {
            errors++;
            c->fd = -1;
            continue;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double started = now(), deadline = started + seconds;
    struct epoll_event events[256];
    while (now() < deadline) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            ssize_t got = recv(c->fd, c->buf + c->have, BUFSZ - c->have, MSG_DONTWAIT);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN)
                    continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                continue;
            }
            c->have += (size_t)got;
            if (!c->upgraded) {
                c->buf[c->have < BUFSZ ? c->have : BUFSZ - 1] = 0;
                char *end = strstr((char *)c->buf, "\r\n\r\n");
                if (!end)
                    continue;
                if (strncmp((char *)c->buf, "HTTP/1.1 101", 12) != 0) {
                    errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    continue;
                }
                size_t used = (size_t)(end + 4 - (char *)c->buf);
                memmove(c->buf, c->buf + used, c->have - used);
                c->have -= used;
                c->upgraded = 1;
                send_all(c->fd, frame_out, sizeof(frame_out));
            }
            size_t header, payload, whole;
            while ((whole = frame(c->buf, c->have, &header, &payload)) > 0) {
                if (payload != PAYLOAD || memcmp(c->buf + header, message, PAYLOAD) != 0)
                    errors++;
                else
                    messages++;
                memmove(c->buf, c->buf + whole, c->have - whole);
                c->have -= whole;
                send_all(c->fd, frame_out, sizeof(frame_out));
            }
        }
    }
    double took = now() - started;
    printf("{\"messages\": %ld, \"per_second\": %.1f, \"errors\": %ld}\n", messages, messages / took, errors);
    return 0;
}

static int stream(const char *host, int port, long mib)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = address(host, port);
    char request[256];
    int len = snprintf(request, sizeof(request),
                       "GET /sink HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", host, port);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || send_all(fd, request, (size_t)len) < 0)
        return 1;
    char head[1024];
    size_t have = 0;
    while (!memmem(head, have, "\r\n\r\n", 4)) {
        ssize_t n = recv(fd, head + have, sizeof(head) - have, 0);
        if (n <= 0)
            return 1;
        have += (size_t)n;
    }
    /* One 1 MiB frame, masked with a zero key (the payload goes as it is). */
    size_t size = 1 << 20;
    unsigned char *frame_out = malloc(14 + size);
    unsigned char header[14] = { 0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0 };
    memcpy(frame_out, header, 14);
    for (size_t i = 0; i < size; i++)
        frame_out[14 + i] = (unsigned char)(i * 31);
    double started = now();
    for (long m = 0; m < mib; m++)
        if (send_all(fd, frame_out, 14 + size) < 0)
            return 1;
    unsigned char done[10] = { 0x81, 0x84, 0, 0, 0, 0, 'd', 'o', 'n', 'e' };
    send_all(fd, done, sizeof(done));
    unsigned char reply[64];
    ssize_t n = recv(fd, reply, sizeof(reply) - 1, 0);
    double took = now() - started;
    if (n < 2)
        return 1;
    reply[n] = 0;
    unsigned long long total = strtoull((char *)reply + 2, NULL, 10);
    printf("{\"mib\": %ld, \"mib_per_second\": %.1f}\n", mib, mib / took);
    return total == (unsigned long long)mib << 20 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "stream"))
        return stream(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc == 4 && !strcmp(argv[1], "echo"))
        return echo_server(argv[2], atoi(argv[3]));
    if (argc == 6 && !strcmp(argv[1], "small"))
        return small_load(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    fprintf(stderr, "usage: wspeer echo HOST PORT | stream HOST PORT MIB | small HOST PORT CONNECTIONS SECONDS\n");
    return 2;
}
