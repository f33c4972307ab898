/* Readiness calls. An accelerated listener is ready when its overlay socket, the router's host
 * listener or its accept channel has a connection, so wherever the application waits on the
 * listener we also wait on the other two ("sources"): epoll registrations are mirrored,
 * poll()/select() sets are widened for the duration of the call. With no accelerated listener
 * in the process, all pass through. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "fdtable.h"
#include "init.h"
#include <stdbool.h>

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (!e || e->sock->kind == FF_ACCEL) return ff_real.epoll_ctl(epfd, op, fd, ev);
  int r = ff_real.epoll_ctl(epfd, op, fd, ev);
  if (r < 0) return r;
  int saved = errno;
  int src[2], n = 0;
  pthread_mutex_lock(&ff_table_lock);
  if (e == ff_fd_get(fd)) {
    ff_fd_record_epoll(e, epfd, op, ev);
    n = ff_listener_sources(e->sock, src);
  }
  pthread_mutex_unlock(&ff_table_lock);
  for (int i = 0; i < n; i++) {
    struct epoll_event sev = ev ? *ev : (struct epoll_event){0};
    sev.events &= ~(uint32_t)EPOLLOUT;
    ff_real.epoll_ctl(epfd, op, src[i], ev ? &sev : NULL);
  }
  errno = saved;
  return r;
}

/* The caller's pollfds followed by its listeners' sources, each with the position of its
 * listener in the caller's array. */
struct widen {
  struct pollfd *fds;
  nfds_t n;
  nfds_t extra;
  nfds_t *owner;
  struct pollfd local[64];
  nfds_t local_owner[64];
};

static int watched_sources(const struct pollfd *p, int src[2]) {
  struct ff_fd *e = ff_fd_get(p->fd);
  return e && (p->events & POLLIN) ? ff_listener_sources(e->sock, src) : 0;
}

static bool widen_pollfds(struct widen *w, struct pollfd *fds, nfds_t n) {
  nfds_t k = 0;
  int src[2];
  for (nfds_t i = 0; i < n; i++) k += (nfds_t)watched_sources(&fds[i], src);
  if (k == 0) return false;
  w->n = n;
  if (n + k <= 64) {
    w->fds = w->local;
    w->owner = w->local_owner;
  } else {
    w->fds = malloc((n + k) * sizeof *w->fds);
    w->owner = malloc(k * sizeof *w->owner);
    if (!w->fds || !w->owner) {
      free(w->fds);
      free(w->owner);
      return false;
    }
  }
  memcpy(w->fds, fds, n * sizeof *fds);
  nfds_t j = 0;
  for (nfds_t i = 0; i < n; i++) {
    int m = watched_sources(&fds[i], src);
    for (int s = 0; s < m && j < k; s++) {
      w->fds[n + j] = (struct pollfd){src[s], POLLIN, 0};
      w->owner[j++] = i;
    }
  }
  w->extra = j;
  return true;
}

/* A channel the router closed is not a connection to accept: drop it (the listener goes on as
 * a plain overlay listener) instead of reporting readiness, which would send an application
 * with a blocking listener into an accept() that never returns. */
static bool source_has_connection(int listener_fd, int source) {
  struct ff_fd *e = ff_fd_get(listener_fd);
  if (!e || source != e->sock->chan_fd || !ff_channel_at_eof(source)) return true;
  ff_listener_drop_channel(listener_fd, e);
  return false;
}

static int narrow_pollfds(struct widen *w, struct pollfd *fds, int r) {
  if (r > 0) {
    for (nfds_t i = 0; i < w->n; i++) fds[i].revents = w->fds[i].revents;
    for (nfds_t j = 0; j < w->extra; j++)
      if ((w->fds[w->n + j].revents & (POLLIN | POLLHUP | POLLERR)) && source_has_connection(fds[w->owner[j]].fd, w->fds[w->n + j].fd))
        fds[w->owner[j]].revents |= POLLIN;
    r = 0;
    for (nfds_t i = 0; i < w->n; i++) r += fds[i].revents != 0;
  }
  if (w->fds != w->local) {
    free(w->fds);
    free(w->owner);
  }
  return r;
}

/* The real wait, whichever of poll/ppoll the application called. */
struct poll_call {
  int timeout;
  const struct timespec *ts;
  const sigset_t *mask;
  bool is_ppoll;
};

static int real_poll_call(struct pollfd *fds, nfds_t n, const struct poll_call *c) {
  return c->is_ppoll ? ff_real.ppoll(fds, n, c->ts, c->mask) : ff_real.poll(fds, n, c->timeout);
}

/* A wake-up that was only a dropped channel is not an answer: wait again (with the same
 * timeout; this happens once per listener, when its router dies). */
