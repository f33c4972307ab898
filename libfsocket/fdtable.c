#define _GNU_SOURCE
#include "fdtable.h"
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include "real.h"

pthread_mutex_t ff_table_lock = PTHREAD_MUTEX_INITIALIZER;
atomic_int ff_channel_listeners;

static struct ff_fd *_Atomic *table;
static int table_size;

void ff_table_init(void) {
  struct rlimit rl;
  long n = 65536;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max > n) n = rl.rlim_max;
  if (n > (1 << 20)) n = 1 << 20;
  /* calloc of this size is an anonymous mapping: only touched pages cost memory. */
  table = calloc(n, sizeof *table);
  table_size = table ? (int)n : 0;
}

struct ff_fd *ff_fd_get(int fd) {
  if (fd < 0 || fd >= table_size) return NULL;
  return atomic_load_explicit(&table[fd], memory_order_acquire);
}

static void sock_release(struct ff_sock *s) {
  if (--s->refs > 0) return;
  if (s->chan_fd >= 0) {
    ff_real.close(s->chan_fd);
    atomic_fetch_sub(&ff_channel_listeners, 1);
  }
  if (s->host_fd >= 0) ff_real.close(s->host_fd);
  if (s->admit) munmap(s->admit, sizeof *s->admit);
  free(s);
}

/* Takes a listener's sources out of the epoll sets its fd is registered in. Closing them is not
 * enough: a forked sibling (another nginx worker, the master) may hold copies, and a dead
 * router's channel left in an epoll set reports EPOLLHUP on every wait, which made each
 * nginx worker spin at ~90% CPU once the router had gone. */
static void unmirror_sources(struct ff_fd *e) {
  int src[2];
  int n = ff_listener_sources(e->sock, src);
  for (int r = 0; r < e->nregs; r++)
    for (int i = 0; i < n; i++) ff_real.epoll_ctl(e->regs[r].epfd, EPOLL_CTL_DEL, src[i], NULL);
}

void ff_fd_forget(int fd) {
  struct ff_fd *e = ff_fd_get(fd);
  if (!e) return;
  unmirror_sources(e);
  atomic_store_explicit(&table[fd], NULL, memory_order_release);
  sock_release(e->sock);
  free(e);
}

struct ff_fd *ff_fd_track(int fd, enum ff_kind kind, int family) {
  if (fd < 0 || fd >= table_size) return NULL;
  struct ff_fd *e = calloc(1, sizeof *e);
  struct ff_sock *s = calloc(1, sizeof *s);
  if (!e || !s) {
    free(e);
    free(s);
    return NULL;
  }
  s->refs = 1;
  s->kind = kind;
  s->family = family;
  s->chan_fd = -1;
  s->host_fd = -1;
  e->sock = s;
  ff_fd_forget(fd); /* an entry left by a close we did not see (close_range, exit of a thread) */
  atomic_store_explicit(&table[fd], e, memory_order_release);
  return e;
}

void ff_fd_share(int oldfd, int newfd) {
  struct ff_fd *src = ff_fd_get(oldfd);
  ff_fd_forget(newfd);
  if (!src || newfd < 0 || newfd >= table_size) return;
  struct ff_fd *e = calloc(1, sizeof *e);
  if (!e) return;
  e->sock = src->sock;
  e->sock->refs++;
  atomic_store_explicit(&table[newfd], e, memory_order_release);
}

void ff_listener_drop_channel(int fd, struct ff_fd *e) {
  pthread_mutex_lock(&ff_table_lock);
  if (e == ff_fd_get(fd) && e->sock->chan_fd >= 0) {
    unmirror_sources(e);
    e->sock->relisten_ns = 1; /* ask a router again at the next accept() (ff_listener_reregister) */
    ff_real.close(e->sock->chan_fd);
    e->sock->chan_fd = -1;
    atomic_fetch_sub(&ff_channel_listeners, 1);
    if (e->sock->host_fd >= 0) ff_real.close(e->sock->host_fd);
    e->sock->host_fd = -1;
  }
  pthread_mutex_unlock(&ff_table_lock);
}

int ff_listener_sources(const struct ff_sock *s, int out[2]) {
  int n = 0;
  if (s->kind != FF_LISTENER || s->chan_fd < 0) return 0;
  if (s->host_fd >= 0) out[n++] = s->host_fd;
  out[n++] = s->chan_fd;
  return n;
}

bool ff_channel_at_eof(int chan) {
  char b;
  return recv(chan, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/* Options every host socket already has, or cannot take, need no replay (a system call per
 * connection otherwise): the router makes its host sockets and listeners with SO_REUSEADDR on
 * (accepted sockets inherit it), and host sockets are IPv4, so IPv6-level options fail there. */
static bool replay_needed(int level, int name, const void *val, socklen_t len) {
  if (level == IPPROTO_IPV6) return false;
  if (level == SOL_SOCKET && name == SO_REUSEADDR && len >= (socklen_t)sizeof(int)) return *(const int *)val == 0;
  return true;
}

bool ff_sock_store_opt(struct ff_sock *s, int level, int name, const void *val, socklen_t len) {
  if (!val || len > FF_OPT_MAXLEN) return false;
  int i;
  for (i = 0; i < s->nopts; i++)
    if (s->opts[i].level == level && s->opts[i].name == name) break;
  if (i == s->nopts) {
    if (s->nopts == FF_MAX_OPTS) return false;
    s->nopts++;
  }
  s->opts[i].level = level;
  s->opts[i].name = name;
  s->opts[i].len = len;
  memcpy(s->opts[i].value, val, len);
  return true;
}

const struct ff_sockopt *ff_sock_find_opt(const struct ff_sock *s, int level, int name) {
  for (int i = 0; i < s->nopts; i++)
    if (s->opts[i].level == level && s->opts[i].name == name) return &s->opts[i];
  return NULL;
}

void ff_sock_record_opt(struct ff_sock *s, int level, int name, const void *val, socklen_t len) {
  if (!val || len > FF_OPT_MAXLEN) return;
  if (replay_needed(level, name, val, len)) {
    ff_sock_store_opt(s, level, name, val, len);
    return;
  }
  for (int i = 0; i < s->nopts; i++)
    if (s->opts[i].level == level && s->opts[i].name == name) {
      s->opts[i] = s->opts[--s->nopts]; /* an earlier value is overridden */
      return;
    }
}

void ff_sock_replay_opts(const struct ff_sock *s, int fd, bool sol_socket_only) {
  /* Options that make no sense on an IPv4 host socket (IPV6_V6ONLY, ...) fail harmlessly. */
  for (int i = 0; i < s->nopts; i++)
    if (!sol_socket_only || s->opts[i].level == SOL_SOCKET)
      ff_real.setsockopt(fd, s->opts[i].level, s->opts[i].name, s->opts[i].value, s->opts[i].len);
}

void ff_fd_record_epoll(struct ff_fd *e, int epfd, int op, const struct epoll_event *ev) {
  int i;
  for (i = 0; i < e->nregs; i++)
    if (e->regs[i].epfd == epfd) break;
  if (op == EPOLL_CTL_DEL) {
    if (i < e->nregs) e->regs[i] = e->regs[--e->nregs];
    return;
  }
  if (!ev) return;
  if (i == e->nregs) {
    if (e->nregs == FF_MAX_REGS) return;
    e->nregs++;
  }
  e->regs[i].epfd = epfd;
  e->regs[i].ev = *ev;
}
