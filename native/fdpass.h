// Messages with descriptors attached (SCM_RIGHTS) on the router's SOCK_SEQPACKET sockets: the
// one implementation behind the JavaScript sendMsg/recvMsg and the native acceptor's channel.
#ifndef FREEFLOW_FDPASS_H
#define FREEFLOW_FDPASS_H
#include <string.h>
#include <sys/socket.h>
#include <vector>

constexpr size_t kMaxPassedFds = 64;  // a CONNECT reply may carry a batch of prefetched sockets

// Sends one message with nfds (<= kMaxPassedFds) descriptors; never blocks, never raises
// SIGPIPE. Returns sendmsg's result (errno set on -1).
inline ssize_t SendWithFds(int sock, const void* data, size_t len, const int* fds, size_t nfds) {
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  return sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
}

// Receives one message without blocking; the descriptors that came with it (close-on-exec)
// are appended to fds, and *msg_flags gets the message flags (MSG_TRUNC, MSG_CTRUNC).
// Returns recvmsg's result (errno set on -1).
inline ssize_t RecvWithFds(int sock, void* data, size_t len, std::vector<int>& fds, int* msg_flags) {
  iovec iov{data, len};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < cnt; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  if (msg_flags) *msg_flags = msg.msg_flags;
  return n;
}

#endif
