#define _GNU_SOURCE
#include "router.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include "config.h"
#include "init.h"
#include "plain_dests.h"
#include "pool.h"
#include "real.h"

#define FF_REPLY_TIMEOUT_MS 2000
#define FF_RETRY_AFTER_NS (1000LL * 1000 * 1000)
/* A router that accepts but does not answer (hung, stopped, starved) costs the caller a whole
 * FF_REPLY_TIMEOUT_MS inside connect(): after such a timeout stay away for 5 s, doubling with
 * every further timeout in a row up to 80 s, so that the application runs on the overlay
 * instead of stalling every few seconds. A refused or missing socket costs nothing, so that
 * is retried every second. */
#define FF_SILENT_BACKOFF_NS (5000LL * 1000 * 1000)
#define FF_SILENT_BACKOFF_MAX_SHIFT 4
/* wait_reply's result when the router said nothing within FF_REPLY_TIMEOUT_MS (-1: the
 * connection failed or closed). */
#define FF_REPLY_TIMED_OUT (-2)
#define FF_HIGH_FD 800

static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;
static int router_fd = -1;
static pid_t router_owner; /* pid that opened router_fd: a forked child must open its own */
/* Our pid, kept current by the fork handler: getpid() is a system call on every connect(). */
static pid_t my_pid;

static pid_t self(void) {
  if (!my_pid) my_pid = getpid();
  return my_pid;
}
static long long retry_at_ns;
static int silent_in_row; /* reply timeouts since the router last answered */
static uint32_t next_seq;
/* The outstanding prefetch, if any (seq 0: none). */
static uint32_t prefetch_seq;
static struct ff_endpoint prefetch_dst;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int ff_move_high(int fd) {
  int hi = ff_real.fcntl(fd, F_DUPFD_CLOEXEC, FF_HIGH_FD);
  if (hi < 0) return fd; /* low RLIMIT_NOFILE: keep the number we have */
  ff_real.close(fd);
  return hi;
}

void ff_msg_init(struct ff_msg *m, int type) {
  memset(m, 0, sizeof *m);
  m->magic = FF_WIRE_MAGIC;
  m->version = FF_WIRE_VERSION;
  m->type = (uint16_t)type;
  m->pid = (uint32_t)self();
}

void ff_router_after_fork(void) {
  my_pid = getpid();
  ff_pool_after_fork();
  ff_plain_dests_after_fork();
  prefetch_seq = 0;
  /* The inherited descriptor is the parent's stream; close the child's copy right away,
   * while the number is certainly still ours. */
  if (router_fd >= 0) ff_real.close(router_fd);
  router_fd = -1;
  retry_at_ns = 0;
  silent_in_row = 0;
  pthread_mutex_init(&call_lock, NULL);
}

int ff_router_owns_fd(int fd) { return fd >= 0 && fd == router_fd; }

void ff_router_release_fd(void) {
  /* The application is about to reuse our number (dup2 onto it): let it go. */
  router_fd = -1;
}

static void drop_connection(void) {
  prefetch_seq = 0;
  if (router_fd >= 0 && router_owner == self()) ff_real.close(router_fd);
  router_fd = -1;
}

/* After waiting for a reply (r: wait_reply's result, or -1 if the request was not sent): a
 * router that did not answer in time is left alone for a while (see above), a connection that
 * failed is retried after a second, like a refused socket. */
static void after_reply(int r) {
  if (r >= 0) {
    silent_in_row = 0;
    return;
  }
  drop_connection();
  if (r == FF_REPLY_TIMED_OUT) {
    FF_DEBUG("router did not answer: plain overlay for a while");
    int shift = silent_in_row < FF_SILENT_BACKOFF_MAX_SHIFT ? silent_in_row : FF_SILENT_BACKOFF_MAX_SHIFT;
    retry_at_ns = now_ns() + (FF_SILENT_BACKOFF_NS << shift);
    silent_in_row++;
  } else {
    retry_at_ns = now_ns() + FF_RETRY_AFTER_NS;
  }
}

static int open_connection(void) {
  if (router_fd >= 0 && router_owner != self()) {
    /* Inherited across fork(): the parent's stream; close our copy only. */
    ff_real.close(router_fd);
    router_fd = -1;
    retry_at_ns = 0;
  }
  if (router_fd >= 0) return 0;
  if (retry_at_ns && now_ns() < retry_at_ns) return -1;
  int fd = ff_real.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  memcpy(sun.sun_path, ff_config.router_path, sizeof sun.sun_path - 1);
  if (ff_real.connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
    FF_DEBUG("router %s unreachable (%s): plain overlay", sun.sun_path, strerror(errno));
    ff_real.close(fd);
    retry_at_ns = now_ns() + FF_RETRY_AFTER_NS;
    return -1;
  }
  router_fd = ff_move_high(fd);
  router_owner = self();
  return 0;
}

int ff_recv_msg(int chan, struct ff_msg *msg, int *fds, uint16_t *ports, int max, int *nfds, int cloexec) {
  if (ports) memset(ports, 0, sizeof *ports * (size_t)max);
  struct iovec iov[2] = {{msg, sizeof *msg}, {ports, ports ? sizeof *ports * (size_t)max : 0}};
  union {
    struct cmsghdr hdr;
    char buf[CMSG_SPACE(sizeof(int) * FF_MAX_REPLY_FDS)];
  } ctl;
  struct msghdr mh = {.msg_iov = iov, .msg_iovlen = ports ? 2 : 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  *nfds = 0;
  ssize_t n = recvmsg(chan, &mh, MSG_DONTWAIT | (cloexec ? MSG_CMSG_CLOEXEC : 0));
  if (n < 0) return -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int cnt = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    int *in = (int *)CMSG_DATA(c);
    for (int i = 0; i < cnt; i++) {
      if (*nfds < max) fds[(*nfds)++] = in[i];
      else ff_real.close(in[i]); /* never leak fds a confused peer sent */
    }
  }
  if (n == 0 && *nfds == 0) return 0;
  size_t payload = (size_t)n > sizeof *msg ? (size_t)n - sizeof *msg : 0;
  if (n < (ssize_t)sizeof *msg || msg->magic != FF_WIRE_MAGIC || msg->version != FF_WIRE_VERSION ||
      (ports && payload != msg->payload_len) || (!ports && payload)) {
    for (int i = 0; i < *nfds; i++) ff_real.close(fds[i]);
    *nfds = 0;
    errno = EPROTO;
    return -1;
  }
  return 1;
}

