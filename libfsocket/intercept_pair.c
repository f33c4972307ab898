/* The data calls that take addresses or ancillary data, where a same-host AF_UNIX pair and
 * TCP differ: TCP ignores a destination given to sendto()/sendmsg() on a connected socket,
 * reports no source address from recvfrom()/recvmsg(), and drops SCM_RIGHTS/SCM_CREDENTIALS
 * it is given (the bytes go, the descriptor does not); an AF_UNIX stream refuses the first
 * (EISCONN), reports an AF_UNIX address for the second and would carry the descriptors and
 * credentials between the two containers. So on a pair the address and the ancillary data
 * are dropped, as TCP does. Calls without either (send, recv, read, write, and these without
 * them) are not looked at. */
#define _GNU_SOURCE
#include <sys/socket.h>
#include "fdtable.h"
#include "init.h"

static bool is_pair(int fd) {
  struct ff_fd *e = ff_fd_get(fd);
  return e && e->sock->kind == FF_ACCEL && e->sock->pair;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen) {
  FF_INIT();
  if (addr && is_pair(fd)) return ff_real.sendto(fd, buf, len, flags, NULL, 0);
  return ff_real.sendto(fd, buf, len, flags, addr, alen);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  FF_INIT();
  if (msg && (msg->msg_name || msg->msg_controllen) && is_pair(fd)) {
    struct msghdr m = *msg;
    m.msg_name = NULL;
    m.msg_namelen = 0;
    m.msg_control = NULL;
    m.msg_controllen = 0;
    return ff_real.sendmsg(fd, &m, flags);
  }
  return ff_real.sendmsg(fd, msg, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *alen) {
  FF_INIT();
  if (addr && is_pair(fd)) {
    ssize_t r = ff_real.recvfrom(fd, buf, len, flags, NULL, NULL);
    if (r >= 0 && alen) *alen = 0;
    return r;
  }
  return ff_real.recvfrom(fd, buf, len, flags, addr, alen);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  FF_INIT();
  if (msg && msg->msg_name && is_pair(fd)) {
    void *name = msg->msg_name;
    msg->msg_name = NULL;
    ssize_t r = ff_real.recvmsg(fd, msg, flags);
    msg->msg_name = name;
    if (r >= 0) msg->msg_namelen = 0;
    return r;
  }
  return ff_real.recvmsg(fd, msg, flags);
}
