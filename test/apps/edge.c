/*
 * edge.c - client/server tester for TCP socket edge cases.
 *
 * Plain POSIX/Linux socket program (libc only), meant to be run unmodified
 * with and without an LD_PRELOAD socket-replacement library.
 *
 *   edge server <bind_ip> <port> [--workers N] [--v6] [--epoll-before-listen]
 *   edge client <server_ip> <port> <test>
 *   edge client <server_ip> <port> timing N   (see t_timing)
 *
 * tests: nbconnect blocking names accept4 halfclose concurrent fork options tcpface all
 *
 * Client output: one line per check, "ok <name> <details>" or
 * "FAIL <name> <details>".  Exit status: 0 all checks passed, 1 some check
 * failed, 2 usage error, 3 timeout (prints "FAIL timeout <test>").
 *
 * Wire protocol: the client sends one command line first:
 *   ECHO\n   server echoes everything until EOF, then closes.
 *   INFO\n   server replies "peer=IP:PORT local=IP:PORT accept=IP:PORT
 *            nonblock=N cloexec=N\n" (prefixed with "FAIL ..." if the address
 *            returned by accept4() differs from getpeername()), then
 *            shuts down its write side and closes at client EOF.
 *   FLAGS\n  server replies "nonblock=N cloexec=N keepalive=N nodelay=N\n" (flags of
 *            the accepted fd, and two options it inherits from the listener, which sets both).
 *   HALF\n / SUM\n  server reads until EOF and replies
 *            "count=N fnv=HEX16\n" (FNV-1a 64 of the bytes after the
 *            command line), then closes.
 *   SUM IP:PORT\n  as SUM, where IP:PORT is the client's getsockname(); the
 *            reply adds " id=ok pid=P" if accept4() and getpeername() both
 *            returned exactly that address, else " id=MISMATCH claimed=..
 *            accept=.. peer=.. pid=P" (P: the server process that accepted).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_MS 5000
#define TEST_ALARM_S 20
#define FNV_INIT 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define ECHO_OUT_LIMIT (8u << 20) /* server stops reading an ECHO conn above this */
#define NCONC 200

/* ------------------------------------------------------------------ */
/* common helpers                                                       */

static uint64_t fnv1a(uint64_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= FNV_PRIME;
    }
    return h;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t rng_seed(uint64_t seed)
{
    uint64_t s = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ 0xD1B54A32D192ED03ULL;
    return s ? s : 1;
}

/* An int-valued socket option, or -1 if the call fails. */
static int int_option(int fd, int level, int name)
{
    int v = 0;
    socklen_t l = sizeof v;
    return getsockopt(fd, level, name, &v, &l) == 0 ? v : -1;
}

static void fill_random(unsigned char *b, size_t n, uint64_t seed)
{
    uint64_t s = rng_seed(seed);
    size_t i = 0;
    while (i < n) {
        uint64_t r = rng_next(&s);
        for (int k = 0; k < 8 && i < n; k++, i++)
            b[i] = (unsigned char)(r >> (8 * k));
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Format an address as "a.b.c.d:port" (v4-mapped IPv6 is shown as plain
 * IPv4) or "[v6]:port". */
static void fmt_addr(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(out, cap, "%s:%u", ip, ntohs(s4->sin_port));
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], ip, sizeof ip);
            snprintf(out, cap, "%s:%u", ip, ntohs(s6->sin6_port));
        } else {
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
            snprintf(out, cap, "[%s]:%u", ip, ntohs(s6->sin6_port));
        }
    } else {
        snprintf(out, cap, "?family=%d,len=%u", sa->sa_family, (unsigned)len);
    }
}

/* Normalize textual address in place: "[::ffff:1.2.3.4]:80" or
 * "::ffff:1.2.3.4:80" -> "1.2.3.4:80". */
static void normalize_addr_str(char *s)
{
    char tmp[128];
    const char *p = s;
    int br = 0;
    if (*p == '[') {
        br = 1;
        p++;
    }
    if (strncasecmp(p, "::ffff:", 7) != 0)
        return;
    p += 7;
    if (!strchr(p, '.'))
        return;
    size_t j = 0;
    for (; *p && j < sizeof tmp - 1; p++) {
        if (br && *p == ']') {
            br = 0;
            continue;
        }
        tmp[j++] = *p;
    }
    tmp[j] = 0;
    strcpy(s, tmp);
}

static int parse_addr(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof *s6;
        return 0;
    }
    return -1;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ------------------------------------------------------------------ */
/* server                                                               */

enum { S_CMD, S_ECHO, S_SINK, S_DRAIN };

struct conn {
    int fd;
    int state;
    int eof;     /* peer sent FIN */
    int replied; /* response complete once out buffer drains */
    int wshut;   /* we did shutdown(SHUT_WR) */
    uint32_t evmask;
    char cmd[64];
    size_t cmdlen;
    unsigned char *out;
    size_t outlen, outoff, outcap;
    uint64_t count, hash;
    char info[400];
    char flags[64];
    char acc[96], peer[96]; /* what accept4() and getpeername() returned */
    char id[320];           /* SUM IP:PORT: the identity check's result, sent with the sum */
};

