// TCP carrier of the engine's cross-host messages (see transport.h). One listening socket on
// the host network; one outgoing connection per peer router (reconnected every second when
// down) for requests, whose answers come back on the same connection. Each connection has a
// reader thread that queues complete messages for the engine thread. Every connection, either
// way, starts with the cluster-key handshake (peer_auth.h); no frame is read before it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <pthread.h>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ff_rdma_shm.h"
#include "ff_wire.h"
#include "peer_auth.h"
#include "realtime.h"
#include "transport.h"

namespace ffrdma {
namespace {

struct Conn {
  int fd = -1;
  std::atomic<bool> up{false};
  std::atomic<int> peer{-1};  // index of the peer router in --peers (set by its reader)
  std::mutex wmu;
  // Bytes a reader thread could not write without blocking; they go out, in order, before
  // anything else on this connection (the engine thread flushes them). omu guards only the
  // vector and is never held across I/O, so a reader never waits for a blocked writer.
  std::mutex omu;
  std::vector<uint8_t> outbox;
};

// Set in the transport's reader threads. A reader also answers requests itself (the engine's
// OnNetworkMessage), but it must never block on a send: if both hosts' readers waited for
// full send buffers, neither would read, and the two routers would deadlock.
thread_local bool tls_reader = false;

bool ReadFull(int fd, void* p, size_t n) {
  auto* c = static_cast<uint8_t*>(p);
  while (n) {
    ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

// Writes iovecs completely (blocking), with as few sendmsg calls as the socket allows.
bool WriteIov(int fd, iovec* iov, int n) {
  int i = 0;
  while (i < n) {
    msghdr mh{};
    mh.msg_iov = iov + i;
    mh.msg_iovlen = size_t(n - i);
    ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    size_t left = size_t(r);
    while (i < n && left >= iov[i].iov_len) left -= iov[i++].iov_len;
    if (i < n) {
      iov[i].iov_base = static_cast<uint8_t*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  return true;
}

// Writes header and payload with one sendmsg (one segment for small messages under TCP_NODELAY).
bool WriteMsg(int fd, const NetHdr& h, const void* payload) {
  iovec iov[2] = {{const_cast<NetHdr*>(&h), sizeof h}, {const_cast<void*>(payload), h.len}};
  return WriteIov(fd, iov, h.len ? 2 : 1);
}

// Writes what fits now (MSG_DONTWAIT); returns the number of bytes written, or -1 if the
// connection failed.
ssize_t WriteMsgNoWait(int fd, const NetHdr& h, const void* payload) {
  iovec iov[2] = {{const_cast<NetHdr*>(&h), sizeof h}, {const_cast<void*>(payload), h.len}};
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = h.len ? 2 : 1;
  for (;;) {
    ssize_t r = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
  }
}

// Appends message bytes [from, end) to a byte vector.
void AppendMsg(std::vector<uint8_t>& out, const NetHdr& h, const void* payload, size_t from) {
  const auto* hp = reinterpret_cast<const uint8_t*>(&h);
  const auto* pp = static_cast<const uint8_t*>(payload);
  for (size_t i = from; i < sizeof h; i++) out.push_back(hp[i]);
  size_t p0 = from > sizeof h ? from - sizeof h : 0;
  if (h.len > p0) out.insert(out.end(), pp + p0, pp + h.len);
}

bool WriteAll(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

// Buffered reader: many small messages per read() call. The read-ahead is small on purpose:
// bytes of a large payload that land here are copied once more on their way to the
// destination, which a payload read straight into registered memory (Placement) avoids.
class InBuf {
 public:
  static constexpr size_t kReadAhead = 4096;
  explicit InBuf(int fd) : fd_(fd), buf_(kReadAhead) {}
  bool Read(void* p, size_t n) {
    auto* out = static_cast<uint8_t*>(p);
    while (n) {
      if (pos_ == end_) {
        if (n >= kReadAhead) return ReadFull(fd_, out, n);  // large payload: straight in, no extra copy
        ssize_t r = read(fd_, buf_.data(), buf_.size());
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return false;
        pos_ = 0;
        end_ = size_t(r);
      }
      size_t k = std::min(n, end_ - pos_);
      memcpy(out, buf_.data() + pos_, k);
      pos_ += k;
      out += k;
      n -= k;
    }
    return true;
  }

 private:
  int fd_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0, end_ = 0;
};

class TcpTransport : public Transport {
 public:
  TcpTransport(const std::string& host_ip, int port, const std::vector<std::string>& peers, const std::vector<uint8_t>& key,
               std::function<void()> kick, Placement placement)
      : peers_(peers), host_ip_(host_ip), port_(port), key_(key), kick_(std::move(kick)), placement_(std::move(placement)) {
    for (size_t i = 0; i < kMaxConns; i++) conns_[i] = std::make_unique<Conn>();
    std::thread([this, host_ip] { Accept(host_ip); }).detach();
    for (size_t i = 0; i < peers_.size() && i < kMaxPeers; i++) std::thread([this, i] { Dial(int(i)); }).detach();
  }

  bool Send(int conn, const NetHdr& h, const void* payload) override {
    if (conn < 0 || size_t(conn) >= kMaxConns) return false;
    Conn& c = *conns_[conn];
    if (!c.up) return false;
    if (tls_reader) {
      // Another thread may be blocked writing (holding wmu): then queue behind it.
      std::unique_lock<std::mutex> w(c.wmu, std::try_to_lock);
      std::lock_guard<std::mutex> o(c.omu);
      size_t done = 0;
      if (w.owns_lock() && c.outbox.empty()) {
        ssize_t r = WriteMsgNoWait(c.fd, h, payload);
        if (r < 0) return false;
        done = size_t(r);
        if (done == sizeof h + h.len) return true;
      }
      AppendMsg(c.outbox, h, payload, done);
      unsent_.store(true, std::memory_order_seq_cst);
      return true;
    }
    std::lock_guard<std::mutex> g(c.wmu);
    if (!FlushLocked(c)) return false;
    return WriteMsg(c.fd, h, payload);
  }

  bool SendMany(int conn, const NetHdr* hs, const void* const* payloads, size_t n) override {
    if (conn < 0 || size_t(conn) >= kMaxConns || tls_reader) return false;
    Conn& c = *conns_[conn];
    if (!c.up) return false;
    std::vector<iovec> iov;
    iov.reserve(2 * n);
    for (size_t i = 0; i < n; i++) {
      iov.push_back({const_cast<NetHdr*>(&hs[i]), sizeof hs[i]});
      if (hs[i].len) iov.push_back({const_cast<void*>(payloads[i]), hs[i].len});
    }
    std::lock_guard<std::mutex> g(c.wmu);
    if (!FlushLocked(c)) return false;
    return WriteIov(c.fd, iov.data(), int(iov.size()));
  }

  bool HasUnsent() override { return unsent_.load(std::memory_order_seq_cst); }

  int PeerOf(int conn) override { return conn < 0 || size_t(conn) >= kMaxConns ? -1 : conns_[conn]->peer.load(); }

  bool FlushUnsent() override {
    if (!unsent_.exchange(false)) return false;
    for (auto& cp : conns_) {
      Conn& c = *cp;
      std::lock_guard<std::mutex> g(c.wmu);
      FlushLocked(c);
    }
    return true;
  }

  std::vector<int> Peers() override {
    std::vector<int> out;
    for (size_t i = 0; i < peers_.size() && i < kMaxPeers; i++)
      if (conns_[i]->up) out.push_back(int(i));
    return out;
  }

  bool Drain(std::deque<Inbound>& out) override {
    if (!pending_.load(std::memory_order_acquire)) return false;
    std::lock_guard<std::mutex> g(qmu_);
    bool any = !q_.empty();
    while (!q_.empty()) {
      out.push_back(std::move(q_.front()));
      q_.pop_front();
    }
    pending_ = false;
    return any;
  }

 private:
  static constexpr size_t kMaxPeers = 256;  // connections [0, kMaxPeers) are outgoing, one per peer
  static constexpr size_t kMaxConns = 1024;

  // Writes what a reader left behind (blocking); false if the connection failed.
  // Needs wmu. Writes the outbox in chunks taken under omu, so readers can keep appending.
  static bool FlushLocked(Conn& c) {
    for (;;) {
      std::vector<uint8_t> chunk;
      {
        std::lock_guard<std::mutex> o(c.omu);
        if (c.outbox.empty()) return true;
        chunk.swap(c.outbox);
      }
      if (!c.up || !WriteAll(c.fd, chunk.data(), chunk.size())) return false;
    }
  }

  void Push(Inbound&& in) {
    {
      std::lock_guard<std::mutex> g(qmu_);
      q_.push_back(std::move(in));
      pending_.store(true, std::memory_order_seq_cst);
    }
    if (kick_) kick_();
  }

 public:
  bool HasPending() override { return pending_.load(std::memory_order_seq_cst); }

 private:

  // Reads messages until the connection fails, then reports it down. peer: the index of the
  // peer router in --peers (both connections with one peer get the same number).
  void Reader(int idx, int peer) {
    // Same class as the engine's workers: a reader waiting behind busy-polling applications
    // would add a scheduler slice to every cross-host round trip. Pinned, as they are: an RT
    // thread free to move was moved by the kernel's RT balancing with inter-processor
    // interrupts, which put cross-host round trips into a slow mode for whole runs.
    // Which CPU: the peer's number over the CPUs, lowest first, so that both connections with
    // a peer are read on one CPU and the placement is the same after every restart. Before,
    // readers took CPUs in the order their connections came up, which varied per start; on
    // the one-VM testbed a receiving reader then landed at random on the CPU where the sending
    // host's engine had handed its stream (the next CPU after the poster's), and cross-host
    // ib_write_bw ran at half speed for that whole router lifetime.
    static const std::vector<int> cpus = DataPathCpus(CPU_SETSIZE);
    int cpu = cpus[size_t(peer < 0 ? 0 : peer) % cpus.size()];
    PinToCpu(cpu);
    RaiseToDataPathPriority();
    // Named for perf/ps: which connection (out = to a peer we dialled, in = from a peer) and CPU.
    char name[16];
    snprintf(name, sizeof name, "ffr-rd-%s%d", size_t(idx) < kMaxPeers ? "out" : "in", cpu);
    pthread_setname_np(pthread_self(), name);
    tls_reader = true;
    Conn& c = *conns_[idx];
    c.peer = peer;
    InBuf rd(c.fd);
    for (;;) {
      Inbound in;
      in.conn = idx;
      // A malformed message (bad magic, a length no message of its type has) ends the
      // connection: nothing after it can be framed.
      if (!rd.Read(&in.h, sizeof in.h) || in.h.magic != NET_MAGIC || in.h.len > MaxLen(in.h.type)) break;
      uint8_t* dst = in.h.type == NET_OP && in.h.len >= kPlaceMin && placement_.target ? placement_.target(idx, in.h) : nullptr;
      if (dst) {
        bool ok = rd.Read(dst, in.h.len);
        placement_.done(dst);
        if (!ok) break;
        in.placed = true;
      } else if (in.h.len && in.h.type == NET_OP && !(in.charge = Charge(in.h))) {
        if (!Discard(rd, in.h.len)) break;  // over the inbound bound: the engine answers busy
        in.dropped = true;
      } else if (in.h.len && in.h.type == NET_ACK && !(in.charge = ChargeAnswer(in.h.len))) {
        break;  // more READ data than this host ever asked for: not a router's answer
      } else {
        in.payload.resize(in.h.len);
        if (in.h.len && !rd.Read(in.payload.data(), in.h.len)) break;
      }
      Push(std::move(in));
    }
    {
      std::lock_guard<std::mutex> g(c.wmu);
      c.up = false;
      {
        std::lock_guard<std::mutex> o(c.omu);
        c.outbox.clear();
      }
      shutdown(c.fd, SHUT_RDWR);
      close(c.fd);
      c.fd = -1;
    }
    Inbound down{};
    down.conn = idx;
    down.h.type = NET_DOWN;
    Push(std::move(down));
  }

  // Takes len bytes of request payload for the destination container (low 8 bytes of its GID)
  // from the inbound bound (transport.h); an empty pointer if they do not fit.
  std::shared_ptr<void> Charge(const NetHdr& h) {
    uint64_t key, len = h.len;
    memcpy(&key, h.gid + 8, 8);
    std::lock_guard<std::mutex> g(bmu_);
    uint64_t& c = queued_[key];
    if ((c && c + len > kInboundPerContainer) || (queued_total_ && queued_total_ + len > kInboundTotal)) {
      if (!c) queued_.erase(key);
      return nullptr;
    }
    c += len;
    queued_total_ += len;
    return std::shared_ptr<void>(&charge_token_, [this, key, len](void*) {
      std::lock_guard<std::mutex> g(bmu_);
      auto it = queued_.find(key);
      if (it != queued_.end() && (it->second -= len) == 0) queued_.erase(it);
      queued_total_ -= len;
    });
  }

  // Answers with data: an honest peer sends only what this host's requesters asked for, which
  // the engine keeps within kReadTotal (or one larger READ alone). 1 MiB of slack for atomics.
  std::shared_ptr<void> ChargeAnswer(uint64_t len) {
    std::lock_guard<std::mutex> g(bmu_);
    if (answers_total_ && answers_total_ + len > kInboundTotal + (1u << 20)) return nullptr;
    answers_total_ += len;
    return std::shared_ptr<void>(&charge_token_, [this, len](void*) {
      std::lock_guard<std::mutex> g(bmu_);
      answers_total_ -= len;
    });
  }

  // Reads and drops n payload bytes in small pieces (nothing of it is kept).
  static bool Discard(InBuf& rd, uint64_t n) {
    uint8_t sink[16384];
    while (n) {
      size_t k = n < sizeof sink ? size_t(n) : sizeof sink;
      if (!rd.Read(sink, k)) return false;
      n -= k;
    }
    return true;
  }

  // Data messages carry up to one RDMA message; the others (lookups, connection manager JSON)
  // are small, so a peer cannot make the router allocate a gigabyte per message with them.
  static uint32_t MaxLen(uint32_t type) { return type == NET_OP || type == NET_ACK ? FF_RDMA_MAX_MSG : kMaxControlLen; }
  static constexpr uint32_t kMaxControlLen = 1u << 20;

  static void Tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }

  // Binds fd to this host's address (any port: the key is the proof, not the port), so that
  // the peer sees the address it checks the proof against.
  bool BindHostAddress(int fd) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    if (inet_pton(AF_INET, host_ip_.c_str(), &src.sin_addr) != 1) return false;
    return bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) == 0;
  }

  void Dial(int idx) {
    for (;;) {
      sockaddr_in sa{};
      sa.sin_family = AF_INET;
      sa.sin_port = htons(uint16_t(port_));
      if (inet_pton(AF_INET, peers_[idx].c_str(), &sa.sin_addr) != 1) return;
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd >= 0 && BindHostAddress(fd) && connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0 &&
          PeerHandshake(fd, key_, PeerRole::kDialler, host_ip_, peers_[idx])) {
        Tune(fd);
        Conn& c = *conns_[idx];
        c.fd = fd;
        c.up = true;
        Reader(idx, idx);  // returns when the connection is gone; then dial again
      } else if (fd >= 0) {
        close(fd);
      }
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }

  void Accept(const std::string& host_ip) {
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(uint16_t(port_));
    inet_pton(AF_INET, host_ip.c_str(), &sa.sin_addr);
    if (bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || listen(ls, 64) < 0) {
      close(ls);
      return;
    }
    for (;;) {
      sockaddr_in from{};
      socklen_t fl = sizeof from;
      int fd = accept4(ls, reinterpret_cast<sockaddr*>(&from), &fl, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      char ip[INET_ADDRSTRLEN] = {0};
      inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
      int peer = -1;
      for (size_t k = 0; k < peers_.size() && peer < 0; k++)
        if (peers_[k] == ip) peer = int(k);
      // Only the configured peer routers may inject work requests: their addresses (a
      // filter), then the proof of the cluster key, on the connection's own thread so that a
      // connection that proves nothing holds up no other. Bounded: a hostile container behind
      // a peer host's NAT could otherwise make threads by the thousand.
      if (peer < 0 || handshakes_.fetch_add(1) >= FF_PEER_AUTH_MAX_PENDING) {
        if (peer >= 0) handshakes_--;
        close(fd);
        continue;
      }
      std::string peer_ip = ip;
      std::thread([this, fd, peer, peer_ip] {
        bool ok = PeerHandshake(fd, key_, PeerRole::kAcceptor, host_ip_, peer_ip);
        handshakes_--;
        int idx = ok ? TakeInboundSlot(fd) : -1;
        if (idx < 0) {
          close(fd);
          return;
        }
        Reader(idx, peer);
      }).detach();
    }
  }

  // A free slot for an incoming connection, marked up with fd; -1 if all are taken.
  int TakeInboundSlot(int fd) {
    std::lock_guard<std::mutex> g(slot_mu_);
    for (size_t tries = 0; tries < kMaxConns - kMaxPeers; tries++) {
      size_t i = kMaxPeers + (next_slot_ - kMaxPeers + tries) % (kMaxConns - kMaxPeers);
      if (!conns_[i]->up && conns_[i]->fd < 0) {
        next_slot_ = i + 1 >= kMaxConns ? kMaxPeers : i + 1;
        Tune(fd);
        conns_[i]->fd = fd;
        conns_[i]->up = true;
        return int(i);
      }
    }
    return -1;
  }

  std::vector<std::string> peers_;
  std::string host_ip_;
  int port_;
  const std::vector<uint8_t> key_;  // the cluster key (peer_auth.h)
  std::atomic<int> handshakes_{0};  // inbound connections still proving the key
  std::mutex slot_mu_;              // inbound slots are taken by the connections' own threads
  size_t next_slot_ = kMaxPeers;
  std::function<void()> kick_;
  Placement placement_;
  // Below this, asking the engine where to place costs more than the copy it saves.
  static constexpr uint32_t kPlaceMin = 4096;
  std::unique_ptr<Conn> conns_[kMaxConns];
  std::mutex qmu_;
  std::deque<Inbound> q_;
  std::atomic<bool> pending_{false};
  std::atomic<bool> unsent_{false};  // some connection's outbox holds bytes
  std::mutex bmu_;  // the inbound bound (Charge)
  char charge_token_ = 0;  // what a charge points at (never dereferenced; non-null means "charged")
  std::unordered_map<uint64_t, uint64_t> queued_;  // request payload bytes waiting, per destination container
  uint64_t queued_total_ = 0, answers_total_ = 0;
};

}  // namespace

Transport* StartTcpTransport(const std::string& host_ip, int port, const std::vector<std::string>& peers, const std::vector<uint8_t>& key,
                             std::function<void()> kick, Placement placement) {
  return new TcpTransport(host_ip, port, peers, key, std::move(kick), std::move(placement));
}

}  // namespace ffrdma
