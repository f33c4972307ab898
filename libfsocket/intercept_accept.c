/* accept()/accept4() on an accelerated listener take connections from three sources: the
 * router's host listener (host-network connections the routers set up, admitted with the
 * overlay identity of exactly their peer from the listener's admission table), the router's
 * accept channel (such connections that arrived before their announcement and waited in the
 * router), and the overlay listener itself (plain clients). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <string.h>
#include "config.h"
#include "fdtable.h"
#include "ff_fdpass.h"
#include "init.h"
#include "router.h"

/* Gives an accepted host connection the application's view: its flags, the options set on
 * the listener (accepted sockets inherit the listener's options in the kernel; ours come from
 * the router's listener), and the overlay identity for getsockname/getpeername/accept. */
static int hand_to_application(struct ff_fd *e, int afd, bool pair, const struct ff_endpoint *local,
                               const struct ff_endpoint *peer, struct sockaddr *addr, socklen_t *len) {
  ff_sock_replay_opts(e->sock, afd, pair);
  pthread_mutex_lock(&ff_table_lock);
  struct ff_fd *a = ff_fd_track(afd, FF_ACCEL, e->sock->family);
  if (a) {
    a->sock->local = *local;
    a->sock->peer = *peer;
    a->sock->pair = pair;
    if (pair) { /* a pair end inherits the listener's TCP-level options through the table */
      a->sock->nopts = e->sock->nopts;
      memcpy(a->sock->opts, e->sock->opts, sizeof a->sock->opts);
    }
  }
  pthread_mutex_unlock(&ff_table_lock);
  if (addr && len) ff_endpoint_to_sockaddr(peer, e->sock->family, addr, len);
  return afd;
}

/* A connection with no admission entry goes to the router, which delivers it on the channel
 * once its announcement arrives, or refuses it (a host process dialling in directly). */
static void hand_back(int chan, int afd) {
  struct ff_msg m;
  ff_msg_init(&m, FF_T_ADMIT_MISS);
  (void)ff_send_with_fd(chan, &m, sizeof m, afd, MSG_DONTWAIT); /* if it fails, closing refuses the connection */
  ff_real.close(afd);
}

/* One admitted connection from the host listener: >= 0 an fd, -1 with errno (EAGAIN if none). */
static int take_from_host(struct ff_fd *e, struct sockaddr *addr, socklen_t *len, int flags) {
  for (;;) {
    int host = e->sock->host_fd, chan = e->sock->chan_fd;
    if (host < 0 || chan < 0) {
      errno = EAGAIN;
      return -1;
    }
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    int afd = ff_real.accept4(host, (struct sockaddr *)&from, &flen, flags);
    if (afd < 0) return -1;
    struct ff_admit_slot id;
    if (from.sin_family == AF_INET && ff_admit_claim(e->sock->admit, ff_admit_key(from.sin_addr.s_addr, ntohs(from.sin_port)), &id)) {
      struct ff_endpoint local = ff_endpoint_v4(id.local_ip, id.local_port), peer = ff_endpoint_v4(id.peer_ip, id.peer_port);
      e->sock->prefer_channel = false;
      return hand_to_application(e, afd, false, &local, &peer, addr, len);
    }
    hand_back(chan, afd);
  }
}

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
    int got = ff_recv_msg(chan, &m, &afd, NULL, 1, &nfds, flags & SOCK_CLOEXEC);
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
    /* The descriptor got its status flags from whichever accept4() took it off the host
     * listener before it was handed back; give it exactly what this call asks for. */
    ff_real.fcntl(afd, F_SETFL, (flags & SOCK_NONBLOCK) ? O_NONBLOCK : 0);
    struct ff_endpoint local, peer;
    memcpy(&local.addr, m.local_addr, 16);
    local.port = m.local_port;
    memcpy(&peer.addr, m.remote_addr, 16);
    peer.port = m.remote_port;
    e->sock->prefer_channel = m.flags & FF_CONNECT_PAIR; /* same-host pairs come this way */
    return hand_to_application(e, afd, m.flags & FF_CONNECT_PAIR, &local, &peer, addr, len);
  }
}

enum { SOURCE_HOST, SOURCE_CHANNEL, SOURCE_OVERLAY, SOURCES };

/* Which source to try first: where the last connection came from (the host listener for
 * cross-host peers, the channel for same-host pairs), except on every fourth call, so that
 * no source is starved by a stream on another. Trying an empty source first costs a system
 * call on every accept(), on the connection's critical path. */
static unsigned first_source(struct ff_sock *s) {
  bool channel = ((s->accept_turn++ & 3) == 3) != s->prefer_channel;
  return channel ? SOURCE_CHANNEL : SOURCE_HOST;
}

/* Whether the application's listener is non-blocking; asked only when it matters (the
 * overlay source, or nothing waiting anywhere), not on every accept(). */
static bool listener_nonblocking(int fd, int *known) {
  if (*known < 0) {
    int fl = ff_real.fcntl(fd, F_GETFL);
    *known = fl >= 0 && (fl & O_NONBLOCK);
  }
  return *known;
}

static int accept_all(int fd, struct ff_fd *e, struct sockaddr *addr, socklen_t *len, int flags) {
  int nonblock = -1; /* unknown yet */
  unsigned first = first_source(e->sock);
  for (;;) {
    for (unsigned i = 0; i < SOURCES; i++) {
      int r = -1;
      errno = EAGAIN;
      switch ((first + i) % SOURCES) {
        case SOURCE_HOST: r = take_from_host(e, addr, len, flags); break;
        case SOURCE_CHANNEL: r = take_from_channel(fd, e, addr, len, flags); break;
        default:
          if (listener_nonblocking(fd, &nonblock)) r = ff_real.accept4(fd, addr, len, flags);
      }
      if (r >= 0 || errno != EAGAIN) return r;
    }
    if (listener_nonblocking(fd, &nonblock)) {
      errno = EAGAIN;
      return -1;
    }
    int src[2];
    int n = ff_listener_sources(e->sock, src);
    if (n == 0) return ff_real.accept4(fd, addr, len, flags);
    struct pollfd p[3] = {{fd, POLLIN, 0}, {src[0], POLLIN, 0}, {n > 1 ? src[1] : -1, POLLIN, 0}};
    if (ff_real.poll(p, 3, -1) < 0) return -1; /* EINTR reaches the caller, as accept() would */
    if (p[0].revents) return ff_real.accept4(fd, addr, len, flags);
    /* Start where the connection is. */
    first = p[1].revents && src[0] == e->sock->host_fd ? SOURCE_HOST : SOURCE_CHANNEL;
  }
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (e && e->sock->relisten_ns) ff_listener_reregister(fd, e);
  if (!e || e->sock->kind != FF_LISTENER || e->sock->chan_fd < 0) return ff_real.accept4(fd, addr, len, flags);
  return accept_all(fd, e, addr, len, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
  FF_INIT();
  struct ff_fd *e = ff_fd_get(fd);
  if (e && e->sock->relisten_ns) ff_listener_reregister(fd, e);
  if (!e || e->sock->kind != FF_LISTENER || e->sock->chan_fd < 0) return ff_real.accept(fd, addr, len);
  return accept_all(fd, e, addr, len, 0);
}