static int out_append(struct conn *c, const void *p, size_t n)
{
    if (c->outoff && c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    if (c->outlen + n > c->outcap) {
        if (c->outoff) {
            memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
            c->outlen -= c->outoff;
            c->outoff = 0;
        }
        if (c->outlen + n > c->outcap) {
            size_t nc = c->outcap ? c->outcap : 65536;
            while (nc < c->outlen + n)
                nc *= 2;
            unsigned char *np = realloc(c->out, nc);
            if (!np)
                return -1;
            c->out = np;
            c->outcap = nc;
        }
    }
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
    return 0;
}

static int out_str(struct conn *c, const char *s)
{
    return out_append(c, s, strlen(s));
}

static void start_cmd(struct conn *c)
{
    while (c->cmdlen && (c->cmd[c->cmdlen - 1] == '\n' || c->cmd[c->cmdlen - 1] == '\r'))
        c->cmd[--c->cmdlen] = 0;
    if (!strcmp(c->cmd, "ECHO")) {
        c->state = S_ECHO;
    } else if (!strcmp(c->cmd, "HALF") || !strcmp(c->cmd, "SUM")) {
        c->state = S_SINK;
        c->count = 0;
        c->hash = FNV_INIT;
    } else if (!strncmp(c->cmd, "SUM ", 4)) {
        /* The client says who it is: the connection accept() gave us must be exactly its. */
        char claimed[64];
        snprintf(claimed, sizeof claimed, "%s", c->cmd + 4);
        normalize_addr_str(claimed);
        if (!strcmp(claimed, c->acc) && !strcmp(claimed, c->peer))
            snprintf(c->id, sizeof c->id, " id=ok pid=%d", (int)getpid());
        else
            snprintf(c->id, sizeof c->id, " id=MISMATCH claimed=%s accept=%s peer=%s pid=%d", claimed, c->acc, c->peer,
                     (int)getpid());
        c->state = S_SINK;
        c->count = 0;
        c->hash = FNV_INIT;
    } else if (!strcmp(c->cmd, "INFO")) {
        out_str(c, c->info);
        c->replied = 1;
        c->state = S_DRAIN;
    } else if (!strcmp(c->cmd, "FLAGS")) {
        out_str(c, c->flags);
        c->replied = 1;
        c->state = S_DRAIN;
    } else {
        out_str(c, "ERR unknown command\n");
        c->replied = 1;
        c->state = S_DRAIN;
    }
}

static void feed(struct conn *c, const unsigned char *p, size_t n)
{
    while (n > 0) {
        switch (c->state) {
        case S_CMD: {
            const unsigned char *nl = memchr(p, '\n', n);
            size_t take = nl ? (size_t)(nl - p) + 1 : n;
            if (c->cmdlen + take > sizeof c->cmd - 1) {
                out_str(c, "ERR command too long\n");
                c->replied = 1;
                c->state = S_DRAIN;
                return;
            }
            memcpy(c->cmd + c->cmdlen, p, take);
            c->cmdlen += take;
            c->cmd[c->cmdlen] = 0;
            p += take;
            n -= take;
            if (nl)
                start_cmd(c);
            break;
        }
        case S_ECHO:
            out_append(c, p, n);
            return;
        case S_SINK:
            c->count += n;
            c->hash = fnv1a(c->hash, p, n);
            return;
        default:
            return;
        }
    }
}

static void on_eof(struct conn *c)
{
    char line[400];
    c->eof = 1;
    switch (c->state) {
    case S_SINK:
        snprintf(line, sizeof line, "count=%llu fnv=%016llx%s\n", (unsigned long long)c->count,
                 (unsigned long long)c->hash, c->id);
        out_str(c, line);
        break;
    default:
        break;
    }
    c->replied = 1;
}

static void conn_close(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* returns 0 if conn still alive, -1 if closed */
static int conn_service(int ep, struct conn *c, uint32_t events)
{
    static unsigned char buf[65536];

    if (!c->eof && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        for (int iter = 0; iter < 32; iter++) {
            if (c->state == S_ECHO && c->outlen - c->outoff > ECHO_OUT_LIMIT)
                break;
            ssize_t k = recv(c->fd, buf, sizeof buf, 0);
            if (k > 0) {
                feed(c, buf, (size_t)k);
            } else if (k == 0) {
                on_eof(c);
                break;
            } else if (errno == EINTR) {
                continue;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            } else {
                conn_close(ep, c);
                return -1;
            }
        }
    }

    while (c->outoff < c->outlen) {
        ssize_t k = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (k > 0) {
            c->outoff += (size_t)k;
        } else if (k < 0 && errno == EINTR) {
            continue;
        } else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            conn_close(ep, c);
            return -1;
        }
    }
    if (c->outoff == c->outlen) {
        c->outoff = c->outlen = 0;
        if (c->outcap > (1u << 20)) { /* release big echo buffers */
            free(c->out);
            c->out = NULL;
            c->outcap = 0;
        }
        if (c->replied && !c->wshut) {
            shutdown(c->fd, SHUT_WR);
            c->wshut = 1;
        }
    }
    if (c->wshut && c->eof) {
        conn_close(ep, c);
        return -1;
    }
    if ((events & EPOLLERR) && c->eof) { /* error after EOF with data pending */
        conn_close(ep, c);
        return -1;
    }

    uint32_t want = 0;
    if (!c->eof && !(c->state == S_ECHO && c->outlen - c->outoff > ECHO_OUT_LIMIT))
        want |= EPOLLIN;
    if (c->outlen > c->outoff)
        want |= EPOLLOUT;
    if (want != c->evmask) {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = want;
        ev.data.ptr = c;
        if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
            conn_close(ep, c);
            return -1;
        }
        c->evmask = want;
    }
    return 0;
}

static void server_accept(int ep, int lfd)
{
    for (int iter = 0; iter < 64; iter++) {
        struct sockaddr_storage aa;
        socklen_t al = sizeof aa;
        memset(&aa, 0, sizeof aa);
        int fd = accept4(lfd, (struct sockaddr *)&aa, &al, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fprintf(stderr, "edge server: accept4: %s\n", strerror(errno));
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                usleep(10000);
            return;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->state = S_CMD;

        char acc[96], peer[96], local[96];
        struct sockaddr_storage ss;
        socklen_t sl;
        int al_bad = 0;
        if (al > (socklen_t)sizeof aa)
            al_bad = 1;
        else if (aa.ss_family == AF_INET && al != (socklen_t)sizeof(struct sockaddr_in))
            al_bad = 1;
        else if (aa.ss_family == AF_INET6 && al != (socklen_t)sizeof(struct sockaddr_in6))
            al_bad = 1;
        fmt_addr((struct sockaddr *)&aa, al > (socklen_t)sizeof aa ? (socklen_t)sizeof aa : al, acc,
                 sizeof acc);
        sl = sizeof ss;
        memset(&ss, 0, sizeof ss);
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
            fmt_addr((struct sockaddr *)&ss, sl, peer, sizeof peer);
        else
            snprintf(peer, sizeof peer, "?getpeername-errno=%d", errno);
        sl = sizeof ss;
        memset(&ss, 0, sizeof ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            fmt_addr((struct sockaddr *)&ss, sl, local, sizeof local);
        else
            snprintf(local, sizeof local, "?getsockname-errno=%d", errno);
        int fl = fcntl(fd, F_GETFL);
        int fdfl = fcntl(fd, F_GETFD);
        int nb = fl >= 0 && (fl & O_NONBLOCK);
        int ce = fdfl >= 0 && (fdfl & FD_CLOEXEC);
        int mismatch = al_bad || strcmp(acc, peer) != 0;
        snprintf(c->acc, sizeof c->acc, "%s", acc);
        snprintf(c->peer, sizeof c->peer, "%s", peer);
        snprintf(c->info, sizeof c->info, "%speer=%s local=%s accept=%s acceptlen=%u nonblock=%d cloexec=%d\n",
                 mismatch ? "FAIL accept-addr-mismatch " : "", peer, local, acc, (unsigned)al, nb, ce);
        /* Accepted sockets inherit the listener's options (the kernel copies them); through
         * FreeFlow the library replays them, as the socket comes from the router's listener. */
        int ka = int_option(fd, SOL_SOCKET, SO_KEEPALIVE), nd = int_option(fd, IPPROTO_TCP, TCP_NODELAY);
        snprintf(c->flags, sizeof c->flags, "nonblock=%d cloexec=%d keepalive=%d nodelay=%d\n", nb, ce, ka, nd);
        if (!nb && fl >= 0) /* keep the server itself working; client sees flags */
            fcntl(fd, F_SETFL, fl | O_NONBLOCK);

        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN;
        ev.data.ptr = c;
        c->evmask = EPOLLIN;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            fprintf(stderr, "edge server: epoll_ctl add: %s\n", strerror(errno));
            close(fd);
            free(c);
        }
    }
}

/* --epoll-before-listen: the listening socket was registered with this epoll before listen(). */
static int g_pre_ep = -1;

static void server_loop(int lfd)
{
    int ep = g_pre_ep >= 0 ? g_pre_ep : epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("epoll_create1");
        _exit(1);
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    if (g_pre_ep < 0 && epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("epoll_ctl listen");
        _exit(1);
    }
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            _exit(1);
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                server_accept(ep, lfd);
            else
                conn_service(ep, (struct conn *)evs[i].data.ptr, evs[i].events);
        }
    }
}

static volatile sig_atomic_t g_stop;
static void on_term_exit(int sig)
{
    (void)sig;
    _exit(0);
}
static void on_term_flag(int sig)
{
    (void)sig;
    g_stop = 1;
}

