/* socket(), connect(), listen() and the calls that must see through the fd swap: the heart of
 * the library. A connect() to an overlay address asks the router for a host-network socket,
 * moves it onto the application's fd number and connects it there, so the application keeps
 * its fd, flags, options and epoll registrations while its bytes take the host path. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "config.h"
#include "fdtable.h"
#include "init.h"
#include "plain_dests.h"
#include "pool.h"
#include "router.h"
#include "tcp_emul.h"

int socket(int domain, int type, int protocol) {
  FF_INIT();
  int fd = ff_real.socket(domain, type, protocol);
  if (fd >= 0 && ff_config.enabled && (domain == AF_INET || domain == AF_INET6) &&
      (type & 0xf) == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP)) {
    pthread_mutex_lock(&ff_table_lock);
    ff_fd_track(fd, FF_CANDIDATE, domain);
    pthread_mutex_unlock(&ff_table_lock);
  }
  return fd;
}

/* Only to remember that the socket has a local address of the application's choosing: a
 * connect() of an unbound socket then needs no getsockname() to find out. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  FF_INIT();
  int r = ff_real.bind(fd, addr, len);
  struct ff_fd *e = ff_fd_get(fd);
  if (r == 0 && e && e->sock->kind == FF_CANDIDATE) e->sock->bound = true;
  return r;
}

/* The overlay address the kernel would use as our source towards dst: a connected UDP socket
 * reveals it without sending anything. Cached: a container normally has one overlay address. */
static bool overlay_source_for(const struct ff_endpoint *dst, struct in6_addr *out) {
  static __thread struct in6_addr cached;
  static __thread bool have;
  if (have) {
    *out = cached;
    return true;
  }
  int u = ff_real.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (u < 0) return false;
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(dst->port ? dst->port : 9)};
  memcpy(&sin.sin_addr, &dst->addr.s6_addr[12], 4);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  struct ff_endpoint ep;
  bool ok = ff_real.connect(u, (struct sockaddr *)&sin, sizeof sin) == 0 &&
            ff_real.getsockname(u, (struct sockaddr *)&ss, &len) == 0 &&
            ff_endpoint_from_sockaddr((struct sockaddr *)&ss, len, &ep) && ff_config_in_vnet(&ep.addr);
  ff_real.close(u);
  if (!ok) return false;
  cached = *out = ep.addr;
  have = true;
  return true;
}

/* Puts new_fd (a host socket, or a same-host pair's end) on the application's fd number with
 * the application's flags and options, and re-creates its epoll registrations (closing the
 * overlay socket dropped them). *nonblocking: whether the application's socket is. */
