/* accept()/accept4() on an accelerated listener take connections from two sources: the overlay
 * listener itself (plain clients) and the router's accept channel (host-network connections
 * the routers set up, each arriving with the overlay identity of exactly its peer). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include "config.h"
#include "fdtable.h"
#include "init.h"
#include "router.h"

/* One connection from the channel: >= 0 an fd, -1 with errno EAGAIN if none is waiting. */
static int take_from_channel(int fd, struct ff_fd *e, struct sockaddr *addr, socklen_t *len, int flags) {
  for (;;) {
    int chan = e->sock->chan_fd;
    if (chan < 0) {
      errno = EAGAIN;
      return -1;
    }
    struct ff_msg m;
    int afd = -1, nfds;
    int got = ff_recv_msg(chan, &m, &afd, 1, &nfds, flags & SOCK_CLOEXEC);
    if (got > 0 && nfds == 0) afd = -1;
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR && errno != EPROTO)) {
      ff_listener_drop_channel(fd, e);
      errno = EAGAIN;
      return -1;
    }
    if (got < 0 && errno != EPROTO) return -1;
    if (got < 0 || m.type != FF_T_ACCEPTED || afd < 0) {
      if (afd >= 0) ff_real.close(afd);
      continue;
    }
    if (flags & SOCK_NONBLOCK) ff_real.fcntl(afd, F_SETFL, ff_real.fcntl(afd, F_GETFL) | O_NONBLOCK);
    /* Accepted sockets inherit the listener's options in the kernel; ours come from the
     * router's listener, so give them the application's. */
    ff_sock_replay_opts(e->sock, afd);
    pthread_mutex_lock(&ff_table_lock);
    struct ff_fd *a = ff_fd_track(afd, FF_ACCEL, e->sock->family);
    if (a) {
      memcpy(&a->sock->local.addr, m.local_addr, 16);
      a->sock->local.port = m.local_port;
      memcpy(&a->sock->peer.addr, m.remote_addr, 16);
      a->sock->peer.port = m.remote_port;
    }
    pthread_mutex_unlock(&ff_table_lock);
    if (addr && len) {
      struct ff_endpoint peer;
      memcpy(&peer.addr, m.remote_addr, 16);
      peer.port = m.remote_port;
      ff_endpoint_to_sockaddr(&peer, e->sock->family, addr, len);
    }
    return afd;
  }
}

static int accept_both(int fd, struct ff_fd *e, struct sockaddr *addr, socklen_t *len, int flags) {
  int fl = ff_real.fcntl(fd, F_GETFL);
  bool nonblock = fl >= 0 && (fl & O_NONBLOCK);
  for (;;) {
    /* Alternate the first source so neither kind of client can starve the other. */
    bool channel_first = (e->sock->accept_turn++ & 1) == 0;
    for (int pass = 0; pass < 2; pass++) {
      if ((pass == 0) == channel_first) {
        int r = take_from_channel(fd, e, addr, len, flags);
        if (r >= 0 || errno != EAGAIN) return r;
      } else if (nonblock) {
        int r = ff_real.accept4(fd, addr, len, flags);
        if (r >= 0 || errno != EAGAIN) return r;
      }
    }
    if (nonblock) {
      errno = EAGAIN;
      return -1;
    }
    int chan = e->sock->chan_fd;
    if (chan < 0) return ff_real.accept4(fd, addr, len, flags);
    struct pollfd p[2] = {{fd, POLLIN, 0}, {chan, POLLIN, 0}};
    if (ff_real.poll(p, 2, -1) < 0) return -1; /* EINTR reaches the caller, as accept() would */
    if (p[0].revents) return ff_real.accept4(fd, addr, len, flags);
  }
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (!e || e->sock->kind != FF_LISTENER || e->sock->chan_fd < 0) return ff_real.accept4(fd, addr, len, flags);
  return accept_both(fd, e, addr, len, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (!e || e->sock->kind != FF_LISTENER || e->sock->chan_fd < 0) return ff_real.accept(fd, addr, len);
  return accept_both(fd, e, addr, len, 0);
}