static int run_server(int argc, char **argv)
{
    const char *pos[2];
    int npos = 0, workers = 0, v6 = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            workers = atoi(argv[++i]);
        else if (!strncmp(argv[i], "--workers=", 10))
            workers = atoi(argv[i] + 10);
        else if (!strcmp(argv[i], "--v6"))
            v6 = 1;
        else if (!strcmp(argv[i], "--epoll-before-listen"))
            g_pre_ep = 0; /* created once the socket exists */
        else if (npos < 2)
            pos[npos++] = argv[i];
        else {
            fprintf(stderr, "edge server: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (npos != 2 || workers < 0 || workers > 1024) {
        fprintf(stderr, "usage: edge server <bind_ip> <port> [--workers N] [--v6] [--epoll-before-listen]\n");
        return 2;
    }
    int port = atoi(pos[1]);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    struct sockaddr_storage ss;
    socklen_t sl;
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        struct in_addr a4;
        memset(&ss, 0, sizeof ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sl = sizeof *s6;
        if (inet_pton(AF_INET6, pos[0], &s6->sin6_addr) == 1) {
            /* ok */
        } else if (inet_pton(AF_INET, pos[0], &a4) == 1) {
            if (a4.s_addr == htonl(INADDR_ANY)) {
                s6->sin6_addr = in6addr_any;
            } else {
                s6->sin6_addr.s6_addr[10] = 0xff;
                s6->sin6_addr.s6_addr[11] = 0xff;
                memcpy(&s6->sin6_addr.s6_addr[12], &a4, 4);
            }
        } else {
            fprintf(stderr, "edge server: bad bind address %s\n", pos[0]);
            return 2;
        }
    } else if (parse_addr(pos[0], port, &ss, &sl) < 0) {
        fprintf(stderr, "edge server: bad bind address %s\n", pos[0]);
        return 2;
    }

    int lfd = socket(ss.ss_family, SOCK_STREAM, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1, zero = 0;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one); /* reported by FLAGS */
    setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (ss.ss_family == AF_INET6 && setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
        perror("setsockopt IPV6_V6ONLY=0");
    if (bind(lfd, (struct sockaddr *)&ss, sl) < 0) {
        perror("bind");
        return 1;
    }
    if (g_pre_ep == 0) {
        if (workers) {
            fprintf(stderr, "edge server: --epoll-before-listen is single-process only\n");
            return 2;
        }
        struct epoll_event pev = {.events = EPOLLIN, .data.ptr = NULL};
        g_pre_ep = epoll_create1(EPOLL_CLOEXEC);
        if (g_pre_ep < 0 || epoll_ctl(g_pre_ep, EPOLL_CTL_ADD, lfd, &pev) < 0) {
            perror("epoll before listen");
            return 1;
        }
    }
    if (listen(lfd, 4096) < 0) {
        perror("listen");
        return 1;
    }
    int fl = fcntl(lfd, F_GETFL);
    if (fl < 0 || fcntl(lfd, F_SETFL, fl | O_NONBLOCK) < 0) {
        perror("fcntl O_NONBLOCK");
        return 1;
    }
    struct sockaddr_storage bs;
    socklen_t bl = sizeof bs;
    int real_port = port;
    if (getsockname(lfd, (struct sockaddr *)&bs, &bl) == 0) {
        if (bs.ss_family == AF_INET)
            real_port = ntohs(((struct sockaddr_in *)&bs)->sin_port);
        else if (bs.ss_family == AF_INET6)
            real_port = ntohs(((struct sockaddr_in6 *)&bs)->sin6_port);
    }
    printf("listening %d\n", real_port);
    fflush(stdout);

    if (workers == 0) {
        signal(SIGTERM, on_term_exit);
        signal(SIGINT, on_term_exit);
        server_loop(lfd);
        return 0;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term_flag; /* no SA_RESTART: waitpid gets EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    pid_t parent = getpid();
    pid_t *kids = calloc((size_t)workers, sizeof *kids);
    if (!kids)
        return 1;
    int alive = 0;
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            break;
        }
        if (p == 0) {
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                _exit(0);
            server_loop(lfd);
            _exit(0);
        }
        kids[i] = p;
        alive++;
    }
    close(lfd);
    while (!g_stop && alive > 0) {
        int st;
        pid_t p = waitpid(-1, &st, 0);
        if (p < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < workers; i++)
            if (kids[i] == p) {
                kids[i] = 0;
                alive--;
                fprintf(stderr, "edge server: worker %d exited (status 0x%x)\n", (int)p, st);
            }
    }
    for (int i = 0; i < workers; i++)
        if (kids[i] > 0)
            kill(kids[i], SIGTERM);
    for (int i = 0; i < workers; i++)
        if (kids[i] > 0)
            waitpid(kids[i], NULL, 0);
    return g_stop ? 0 : 1;
}

/* ------------------------------------------------------------------ */
/* client                                                               */

static int g_ok, g_fail;
static volatile pid_t g_child;
static const char *volatile g_test = "?";

static void report(int good, const char *name, const char *fmt, ...)
{
    char det[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(det, sizeof det, fmt, ap);
    va_end(ap);
    printf("%s %s %s\n", good ? "ok" : "FAIL", name, det);
    fflush(stdout);
    if (good)
        g_ok++;
    else
        g_fail++;
}
#define OK(name, ...) report(1, name, __VA_ARGS__)
#define FAILX(name, ...) report(0, name, __VA_ARGS__)
#define ERRS errno, strerror(errno)

static void on_alarm(int sig)
{
    (void)sig;
    ssize_t r;
    if (g_child > 0)
        kill(g_child, SIGKILL);
    r = write(1, "FAIL timeout ", 13);
    r = write(1, g_test, strlen(g_test));
    r = write(1, "\n", 1);
    (void)r;
    _exit(3);
}

struct target {
    struct sockaddr_storage ss;
    socklen_t len;
    char str[128];
};

/* poll one fd; returns revents, 0 on timeout, -1 on error */
static int wait_fd(int fd, short ev, int ms)
{
    struct pollfd p;
    int64_t deadline = now_ms() + ms;
    for (;;) {
        p.fd = fd;
        p.events = ev;
        p.revents = 0;
        int left = (int)(deadline - now_ms());
        if (left < 0)
            left = 0;
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r;
        return p.revents;
    }
}

/* bounded recv: >0 bytes, 0 EOF, -1 error (errno), -2 timeout */
static ssize_t recv_to(int fd, void *buf, size_t n, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        if (left < 0)
            left = 0;
        int r = wait_fd(fd, POLLIN, left);
        if (r == 0) {
            errno = ETIMEDOUT;
            return -2;
        }
        if (r < 0)
            return -1;
        ssize_t k = recv(fd, buf, n, MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (now_ms() >= deadline) {
                errno = ETIMEDOUT;
                return -2;
            }
            continue;
        }
        return k;
    }
}

static int send_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    size_t off = 0;
    while (off < n) {
        ssize_t k = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (k > 0)
            off += (size_t)k;
        else if (k < 0 && errno == EINTR)
            continue;
        else
            return -1;
    }
    return 0;
}

/* read one line (without '\n'); returns length, -1 error, -2 timeout, -3 EOF
 * before newline. *extra = bytes received after the newline. */
static int read_line(int fd, char *buf, size_t cap, size_t *extra)
{
    size_t len = 0;
    *extra = 0;
    for (;;) {
        if (len >= cap - 1)
            return -1;
        ssize_t k = recv_to(fd, buf + len, cap - 1 - len, IO_TIMEOUT_MS);
        if (k == -2)
            return -2;
        if (k < 0)
            return -1;
        if (k == 0) {
            buf[len] = 0;
            return -3;
        }
        len += (size_t)k;
        buf[len] = 0;
        char *nl = memchr(buf, '\n', len);
        if (nl) {
            *extra = len - (size_t)(nl - buf) - 1;
            *nl = 0;
            return (int)(nl - buf);
        }
    }
}

/* expect EOF: returns 0 on EOF, >0 bytes of unexpected data, -1 err, -2 timeout */
static ssize_t expect_eof(int fd)
{
    char b[256];
    ssize_t k = recv_to(fd, b, sizeof b, IO_TIMEOUT_MS);
    return k;
}

static void report_eof(const char *name, int fd, size_t extra)
{
    if (extra) {
        FAILX(name, "%zu unexpected bytes after reply line", extra);
        return;
    }
    ssize_t k = expect_eof(fd);
    if (k == 0)
        OK(name, "got EOF");
    else if (k > 0)
        FAILX(name, "expected EOF, got %zd bytes of data", k);
    else if (k == -2)
        FAILX(name, "expected EOF, timed out after %d ms", IO_TIMEOUT_MS);
    else
        FAILX(name, "expected EOF, recv error errno=%d(%s)", ERRS);
}

static int connect_blocking(const struct target *t, const char *name)
{
    int fd = socket(t->ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        FAILX(name, "socket errno=%d(%s)", ERRS);
        return -1;
    }
    if (connect(fd, (const struct sockaddr *)&t->ss, t->len) < 0) {
        FAILX(name, "connect to %s errno=%d(%s)", t->str, ERRS);
        close(fd);
        return -1;
    }
    return fd;
}

/* send cmd+data on a blocking socket, shutdown(SHUT_WR), read echo to EOF */
static void blocking_echo(int fd, const char *name, size_t n, uint64_t seed)
{
    size_t cl = 5;
    unsigned char *tx = malloc(cl + n);
    unsigned char *rx = malloc(n + 65536);
    if (!tx || !rx) {
        FAILX(name, "malloc");
        free(tx);
        free(rx);
        return;
    }
    memcpy(tx, "ECHO\n", cl);
    fill_random(tx + cl, n, seed);
    if (send_all(fd, tx, cl + n) < 0) {
        FAILX(name, "send errno=%d(%s)", ERRS);
        goto out;
    }
    if (shutdown(fd, SHUT_WR) < 0) {
        FAILX(name, "shutdown(SHUT_WR) errno=%d(%s)", ERRS);
        goto out;
    }
    size_t got = 0;
    for (;;) {
        if (got >= n + 65536) {
            FAILX(name, "received more than expected (>%zu bytes)", got);
            goto out;
        }
        ssize_t k = recv_to(fd, rx + got, n + 65536 - got, IO_TIMEOUT_MS);
        if (k == 0)
            break;
        if (k == -2) {
            FAILX(name, "timeout waiting for echo: received %zu/%zu", got, n);
            goto out;
        }
        if (k < 0) {
            FAILX(name, "recv errno=%d(%s) after %zu/%zu bytes", ERRS, got, n);
            goto out;
        }
        got += (size_t)k;
    }
    if (got != n) {
        FAILX(name, "echo length %zu != %zu", got, n);
    } else if (memcmp(rx, tx + cl, n) != 0) {
        size_t i = 0;
        while (i < n && rx[i] == tx[cl + i])
            i++;
        FAILX(name, "echo data mismatch at offset %zu", i);
    } else {
        OK(name, "bytes=%zu echoed and EOF received", n);
    }
out:
    free(tx);
    free(rx);
}

static void t_nbconnect(const struct target *t)
{
    int fd = -1, ep = -1;
    unsigned char *tx = NULL, *rx = NULL;
    struct epoll_event ev, evs[8];

    fd = socket(t->ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        FAILX("nbconnect-socket", "errno=%d(%s)", ERRS);
        return;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        FAILX("nbconnect-nonblock", "fcntl errno=%d(%s)", ERRS);
        goto out;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        FAILX("nbconnect-epoll", "epoll_create1 errno=%d(%s)", ERRS);
        goto out;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.fd = fd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        FAILX("nbconnect-epoll", "epoll_ctl ADD before connect errno=%d(%s)", ERRS);
        goto out;
    }
    /* Linux TCP never completes a non-blocking connect() inside the call, not even on loopback;
     * FreeFlow's host socket connects the same way, and a same-host pair, connected from the
     * start, still says EINPROGRESS. A 0 here means the connect() waited for the handshake. */
    int rc = connect(fd, (const struct sockaddr *)&t->ss, t->len);
    if (rc == 0) {
        FAILX("nbconnect-inprogress", "non-blocking connect returned 0 (want -1/EINPROGRESS: it must not wait for the handshake)");
    } else if (errno == EINPROGRESS) {
        OK("nbconnect-inprogress", "connect=-1 errno=EINPROGRESS");
    } else {
        FAILX("nbconnect-inprogress", "connect=-1 errno=%d(%s)", ERRS);
        goto out;
    }
    fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
        OK("nbconnect-still-nonblock", "F_GETFL=0x%x", fl);
    else
        FAILX("nbconnect-still-nonblock", "F_GETFL=0x%x after connect", fl);

    /* wait for EPOLLOUT on the epoll registration made before connect() */
    uint32_t seen = 0;
    int64_t deadline = now_ms() + IO_TIMEOUT_MS;
    while (!(seen & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            break;
        int n = epoll_wait(ep, evs, 8, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            FAILX("nbconnect-epollout", "epoll_wait errno=%d(%s)", ERRS);
            goto out;
        }
        for (int i = 0; i < n; i++)
            if (evs[i].data.fd == fd)
                seen |= evs[i].events;
    }
    if (!(seen & EPOLLOUT) || (seen & (EPOLLERR | EPOLLHUP))) {
        int se = 0;
        socklen_t sl = sizeof se;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &se, &sl);
        FAILX("nbconnect-epollout", "events=0x%x (no clean EPOLLOUT; waited up to %d ms), SO_ERROR=%d(%s)", seen,
              IO_TIMEOUT_MS, se, strerror(se));
        goto out;
    }
    OK("nbconnect-epollout", "events=0x%x", seen);

    int soerr = -1;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
        FAILX("nbconnect-soerror", "getsockopt errno=%d(%s)", ERRS);
        goto out;
    }
    if (soerr != 0) {
        FAILX("nbconnect-soerror", "SO_ERROR=%d(%s)", soerr, strerror(soerr));
        goto out;
    }
    OK("nbconnect-soerror", "SO_ERROR=0");

    int pr = wait_fd(fd, POLLOUT, IO_TIMEOUT_MS);
    if (pr > 0 && (pr & POLLOUT) && !(pr & (POLLERR | POLLHUP | POLLNVAL)))
        OK("nbconnect-pollout", "revents=0x%x", pr);
    else
        FAILX("nbconnect-pollout", "poll result=%d revents=0x%x", pr < 0 ? -1 : (pr == 0 ? 0 : 1), pr > 0 ? pr : 0);

    /* ECHO 1 MiB through the epoll loop */
    const size_t N = 1u << 20, cl = 5, cap = N + 65536;
    size_t total = cl + N, sent = 0, got = 0;
    tx = malloc(total);
    rx = malloc(cap);
    if (!tx || !rx) {
        FAILX("nbconnect-echo", "malloc");
        goto out;
    }
    memcpy(tx, "ECHO\n", cl);
    fill_random(tx + cl, N, 1);
    int eof = 0, wdone = 0;
    while (!eof) {
        int n = epoll_wait(ep, evs, 8, IO_TIMEOUT_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            FAILX("nbconnect-echo", "epoll_wait errno=%d(%s)", ERRS);
            goto out;
        }
        if (n == 0) {
            FAILX("nbconnect-echo", "stalled %d ms: sent=%zu/%zu received=%zu/%zu", IO_TIMEOUT_MS, sent, total,
                  got, N);
            goto out;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd != fd)
                continue;
            uint32_t e = evs[i].events;
            if (e & EPOLLERR) {
                int se = 0;
                socklen_t l2 = sizeof se;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &se, &l2);
                if (se) {
                    FAILX("nbconnect-echo", "EPOLLERR SO_ERROR=%d(%s) sent=%zu received=%zu", se, strerror(se),
                          sent, got);
                    goto out;
                }
            }
            if ((e & EPOLLOUT) && !wdone) {
                while (sent < total) {
                    ssize_t k = send(fd, tx + sent, total - sent, MSG_NOSIGNAL);
                    if (k > 0)
                        sent += (size_t)k;
                    else if (k < 0 && errno == EINTR)
                        continue;
                    else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                    else {
                        FAILX("nbconnect-echo", "send errno=%d(%s) sent=%zu", ERRS, sent);
                        goto out;
                    }
                }
                if (sent == total) {
                    wdone = 1;
                    if (shutdown(fd, SHUT_WR) < 0) {
                        FAILX("nbconnect-echo", "shutdown errno=%d(%s)", ERRS);
                        goto out;
                    }
                    ev.events = EPOLLIN;
                    ev.data.fd = fd;
                    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0) {
                        FAILX("nbconnect-echo", "epoll_ctl MOD errno=%d(%s)", ERRS);
                        goto out;
                    }
                }
            }
            if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    if (got >= cap) {
                        FAILX("nbconnect-echo", "received more than expected (>%zu)", got);
                        goto out;
                    }
                    ssize_t k = recv(fd, rx + got, cap - got, 0);
                    if (k > 0)
                        got += (size_t)k;
                    else if (k == 0) {
                        eof = 1;
                        break;
                    } else if (errno == EINTR)
                        continue;
                    else if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                    else {
                        FAILX("nbconnect-echo", "recv errno=%d(%s) received=%zu", ERRS, got);
                        goto out;
                    }
                }
            }
        }
    }
    if (!wdone)
        FAILX("nbconnect-echo", "EOF before all data was sent (sent=%zu/%zu, received=%zu)", sent, total, got);
    else if (got != N)
        FAILX("nbconnect-echo", "echo length %zu != %zu", got, N);
    else if (memcmp(rx, tx + cl, N) != 0) {
        size_t i = 0;
        while (i < N && rx[i] == tx[cl + i])
            i++;
        FAILX("nbconnect-echo", "echo data mismatch at offset %zu", i);
    } else
        OK("nbconnect-echo", "bytes=%zu echoed via epoll and EOF received", N);
