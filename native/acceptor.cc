// The host side of accelerated listeners, in native code: a thread accepts host connections,
// matches each with the announcement of the router that set it up (by client host address,
// source port and listener port) and passes it, fd attached, to the application's accept
// channel. Unannounced connections are closed after a grace period: a host process that dials
// a host endpoint directly reaches no container. JavaScript only adds and removes listeners and
// hands over announcements in batches, so no per-connection work runs in the event loop.
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>
#include "addon.h"
extern "C" {
#include "ff_wire.h"
}

namespace {

constexpr int64_t kUnannouncedGraceMs = 3000;
constexpr int64_t kAnnouncementTtlMs = 30000;  // > libfsocket's prefetched-socket lifetime (5 s)
constexpr size_t kMaxQueued = 4096;
constexpr size_t kRecent = 256;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

uint64_t Key(uint32_t client_ip, uint16_t client_port, uint16_t listener_port) {
  return (uint64_t(client_ip) << 32) | (uint64_t(client_port) << 16) | listener_port;
}

struct Announcement {
  struct ff_msg msg;  // the ANNOUNCE record as received
  int64_t expires;
};

struct Parked {
  int fd;
  uint16_t listener_port;
  int64_t deadline;
};

struct Queued {
  struct ff_msg msg;
  int fd;
};

struct Listener {
  int listen_fd;
  int chan_fd;
  uint16_t port;
  std::deque<Queued> queue;
  bool watching_room = false;  // EPOLLOUT on chan_fd is registered
};

struct Record {
  int64_t wall_ms;
  uint8_t src[16], dst[16];
  uint16_t src_port, dst_port;
  uint32_t client_ip;
  uint16_t client_port;
};

std::mutex mu;
int epfd = -1;
int wake_fd = -1;
std::unordered_map<uint16_t, Listener*> listeners;  // by host port
std::unordered_map<uint64_t, Announcement> announced;
std::unordered_map<uint64_t, Parked> parked;
std::vector<uint16_t> closed_ports;  // for JS to withdraw from the directory
std::vector<Record> recent;
size_t recent_next = 0;
uint64_t delivered = 0, refused = 0;
Napi::ThreadSafeFunction on_closed;

// epoll data: port in the low 16 bits, bit 16 set for the channel end.
constexpr uint64_t kChanBit = 1u << 16;

void Remember(const ff_msg& a) {
  Record r{};
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  r.wall_ms = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
  memcpy(r.src, a.local_addr, 16);
  memcpy(r.dst, a.remote_addr, 16);
  r.src_port = a.local_port;
  r.dst_port = a.remote_port;
  memcpy(&r.client_ip, a.host_addr + 12, 4);
  r.client_port = a.host_port;
  if (recent.size() < kRecent) recent.push_back(r);
  else recent[recent_next] = r;
  recent_next = (recent_next + 1) % kRecent;
}

void CloseListener(Listener* l) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, l->listen_fd, nullptr);
  epoll_ctl(epfd, EPOLL_CTL_DEL, l->chan_fd, nullptr);
  close(l->listen_fd);
  close(l->chan_fd);
  for (auto& q : l->queue) close(q.fd);
  for (auto it = parked.begin(); it != parked.end();) {
    if (it->second.listener_port == l->port) {
      close(it->second.fd);
      it = parked.erase(it);
    } else {
      ++it;
    }
  }
  closed_ports.push_back(l->port);
  listeners.erase(l->port);
  delete l;
}

// Changes the channel's registration only when it must: this runs once per connection.
void WatchChannel(Listener* l, bool writable) {
  if (l->watching_room == writable) return;
  l->watching_room = writable;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | (writable ? uint32_t(EPOLLOUT) : 0u);
  ev.data.u64 = kChanBit | l->port;
  epoll_ctl(epfd, EPOLL_CTL_MOD, l->chan_fd, &ev);
}

// Sends queued connections; false if the application side is gone (listener closed).
bool Flush(Listener* l) {
  while (!l->queue.empty()) {
    Queued& q = l->queue.front();
    iovec iov{&q.msg, sizeof q.msg};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &q.fd, sizeof(int));
    ssize_t n = sendmsg(l->chan_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      WatchChannel(l, true);  // the application is not accepting fast enough: wait for room
      return true;
    }
    close(q.fd);
    l->queue.pop_front();
    if (n < 0) return false;
    delivered++;
  }
  WatchChannel(l, false);
  return true;
}

