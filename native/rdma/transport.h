// Router-to-router transport of the RDMA engine (cross-host work requests). The engine only
// sees this interface; tcp_transport.cc carries it over plain TCP between the hosts' routers.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <string>
#include <vector>

namespace ffrdma {

enum NetType : uint32_t {
  NET_WHO_HAS = 1,  // does your host have QP dst_qpn with GID gid? (requester -> all peers)
  NET_HAVE = 2,     // answer: status 0 = yes, else no
  NET_OP = 3,       // one work request; payload = data for SEND/WRITE
  NET_ACK = 4,      // its result: status = ibv_wc_status; payload = data for READ/atomics
  NET_CM = 5,       // connection-manager message between the routers (opaque JSON, see cm.ts)
  NET_DOWN = 100,   // local only: the connection `conn` went down
};

constexpr uint32_t NET_MAGIC = 0x4d444646;  // "FFDM"

// NET_ACK statuses beyond ibv_wc_status: the responder took nothing of this request and drops
// the requester's later ones until a request flagged NET_F_RESEND arrives (go-back-N, as RC
// does after a NAK). RNR: no receive was posted (imm = the responder's min_rnr_timer code; the
// requester's rnr_retry counts it). BUSY: the responder's router would have had to buffer it
// beyond its bound, or its receive CQ is full (retried without counting).
enum NetNak : uint32_t { NET_NAK_RNR = 0x100, NET_NAK_BUSY = 0x101 };
constexpr uint32_t NET_F_RESEND = 1u << 31;  // in NetHdr.flags of an OP: the first request after a NAK

struct NetHdr {
  uint32_t magic, type, len, status;
  uint32_t src_qpn, dst_qpn, opcode, rkey;
  uint32_t imm, flags;
  uint64_t remote_addr, compare_add, swap, cookie;
  uint8_t gid[16];      // GID of the destination QP's container
  uint8_t src_gid[16];  // GID of the requester's container
} __attribute__((packed));

// A byte buffer that resize() leaves uninitialised: received payloads are overwritten by
// read() at once, and zero-filling 64 KiB per message cost a measurable share of a core.
template <class T>
struct UninitAlloc : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAlloc<U>;
  };
  template <class U, class... A>
  void construct(U* p, A&&... a) {
    if constexpr (sizeof...(A) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<A>(a)...);
  }
};
using Bytes = std::vector<uint8_t, UninitAlloc<uint8_t>>;

struct Inbound {
  int conn;
  NetHdr h;
  Bytes payload;
  bool placed = false;   // the payload (h.len bytes) was read straight into its destination
  bool dropped = false;  // an OP whose payload the router would have had to buffer beyond its bound: read and discarded
  std::shared_ptr<void> charge;  // gives the payload's bytes back to the inbound bound when the last copy goes
};

// What a router buffers of other hosts' requests (payloads of SEND and WRITE not placed straight
// into registered memory) between reading them and the engine handling them: at most
// kInboundPerContainer bytes for one destination container (GID) and kInboundTotal in all;
// a message larger than that is taken only when nothing else waits (for that container, in
// all). Over the bound the payload is read and discarded and the requester told to send it
// again (NET_NAK_BUSY). Answers with data (READ, atomics) are bounded by the requester itself
// (kReadPerContainer, kReadTotal in engine.cc: what it may have outstanding).
constexpr uint64_t kInboundPerContainer = 64ull << 20;
constexpr uint64_t kInboundTotal = 256ull << 20;

// Receiving side of a large RDMA WRITE: where its payload may be read straight into (the
// destination's shared-memory view), so that the bytes go from the socket to registered memory
// with one copy, as a NIC's DMA would, instead of through the message buffer. Decided by the
// engine; nullptr means "read it into the message's buffer". The engine keeps the target
// mapped until the matching PlaceDone.
struct Placement {
  std::function<uint8_t*(int conn, const NetHdr&)> target;
  std::function<void(uint8_t*)> done;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Sends one message (h.len payload bytes) on a connection; false if it is down.
  virtual bool Send(int conn, const NetHdr& h, const void* payload) = 0;
  // Sends n messages back to back with one write, so that TCP cuts full segments across their
  // boundaries instead of a short one after every payload; false if the connection is down.
  // Not from the transport's reader threads.
  virtual bool SendMany(int conn, const NetHdr* hs, const void* const* payloads, size_t n) = 0;
  // Connections on which requests can be sent, one per reachable peer router.
  virtual std::vector<int> Peers() = 0;
  // Moves every message received so far into out; returns false if there was none.
  virtual bool Drain(std::deque<Inbound>& out) = 0;
  // True if messages wait for Drain.
  virtual bool HasPending() = 0;
  // Sends from the transport's own reader threads never block; what did not fit waits here
  // until the engine thread calls FlushUnsent (which may block). Returns true if it wrote.
  virtual bool HasUnsent() = 0;
  virtual bool FlushUnsent() = 0;
  // The peer router a connection is with (its index in --peers; both connections with one
  // peer give the same index), -1 if none: what a peer may speak for is decided by this.
  virtual int PeerOf(int conn) = 0;
};

// Listens on host_ip:port (accepting only the listed peers, once they proved the cluster key)
// and keeps a connection to each peer. kick() is called after a message was queued (wakes a
// sleeping engine).
Transport* StartTcpTransport(const std::string& host_ip, int port, const std::vector<std::string>& peers, const std::vector<uint8_t>& key,
                             std::function<void()> kick, Placement placement);

}  // namespace ffrdma