static bool swap_in(int fd, struct ff_fd *e, int new_fd, bool pair, bool *nonblocking) {
  int fl = ff_real.fcntl(fd, F_GETFL);
  int fdfl = ff_real.fcntl(fd, F_GETFD);
  if (fl < 0 || fdfl < 0) return false;
  *nonblocking = fl & O_NONBLOCK;
  /* The router's socket has no status flags of its own (made without SOCK_NONBLOCK): setting
   * O_NONBLOCK needs no F_GETFL of it first. */
  if (fl & O_NONBLOCK) ff_real.fcntl(new_fd, F_SETFL, O_NONBLOCK);
  ff_sock_replay_opts(e->sock, new_fd, pair); /* a pair keeps TCP/IP-level options in the table */
  if (ff_real.dup3(new_fd, fd, (fdfl & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0) return false;
  for (int i = 0; i < e->nregs; i++) ff_real.epoll_ctl(e->regs[i].epfd, EPOLL_CTL_ADD, fd, &e->regs[i].ev);
  e->nregs = 0;
  return true;
}

/* Swaps new_fd in and gives fd its overlay identity. false: nothing changed. */
static bool take_over(int fd, struct ff_fd *e, int new_fd, bool pair, const struct ff_endpoint *src, uint16_t local_port,
                      const struct ff_endpoint *dst, bool *nonblocking) {
  pthread_mutex_lock(&ff_table_lock);
  bool swapped = e == ff_fd_get(fd) && swap_in(fd, e, new_fd, pair, nonblocking);
  if (swapped) {
    e->sock->kind = FF_ACCEL;
    e->sock->opened_ns = ff_pool_now_ns();
    e->sock->pair = pair;
    e->sock->local.addr = src->addr;
    e->sock->local.port = local_port;
    e->sock->peer = *dst;
  }
  pthread_mutex_unlock(&ff_table_lock);
  ff_real.close(new_fd);
  return swapped;
}

/* A same-host pair is connected already (its other end is in the listener's accept queue), so
 * connect() completes at once; a non-blocking one still reports EINPROGRESS, as TCP does, and
 * the socket is writable (EPOLLOUT, SO_ERROR 0) by the time the application looks. */
static bool adopt_pair(int fd, struct ff_fd *e, int pair_fd, const struct ff_endpoint *src, uint16_t local_port,
                       const struct ff_endpoint *dst, int *result) {
  bool nonblocking;
  if (!take_over(fd, e, pair_fd, true, src, local_port, dst, &nonblocking)) return false;
  *result = 0;
  if (nonblocking) {
    errno = EINPROGRESS;
    *result = -1;
  }
  return true;
}

/* Makes fd the accelerated connection of host_fd and starts the application's connect() on it.
 * false: nothing changed, continue on the overlay. */
static bool adopt(int fd, struct ff_fd *e, int host_fd, const struct ff_endpoint *src, uint16_t local_port,
                  const struct ff_endpoint *dst, const struct ff_endpoint *host, int *result) {
  bool nonblocking;
  if (!take_over(fd, e, host_fd, false, src, local_port, dst, &nonblocking)) return false;
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(host->port)};
  memcpy(&sin.sin_addr, &host->addr.s6_addr[12], 4);
  *result = ff_real.connect(fd, (struct sockaddr *)&sin, sizeof sin);
  return true;
}

static uint16_t host_port_of(int fd) {
  struct sockaddr_in sin;
  socklen_t len = sizeof sin;
  return ff_real.getsockname(fd, (struct sockaddr *)&sin, &len) == 0 ? ntohs(sin.sin_port) : 0;
}

/* Whether a same-host peer may be reached through an AF_UNIX pair (the router decides whether
 * the peer is on this host). A pair costs a router round trip per connection, where loopback
 * TCP sockets come prefetched in batches: a process in a connection storm towards a
 * destination (several connections to it closed within a second of their connect) gets
 * prefetched TCP sockets instead, so nginx upstreams or wrk `Connection: close` keep the TCP
 * path's rate, and connections that stay open (pools, streams) get the pair's data path.
 * FFR_SAME_HOST=unix: always a pair; tcp: never. */
static bool pair_wanted(const struct ff_fd *e, const struct ff_endpoint *dst) {
  if (ff_config.same_host == FF_SAME_HOST_TCP) return false;
  if (ff_config.same_host == FF_SAME_HOST_AUTO && ff_pool_storming(dst)) return false;
  return ff_tcp_emul_pairable(e->sock);
}

/* Returns true if the router took the connection (then *result is connect()'s result on the
 * host socket, errno included), false to continue on the plain overlay. */
static bool accelerated_connect(int fd, struct ff_fd *e, const struct ff_endpoint *dst, int *result) {
  struct ff_endpoint src = {0};
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (e->sock->bound && ff_real.getsockname(fd, (struct sockaddr *)&ss, &len) == 0)
    ff_endpoint_from_sockaddr((struct sockaddr *)&ss, len, &src);
  if (ff_addr_is_any(&src.addr) && !overlay_source_for(dst, &src.addr)) return false;
  if (!ff_addr_is_v4mapped(&src.addr)) return false;

  /* An application-chosen source port is the connection's identity: only unbound sockets
   * may use prefetched host sockets (whose overlay port is their host port). */
  bool poolable = src.port == 0;
  struct ff_msg req, rep;
  ff_msg_init(&req, FF_T_CONNECT);
  req.family = (uint16_t)e->sock->family;
  memcpy(req.local_addr, &src.addr, 16);
  req.local_port = src.port;
  memcpy(req.remote_addr, &dst->addr, 16);
  req.remote_port = dst->port;

  struct ff_pooled pooled;
  bool low;
  if (poolable && (ff_pool_take(dst, &pooled, &low) ||
                   (ff_router_collect(dst) && ff_pool_take(dst, &pooled, &low)))) {
    if (low) {
      req.flags = (uint32_t)ff_pool_refill_size(dst);
      ff_router_prefetch(&req, dst);
    }
    FF_DEBUG("connect fd %d: host path (prefetched socket)", fd);
    /* The router sent each socket's port with it; asking the kernel costs a system call. */
    uint16_t port = pooled.port ? pooled.port : host_port_of(pooled.fd);
    return adopt(fd, e, pooled.fd, &src, port, dst, &pooled.host, result);
  }

  req.flags = poolable ? (uint32_t)ff_pool_batch_size(dst) : 1; /* sockets wanted */
  if (pair_wanted(e, dst)) req.flags |= FF_CONNECT_PAIR_OK;
  int fds[FF_MAX_REPLY_FDS];
  uint16_t ports[FF_MAX_REPLY_FDS];
  int n = ff_router_call(&req, &rep, fds, ports, FF_MAX_REPLY_FDS);
  if (n < 0) return false;
  if (rep.status != FF_REPLY_ACCEL || n == 0) {
    FF_DEBUG("connect fd %d: overlay path (router reply %d, reason %u)", fd, rep.status, rep.flags);
    if (rep.status == FF_REPLY_FALLBACK && rep.flags == FF_FALLBACK_NO_LISTENER) ff_plain_dest_note(dst);
    for (int i = 0; i < n; i++) ff_real.close(fds[i]);
    return false;
  }
  if ((rep.flags & FF_CONNECT_PAIR) && n == 1) {
    FF_DEBUG("connect fd %d: same-host AF_UNIX pair via router", fd);
    return adopt_pair(fd, e, fds[0], &src, rep.local_port, dst, result);
  }
  struct ff_endpoint host = {.port = rep.host_port};
  memcpy(&host.addr, rep.host_addr, 16);
  if (n > 1) ff_pool_put(dst, fds + 1, ports + 1, n - 1, &host);
  FF_DEBUG("connect fd %d: host path via router (%d sockets fetched)", fd, n);
  return adopt(fd, e, fds[0], &src, rep.local_port, dst, &host, result);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  struct ff_endpoint dst;
  if (e && e->sock->kind == FF_ACCEL && e->sock->pair) { /* connected from the start, as TCP reports it */
    errno = EISCONN;
    return -1;
  }
  /* Only an unshared candidate: a dup()ed twin would keep pointing at the overlay socket. */
  if (e && e->sock->kind == FF_CANDIDATE && e->sock->refs == 1 && ff_endpoint_from_sockaddr(addr, len, &dst) &&
      ff_addr_is_v4mapped(&dst.addr) && ff_config_in_vnet(&dst.addr) && !ff_plain_dest_recent(&dst)) {
    int saved = errno, result;
    if (accelerated_connect(fd, e, &dst, &result)) return result;
    errno = saved;
  }
  return ff_real.connect(fd, addr, len);
}

/* Which listeners the router can serve: the wildcard address or one of our overlay addresses,
 * IPv4 or dual-stack IPv6 (an IPV6_V6ONLY listener cannot receive the router's IPv4 peers). */
static bool listener_eligible(int fd, int family, struct ff_endpoint *ep) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (ff_real.getsockname(fd, (struct sockaddr *)&ss, &len) < 0 || !ff_endpoint_from_sockaddr((struct sockaddr *)&ss, len, ep))
    return false;
  if (family == AF_INET6) {
    int v6only = 0;
    socklen_t olen = sizeof v6only;
    if (ff_real.getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &olen) < 0 || v6only) return false;
  }
  if (ff_addr_is_any(&ep->addr)) {
    ff_addr_v4_any(&ep->addr);
    return true;
  }
  return ff_addr_is_v4mapped(&ep->addr) && ff_config_in_vnet(&ep->addr);
}