out:
    free(tx);
    free(rx);
    if (ep >= 0)
        close(ep);
    if (fd >= 0)
        close(fd);
}

static void t_blocking(const struct target *t)
{
    int fd = connect_blocking(t, "blocking-connect");
    if (fd < 0)
        return;
    OK("blocking-connect", "connect returned 0");
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && !(fl & O_NONBLOCK))
        OK("blocking-mode", "F_GETFL=0x%x (blocking)", fl);
    else
        FAILX("blocking-mode", "F_GETFL=0x%x (O_NONBLOCK set on blocking socket?)", fl);
    blocking_echo(fd, "blocking-echo", 64 * 1024, 2);
    close(fd);
}

static int get_tok(const char *line, const char *key, char *out, size_t cap)
{
    const char *p = line;
    size_t kl = strlen(key);
    while ((p = strstr(p, key)) != NULL) {
        if (p == line || p[-1] == ' ')
            break;
        p += kl;
    }
    if (!p)
        return -1;
    p += kl;
    size_t j = 0;
    while (*p && *p != ' ' && j < cap - 1)
        out[j++] = *p++;
    out[j] = 0;
    normalize_addr_str(out);
    return 0;
}

static void t_names(const struct target *t)
{
    int fd = connect_blocking(t, "names");
    if (fd < 0)
        return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char local[128], peer[128];
    memset(&ss, 0, sizeof ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        FAILX("names", "getsockname errno=%d(%s)", ERRS);
        close(fd);
        return;
    }
    fmt_addr((struct sockaddr *)&ss, sl, local, sizeof local);
    int lport = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                        : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) {
        FAILX("names", "local=%s getpeername errno=%d(%s)", local, ERRS);
        close(fd);
        return;
    }
    fmt_addr((struct sockaddr *)&ss, sl, peer, sizeof peer);
    if (lport == 0 || !strncmp(local, "0.0.0.0:", 8))
        FAILX("names", "local=%s peer=%s (unbound-looking local address)", local, peer);
    else
        OK("names", "local=%s peer=%s", local, peer);
    if (!strcmp(peer, t->str))
        OK("names-peer-is-server", "peer=%s", peer);
    else
        FAILX("names-peer-is-server", "getpeername=%s expected=%s", peer, t->str);

    if (send_all(fd, "INFO\n", 5) < 0) {
        FAILX("names-info", "send errno=%d(%s)", ERRS);
        close(fd);
        return;
    }
    char line[512], speer[128], slocal[128];
    size_t extra;
    int r = read_line(fd, line, sizeof line, &extra);
    if (r < 0) {
        FAILX("names-info", "reading server reply failed (%s)",
              r == -2 ? "timeout" : r == -3 ? "EOF before newline" : strerror(errno));
        close(fd);
        return;
    }
    OK("names-info", "server says: %s", line);
    if (!strncmp(line, "FAIL", 4))
        FAILX("names-server-accept-addr", "server: accept4() addr != getpeername(): %s", line);
    else
        OK("names-server-accept-addr", "accept4() addr == getpeername() on server");
    if (get_tok(line, "peer=", speer, sizeof speer) < 0 || get_tok(line, "local=", slocal, sizeof slocal) < 0) {
        FAILX("names-server-parse", "cannot parse: %s", line);
    } else {
        if (!strcmp(speer, local))
            OK("names-server-peer", "server-seen peer %s == client local", speer);
        else
            FAILX("names-server-peer", "server-seen peer %s != client local %s", speer, local);
        if (!strcmp(slocal, peer))
            OK("names-server-local", "server-seen local %s == client peer", slocal);
        else
            FAILX("names-server-local", "server-seen local %s != client peer %s", slocal, peer);
    }
    report_eof("names-eof", fd, extra);
    close(fd);
}