static int poll_widened(struct pollfd *fds, nfds_t n, const struct poll_call *c) {
  for (;;) {
    struct widen w;
    if (!atomic_load_explicit(&ff_channel_listeners, memory_order_relaxed) || !widen_pollfds(&w, fds, n))
      return real_poll_call(fds, n, c);
    int raw = real_poll_call(w.fds, w.n + w.extra, c);
    int saved = errno;
    int r = narrow_pollfds(&w, fds, raw);
    errno = saved;
    if (!(raw > 0 && r == 0)) return r;
  }
}

int poll(struct pollfd *fds, nfds_t n, int timeout) {
  FF_INIT();
  struct poll_call c = {.timeout = timeout};
  return poll_widened(fds, n, &c);
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask) {
  FF_INIT();
  struct poll_call c = {.ts = ts, .mask = mask, .is_ppoll = true};
  return poll_widened(fds, n, &c);
}

struct select_pair {
  int listener, source;
};

/* Adds each watched listener's sources to readfds; returns the widened nfds and the pairs. */
static int widen_fdset(int n, fd_set *rd, struct select_pair *pairs, int *npairs) {
  int top = n;
  *npairs = 0;
  for (int fd = 0; fd < n && fd < FD_SETSIZE && *npairs < 63; fd++) {
    if (!FD_ISSET(fd, rd)) continue;
    struct ff_fd *e = ff_fd_get(fd);
    int src[2];
    int m = e ? ff_listener_sources(e->sock, src) : 0;
    for (int s = 0; s < m; s++) {
      if (src[s] >= FD_SETSIZE) continue;
      FD_SET(src[s], rd);
      pairs[(*npairs)++] = (struct select_pair){fd, src[s]};
      if (src[s] + 1 > top) top = src[s] + 1;
    }
  }
  return top;
}

static int narrow_fdset(int n, int r, fd_set *rd, fd_set *wr, fd_set *ex, const struct select_pair *pairs, int npairs) {
  if (r <= 0) return r;
  for (int i = 0; i < npairs; i++) {
    if (FD_ISSET(pairs[i].source, rd)) {
      FD_CLR(pairs[i].source, rd);
      if (source_has_connection(pairs[i].listener, pairs[i].source)) FD_SET(pairs[i].listener, rd);
    }
  }
  r = 0;
  for (int fd = 0; fd < n && fd < FD_SETSIZE; fd++)
    r += (rd && FD_ISSET(fd, rd)) + (wr && FD_ISSET(fd, wr)) + (ex && FD_ISSET(fd, ex));
  return r;
}

struct saved_sets {
  fd_set rd, wr, ex;
};

static void save_sets(struct saved_sets *s, fd_set *rd, fd_set *wr, fd_set *ex) {
  if (rd) s->rd = *rd;
  if (wr) s->wr = *wr;
  if (ex) s->ex = *ex;
}

static void restore_sets(const struct saved_sets *s, fd_set *rd, fd_set *wr, fd_set *ex) {
  if (rd) *rd = s->rd;
  if (wr) *wr = s->wr;
  if (ex) *ex = s->ex;
}

/* The real wait, whichever of select/pselect the application called. */
struct select_call {
  struct timeval *tv;
  const struct timespec *ts;
  const sigset_t *mask;
  bool is_pselect;
};

static int real_select_call(int n, fd_set *rd, fd_set *wr, fd_set *ex, const struct select_call *c) {
  return c->is_pselect ? ff_real.pselect(n, rd, wr, ex, c->ts, c->mask) : ff_real.select(n, rd, wr, ex, c->tv);
}

static int select_widened(int n, fd_set *rd, fd_set *wr, fd_set *ex, const struct select_call *c) {
  struct saved_sets orig;
  save_sets(&orig, rd, wr, ex);
  for (;;) {
    struct select_pair pairs[64];
    int npairs = 0, top = n;
    if (rd && atomic_load_explicit(&ff_channel_listeners, memory_order_relaxed)) top = widen_fdset(n, rd, pairs, &npairs);
    if (!npairs) return real_select_call(n, rd, wr, ex, c);
    int raw = real_select_call(top, rd, wr, ex, c);
    int saved = errno;
    int r = narrow_fdset(n, raw, rd, wr, ex, pairs, npairs);
    errno = saved;
    if (!(raw > 0 && r == 0)) return r;
    restore_sets(&orig, rd, wr, ex);
  }
}

int select(int n, fd_set *rd, fd_set *wr, fd_set *ex, struct timeval *tv) {
  FF_INIT();
  struct select_call c = {.tv = tv};
  return select_widened(n, rd, wr, ex, &c);
}

int pselect(int n, fd_set *rd, fd_set *wr, fd_set *ex, const struct timespec *ts, const sigset_t *mask) {
  FF_INIT();
  struct select_call c = {.ts = ts, .mask = mask, .is_pselect = true};
  return select_widened(n, rd, wr, ex, &c);
}