void Deliver(Listener* l, int fd, const ff_msg& ann) {
  Remember(ann);
  if (l->queue.size() >= kMaxQueued) {
    close(fd);
    refused++;
    return;
  }
  Queued q{};
  q.msg.magic = FF_WIRE_MAGIC;
  q.msg.version = FF_WIRE_VERSION;
  q.msg.type = FF_T_ACCEPTED;
  memcpy(q.msg.local_addr, ann.remote_addr, 16);  // the application's side: overlay destination
  q.msg.local_port = ann.remote_port;
  memcpy(q.msg.remote_addr, ann.local_addr, 16);  // its peer: the connecting application
  q.msg.remote_port = ann.local_port;
  q.fd = fd;
  l->queue.push_back(q);
  if (l->queue.size() == 1 && !Flush(l)) CloseListener(l);
}

void AcceptAll(Listener* l) {
  const uint16_t port = l->port;  // l is freed if delivery finds the application gone
  for (;;) {
    sockaddr_in sin{};
    socklen_t len = sizeof sin;
    int fd = accept4(l->listen_fd, reinterpret_cast<sockaddr*>(&sin), &len, SOCK_CLOEXEC);
    if (fd < 0) return;
    uint64_t k = Key(sin.sin_addr.s_addr, ntohs(sin.sin_port), l->port);
    auto a = announced.find(k);
    if (a != announced.end()) {
      ff_msg msg = a->second.msg;
      announced.erase(a);
      Deliver(l, fd, msg);
      if (!listeners.count(port)) return;  // closed while delivering
      continue;
    }
    auto old = parked.find(k);
    if (old != parked.end()) {
      close(old->second.fd);
      refused++;
    }
    parked[k] = Parked{fd, l->port, NowMs() + kUnannouncedGraceMs};
  }
}

void Expire() {
  int64_t now = NowMs();
  for (auto it = parked.begin(); it != parked.end();) {
    if (it->second.deadline <= now) {
      close(it->second.fd);
      refused++;
      it = parked.erase(it);
    } else {
      ++it;
    }
  }
  for (auto it = announced.begin(); it != announced.end();)
    it = it->second.expires <= now ? announced.erase(it) : std::next(it);
}

void Loop() {
  epoll_event evs[64];
  int64_t next_sweep = NowMs() + 500;
  for (;;) {
    int n = epoll_wait(epfd, evs, 64, 250);
    std::lock_guard<std::mutex> g(mu);
    size_t closed_before = closed_ports.size();
    for (int i = 0; i < n; i++) {
      uint64_t d = evs[i].data.u64;
      if (d == UINT64_MAX) {
        uint64_t v;
        (void)!read(wake_fd, &v, sizeof v);
        continue;
      }
      auto it = listeners.find(uint16_t(d & 0xffff));
      if (it == listeners.end()) continue;
      Listener* l = it->second;
      if (!(d & kChanBit)) {
        AcceptAll(l);
        continue;
      }
      if (evs[i].events & EPOLLOUT) {
        if (!Flush(l)) {
          CloseListener(l);
          continue;
        }
      }
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        // The application never writes here: readable means all its copies are closed.
        char b;
        ssize_t r = recv(l->chan_fd, &b, 1, MSG_DONTWAIT);
        if (r == 0 || (r < 0 && errno != EAGAIN)) CloseListener(l);
      }
    }
    if (NowMs() >= next_sweep) {
      Expire();
      next_sweep = NowMs() + 250;
    }
    if (closed_ports.size() != closed_before) on_closed.NonBlockingCall();
  }
}

// start(onClosed): onClosed() is called (on the JS thread) when listeners went away; JS then
// collects their ports with takeClosed().
Napi::Value Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (epfd >= 0) return env.Undefined();
  on_closed = Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "freeflow.acceptor", 0, 1);
  on_closed.Unref(env);  // the acceptor must not keep the process alive by itself
  epfd = epoll_create1(EPOLL_CLOEXEC);
  wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = UINT64_MAX;
  epoll_ctl(epfd, EPOLL_CTL_ADD, wake_fd, &ev);
  std::thread(Loop).detach();
  return env.Undefined();
}