static void t_accept4(const struct target *t)
{
    int fd = connect_blocking(t, "accept4");
    if (fd < 0)
        return;
    if (send_all(fd, "FLAGS\n", 6) < 0) {
        FAILX("accept4", "send errno=%d(%s)", ERRS);
        close(fd);
        return;
    }
    char line[256];
    size_t extra;
    int r = read_line(fd, line, sizeof line, &extra);
    if (r < 0)
        FAILX("accept4", "reading server reply failed (%s)",
              r == -2 ? "timeout" : r == -3 ? "EOF before newline" : strerror(errno));
    else if (!strcmp(line, "nonblock=1 cloexec=1 keepalive=1 nodelay=1"))
        OK("accept4", "%s", line);
    else
        FAILX("accept4", "server accepted fd flags: %s (want nonblock=1 cloexec=1, and keepalive=1 nodelay=1 from the listener)", line);
    if (r >= 0)
        report_eof("accept4-eof", fd, extra);
    close(fd);
}

/* Options set before connect() hold on the connected socket (FreeFlow swaps a host socket in
 * at connect() and must carry them over). */
static void t_options(const struct target *t)
{
    int fd = socket(t->ss.ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        FAILX("options", "socket errno=%d(%s)", ERRS);
        return;
    }
    int one = 1, sndbuf = 96 * 1024;
    const char cc[] = "reno";
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, sizeof cc - 1) < 0) {
        FAILX("options", "setsockopt errno=%d(%s)", ERRS);
        close(fd);
        return;
    }
    if (connect(fd, (const struct sockaddr *)&t->ss, t->len) < 0) {
        FAILX("options", "connect to %s errno=%d(%s)", t->str, ERRS);
        close(fd);
        return;
    }
    int ka = int_option(fd, SOL_SOCKET, SO_KEEPALIVE), nd = int_option(fd, IPPROTO_TCP, TCP_NODELAY);
    int sb = int_option(fd, SOL_SOCKET, SO_SNDBUF);
    char got_cc[16] = "";
    socklen_t l = sizeof got_cc - 1;
    getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, got_cc, &l);
    /* The kernel doubles SO_SNDBUF for its bookkeeping. */
    if (ka == 1 && nd == 1 && sb == 2 * sndbuf && !strcmp(got_cc, cc))
        OK("options", "keepalive=%d nodelay=%d sndbuf=%d congestion=%s after connect", ka, nd, sb, got_cc);
    else
        FAILX("options", "after connect: keepalive=%d nodelay=%d sndbuf=%d congestion=%s (want 1 1 %d %s)", ka, nd, sb,
              got_cc, 2 * sndbuf, cc);
    close(fd);
}

