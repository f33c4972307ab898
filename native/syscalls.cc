// Thin, non-blocking wrappers over the socket calls the router needs. Every call returns a
// negative errno instead of throwing, so the router can turn any failure into a clear reply
// and keep running whatever a client does.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <sys/un.h>
#include <unistd.h>
#include <algorithm>
#include <string>
#include <vector>
#include "addon.h"
#include "fdpass.h"
#include "host_socket_guard.h"

namespace {


Napi::Value Err(Napi::Env env, int e) { return Napi::Number::New(env, -e); }

bool ParseIPv4(const std::string& s, uint16_t port, sockaddr_in* sa) {
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_port = htons(port);
  return inet_pton(AF_INET, s.c_str(), &sa->sin_addr) == 1;
}

// seqpacketListen(path, mode) -> fd | -errno; -EEXIST if something other than a socket is at
// path (a planted symlink or file is refused: never followed, changed or removed).
// The socket is bound under a temporary name beside path, given its mode and made listening,
// then renamed onto path in one step: a stale socket left by a dead router is replaced
// atomically (a caller finds the old socket or the new one, never none), and the socket's mode
// is set before anyone can reach it, not by a chmod on the public name. This is race-free
// because the directory is writable by root alone (src/router/socket-dir.ts refuses anything
// else): nobody else can create, replace or remove a name in it between the lstat, the bind, the
// chmod and the rename. Even so nothing here follows a link: bind fails on any existing name,
// the chmod is AT_SYMLINK_NOFOLLOW, and rename replaces a name, never what it points to.
Napi::Value SeqpacketListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int mode = info[1].As<Napi::Number>().Int32Value();
  std::string tmp = path + ".new";
  sockaddr_un sun{};
  if (tmp.size() >= sizeof(sun.sun_path)) return Err(env, ENAMETOOLONG);
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, tmp.c_str(), tmp.size() + 1);
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) return Err(env, EEXIST);
  if (lstat(tmp.c_str(), &st) == 0) {  // left by a router that died starting
    if (!S_ISSOCK(st.st_mode)) return Err(env, EEXIST);
    unlink(tmp.c_str());
  }
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Err(env, errno);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) < 0) {
    int e = errno;
    close(fd);
    return Err(env, e);
  }
  if (fchmodat(AT_FDCWD, tmp.c_str(), mode, AT_SYMLINK_NOFOLLOW) < 0 || listen(fd, 1024) < 0 ||
      rename(tmp.c_str(), path.c_str()) < 0) {
    int e = errno;
    unlink(tmp.c_str());
    close(fd);
    return Err(env, e);
  }
  return Napi::Number::New(env, fd);
}

// seqpacketConnect(path) -> fd | -errno (blocking socket; used by the CLI and tests)
Napi::Value SeqpacketConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  sockaddr_un sun{};
  if (path.size() >= sizeof(sun.sun_path)) return Err(env, ENAMETOOLONG);
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) return Err(env, errno);
  if (connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) < 0) {
    int e = errno;
    close(fd);
    return Err(env, e);
  }
  return Napi::Number::New(env, fd);
}

// The kernel's ioctl for a pidfd's network namespace (Linux 6.11, include/uapi/linux/pidfd.h);
// Debian bookworm's headers predate it.
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#define FF_PIDFD_GET_NET_NAMESPACE _IO(0xFF, 4)

// The network namespace (nsfs inode) of the process at the other end of a Unix socket, read
// without a pid race: SO_PEERPIDFD pins the process that connected, so a pid that is reused
// after it exits can never lend its namespace. Returns 0 and sets *ino, or -errno (ESRCH: the
// caller has already exited).
int PeerNetns(int fd, uint64_t* ino) {
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) return -errno;
  int ns = ioctl(pidfd, FF_PIDFD_GET_NET_NAMESPACE, 0);
  struct stat st;
  int rc = 0;
  if (ns >= 0) {
    rc = fstat(ns, &st) < 0 ? -errno : 0;
    close(ns);
  } else {
    // Kernels before 6.11: read /proc/<pid>/ns/net, then check that the pidfd's process is
    // still alive, so the pid cannot have been reused while we looked.
    pid_t pid = 0;
    ucred cred{};
    socklen_t cl = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) pid = cred.pid;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/net", int(pid));
    rc = stat(path, &st) < 0 ? -errno : 0;
    if (rc == 0 && syscall(SYS_pidfd_send_signal, pidfd, 0, nullptr, 0) < 0) rc = -ESRCH;
  }
  close(pidfd);
  if (rc == 0) *ino = uint64_t(st.st_ino);
  return rc;
}

