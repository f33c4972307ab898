/* Sending one message with at most one descriptor attached (SCM_RIGHTS): the library's
 * requests to the router (RDMA mode) and connections handed back on an accept channel.
 * Included by libfsocket.so and the verbs libraries. */
#ifndef FF_FDPASS_H
#define FF_FDPASS_H
#include <string.h>
#include <sys/socket.h>

/* fd < 0: no descriptor. flags are sendmsg's (MSG_NOSIGNAL is always added). */
static inline ssize_t ff_send_with_fd(int sock, const void *data, size_t len, int fd, int flags) {
  struct iovec iov = {(void *)data, len};
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int))];
  } ctl;
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&ctl, 0, sizeof ctl);
    mh.msg_control = ctl.b;
    mh.msg_controllen = sizeof ctl.b;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  return sendmsg(sock, &mh, flags | MSG_NOSIGNAL);
}

#endif