// addListener(listenFd, chanFd, hostPort): the acceptor owns both fds from now on.
Napi::Value AddListener(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(mu);
  auto* l = new Listener{info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Number>().Int32Value(),
                         uint16_t(info[2].As<Napi::Number>().Uint32Value()), {}};
  if (listeners.count(l->port)) CloseListener(listeners[l->port]);
  listeners[l->port] = l;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = l->port;
  epoll_ctl(epfd, EPOLL_CTL_ADD, l->listen_fd, &ev);
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = kChanBit | l->port;
  epoll_ctl(epfd, EPOLL_CTL_ADD, l->chan_fd, &ev);
  return info.Env().Undefined();
}

Napi::Value RemoveListener(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(mu);
  auto it = listeners.find(uint16_t(info[0].As<Napi::Number>().Uint32Value()));
  if (it != listeners.end()) CloseListener(it->second);
  return info.Env().Undefined();
}

// announce(buffer): whole ANNOUNCE records, back to back (as they arrive from a peer router or
// as the local router makes them). Returns how many were taken; malformed records are skipped.
Napi::Value Announce(const Napi::CallbackInfo& info) {
  Napi::Buffer<uint8_t> buf = info[0].As<Napi::Buffer<uint8_t>>();
  std::lock_guard<std::mutex> g(mu);
  size_t closed_before = closed_ports.size();
  size_t taken = 0;
  int64_t expires = NowMs() + kAnnouncementTtlMs;
  for (size_t off = 0; off + sizeof(ff_msg) <= buf.Length(); off += sizeof(ff_msg)) {
    ff_msg m;
    memcpy(&m, buf.Data() + off, sizeof m);
    if (m.magic != FF_WIRE_MAGIC || m.version != FF_WIRE_VERSION || m.type != FF_T_ANNOUNCE || m.payload_len) continue;
    uint32_t ip;
    memcpy(&ip, m.host_addr + 12, 4);
    uint64_t k = Key(ip, m.host_port, m.aux_port);
    taken++;
    auto p = parked.find(k);
    if (p != parked.end()) {
      int fd = p->second.fd;
      parked.erase(p);
      auto l = listeners.find(m.aux_port);
      if (l != listeners.end()) Deliver(l->second, fd, m);
      else close(fd);
      continue;
    }
    announced[k] = Announcement{m, expires};
  }
  if (closed_ports.size() != closed_before) on_closed.NonBlockingCall();
  return Napi::Number::New(info.Env(), double(taken));
}

// takeClosed() -> host ports of listeners whose application side went away
Napi::Value TakeClosed(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(mu);
  Napi::Array a = Napi::Array::New(info.Env(), closed_ports.size());
  for (size_t i = 0; i < closed_ports.size(); i++) a.Set(uint32_t(i), closed_ports[i]);
  closed_ports.clear();
  return a;
}

std::string Ip(const uint8_t* a16) {
  char s[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, a16 + 12, s, sizeof s);
  return s;
}

// stats() -> {delivered, refused, announced, parked, recent: [{at, src, dst, host}]}
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> g(mu);
  Napi::Object o = Napi::Object::New(env);
  o.Set("delivered", double(delivered));
  o.Set("refused", double(refused));
  o.Set("announced", double(announced.size()));
  o.Set("parked", double(parked.size()));
  Napi::Array r = Napi::Array::New(env, recent.size());
  size_t start = recent.size() < kRecent ? 0 : recent_next;
  for (size_t i = 0; i < recent.size(); i++) {
    const Record& x = recent[(start + i) % recent.size()];
    Napi::Object e = Napi::Object::New(env);
    e.Set("atMs", double(x.wall_ms));
    e.Set("src", Ip(x.src) + ":" + std::to_string(x.src_port));
    e.Set("dst", Ip(x.dst) + ":" + std::to_string(x.dst_port));
    char h[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &x.client_ip, h, sizeof h);
    e.Set("host", std::string(h) + ":" + std::to_string(x.client_port));
    r.Set(uint32_t(i), e);
  }
  o.Set("recent", r);
  return o;
}

}  // namespace

void InitAcceptor(Napi::Env env, Napi::Object exports) {
  Napi::Object a = Napi::Object::New(env);
  a.Set("start", Napi::Function::New(env, Start));
  a.Set("addListener", Napi::Function::New(env, AddListener));
  a.Set("removeListener", Napi::Function::New(env, RemoveListener));
  a.Set("announce", Napi::Function::New(env, Announce));
  a.Set("takeClosed", Napi::Function::New(env, TakeClosed));
  a.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("acceptor", a);
}