// acceptUnix(fd) -> {fd, pid, uid, gid, netns} | -errno (EAGAIN when none pending). netns: the
// caller's network namespace inode, or 0 when it cannot be read (the caller is then unknown).
Napi::Value AcceptUnix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = info[0].As<Napi::Number>().Int32Value();
  int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return Err(env, errno);
  ucred cred{};
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    int e = errno;
    close(fd);
    return Err(env, e);
  }
  uint64_t netns = 0;
  PeerNetns(fd, &netns);
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", fd);
  o.Set("pid", cred.pid);
  o.Set("uid", cred.uid);
  o.Set("gid", cred.gid);
  o.Set("netns", double(netns));
  return o;
}

// seqpacketPair() -> [routerEnd (non-blocking), clientEnd] | -errno
Napi::Value SeqpacketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return Err(env, errno);
  fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
  Napi::Array a = Napi::Array::New(env, 2);
  a.Set(0u, sv[0]);
  a.Set(1u, sv[1]);
  return a;
}

// recvMsg(fd, max) -> {data: Buffer, fds: number[]} | 0 on EOF | -errno
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  size_t max = info[1].As<Napi::Number>().Uint32Value();
  // One reused buffer: the router calls this for every request, and a fresh zeroed
  // allocation of the maximum message size each time showed up in connection set-up cost.
  static std::vector<char> buf;
  if (buf.size() < max) buf.resize(max);
  std::vector<int> got;
  int flags = 0;
  ssize_t n = RecvWithFds(fd, buf.data(), max, got, &flags);
  if (n < 0) return Err(env, errno);
  if (n == 0 && got.empty()) return Napi::Number::New(env, 0);
  Napi::Array fds = Napi::Array::New(env, got.size());
  for (size_t i = 0; i < got.size(); i++) fds.Set(uint32_t(i), got[i]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("data", Napi::Buffer<char>::Copy(env, buf.data(), n));
  o.Set("fds", fds);
  o.Set("truncated", (flags & (MSG_TRUNC | MSG_CTRUNC)) != 0);
  return o;
}

// sendMsg(fd, data, fds[]) -> bytes sent | -errno. Never blocks, never raises SIGPIPE.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Buffer<char> data = info[1].As<Napi::Buffer<char>>();
  Napi::Array fdsArr = info.Length() > 2 && info[2].IsArray() ? info[2].As<Napi::Array>() : Napi::Array::New(env);
  uint32_t nf = fdsArr.Length();
  if (nf > kMaxPassedFds) return Err(env, EINVAL);
  int fds[kMaxPassedFds];
  for (uint32_t i = 0; i < nf; i++) fds[i] = fdsArr.Get(i).As<Napi::Number>().Int32Value();
  ssize_t n = SendWithFds(fd, data.Data(), data.Length(), fds, nf);
  if (n < 0) return Err(env, errno);
  return Napi::Number::New(env, n);
}

// The mark of every client host socket the router hands out (src/router/listener-fence.ts):
// netfilter lets a SYN reach a host listener only from a socket that carries it.
uint32_t host_socket_mark = 0;