/* The admission table the router sent with a listener, mapped; NULL if it is not one. */
static struct ff_admit_table *map_admission_table(int memfd) {
  struct stat st;
  if (fstat(memfd, &st) < 0 || (size_t)st.st_size < sizeof(struct ff_admit_table)) return NULL;
  void *p = mmap(NULL, sizeof(struct ff_admit_table), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* Puts the router's host listener and accept channel beside the application's listener and
 * mirrors the listener's epoll registrations onto both. */
static void attach_router_listener(int fd, struct ff_fd *e, int chan, int host, struct ff_admit_table *admit, uint16_t port) {
  pthread_mutex_lock(&ff_table_lock);
  bool attached = e == ff_fd_get(fd) && e->sock->chan_fd < 0 && (e->sock->kind == FF_CANDIDATE || e->sock->kind == FF_LISTENER);
  if (attached) {
    /* A listener whose router went away keeps its old table mapped: another thread may
     * still be reading it. One table (256 KiB) per router restart, until the listener closes. */
    e->sock->kind = FF_LISTENER;
    e->sock->relisten_ns = 0;
    e->sock->chan_fd = chan;
    e->sock->host_fd = host;
    e->sock->admit = admit;
    atomic_fetch_add(&ff_channel_listeners, 1);
    for (int i = 0; i < e->nregs; i++) {
      struct epoll_event ev = e->regs[i].ev;
      ev.events &= ~(uint32_t)EPOLLOUT;
      ff_real.epoll_ctl(e->regs[i].epfd, EPOLL_CTL_ADD, host, &ev);
      ff_real.epoll_ctl(e->regs[i].epfd, EPOLL_CTL_ADD, chan, &ev);
    }
  }
  pthread_mutex_unlock(&ff_table_lock);
  if (!attached) {
    ff_real.close(chan);
    ff_real.close(host);
    munmap(admit, sizeof *admit);
    return;
  }
  FF_DEBUG("listen fd %d port %u: router host listener and accept channel attached", fd, port);
}

/* Asks the router to serve listener fd. false: no router answered (worth asking again later);
 * true: it answered, whether it serves the listener or not. */
static bool register_listener(int fd, struct ff_fd *e) {
  struct ff_endpoint ep;
  if (!listener_eligible(fd, e->sock->family, &ep)) return true;
  struct ff_msg req, rep;
  ff_msg_init(&req, FF_T_LISTEN);
  req.family = (uint16_t)e->sock->family;
  memcpy(req.local_addr, &ep.addr, 16);
  req.local_port = ep.port;
  req.flags = e->sock->backlog > 0 ? (uint32_t)e->sock->backlog : 0;
  /* Reply fds: accept channel, host listener, admission table. */
  int got[3] = {-1, -1, -1};
  int n = ff_router_call(&req, &rep, got, NULL, 3);
  if (n < 0) return false;
  struct ff_admit_table *admit = NULL;
  if (n == 3 && rep.status == FF_REPLY_ACCEL) admit = map_admission_table(got[2]);
  for (int i = 2; i < n; i++) ff_real.close(got[i]);
  if (admit) attach_router_listener(fd, e, ff_move_high(got[0]), ff_move_high(got[1]), admit, ep.port);
  else
    for (int i = 0; i < n && i < 2; i++) ff_real.close(got[i]);
  return true;
}

int listen(int fd, int backlog) {
  FF_INIT();
  int r = ff_real.listen(fd, backlog);
  struct ff_fd *e = ff_fd_get(fd);
  if (r < 0 || !e || e->sock->kind != FF_CANDIDATE) return r;
  int saved = errno;
  e->sock->backlog = backlog;
  if (!register_listener(fd, e)) e->sock->relisten_ns = 1; /* no router yet: accept() asks again */
  errno = saved;
  return r;
}

void ff_listener_reregister(int fd, struct ff_fd *e) {
  long long now = ff_pool_now_ns();
  pthread_mutex_lock(&ff_table_lock);
  bool due = e == ff_fd_get(fd) && e->sock->relisten_ns && now >= e->sock->relisten_ns && e->sock->chan_fd < 0;
  if (due) e->sock->relisten_ns = now + FF_RELISTEN_NS; /* this thread asks; others carry on */
  pthread_mutex_unlock(&ff_table_lock);
  if (!due) return;
  int saved = errno;
  if (register_listener(fd, e)) {
    pthread_mutex_lock(&ff_table_lock);
    if (e == ff_fd_get(fd) && e->sock->chan_fd < 0) e->sock->relisten_ns = 0; /* answered, and said no */
    pthread_mutex_unlock(&ff_table_lock);
  }
  errno = saved;
}

int close(int fd) {
  FF_INIT();
  if (ff_router_owns_fd(fd)) return 0; /* keep our router link: closing it is not the app's call */
  if (ff_fd_get(fd)) {
    struct ff_endpoint peer;
    long long opened = 0;
    pthread_mutex_lock(&ff_table_lock);
    struct ff_fd *e = ff_fd_get(fd);
    if (e && e->sock->kind == FF_ACCEL && e->sock->refs == 1 && e->sock->opened_ns) {
      opened = e->sock->opened_ns; /* the connection ends here: note how long it lived */
      peer = e->sock->peer;
    }
    ff_fd_forget(fd);
    pthread_mutex_unlock(&ff_table_lock);
    if (opened) ff_pool_note_closed(&peer, opened);
  }
  return ff_real.close(fd);
}

static int after_dup(int oldfd, int newfd) {
  if (newfd >= 0 && (ff_fd_get(oldfd) || ff_fd_get(newfd))) {
    int saved = errno;
    pthread_mutex_lock(&ff_table_lock);
    ff_fd_share(oldfd, newfd);
    pthread_mutex_unlock(&ff_table_lock);
    errno = saved;
  }
  return newfd;
}

int dup(int oldfd) {
  FF_INIT();
  return after_dup(oldfd, ff_real.dup(oldfd));
}

int dup2(int oldfd, int newfd) {
  FF_INIT();
  if (ff_router_owns_fd(newfd)) ff_router_release_fd();
  if (oldfd == newfd) return ff_real.dup2(oldfd, newfd);
  return after_dup(oldfd, ff_real.dup2(oldfd, newfd));
}

int dup3(int oldfd, int newfd, int flags) {
  FF_INIT();
  if (ff_router_owns_fd(newfd)) ff_router_release_fd();
  return after_dup(oldfd, ff_real.dup3(oldfd, newfd, flags));
}

int fcntl(int fd, int cmd, ...) {
  FF_INIT();
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  int r = ff_real.fcntl(fd, cmd, arg);
  if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC) return after_dup(fd, r);
  return r;
}
/* glibc redirects fcntl to fcntl64 with _FILE_OFFSET_BITS=64 / on newer headers. */
int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

static int overlay_name(int fd, struct sockaddr *addr, socklen_t *len, bool peer) {
  struct ff_fd *e = ff_fd_get(fd);
  if (!e || e->sock->kind != FF_ACCEL) return 1;
  if (!len) {
    errno = EFAULT;
    return -1;
  }
  ff_endpoint_to_sockaddr(peer ? &e->sock->peer : &e->sock->local, e->sock->family, addr, len);
  return 0;
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *len) {
  FF_INIT();
  int r = overlay_name(fd, addr, len, false);
  return r <= 0 ? r : ff_real.getsockname(fd, addr, len);
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *len) {
  FF_INIT();
  int r = overlay_name(fd, addr, len, true);
  if (r <= 0) {
    /* A host socket that is not connected (yet, or any more) answers as the kernel would. */
    struct sockaddr_storage ss;
    socklen_t l = sizeof ss;
    if (r == 0 && ff_real.getpeername(fd, (struct sockaddr *)&ss, &l) < 0) return -1;
    return r;
  }
  return ff_real.getpeername(fd, addr, len);
}

/* On a same-host pair the TCP- and IP-level options are the table's (tcp_emul.c); 1: the
 * kernel answers. */
static int pair_option(int fd, struct ff_fd *e, bool set, int level, int name, void *val, socklen_t *len) {
  int r = 1;
  pthread_mutex_lock(&ff_table_lock);
  if (e == ff_fd_get(fd))
    r = set ? ff_tcp_emul_set(e->sock, level, name, val, *len) : ff_tcp_emul_get(e->sock, level, name, val, len);
  int saved = errno;
  pthread_mutex_unlock(&ff_table_lock);
  errno = saved;
  return r;
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (e && e->sock->kind == FF_ACCEL && e->sock->pair) {
    int r = pair_option(fd, e, true, level, name, (void *)val, &len);
    if (r != 1) return r;
  }
  int r = ff_real.setsockopt(fd, level, name, val, len);
  if (r == 0 && e && e->sock->kind != FF_ACCEL) {
    int saved = errno;
    pthread_mutex_lock(&ff_table_lock);
    if (e == ff_fd_get(fd)) ff_sock_record_opt(e->sock, level, name, val, len);
    pthread_mutex_unlock(&ff_table_lock);
    errno = saved;
  }
  return r;
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *len) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (e && e->sock->kind == FF_ACCEL && e->sock->pair) {
    int r = pair_option(fd, e, false, level, name, val, len);
    if (r != 1) return r;
  } else if (e && e->sock->kind == FF_ACCEL && level == SOL_SOCKET && name == SO_DOMAIN && val && len && *len >= sizeof(int)) {
    *(int *)val = e->sock->family; /* the host socket is AF_INET; the application made AF_INET6 */
    *len = sizeof(int);
    return 0;
  }
  return ff_real.getsockopt(fd, level, name, val, len);
}