/* A connected socket answers as TCP does, whatever carries it (FreeFlow may use a same-host
 * AF_UNIX pair and emulate TCP's options): its domain, protocol and type, TCP_INFO's state,
 * an option set after connect() read back, and a second connect(). */
static void t_tcpface(const struct target *t)
{
    int fd = connect_blocking(t, "tcpface");
    if (fd < 0)
        return;
    int dom = int_option(fd, SOL_SOCKET, SO_DOMAIN), proto = int_option(fd, SOL_SOCKET, SO_PROTOCOL);
    int type = int_option(fd, SOL_SOCKET, SO_TYPE), one = 1;
    struct tcp_info ti;
    memset(&ti, 0, sizeof ti);
    socklen_t l = sizeof ti;
    int info = getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l);
    int set = setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int nd = int_option(fd, IPPROTO_TCP, TCP_NODELAY), mss = int_option(fd, IPPROTO_TCP, TCP_MAXSEG);
    int again = connect(fd, (const struct sockaddr *)&t->ss, t->len), again_errno = errno;
    if (dom == t->ss.ss_family && proto == IPPROTO_TCP && type == SOCK_STREAM && info == 0 &&
        ti.tcpi_state == TCP_ESTABLISHED && set == 0 && nd == 1 && mss > 0 && again < 0 && again_errno == EISCONN)
        OK("tcpface", "domain=%d protocol=%d state=%u nodelay=%d mss=%d reconnect=EISCONN", dom, proto, ti.tcpi_state, nd, mss);
    else
        FAILX("tcpface", "domain=%d protocol=%d type=%d tcp_info=%d state=%u nodelay set=%d get=%d mss=%d reconnect=%d errno=%d",
              dom, proto, type, info, ti.tcpi_state, set, nd, mss, again, again_errno);
    close(fd);
}

static void t_halfclose(const struct target *t)
{
    int fd = connect_blocking(t, "halfclose");
    if (fd < 0)
        return;
    const size_t N = 100000;
    unsigned char *tx = malloc(5 + N);
    if (!tx) {
        close(fd);
        return;
    }
    memcpy(tx, "HALF\n", 5);
    fill_random(tx + 5, N, 3);
    uint64_t h = fnv1a(FNV_INIT, tx + 5, N);
    char want[96], line[256];
    snprintf(want, sizeof want, "count=%zu fnv=%016llx", N, (unsigned long long)h);
    if (send_all(fd, tx, 5 + N) < 0) {
        FAILX("halfclose", "send errno=%d(%s)", ERRS);
        goto out;
    }
    if (shutdown(fd, SHUT_WR) < 0) {
        FAILX("halfclose", "shutdown(SHUT_WR) errno=%d(%s)", ERRS);
        goto out;
    }
    size_t extra;
    int r = read_line(fd, line, sizeof line, &extra);
    if (r < 0) {
        FAILX("halfclose", "reading reply after shutdown(SHUT_WR) failed (%s)",
              r == -2 ? "timeout" : r == -3 ? "EOF before newline" : strerror(errno));
        goto out;
    }
    if (!strcmp(line, want))
        OK("halfclose", "%s", line);
    else
        FAILX("halfclose", "server replied '%s', expected '%s'", line, want);
    report_eof("halfclose-eof", fd, extra);
out:
    free(tx);
    close(fd);
}

/* Room before a concurrent connection's payload for its command line "SUM IP:PORT\n". */
#define CC_HDR 128

struct cc {
    int fd;
    int state; /* 0 connecting, 1 sending, 2 receiving, 3 done, 4 failed */
    unsigned char *tx; /* CC_HDR bytes of room, then the payload */
    size_t txlen, sent, plen;
    uint64_t h;
    char self[96]; /* getsockname() once connected: sent first, the server checks it */
    char rx[400];
    size_t rxlen;
    char why[400];
};

static void cc_fail(struct cc *c, int ep, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof c->why, fmt, ap);
    va_end(ap);
    c->state = 4;
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* Once connected: the command line carries our own name, as getsockname() reports it, in front
 * of the payload. */
static int cc_identify(struct cc *c, int ep)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(c->fd, (struct sockaddr *)&ss, &sl) < 0) {
        cc_fail(c, ep, "getsockname errno=%d(%s)", ERRS);
        return -1;
    }
    fmt_addr((struct sockaddr *)&ss, sl, c->self, sizeof c->self);
    char hdr[CC_HDR];
    int hl = snprintf(hdr, sizeof hdr, "SUM %s\n", c->self);
    if (hl <= 0 || hl >= CC_HDR) {
        cc_fail(c, ep, "name too long: %s", c->self);
        return -1;
    }
    c->sent = CC_HDR - (size_t)hl;
    memcpy(c->tx + c->sent, hdr, (size_t)hl);
    return 0;
}