// An unconnected host-namespace TCP socket bound to *sa (port 0 = kernel picks, and we learn it
// now so the peer router can be told). Returns the fd (sa updated) or -errno.
// No SO_REUSEADDR: while the socket lives, no other socket can bind its port, so nobody else
// can dial from the address and port its announcement names (docs/security.md). The price:
// bind(port 0) skips ports held by TIME_WAIT sockets instead of reusing them.
int BoundTcpSocket(sockaddr_in* sa) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (host_socket_mark && setsockopt(fd, SOL_SOCKET, SO_MARK, &host_socket_mark, sizeof host_socket_mark) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  socklen_t len = sizeof *sa;
  if (bind(fd, reinterpret_cast<sockaddr*>(sa), sizeof *sa) < 0 || getsockname(fd, reinterpret_cast<sockaddr*>(sa), &len) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// setHostSocketMark(mark): SO_MARK for the client host sockets made from now on.
Napi::Value SetHostSocketMark(const Napi::CallbackInfo& info) {
  host_socket_mark = info[0].As<Napi::Number>().Uint32Value();
  return info.Env().Undefined();
}

// tcpSockets(ip, count, dstIp, dstPort) -> {fds: [fd...], ports: Buffer of uint16 LE} | -errno:
// a batch for prefetching clients, each guarded to reach dstIp:dstPort only. Flat on purpose: this runs for every connection a busy client makes,
// and an object per socket was a measurable share of the router's CPU (docs/performance.md).
Napi::Value TcpSockets(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ip = info[0].As<Napi::String>();
  uint32_t count = std::min<uint32_t>(info[1].As<Napi::Number>().Uint32Value(), kMaxPassedFds);
  sockaddr_in sa, dst;
  if (!ParseIPv4(ip, 0, &sa) || !ParseIPv4(info[2].As<Napi::String>(), uint16_t(info[3].As<Napi::Number>().Uint32Value()), &dst)) return Err(env, EINVAL);
  int fds[kMaxPassedFds];
  uint8_t ports[2 * kMaxPassedFds];
  uint32_t n = 0;
  for (; n < count; n++) {
    sockaddr_in bound = sa;
    int fd = BoundTcpSocket(&bound);
    int marked = fd < 0 ? fd : HostSocketGuardMarkClient(fd, dst.sin_addr.s_addr, dst.sin_port);
    if (marked < 0 && fd >= 0) {
      close(fd);
      fd = marked;
    }
    if (fd < 0) {
      if (n == 0) return Err(env, -fd);
      break;
    }
    fds[n] = fd;
    uint16_t port = ntohs(bound.sin_port);
    ports[2 * n] = uint8_t(port & 0xff);
    ports[2 * n + 1] = uint8_t(port >> 8);
  }
  Napi::Array fdArr = Napi::Array::New(env, n);
  for (uint32_t i = 0; i < n; i++) fdArr.Set(i, Napi::Number::New(env, fds[i]));
  Napi::Object out = Napi::Object::New(env);
  out.Set("fds", fdArr);
  out.Set("ports", Napi::Buffer<uint8_t>::Copy(env, ports, 2 * n));
  return out;
}

// tcpListen(ip, port, backlog) -> {fd, port} | -errno (non-blocking listener)
Napi::Value TcpListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string ip = info[0].As<Napi::String>();
  int port = info[1].As<Napi::Number>().Int32Value();
  int backlog = info[2].As<Napi::Number>().Int32Value();
  sockaddr_in sa;
  if (!ParseIPv4(ip, port, &sa)) return Err(env, EINVAL);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Err(env, errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  socklen_t len = sizeof sa;
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || listen(fd, backlog) < 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) < 0) {
    int e = errno;
    close(fd);
    return Err(env, e);
  }
  // Marked once bound and listening: from here on neither it nor what it accepts may connect or bind.
  int marked = HostSocketGuardMarkListener(fd);
  if (marked < 0) {
    close(fd);
    return Err(env, -marked);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", fd);
  o.Set("port", ntohs(sa.sin_port));
  return o;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (fd < 0) return Err(info.Env(), EBADF);
  return Napi::Number::New(info.Env(), close(fd) < 0 ? -errno : 0);
}

// closeAll([fd...]): the descriptors a reply passed on, in one call.
Napi::Value CloseAll(const Napi::CallbackInfo& info) {
  Napi::Array arr = info[0].As<Napi::Array>();
  for (uint32_t i = 0, n = arr.Length(); i < n; i++) {
    int fd = arr.Get(i).As<Napi::Number>().Int32Value();
    if (fd >= 0) close(fd);
  }
  return info.Env().Undefined();
}

Napi::Value StrError(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), strerror(info[0].As<Napi::Number>().Int32Value()));
}

}  // namespace

void InitSyscalls(Napi::Env env, Napi::Object exports) {
  exports.Set("seqpacketListen", Napi::Function::New(env, SeqpacketListen));
  exports.Set("seqpacketConnect", Napi::Function::New(env, SeqpacketConnect));
  exports.Set("acceptUnix", Napi::Function::New(env, AcceptUnix));
  exports.Set("seqpacketPair", Napi::Function::New(env, SeqpacketPair));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg));
  exports.Set("tcpSockets", Napi::Function::New(env, TcpSockets));
  exports.Set("tcpListen", Napi::Function::New(env, TcpListen));
  exports.Set("setHostSocketMark", Napi::Function::New(env, SetHostSocketMark));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("closeAll", Napi::Function::New(env, CloseAll));
  exports.Set("strerror", Napi::Function::New(env, StrError));
}
