// The host side of accelerated listeners, in native code. The application's library accepts
// host connections itself and admits each one whose announcement is in the listener's
// admission table (libfsocket/ff_admit.h), which this thread fills from the announcements
// other routers (or this one) send. Connections the library finds no entry for come back here
// over the accept channel (ADMIT_MISS); they wait for their announcement and are then passed
// to the application (ACCEPTED, fd attached), or are closed after a grace period: a host
// process that dials a host endpoint directly reaches no container. JavaScript only adds and
// removes listeners and hands over announcements in batches, so no per-connection work runs
// in the event loop, and in the common case none runs in the router at all.
#include <arpa/inet.h>
#include <stdio.h>
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
#include "fdpass.h"
extern "C" {
#include "ff_admit.h"
#include "ff_shm.h"
#include "ff_wire.h"
}

namespace {

constexpr int64_t kUnannouncedGraceMs = 3000;
constexpr int64_t kAnnouncementTtlMs = 30000;  // > libfsocket's prefetched-socket lifetime (5 s)
constexpr size_t kMaxQueued = 4096;
constexpr size_t kMaxParked = 4096;
// Announcements waiting for a listener or for room in its table: bounded, so that a peer
// announcing for ports nobody listens on cannot grow the router without limit.
constexpr size_t kMaxOverflow = 65536;
constexpr size_t kRecent = 256;

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

// Who a connection is: its overlay peer and the overlay endpoint it dialled.
struct Identity {
  uint32_t peer_ip, local_ip;  // network order
  uint16_t peer_port, local_port;
};

Identity IdentityOf(const ff_msg& ann) {  // ANNOUNCE: local_* is the client, remote_* the destination
  Identity id;
  memcpy(&id.peer_ip, ann.local_addr + 12, 4);
  memcpy(&id.local_ip, ann.remote_addr + 12, 4);
  id.peer_port = ann.local_port;
  id.local_port = ann.remote_port;
  return id;
}

// The wire's form of an IPv4 address: IPv4-mapped IPv6 (the rest of the field is zero).
void PutV4Mapped(uint8_t* a16, uint32_t ip) {
  a16[10] = a16[11] = 0xff;
  memcpy(a16 + 12, &ip, 4);
}

struct Parked {
  int fd;
  uint16_t listener_port;
  int64_t deadline;
};

struct Queued {
  struct ff_msg msg;
  int fd;
};

// Announcements that found no room in their listener's table (or no listener yet).
struct Overflow {
  Identity id;
  int64_t expires;
};

struct Listener {
  int chan_fd;
  uint16_t port;
  ff_admit_table* table;
  std::vector<int64_t> expires;  // per slot; ours, not in the shared table the library can write
  uint16_t generation = 0;
  std::deque<Queued> queue;
  bool watching_room = false;  // EPOLLOUT on chan_fd is registered
};

struct Record {
  int64_t wall_ms;
  Identity id;
  uint32_t client_ip;
  uint16_t client_port;
};

std::mutex mu;
int epfd = -1;
int wake_fd = -1;
std::unordered_map<uint16_t, Listener*> listeners;  // by host port
// Keys: ff_admit_key(client ip, client port) | listener port.
std::unordered_map<uint64_t, Overflow> overflow;
std::unordered_map<uint64_t, Parked> parked;
std::vector<uint16_t> closed_ports;  // for JS to withdraw from the directory
std::vector<Record> recent;
size_t recent_next = 0;
uint64_t delivered = 0, refused = 0;
uint64_t admitted = 0;  // the part of `delivered` the library admitted itself (no router hop)
Napi::ThreadSafeFunction on_closed;

uint64_t PortKey(uint64_t admit_key, uint16_t listener_port) { return admit_key | listener_port; }

void Remember(const Identity& id, uint64_t admit_key) {
  Record r{};
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  r.wall_ms = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
  r.id = id;
  r.client_ip = uint32_t(admit_key >> 32);
  r.client_port = uint16_t(admit_key >> 16);
  if (recent.size() < kRecent) recent.push_back(r);
  else recent[recent_next] = r;
  recent_next = (recent_next + 1) % kRecent;
}

Identity IdentityOf(const ff_admit_slot& s) { return Identity{s.peer_ip, s.local_ip, s.peer_port, s.local_port}; }

void CountAdmitted(const ff_admit_slot* s, uint64_t tag) {
  Remember(IdentityOf(*s), tag & ~0xffffull);
  delivered++;
  admitted++;
}

// Frees slots whose connections the library admitted (counting them) and unclaimed ones past
// their time. Runs on every sweep and before stats are read.
void ReapTable(Listener* l, int64_t now) {
  for (uint32_t i = 0; i < FF_ADMIT_SLOTS; i++) {
    ff_admit_slot* s = &l->table->slot[i];
    uint64_t tag = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
    if (!tag) continue;
    if (!(tag & FF_ADMIT_CLAIMED)) {
      if (l->expires[i] > now) continue;
      if (__atomic_compare_exchange_n(&s->tag, &tag, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
      if (!(tag & FF_ADMIT_CLAIMED)) continue;  // scribbled on by the library: leave it to the next sweep
    }
    CountAdmitted(s, tag);
    __atomic_store_n(&s->tag, 0, __ATOMIC_RELEASE);
  }
}

// Publishes an announcement in the listener's table; false if its probe window is full.
bool Admit(Listener* l, uint64_t key, const Identity& id, int64_t expires) {
  uint32_t home = ff_admit_home(key);
  for (uint32_t i = 0; i < FF_ADMIT_PROBE; i++) {
    uint32_t at = (home + i) & (FF_ADMIT_SLOTS - 1);
    ff_admit_slot* s = &l->table->slot[at];
    uint64_t tag = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
    if (tag & FF_ADMIT_CLAIMED) {
      CountAdmitted(s, tag);
    } else if (tag && ((tag & ~0xffffull) != key || !__atomic_compare_exchange_n(&s->tag, &tag, 0, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))) {
      continue;  // another connection's entry (or claimed just now: counted on the next sweep)
    }
    // Free, or an older announcement of the same client port (re-used): ours now. The tag
    // goes to 0 before the fields change so that no claimer pairs old tag and new fields.
    __atomic_store_n(&s->tag, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->local_ip, id.local_ip, __ATOMIC_RELAXED);
    __atomic_store_n(&s->peer_ip, id.peer_ip, __ATOMIC_RELAXED);
    __atomic_store_n(&s->local_port, id.local_port, __ATOMIC_RELAXED);
    __atomic_store_n(&s->peer_port, id.peer_port, __ATOMIC_RELAXED);
    l->expires[at] = expires;
    l->generation = uint16_t((l->generation + 1) & 0x7fff);
    __atomic_store_n(&s->tag, key | (uint64_t(l->generation) << 1), __ATOMIC_RELEASE);
    return true;
  }
  return false;
}

void CloseListener(Listener* l) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, l->chan_fd, nullptr);
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
  ReapTable(l, INT64_MAX);  // count what the library admitted
  munmap(l->table, sizeof *l->table);
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
  ev.data.u64 = l->port;
  epoll_ctl(epfd, EPOLL_CTL_MOD, l->chan_fd, &ev);
}

// Sends queued connections; false if the application side is gone (listener closed).
bool Flush(Listener* l) {
  while (!l->queue.empty()) {
    Queued& q = l->queue.front();
    ssize_t n = SendWithFds(l->chan_fd, &q.msg, sizeof q.msg, &q.fd, 1);
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

// Passes a connection that waited here (or a same-host pair's end) to the application, with
// its identity. flags: FF_CONNECT_PAIR if fd is an AF_UNIX end, not a host TCP socket.
void Deliver(Listener* l, int fd, const Identity& id, uint64_t admit_key, uint32_t flags = 0) {
  Remember(id, admit_key);
  if (l->queue.size() >= kMaxQueued) {
    close(fd);
    refused++;
    return;
  }
  Queued q{};
  q.msg.magic = FF_WIRE_MAGIC;
  q.msg.version = FF_WIRE_VERSION;
  q.msg.type = FF_T_ACCEPTED;
  q.msg.flags = flags;
  PutV4Mapped(q.msg.local_addr, id.local_ip);
  q.msg.local_port = id.local_port;
  PutV4Mapped(q.msg.remote_addr, id.peer_ip);
  q.msg.remote_port = id.peer_port;
  q.fd = fd;
  l->queue.push_back(q);
  if (l->queue.size() == 1 && !Flush(l)) CloseListener(l);
}

// A connection the library could not admit: deliver it if its announcement is known by now,
// else park it until the announcement comes or the grace period ends.
void TakeMiss(Listener* l, int fd) {
  sockaddr_in peer{}, self{};
  socklen_t plen = sizeof peer, slen = sizeof self;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) < 0 || peer.sin_family != AF_INET ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&self), &slen) < 0 || ntohs(self.sin_port) != l->port) {
    close(fd);  // not a connection of this listener: the library (or the application) is confused
    refused++;
    return;
  }
  uint64_t key = ff_admit_key(peer.sin_addr.s_addr, ntohs(peer.sin_port));
  ff_admit_slot got;
  if (ff_admit_claim(l->table, key, &got)) {
    Deliver(l, fd, IdentityOf(got), key);
    return;
  }
  auto o = overflow.find(PortKey(key, l->port));
  if (o != overflow.end()) {
    Identity id = o->second.id;
    overflow.erase(o);
    Deliver(l, fd, id, key);
    return;
  }
  auto old = parked.find(PortKey(key, l->port));
  if (old != parked.end()) {
    close(old->second.fd);
    parked.erase(old);
    refused++;
  }
  if (parked.size() >= kMaxParked) {
    close(fd);
    refused++;
    return;
  }
  parked[PortKey(key, l->port)] = Parked{fd, l->port, NowMs() + kUnannouncedGraceMs};
}