static void t_concurrent(const struct target *t)
{
    struct cc *cs = calloc(NCONC, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!cs || ep < 0) {
        FAILX("concurrent", "setup failed errno=%d(%s)", ERRS);
        free(cs);
        if (ep >= 0)
            close(ep);
        return;
    }
    int inprog = 0, immediate = 0, pending = 0;
    /* issue all connects before processing any completion */
    for (int i = 0; i < NCONC; i++) {
        struct cc *c = &cs[i];
        uint64_t s = rng_seed(1000 + (uint64_t)i);
        c->plen = 1000 + (size_t)(rng_next(&s) % 19001);
        c->txlen = CC_HDR + c->plen;
        c->tx = malloc(c->txlen);
        c->fd = -1;
        if (!c->tx) {
            cc_fail(c, ep, "malloc");
            continue;
        }
        fill_random(c->tx + CC_HDR, c->plen, 100000 + (uint64_t)i);
        c->h = fnv1a(FNV_INIT, c->tx + CC_HDR, c->plen);
        c->fd = socket(t->ss.ss_family, SOCK_STREAM, 0);
        if (c->fd < 0) {
            cc_fail(c, ep, "socket errno=%d(%s)", ERRS);
            continue;
        }
        int fl = fcntl(c->fd, F_GETFL);
        if (fl < 0 || fcntl(c->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            cc_fail(c, ep, "fcntl errno=%d(%s)", ERRS);
            continue;
        }
        int rc = connect(c->fd, (const struct sockaddr *)&t->ss, t->len);
        if (rc == 0) {
            immediate++;
            if (cc_identify(c, ep) < 0)
                continue;
            c->state = 1;
        } else if (errno == EINPROGRESS) {
            inprog++;
            c->state = 0;
        } else {
            cc_fail(c, ep, "connect errno=%d(%s)", ERRS);
            continue;
        }
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.u32 = (uint32_t)i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            cc_fail(c, ep, "epoll_ctl ADD errno=%d(%s)", ERRS);
            continue;
        }
        pending++;
    }

    struct epoll_event evs[64];
    while (pending > 0) {
        int n = epoll_wait(ep, evs, 64, IO_TIMEOUT_MS);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            FAILX("concurrent-epoll", "epoll_wait errno=%d(%s)", ERRS);
            break;
        }
        if (n == 0) {
            for (int i = 0; i < NCONC; i++)
                if (cs[i].state < 3)
                    cc_fail(&cs[i], ep, "stalled %d ms in state %d (sent=%zu/%zu, rx=%zu)", IO_TIMEOUT_MS,
                            cs[i].state, cs[i].sent, cs[i].txlen, cs[i].rxlen);
            break;
        }
        for (int k = 0; k < n; k++) {
            uint32_t i = evs[k].data.u32;
            uint32_t e = evs[k].events;
            struct cc *c = &cs[i];
            if (c->state >= 3)
                continue;
            if (c->state == 0) {
                if (!(e & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                    continue;
                int se = 0;
                socklen_t sl = sizeof se;
                if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &se, &sl) < 0 || se) {
                    cc_fail(c, ep, "connect failed SO_ERROR=%d(%s) events=0x%x", se, strerror(se), e);
                    pending--;
                    continue;
                }
                if (cc_identify(c, ep) < 0) {
                    pending--;
                    continue;
                }
                c->state = 1;
            }
            if (c->state == 1 && (e & EPOLLOUT)) {
                int bad = 0;
                while (c->sent < c->txlen) {
                    ssize_t w = send(c->fd, c->tx + c->sent, c->txlen - c->sent, MSG_NOSIGNAL);
                    if (w > 0)
                        c->sent += (size_t)w;
                    else if (w < 0 && errno == EINTR)
                        continue;
                    else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                    else {
                        cc_fail(c, ep, "send errno=%d(%s) sent=%zu", ERRS, c->sent);
                        bad = 1;
                        break;
                    }
                }
                if (bad) {
                    pending--;
                    continue;
                }
                if (c->sent == c->txlen) {
                    struct epoll_event ev;
                    memset(&ev, 0, sizeof ev);
                    ev.events = EPOLLIN;
                    ev.data.u32 = i;
                    if (shutdown(c->fd, SHUT_WR) < 0 || epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
                        cc_fail(c, ep, "shutdown/epoll_ctl MOD errno=%d(%s)", ERRS);
                        pending--;
                        continue;
                    }
                    c->state = 2;
                }
            }
            if (c->state >= 1 && c->state < 3 && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                for (;;) {
                    if (c->rxlen >= sizeof c->rx - 1) {
                        cc_fail(c, ep, "reply too long");
                        pending--;
                        break;
                    }
                    ssize_t r = recv(c->fd, c->rx + c->rxlen, sizeof c->rx - 1 - c->rxlen, 0);
                    if (r > 0) {
                        c->rxlen += (size_t)r;
                        c->rx[c->rxlen] = 0;
                    } else if (r == 0) {
                        if (c->state != 2) {
                            cc_fail(c, ep, "EOF before all data sent (sent=%zu/%zu)", c->sent, c->txlen);
                        } else {
                            c->state = 3;
                            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                            close(c->fd);
                            c->fd = -1;
                        }
                        pending--;
                        break;
                    } else if (errno == EINTR) {
                        continue;
                    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        break;
                    } else {
                        cc_fail(c, ep, "recv errno=%d(%s)", ERRS);
                        pending--;
                        break;
                    }
                }
            }
        }
    }

    /* A reply is "count=N fnv=H id=ok pid=P": the bytes arrived intact, and the server's
     * accept() paired this connection with exactly this client (its getsockname()). */
    int good = 0, named = 0, shown = 0, npids = 0;
    int pids[64], per_pid[64];
    for (int i = 0; i < NCONC; i++) {
        struct cc *c = &cs[i];
        char want[96];
        int pid = 0, off = 0;
        snprintf(want, sizeof want, "count=%zu fnv=%016llx id=ok pid=", c->plen, (unsigned long long)c->h);
        if (c->state == 3 && !strncmp(c->rx, want, strlen(want)) &&
            sscanf(c->rx + strlen(want), "%d\n%n", &pid, &off) == 1 && off > 0 && c->rx[strlen(want) + off] == 0) {
            good++;
            named++;
            int k = 0;
            while (k < npids && pids[k] != pid)
                k++;
            if (k == npids && npids < 64) {
                per_pid[npids] = 0;
                pids[npids++] = pid;
            }
            if (k < npids)
                per_pid[k]++;
            continue;
        }
        if (c->state == 3) {
            char *nl = strchr(c->rx, '\n');
            if (nl)
                *nl = 0;
            if (strstr(c->rx, " id=MISMATCH"))
                snprintf(c->why, sizeof c->why, "paired with another peer: client getsockname=%s, server says '%s'",
                         c->self, c->rx);
            else
                snprintf(c->why, sizeof c->why, "reply '%s' != expected count=%zu fnv=%016llx id=ok pid=P", c->rx,
                         c->plen, (unsigned long long)c->h);
        }
        if (shown++ < 5)
            FAILX("concurrent-conn", "#%d: %s", i, c->why[0] ? c->why : "unfinished");
        if (c->fd >= 0)
            close(c->fd);
    }
    for (int i = 0; i < NCONC; i++)
        free(cs[i].tx);
    free(cs);
    close(ep);
    /* A non-blocking TCP connect() never completes inside the call (see t_nbconnect). */
    if (good == NCONC && immediate == 0)
        OK("concurrent", "%d/%d (connect: %d EINPROGRESS, %d immediate)", good, NCONC, inprog, immediate);
    else
        FAILX("concurrent", "%d/%d (connect: %d EINPROGRESS, %d immediate; want all EINPROGRESS)", good, NCONC, inprog,
              immediate);
    char split[256] = "";
    for (int k = 0, o = 0; k < npids && o < (int)sizeof split - 24; k++)
        o += snprintf(split + o, sizeof split - (size_t)o, " %d:%d", pids[k], per_pid[k]);
    report(named == NCONC, "concurrent-identity", "%d/%d accepted as exactly their client's getsockname(); processes=%d (pid:connections%s)",
           named, NCONC, npids, split);
}

