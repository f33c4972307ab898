/* The verbs library's own connection to the host router (SOCK_SEQPACKET). One request at a
 * time; every RDMA message is struct ff_msg + struct ff_rdma_args, optionally with one fd. */
#define _GNU_SOURCE
#include "ffv.h"
#include "../ff_fdpass.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int conn = -1;
static pid_t conn_pid;
static uint32_t seq;

/* 0 if the connection of this process is open, 1 if it was opened just now, or -errno. */
static int open_conn(void) {
  if (conn >= 0 && conn_pid == getpid()) return 0;
  if (conn >= 0) close(conn); /* inherited over fork: resources belong to the parent */
  conn = -1;
  const char *dir = getenv("FFR_SOCKET_DIR");
  const char *name = getenv("FFR_NAME");
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  snprintf(sun.sun_path, sizeof sun.sun_path, "%s/%s.sock", dir && *dir ? dir : "/freeflow", name && *name ? name : "ffrouter");
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  int hi = fcntl(fd, F_DUPFD_CLOEXEC, 900); /* keep the application's low fd numbers free */
  if (hi >= 0) { close(fd); fd = hi; }
  conn = fd;
  conn_pid = getpid();
  return 1;
}

static int exchange(int type, const struct ff_msg *hdr, const struct ff_rdma_args *args, const void *extra, uint32_t extra_len, int fd_in,
                    struct ff_msg *rep, struct ff_rdma_args *out, void *extra_out, uint32_t *extra_out_len, int *fd_out);

/* The router reaches this process's memory (outside the shared views of mr_share.c) only
 * through a /proc/self/mem file the process opened itself and sends with RDMA_OPEN: it is
 * bound to this address space, so it can never reach another process that later gets our pid,
 * nor the image of an exec (docs/security-rdma-memory.md). -1 without /proc: views only. */
static int self_mem(void) { return open("/proc/self/mem", O_RDWR | O_CLOEXEC); }

/* A new connection is bound to this process first (RDMA_OPEN with /proc/self/mem), whatever
 * the call that opened it: a forked child's first call may be any verbs call. The doorbell
 * page of the reply is dropped: the process has mapped its container's page already or gets
 * it with its own RDMA_OPEN. */
static int bind_conn(void) {
  int mem = self_mem();
  struct ff_msg rep;
  int bell = -1;
  int rc = exchange(FF_T_RDMA_OPEN, NULL, NULL, NULL, 0, mem, &rep, NULL, NULL, NULL, &bell);
  if (mem >= 0) close(mem);
  if (bell >= 0) close(bell);
  return rc;
}

int ffv_call(int type, const struct ff_rdma_args *args, int fd_in, const uint8_t *remote_addr, struct ff_msg *rep, struct ff_rdma_args *out) {
  struct ff_msg m;
  memset(&m, 0, sizeof m);
  if (remote_addr) memcpy(m.remote_addr, remote_addr, 16);
  return ffv_call_ex(type, &m, args, NULL, 0, fd_in, rep, out, NULL, NULL, NULL);
}

int ffv_call_ex(int type, const struct ff_msg *hdr, const struct ff_rdma_args *args, const void *extra, uint32_t extra_len, int fd_in,
                struct ff_msg *rep, struct ff_rdma_args *out, void *extra_out, uint32_t *extra_out_len, int *fd_out) {
  int saved = errno;
  pthread_mutex_lock(&lock);
  int rc = open_conn();
  int mem = -1;
  if (rc == 1 && type != FF_T_RDMA_OPEN) rc = bind_conn();
  if (rc >= 0 && type == FF_T_RDMA_OPEN && fd_in < 0) fd_in = mem = self_mem();
  if (rc >= 0) rc = exchange(type, hdr, args, extra, extra_len, fd_in, rep, out, extra_out, extra_out_len, fd_out);
  else if (fd_out) *fd_out = -1;
  if (mem >= 0) close(mem);
  pthread_mutex_unlock(&lock);
  errno = saved;
  return rc;
}

/* One request and its reply on the open connection (lock held). */
static int exchange(int type, const struct ff_msg *hdr, const struct ff_rdma_args *args, const void *extra, uint32_t extra_len, int fd_in,
                    struct ff_msg *rep, struct ff_rdma_args *out, void *extra_out, uint32_t *extra_out_len, int *fd_out) {
  if (fd_out) *fd_out = -1;
  struct {
    struct ff_msg m;
    struct ff_rdma_args a;
    uint8_t extra[FFV_MAX_EXTRA];
  } __attribute__((packed)) req, resp;
  if (extra_len > FFV_MAX_EXTRA) return -EINVAL;
  memset(&req, 0, sizeof req);
  if (hdr) req.m = *hdr;
  req.m.magic = FF_WIRE_MAGIC;
  req.m.version = FF_WIRE_VERSION;
  req.m.type = (uint16_t)type;
  req.m.pid = (uint32_t)getpid();
  req.m.payload_len = (uint32_t)(sizeof req.a + extra_len);
  if (args) req.a = *args;
  if (extra_len) memcpy(req.extra, extra, extra_len);
  size_t req_len = sizeof req.m + sizeof req.a + extra_len;
  int rc;
  req.m.seq = ++seq;
  if (ff_send_with_fd(conn, &req, req_len, fd_in, 0) != (ssize_t)req_len) {
    rc = -EIO;
    goto fail;
  }
  for (;;) {
    struct pollfd p = {conn, POLLIN, 0};
    int r = poll(&p, 1, 10000);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { rc = -ETIMEDOUT; goto fail; }
    memset(&resp, 0, sizeof resp);
    struct iovec riov = {&resp, sizeof resp};
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE(sizeof(int) * 4)];
    } rctl;
    struct msghdr rmh = {.msg_iov = &riov, .msg_iovlen = 1, .msg_control = rctl.b, .msg_controllen = sizeof rctl.b};
    ssize_t n = recvmsg(conn, &rmh, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rmh); n >= 0 && c; c = CMSG_NXTHDR(&rmh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int cnt = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int k = 0; k < cnt; k++) {
        int f;
        memcpy(&f, CMSG_DATA(c) + k * sizeof(int), sizeof f);
        if (fd_out && *fd_out < 0 && resp.m.seq == req.m.seq) *fd_out = f;
        else close(f);
      }
    }
    if (n < (ssize_t)sizeof resp.m || resp.m.magic != FF_WIRE_MAGIC) { rc = -EIO; goto fail; }
    if (resp.m.type != FF_T_REPLY || resp.m.seq != req.m.seq) continue;
    if (extra_out_len) {
      ssize_t e = n - (ssize_t)(sizeof resp.m + sizeof resp.a);
      *extra_out_len = e > 0 ? (uint32_t)e : 0;
      if (e > 0) memcpy(extra_out, resp.extra, (size_t)e);
    }
    break;
  }
  if (rep) *rep = resp.m;
  if (out) *out = resp.a;
  /* A TCP-mode style fallback reply (positive status) means the router has no RDMA support. */
  rc = resp.m.status > 0 ? -EOPNOTSUPP : resp.m.status;
  goto done;
fail:
  close(conn);
  conn = -1;
done:
  return rc;
}
