#define _GNU_SOURCE
/* A minimal single-threaded epoll chat relay: the floor for `switchboard chat` latency.
 * Build: cc -O2 -o epoll_chat epoll_chat.c     Run: ./epoll_chat 127.0.0.1 7200
 * It does the least a chat server can: greets each client with one line, and writes each
 * complete line a client sends, as "<uN> LINE", to every other client with one send(2)
 * each. No commands, no limits, no per-client queues: a send that would block drops
 * the line for that client (counted on stderr at exit by SIGINT/SIGTERM). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
#define LINE_MAX_LEN 4096

struct client { int on; size_t len; char buf[LINE_MAX_LEN]; };
static struct client *clients[MAX_FD];
static int fds[MAX_FD], nfds;
static volatile sig_atomic_t stop;
static unsigned long dropped;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void drop_client(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(clients[fd]);
    clients[fd] = NULL;
    for (int i = 0; i < nfds; i++)
        if (fds[i] == fd) { fds[i] = fds[--nfds]; break; }
}

static void relay(int from, const char *line, size_t len) {
    static char out[LINE_MAX_LEN + 32];
    int n = snprintf(out, sizeof out, "<u%d> ", from);
    memcpy(out + n, line, len);
    n += len;
    for (int i = 0; i < nfds; i++) {
        if (fds[i] == from) continue;
        if (send(fds[i], out, n, MSG_DONTWAIT | MSG_NOSIGNAL) != n) dropped++;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s ADDR PORT\n", argv[0]); return 2; }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, argv[1], &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1024)) { perror("bind/listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls }, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    static char buf[65536];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAX_FD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    clients[c] = calloc(1, sizeof(struct client));
                    fds[nfds++] = c;
                    struct epoll_event ce = { .events = EPOLLIN, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                    const char *hi = "* welcome\n";
                    send(c, hi, strlen(hi), MSG_NOSIGNAL);
                }
                continue;
            }
            struct client *cl = clients[fd];
            if (!cl) continue;
            ssize_t got = recv(fd, buf, sizeof buf, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                drop_client(ep, fd);
                continue;
            }
            for (ssize_t k = 0; k < got; k++) {
                if (cl->len < LINE_MAX_LEN) cl->buf[cl->len++] = buf[k];
                if (buf[k] == '\n') { relay(fd, cl->buf, cl->len); cl->len = 0; }
            }
        }
    }
    fprintf(stderr, "epoll_chat: %lu deliveries dropped (socket full)\n", dropped);
    return 0;
}