// Reads what the library sent on the channel; false once every application copy is closed.
bool ReadChannel(Listener* l) {
  for (;;) {
    ff_msg m;
    std::vector<int> fds;
    ssize_t n = RecvWithFds(l->chan_fd, &m, sizeof m, fds, nullptr);
    if (n == 0 && fds.empty()) return false;
    if (n < 0) return errno == EAGAIN || errno == EINTR;
    bool valid = size_t(n) == sizeof m && m.magic == FF_WIRE_MAGIC && m.version == FF_WIRE_VERSION &&
                 m.type == FF_T_ADMIT_MISS && fds.size() == 1;
    if (valid) {
      TakeMiss(l, fds[0]);
      if (!listeners.count(l->port)) return true;  // closed while delivering; l is gone
    } else {
      for (int fd : fds) close(fd);
    }
  }
}

void DropExpiredOverflow(int64_t now) {
  for (auto it = overflow.begin(); it != overflow.end();)
    it = it->second.expires <= now ? overflow.erase(it) : std::next(it);
}

// Keeps an announcement for later; false when the overflow is full even after expiry.
bool KeepForLater(uint64_t key, const Identity& id, int64_t expires) {
  if (overflow.size() >= kMaxOverflow) DropExpiredOverflow(NowMs());
  if (overflow.size() >= kMaxOverflow && !overflow.count(key)) return false;
  overflow[key] = Overflow{id, expires};
  return true;
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
  DropExpiredOverflow(now);
  for (auto& [port, l] : listeners) ReapTable(l, now);
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
      if ((evs[i].events & EPOLLOUT) && !Flush(l)) {
        CloseListener(l);
        continue;
      }
      if ((evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !ReadChannel(l) && listeners.count(uint16_t(d & 0xffff)))
        CloseListener(l);
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

// addListener(chanFd, hostPort) -> the admission table's memfd (for the application) | -errno.
// The acceptor owns chanFd from now on; the caller closes the memfd once it is sent.
Napi::Value AddListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int chan = info[0].As<Napi::Number>().Int32Value();
  uint16_t port = uint16_t(info[1].As<Napi::Number>().Uint32Value());
  int memfd = ff_sealed_memfd("ff-admit", sizeof(ff_admit_table));
  void* map = memfd < 0 ? MAP_FAILED : mmap(nullptr, sizeof(ff_admit_table), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (map == MAP_FAILED) {
    int e = errno;
    if (memfd >= 0) close(memfd);
    close(chan);
    return Napi::Number::New(env, -e);
  }
  std::lock_guard<std::mutex> g(mu);
  auto* l = new Listener{chan, port, static_cast<ff_admit_table*>(map), std::vector<int64_t>(FF_ADMIT_SLOTS, 0), 0, {}, false};
  if (listeners.count(port)) CloseListener(listeners[port]);
  listeners[port] = l;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;
  ev.data.u64 = port;
  epoll_ctl(epfd, EPOLL_CTL_ADD, chan, &ev);
  return Napi::Number::New(env, memfd);
}

Napi::Value RemoveListener(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(mu);
  auto it = listeners.find(uint16_t(info[0].As<Napi::Number>().Uint32Value()));
  if (it != listeners.end()) CloseListener(it->second);
  return info.Env().Undefined();
}

// announce(buffer, senderIp): whole ANNOUNCE records, back to back (as they arrive from a peer
// router or as the local router makes them). A record announces a connection from its
// host_addr, so only records whose host_addr is the sender's own address are taken: a peer
// cannot get connections from a third host admitted. Returns how many were taken; malformed
// or foreign records are skipped.
Napi::Value Announce(const Napi::CallbackInfo& info) {
  Napi::Buffer<uint8_t> buf = info[0].As<Napi::Buffer<uint8_t>>();
  uint32_t sender;
  if (info.Length() < 2 || !info[1].IsString() || inet_pton(AF_INET, info[1].As<Napi::String>().Utf8Value().c_str(), &sender) != 1)
    return Napi::Number::New(info.Env(), 0);
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
    if (ip != sender) continue;
    uint64_t key = ff_admit_key(ip, m.host_port);
    Identity id = IdentityOf(m);
    auto l = listeners.find(m.aux_port);
    auto p = parked.find(PortKey(key, m.aux_port));
    if (p != parked.end()) {
      int fd = p->second.fd;
      parked.erase(p);
      if (l != listeners.end()) Deliver(l->second, fd, id, key);
      else close(fd);
      taken++;
      continue;
    }
    if ((l != listeners.end() && Admit(l->second, key, id, expires)) || KeepForLater(PortKey(key, m.aux_port), id, expires)) taken++;
  }
  if (closed_ports.size() != closed_before) on_closed.NonBlockingCall();
  return Napi::Number::New(info.Env(), double(taken));
}

// An AF_UNIX stream's sender may queue only SO_SNDBUF bytes (default ~200 KiB) where loopback
// TCP autotunes up to tcp_wmem's maximum (4 MiB): with the default, a bulk sender and its
// receiver wake each other every 1-2 writes and the pair is slower than loopback. The router
// (CAP_NET_ADMIN) sizes both ends like TCP's ceiling; an application's own SO_SNDBUF, replayed
// by the library, still overrides it, as it fixes TCP's.
void SizePairBuffers(const int sv[2]) {
  static int bytes = [] {
    int v = 4 << 20;
    if (FILE* f = fopen("/proc/sys/net/ipv4/tcp_wmem", "re")) {
      int lo, def, hi;
      if (fscanf(f, "%d %d %d", &lo, &def, &hi) == 3 && hi > 0) v = hi;
      fclose(f);
    }
    return v / 2;  // the kernel doubles what it is given
  }();
  for (int i = 0; i < 2; i++)
    if (setsockopt(sv[i], SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) < 0)
      setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

// pairLocal(hostPort, clientIp, clientPort, dstIp, dstPort) -> the client's end | -errno.
// A same-host connection as a connected AF_UNIX stream pair: the listener's end goes to its
// accept channel now, with the client's overlay identity; no host TCP socket is made. -EAGAIN
// when the listener's queue is full (the caller falls back to a host TCP socket).
Napi::Value PairLocal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint16_t port = uint16_t(info[0].As<Napi::Number>().Uint32Value());
  Identity id{};
  if (inet_pton(AF_INET, info[1].As<Napi::String>().Utf8Value().c_str(), &id.peer_ip) != 1 ||
      inet_pton(AF_INET, info[3].As<Napi::String>().Utf8Value().c_str(), &id.local_ip) != 1)
    return Napi::Number::New(env, -EINVAL);
  id.peer_port = uint16_t(info[2].As<Napi::Number>().Uint32Value());
  id.local_port = uint16_t(info[4].As<Napi::Number>().Uint32Value());
  std::lock_guard<std::mutex> g(mu);
  auto it = listeners.find(port);
  if (it == listeners.end()) return Napi::Number::New(env, -ENOENT);
  Listener* l = it->second;
  if (l->queue.size() >= kMaxQueued) return Napi::Number::New(env, -EAGAIN);
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return Napi::Number::New(env, -errno);
  SizePairBuffers(sv);
  size_t closed_before = closed_ports.size();
  Deliver(l, sv[1], id, 0, FF_CONNECT_PAIR);
  if (closed_ports.size() != closed_before) {  // the application side is gone: nobody will accept
    on_closed.NonBlockingCall();
    close(sv[0]);
    return Napi::Number::New(env, -ECONNREFUSED);
  }
  return Napi::Number::New(env, sv[0]);
}

// takeClosed() -> host ports of listeners whose application side went away
Napi::Value TakeClosed(const Napi::CallbackInfo& info) {
  std::lock_guard<std::mutex> g(mu);
  Napi::Array a = Napi::Array::New(info.Env(), closed_ports.size());
  for (size_t i = 0; i < closed_ports.size(); i++) a.Set(uint32_t(i), closed_ports[i]);
  closed_ports.clear();
  return a;
}

std::string Endpoint(uint32_t ip, uint16_t port) {
  char s[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &ip, s, sizeof s);
  return std::string(s) + ":" + std::to_string(port);
}

// stats() -> {delivered, admitted, refused, announced, parked, recent: [{at, src, dst, host}]}
Napi::Value Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> g(mu);
  size_t waiting = overflow.size();
  int64_t now = NowMs();
  for (auto& [port, l] : listeners) {
    ReapTable(l, now);
    for (uint32_t i = 0; i < FF_ADMIT_SLOTS; i++) waiting += __atomic_load_n(&l->table->slot[i].tag, __ATOMIC_RELAXED) != 0;
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("delivered", double(delivered));
  o.Set("admitted", double(admitted));
  o.Set("refused", double(refused));
  o.Set("announced", double(waiting));
  o.Set("parked", double(parked.size()));
  Napi::Array r = Napi::Array::New(env, recent.size());
  size_t start = recent.size() < kRecent ? 0 : recent_next;
  for (size_t i = 0; i < recent.size(); i++) {
    const Record& x = recent[(start + i) % recent.size()];
    Napi::Object e = Napi::Object::New(env);
    e.Set("atMs", double(x.wall_ms));
    e.Set("src", Endpoint(x.id.peer_ip, x.id.peer_port));
    e.Set("dst", Endpoint(x.id.local_ip, x.id.local_port));
    e.Set("host", Endpoint(x.client_ip, x.client_port));
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
  a.Set("pairLocal", Napi::Function::New(env, PairLocal));
  a.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("acceptor", a);
}