/* A prefetch reply: its sockets go to the pool for the destination it was asked for. */
static void deliver_prefetch(const struct ff_msg *rep, int *fds, const uint16_t *ports, int nfds) {
  prefetch_seq = 0;
  if (rep->status != FF_REPLY_ACCEL) {
    for (int i = 0; i < nfds; i++) ff_real.close(fds[i]);
    return;
  }
  struct ff_endpoint host = {.port = rep->host_port};
  memcpy(&host.addr, rep->host_addr, 16);
  ff_pool_put(&prefetch_dst, fds, ports, nfds, &host);
}

/* Any reply may be the outstanding prefetch (a full batch with its ports), so every reply is
 * received at full capacity and then handed to the caller within its max. */
static int wait_reply(uint32_t seq, struct ff_msg *rep, int *fds, uint16_t *ports, int max) {
  long long deadline = now_ns() + FF_REPLY_TIMEOUT_MS * 1000000LL;
  int all[FF_MAX_REPLY_FDS];
  uint16_t all_ports[FF_MAX_REPLY_FDS];
  for (;;) {
    int left = (int)((deadline - now_ns()) / 1000000);
    if (left <= 0) return FF_REPLY_TIMED_OUT;
    struct pollfd p = {router_fd, POLLIN, 0};
    int r = ff_real.poll(&p, 1, left);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) return FF_REPLY_TIMED_OUT;
    if (r < 0) return -1;
    int nfds;
    int got = ff_recv_msg(router_fd, rep, all, all_ports, FF_MAX_REPLY_FDS, &nfds, 1);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (got <= 0) return -1;
    if (prefetch_seq && rep->type == FF_T_REPLY && rep->seq == prefetch_seq) {
      bool awaited = seq == prefetch_seq; /* ff_router_collect waits for exactly this */
      deliver_prefetch(rep, all, all_ports, nfds);
      if (awaited) return 0;
      continue;
    }
    if (rep->type == FF_T_REPLY && rep->seq == seq) {
      for (int i = max; i < nfds; i++) ff_real.close(all[i]);
      if (nfds > max) nfds = max;
      memcpy(fds, all, sizeof *all * (size_t)nfds);
      if (ports) memcpy(ports, all_ports, sizeof *ports * (size_t)nfds);
      return nfds;
    }
    for (int i = 0; i < nfds; i++) ff_real.close(all[i]); /* a stale reply to a timed-out request */
  }
}

bool ff_router_prefetch(struct ff_msg *req, const struct ff_endpoint *dst) {
  int saved_errno = errno;
  bool sent = false;
  pthread_mutex_lock(&call_lock);
  if (!prefetch_seq && open_connection() == 0) {
    req->seq = ++next_seq;
    if (send(router_fd, req, sizeof *req, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)sizeof *req) {
      prefetch_seq = req->seq;
      prefetch_dst = *dst;
      sent = true;
    }
  }
  pthread_mutex_unlock(&call_lock);
  errno = saved_errno;
  return sent;
}

bool ff_router_collect(const struct ff_endpoint *dst) {
  int saved_errno = errno;
  bool got = false;
  pthread_mutex_lock(&call_lock);
  if (prefetch_seq && router_fd >= 0 && prefetch_dst.port == dst->port &&
      memcmp(&prefetch_dst.addr, &dst->addr, sizeof dst->addr) == 0) {
    struct ff_msg rep;
    int fds[FF_MAX_REPLY_FDS];
    int r = wait_reply(prefetch_seq, &rep, fds, NULL, FF_MAX_REPLY_FDS);
    got = r >= 0;
    after_reply(r);
  }
  pthread_mutex_unlock(&call_lock);
  errno = saved_errno;
  return got;
}

/* Whether a send failed because the router at the other end of a connection made earlier has
 * gone (it restarted, say): then one fresh connection is worth trying before falling back. */
static bool router_went_away(int err) {
  return err == EPIPE || err == ECONNRESET || err == ENOTCONN;
}

int ff_router_call(struct ff_msg *req, struct ff_msg *rep, int *fds, uint16_t *ports, int max) {
  int saved_errno = errno; /* the application must never see our errno */
  pthread_mutex_lock(&call_lock);
  int rc = -1;
  for (int attempt = 0; attempt < 2; attempt++) {
    bool earlier = router_fd >= 0 && router_owner == self();
    if (open_connection() != 0) break;
    req->seq = ++next_seq;
    ssize_t n = send(router_fd, req, sizeof *req, MSG_NOSIGNAL);
    if (n < 0 && earlier && attempt == 0 && router_went_away(errno)) {
      FF_DEBUG("router connection lost: reconnecting once");
      drop_connection();
      continue;
    }
    if (n == (ssize_t)sizeof *req) rc = wait_reply(req->seq, rep, fds, ports, max);
    after_reply(rc);
    if (rc < 0) rc = -1;
    break;
  }
  pthread_mutex_unlock(&call_lock);
  errno = saved_errno;
  return rc;
}