static void t_fork(const struct target *t)
{
    int fd = connect_blocking(t, "fork-connect");
    if (fd < 0)
        return;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        FAILX("fork", "fork errno=%d(%s)", ERRS);
        close(fd);
        return;
    }
    if (pid == 0) {
        g_ok = g_fail = 0;
        g_test = "fork-child";
        alarm(TEST_ALARM_S - 5);
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        char peer[128];
        memset(&ss, 0, sizeof ss);
        if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) {
            FAILX("fork-child-peer", "getpeername errno=%d(%s)", ERRS);
        } else {
            fmt_addr((struct sockaddr *)&ss, sl, peer, sizeof peer);
            if (!strcmp(peer, t->str))
                OK("fork-child-peer", "peer=%s", peer);
            else
                FAILX("fork-child-peer", "getpeername=%s expected=%s", peer, t->str);
        }
        blocking_echo(fd, "fork-child-echo", 10000, 4);
        close(fd);
        fflush(stdout);
        _exit(g_fail ? 1 : (g_ok >= 2 ? 0 : 1));
    }
    g_child = pid;
    close(fd); /* parent drops its copy; the child's copy must keep working */
    int st = 0;
    pid_t w;
    do {
        w = waitpid(pid, &st, 0);
    } while (w < 0 && errno == EINTR);
    g_child = 0;
    if (w < 0)
        FAILX("fork", "waitpid errno=%d(%s)", ERRS);
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        OK("fork", "child did I/O on inherited socket after parent closed its copy; exit=0");
    else if (WIFEXITED(st))
        FAILX("fork", "child exit=%d", WEXITSTATUS(st));
    else
        FAILX("fork", "child killed by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}

/* timing N: how long connect() itself takes. N non-blocking connects (odd ones made
 * non-blocking with SOCK_NONBLOCK, even ones with fcntl, some registered with epoll first), then
 * one blocking connect; then every connection must complete (POLLOUT, SO_ERROR 0) and echo
 * 100 kB. Not part of "all": the harness may stall the network or the remote router while the
 * connects run, and then the blocking connect (only) waits until it is back. Lines:
 *   time nonblock i=I us=U rc=R errno=E
 *   ok|FAIL timing-nonblock n=N einprogress=K first_us=U max_us=U writable_at_once=W
 *   time blocking us=U rc=R errno=E
 *   ok|FAIL timing-blocking us=U
 *   ok|FAIL timing-complete K/N (then the echo checks, one line each) */
#define TIMING_MAX 64
#define TIMING_ECHO 100000

static const char *errno_name(int e)
{
    return e == 0 ? "0" : e == EINPROGRESS ? "EINPROGRESS" : e == ECONNREFUSED ? "ECONNREFUSED" : strerror(e);
}

static void t_timing(const struct target *t, int n)
{
    int fds[TIMING_MAX], ep = epoll_create1(EPOLL_CLOEXEC);
    int64_t first = -1, worst = 0;
    int inprog = 0, writable = 0;
    struct timespec a, b;
    if (n < 1 || n > TIMING_MAX || ep < 0) {
        FAILX("timing", "bad count %d (1..%d) or epoll_create1 failed", n, TIMING_MAX);
        if (ep >= 0)
            close(ep);
        return;
    }
    for (int i = 0; i < n; i++) {
        fds[i] = socket(t->ss.ss_family, SOCK_STREAM | (i % 2 ? SOCK_NONBLOCK : 0), 0);
        if (fds[i] < 0 || (i % 2 == 0 && fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK) < 0)) {
            FAILX("timing", "socket/fcntl errno=%d(%s)", ERRS);
            n = i + (fds[i] >= 0);
            break;
        }
        if (i % 4 == 0) { /* as an event loop does: registered before connect() */
            struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fds[i]};
            epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        }
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = connect(fds[i], (const struct sockaddr *)&t->ss, t->len), e = rc < 0 ? errno : 0;
        clock_gettime(CLOCK_MONOTONIC, &b);
        int64_t us = (b.tv_sec - a.tv_sec) * 1000000LL + (b.tv_nsec - a.tv_nsec) / 1000;
        if (first < 0)
            first = us;
        if (us > worst)
            worst = us;
        inprog += rc < 0 && e == EINPROGRESS;
        printf("time nonblock i=%d us=%lld rc=%d errno=%s\n", i, (long long)us, rc, errno_name(e));
    }
    for (int i = 0; i < n; i++) /* still connecting, unless the handshake is already done */
        writable += (wait_fd(fds[i], POLLOUT, 0) & POLLOUT) != 0;
    report(inprog == n, "timing-nonblock", "n=%d einprogress=%d first_us=%lld max_us=%lld writable_at_once=%d", n, inprog,
           (long long)first, (long long)worst, writable);

    clock_gettime(CLOCK_MONOTONIC, &a);
    int bfd = socket(t->ss.ss_family, SOCK_STREAM, 0);
    int rc = bfd < 0 ? -1 : connect(bfd, (const struct sockaddr *)&t->ss, t->len), e = rc < 0 ? errno : 0;
    clock_gettime(CLOCK_MONOTONIC, &b);
    int64_t bus = (b.tv_sec - a.tv_sec) * 1000000LL + (b.tv_nsec - a.tv_nsec) / 1000;
    printf("time blocking us=%lld rc=%d errno=%s\n", (long long)bus, rc, errno_name(e));
    report(rc == 0, "timing-blocking", "us=%lld", (long long)bus);

    int done = 0;
    int64_t deadline = now_ms() + 15000;
    for (int i = 0; i < n; i++) {
        int left = (int)(deadline - now_ms());
        int r = wait_fd(fds[i], POLLOUT, left > 0 ? left : 0), se = -1;
        socklen_t sl = sizeof se;
        getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &se, &sl);
        if (r > 0 && (r & POLLOUT) && se == 0)
            done++;
        else
            FAILX("timing-conn", "#%d: revents=0x%x SO_ERROR=%d(%s)", i, r > 0 ? r : 0, se, strerror(se));
    }
    report(done == n, "timing-complete", "%d/%d non-blocking connects completed with SO_ERROR 0", done, n);
    char name[32];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "timing-echo-%d", i);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) & ~O_NONBLOCK); /* blocking_echo's send_all */
        blocking_echo(fds[i], name, TIMING_ECHO, 50 + (uint64_t)i);
        close(fds[i]);
    }
    if (rc == 0)
        blocking_echo(bfd, "timing-echo-blocking", TIMING_ECHO, 49);
    if (bfd >= 0)
        close(bfd);
    close(ep);
}

struct test {
    const char *name;
    void (*fn)(const struct target *);
};
static const struct test tests[] = {
    {"nbconnect", t_nbconnect}, {"blocking", t_blocking},     {"names", t_names}, {"accept4", t_accept4},
    {"halfclose", t_halfclose}, {"concurrent", t_concurrent}, {"fork", t_fork},     {"options", t_options},
    {"tcpface", t_tcpface},
};
#define NTESTS ((int)(sizeof tests / sizeof tests[0]))

static int run_client(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[2], "timing")) {
        struct target t;
        int port = atoi(argv[1]);
        if (port <= 0 || port > 65535 || parse_addr(argv[0], port, &t.ss, &t.len) < 0)
            return 2;
        fmt_addr((struct sockaddr *)&t.ss, t.len, t.str, sizeof t.str);
        signal(SIGPIPE, SIG_IGN);
        signal(SIGALRM, on_alarm);
        g_test = "timing";
        alarm(60);
        t_timing(&t, atoi(argv[3]));
        return g_fail ? 1 : 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: edge client <server_ip> <port> <test>\n"
                        "tests: nbconnect blocking names accept4 halfclose concurrent fork options tcpface all\n");
        return 2;
    }
    struct target t;
    int port = atoi(argv[1]);
    if (port <= 0 || port > 65535 || parse_addr(argv[0], port, &t.ss, &t.len) < 0) {
        fprintf(stderr, "edge client: bad address/port %s %s\n", argv[0], argv[1]);
        return 2;
    }
    fmt_addr((struct sockaddr *)&t.ss, t.len, t.str, sizeof t.str);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    raise_nofile();

    const char *which = argv[2];
    if (!strcmp(which, "all")) {
        int passed = 0;
        char failed[256] = "";
        for (int i = 0; i < NTESTS; i++) {
            int before = g_fail;
            g_test = tests[i].name;
            alarm(TEST_ALARM_S);
            tests[i].fn(&t);
            alarm(0);
            if (g_fail == before)
                passed++;
            else {
                strncat(failed, " ", sizeof failed - strlen(failed) - 1);
                strncat(failed, tests[i].name, sizeof failed - strlen(failed) - 1);
            }
        }
        g_test = "all";
        if (passed == NTESTS)
            OK("all", "%d/%d tests passed (%d checks)", passed, NTESTS, g_ok);
        else
            FAILX("all", "%d/%d tests passed; failed:%s", passed, NTESTS, failed);
    } else {
        int found = 0;
        for (int i = 0; i < NTESTS; i++) {
            if (!strcmp(which, tests[i].name)) {
                found = 1;
                g_test = tests[i].name;
                alarm(TEST_ALARM_S);
                tests[i].fn(&t);
                alarm(0);
            }
        }
        if (!found) {
            fprintf(stderr, "edge client: unknown test %s\n", which);
            return 2;
        }
        if (g_ok + g_fail == 0)
            FAILX(which, "no checks ran");
    }
    return g_fail ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && !strcmp(argv[1], "server"))
        return run_server(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "client"))
        return run_client(argc - 2, argv + 2);
    fprintf(stderr, "usage:\n"
                    "  edge server <bind_ip> <port> [--workers N] [--v6] [--epoll-before-listen]\n"
                    "  edge client <server_ip> <port> <test>\n"
                    "tests: nbconnect blocking names accept4 halfclose concurrent fork options tcpface all\n");
    return 2;
}
