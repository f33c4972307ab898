// See engine.h. Everything read from shared memory is copied first and checked: a container
// can scribble on its rings at any time, and the engine must neither crash nor touch memory of
// another container that did not register it for remote access.
#include "engine.h"

#include <fcntl.h>
#include <sched.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "doorbells.h"
#include "ff_rdma_shm.h"
#include "memory.h"
#include "realtime.h"
#include "transport.h"

namespace ffrdma {
namespace {

// enum ibv_wc_status / ibv_wc_opcode / ibv_access_flags values (kept numeric: the router does
// not depend on the verbs headers).
enum { WC_SUCCESS = 0, WC_LOC_LEN_ERR = 1, WC_LOC_QP_OP_ERR = 2, WC_LOC_PROT_ERR = 4, WC_WR_FLUSH_ERR = 5,
       WC_REM_INV_REQ_ERR = 9, WC_REM_ACCESS_ERR = 10, WC_REM_OP_ERR = 11, WC_RETRY_EXC_ERR = 12, WC_RNR_RETRY_EXC_ERR = 13 };
enum { WCO_SEND = 0, WCO_RDMA_WRITE = 1, WCO_RDMA_READ = 2, WCO_COMP_SWAP = 3, WCO_FETCH_ADD = 4, WCO_RECV = 128,
       WCO_RECV_RDMA_WITH_IMM = 129 };
enum { ACC_LOCAL_WRITE = 1, ACC_REMOTE_WRITE = 2, ACC_REMOTE_READ = 4, ACC_REMOTE_ATOMIC = 8 };
constexpr uint32_t WC_WITH_IMM = 2;

struct Mr {
  uint32_t pd;
  int pid;  // the memory owner (its router session, see mem_owners), never an OS pid
  uint64_t addr, len, iova;
  uint32_t access;
  // The part of the region the application moved into shared memory (page-aligned, inside
  // [addr, addr+len)), mapped here too: copies to and from it are plain memcpy, no syscall.
  uint8_t* view = nullptr;
  uint64_t view_addr = 0, view_len = 0;
};

// Views of every MR that has one (few per host), for translating application addresses.
struct View {
  int pid;
  uint64_t addr, len;
  uint8_t* ptr;
};

struct Channel {
  int fd;
};

struct Cq {
  ff_cq_shm* shm;
  size_t map_len;
  uint32_t depth;
  uint32_t channel;
  uint32_t head;  // engine's own producer counter
};

struct Srq {
  ff_srq_shm* shm;
  size_t map_len;
  uint32_t depth;
  uint32_t pd;
  uint32_t tail;  // engine's consumer counter
};

struct Qp {
  uint32_t srq = 0;  // shared receive queue, 0 = the QP's own
  bool dead = false;  // destroyed while a copy without mu ran in a sweep that holds it (freed after it)
  int64_t container = -1;  // of its memory owner, for the doorbells (looked up once)
  uint32_t qpn;
  int pid;
  uint32_t pd, scq, rcq;
  ff_qp_shm* shm;
  size_t map_len;
  uint32_t sqd, rqd;
  bool sig_all;
  uint32_t state = FF_QPS_RESET;
  uint32_t dest_qpn = 0;
  uint8_t gid[16];
  uint8_t dgid[16] = {0};
  uint32_t access = 0;
  uint32_t sq_tail = 0, rq_tail = 0;  // engine's own consumer counters
  // Cross-host: the transport connection of the peer's host (-1 = unknown), the lookup in
  // progress, and the work requests in flight.
  int remote = -1;
  bool resolving = false;
  int resolve_left = 0;
  int resolve_conn = -1;  // where the lookup went (only that connection's answer counts)
  uint64_t resolve_deadline = 0;
  struct Flight {
    ff_swqe w;
    uint64_t cookie;
    std::shared_ptr<void> read_charge;  // a READ's bytes against kReadPerContainer/kReadTotal
  };
  std::deque<Flight> flights;  // sent to the peer host, not yet acknowledged (oldest first)
  uint32_t sq_next = 0;        // next send WQE to start; sq_tail..sq_next are in flight
  // Receiver not ready (RNR), as on RC: the requester's retry count (rnr_retry, 7 = forever)
  // and the delay this QP asks for as a responder (min_rnr_timer, IB encoding), both set with
  // ibv_modify_qp (0 if never set, as on a NIC).
  uint8_t rnr_retry = 0, min_rnr_timer = 0;
  uint8_t rnr_left = 0;      // requester: retries left for send WQE rnr_wqe
  bool rnr_armed = false;    // rnr_left counts for rnr_wqe
  uint32_t rnr_wqe = 0;
  uint64_t rnr_until = 0;    // requester: no retry before this time (NowNs); 0 = none pending
  bool resend = false;       // requester: the next request to the peer host follows a NAK (NET_F_RESEND)
  bool probing = false;      // requester: ... and waits alone for its answer before the window opens again
  bool nak_discard = false;  // responder: a NAK went out; the requester's requests are dropped until its resend
};

// Work requests one QP may have in flight to another host: the responder answers in order
// on one TCP connection, so completions stay in order.
constexpr size_t kWindow = 32;
// The largest READ answer a transport reader sends itself (see Respond).
constexpr uint64_t kReaderAnswerMax = 64 << 10;
// How long a requester waits before sending again to a responder that answered busy.
constexpr uint64_t kBusyNs = 200000;

// The receive ring lies after the send ring; the engine uses its own copy of the depths, never
// the ones in shared memory.
ff_rwqe RqEntry(const Qp& q) {
  ff_rwqe r;
  const char* base = reinterpret_cast<const char*>(q.shm + 1) + size_t(q.sqd) * sizeof(ff_swqe);
  memcpy(&r, base + size_t(q.rq_tail & (q.rqd - 1)) * sizeof(ff_rwqe), sizeof r);
  return r;
}

std::mutex mu;
std::unordered_map<uint32_t, Mr> mrs;
std::unordered_map<uint32_t, Channel> channels;
std::unordered_map<uint32_t, Cq> cqs;
std::unordered_map<uint32_t, Qp*> qps;
std::unordered_map<uint32_t, Srq> srqs;
Transport* transport = nullptr;
std::deque<Inbound> pending;  // received requests waiting for the responder (RNR) or processing
// Which host each GID lives on, from the routers' registrations (SetGidOwners): kLocal for
// this host's containers, the index in --peers of the peer router whose host has it. A peer
// speaks only for its own GIDs: the GIDs it names as requester, and the QPs it answers for.
constexpr int kLocal = -1, kUnknown = -2;
struct GidKey {
  uint64_t hi, lo;
  bool operator==(const GidKey& o) const { return hi == o.hi && lo == o.lo; }
};
struct GidHash {
  size_t operator()(const GidKey& k) const { return std::hash<uint64_t>()(k.hi * 0x9e3779b97f4a7c15ull ^ k.lo); }
};
std::unordered_map<GidKey, int, GidHash> gid_owner;
GidKey KeyOf(const uint8_t* gid) {
  GidKey k;
  memcpy(&k.hi, gid, 8);
  memcpy(&k.lo, gid + 8, 8);
  return k;
}
int OwnerOf(const uint8_t* gid) {
  auto it = gid_owner.find(KeyOf(gid));
  return it == gid_owner.end() ? kUnknown : it->second;
}
// Request cookies another router cannot guess (answers are matched to the connection the
// request went out on as well): SipHash-2-4 of a counter under a key drawn once at start.
// (arc4random here is one getrandom system call per cookie in glibc 2.36, ~2.6 us in this VM:
// it added ~3 us to every cross-host round trip.)
uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
uint64_t SipHash24(const uint64_t k[2], uint64_t m) {
  uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1], v2 = 0x6c7967656e657261ull ^ k[0],
           v3 = 0x7465646279746573ull ^ k[1];
  auto round = [&] {
    v0 += v1, v1 = Rotl(v1, 13), v1 ^= v0, v0 = Rotl(v0, 32);
    v2 += v3, v3 = Rotl(v3, 16), v3 ^= v2;
    v0 += v3, v3 = Rotl(v3, 21), v3 ^= v0;
    v2 += v1, v1 = Rotl(v1, 17), v1 ^= v2, v2 = Rotl(v2, 32);
  };
  const uint64_t b = uint64_t(8) << 56;  // one 8-byte word
  v3 ^= m, round(), round(), v0 ^= m;
  v3 ^= b, round(), round(), v0 ^= b;
  v2 ^= 0xff, round(), round(), round(), round();
  return v0 ^ v1 ^ v2 ^ v3;
}
uint64_t NewCookie() {  // needs mu
  static uint64_t key[2] = {0, 0}, n = 0;
  if (!key[0] && !key[1]) arc4random_buf(key, sizeof key);
  return SipHash24(key, ++n);
}
// READ bytes this host's requesters have outstanding at other hosts (the answers' payloads the
// transport reads; ChargeAnswer in tcp_transport.cc relies on this bound).
constexpr uint64_t kReadPerContainer = 64ull << 20, kReadTotal = kInboundTotal;
std::unordered_map<uint64_t, uint64_t> reads_out;  // per requesting container (low 8 bytes of its GID)
uint64_t reads_out_total = 0;
thread_local bool on_reader = false;  // a transport reader runs the engine's network part (OnNetworkMessage)
Doorbells bells;                      // one per worker; libraries ring the one of their CPU
std::vector<int> worker_cpus;         // worker i is pinned to worker_cpus[i] (-1: not pinned)
std::vector<uint8_t> worker_asleep;   // per worker (mu); one being handed the engine counts as awake
std::vector<uint8_t> handed_over;     // per worker: being woken by a hand-over, already marked awake (mu)
std::atomic<bool> deep_sleep{false};  // every worker is (about to be) asleep
bool blocked = false;                 // last sweep left work waiting on time (RNR, CQ full, rate, lookup)
bool sent_to_network = false;         // the last sweep sent a request to another host
std::deque<Inbound> cm_inbox;  // NET_CM messages for the router's JS connection manager
// What cm_inbox may hold until the JS connection manager takes it: a peer router that floods
// connection-manager messages gets the rest dropped (counted as refused), so neither the
// router's memory nor one turn of its event loop grows with the flood.
constexpr size_t kCmInboxMax = 4096, kCmInboxBytes = 16u << 20;
size_t cm_inbox_bytes = 0;
int cm_eventfd = -1;            // readable while cm_inbox has messages (JS watches it)
bool running = false;
std::vector<uint8_t> bounce;
std::atomic<uint64_t> st_ops{0}, st_bytes{0}, st_errors{0}, st_served{0};
std::atomic<uint64_t> st_placed{0};
std::atomic<uint64_t> st_naks{0};  // NAKs (RNR, busy) this host's requesters got from other hosts
std::atomic<uint64_t> st_refused{0};  // messages of peer routers refused: not theirs to send (see Accepts)
std::atomic<uint64_t> st_mapped{0};  // bytes read from or written to shared-memory views
std::vector<View> views;
// Views a transport reader is reading a payload into right now (outside the engine lock), and
// views deregistered meanwhile, unmapped once the read is over. Guarded by pin_mu alone.
struct Pin {
  uint8_t* dst;   // where the reader writes (what PlaceTarget returned)
  uint8_t* view;  // the view it lies in
};
std::mutex pin_mu;
std::vector<Pin> pinned;
std::vector<std::pair<uint8_t*, uint64_t>> retired;
// Memory owners, one per router session: owner id -> its container (doorbell page) and the
// /proc/<pid>/mem file its process opened and sent at RDMA_OPEN (memory.h), or -1. Mr::pid,
// View::pid and Qp::pid are owner ids; an owner without a file reaches memory through views only.
struct MemOwner {
  int fd;
  uint64_t container;
};
std::unordered_map<int, MemOwner> mem_owners;
// Long copies and the control path (the router's main thread, whose RDMA calls take mu): a
// copy of kCopyChunk bytes or more runs without mu, a chunk at a time, so the control path
// never waits for one (nor for a worker that the kernel's real-time throttling stops in the
// middle of one). One sweep at a time still (sweep_mu, held throughout: no worker or transport
// reader runs the engine meanwhile), and nothing such a copy may point to is freed: QPs,
// views and mem files deleted meanwhile wait here until the next sweep (Reaped).
std::mutex sweep_mu;
bool yielded = false;     // (mu) a sweep is copying without mu
uint64_t ctl_epoch = 0;   // (mu) control requests served so far
std::vector<Qp*> retired_qps;
std::vector<std::pair<uint8_t*, uint64_t>> retired_views;
std::vector<int> retired_fds;
std::atomic<uint64_t> st_yields{0};  // chunks copied without mu
uint64_t ctl_wait_max = 0;  // (mu) the longest a control request waited for mu since the last GetSafetyStats
uint64_t hold_since = 0;  // (mu) a worker's sweep holds mu since (0: none)
std::atomic<uint64_t> hold_max{0};  // the longest a worker's sweep held mu at once, since GetSafetyStats
void HoldMax(uint64_t ns) {
  for (uint64_t m = hold_max.load(std::memory_order_relaxed); ns > m && !hold_max.compare_exchange_weak(m, ns);) {
  }
}
constexpr uint64_t kCopyChunk = 1 << 20;  // ~0.1 ms as memmove, ~0.3 ms through a mem file
constexpr size_t kMaxViews = 16384;  // each is one mapping of the router process
uint64_t rate_bps = 0;
struct Bucket {
  double tokens;
  uint64_t last_ns;
};
std::unordered_map<uint64_t, Bucket> buckets;  // per sending container (low 8 bytes of its GID)

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

// True if [off, off+need) of a memory file an application sent is safe to map: the file must
// be sealed against shrinking (truncated later, the engine's next access to the mapping would
// kill the router with SIGBUS) and, if populated, fully allocated (pages the engine faulted
// into a sparse file would be charged to the router's memory, not the container's).
bool SafeMemoryFile(int fd, uint64_t off, uint64_t need, bool populated) {
  struct stat st;
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(fd, &st) < 0) return false;
  uint64_t size = uint64_t(st.st_size);
  if (off > size || size - off < need) return false;
  return !populated || uint64_t(st.st_blocks) * 512 >= size;
}

void* MapRange(int fd, size_t need, uint64_t off) {
  void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(off));
  return p == MAP_FAILED ? nullptr : p;
}

// A ring the library made (sealed, not necessarily populated yet).
void* MapFd(int fd, size_t need) { return SafeMemoryFile(fd, 0, need, false) ? MapRange(fd, need, 0) : nullptr; }

bool Pow2(uint32_t v) { return v && !(v & (v - 1)) && v <= FF_RDMA_MAX_DEPTH * 4; }

// ------------------------------------------------------------------ completions

uint32_t CqFree(Cq& c) {
  uint32_t tail = __atomic_load_n(&c.shm->ring.tail, __ATOMIC_ACQUIRE);
  uint32_t used = c.head - tail;
  return used > c.depth ? 0 : c.depth - used;  // a garbage tail reads as "full"
}

void PushCqe(uint32_t cq_id, const ff_cqe& e, bool solicited) {
  auto it = cqs.find(cq_id);
  if (it == cqs.end()) return;
  Cq& c = it->second;
  if (!CqFree(c)) {  // callers check space first; a CQ overflow is a CQ error on real NICs
    __atomic_store_n(&c.shm->overflow, 1u, __ATOMIC_RELAXED);
    return;
  }
  ff_cq_entries(c.shm)[c.head & (c.depth - 1)] = e;
  c.head++;
  __atomic_store_n(&c.shm->ring.head, c.head, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint32_t armed = __atomic_load_n(&c.shm->armed, __ATOMIC_SEQ_CST);
  if (armed == 1 || (armed == 2 && (solicited || e.status != WC_SUCCESS))) {
    if (__atomic_exchange_n(&c.shm->armed, 0u, __ATOMIC_SEQ_CST) != 0) {
      auto ch = channels.find(c.channel);
      if (ch != channels.end()) {
        ssize_t r = write(ch->second.fd, &cq_id, sizeof cq_id);
        (void)r;  // a full pipe means the application stopped reading events
      }
    }
  }
}

bool CqHasRoom(uint32_t cq_id) {
  auto it = cqs.find(cq_id);
  return it != cqs.end() && CqFree(it->second) > 0;
}

ff_cqe MakeCqe(uint64_t wr_id, uint32_t status, uint32_t opcode, uint32_t len, uint32_t qpn) {
  ff_cqe e{};
  e.wr_id = wr_id;
  e.status = status;
  e.opcode = opcode;
  e.byte_len = len;
  e.qp_num = qpn;
  return e;
}

uint32_t SendWcOpcode(uint32_t wr_op) {
  switch (wr_op) {
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: return WCO_RDMA_WRITE;
    case FF_WR_RDMA_READ: return WCO_RDMA_READ;
    case FF_WR_ATOMIC_CMP_AND_SWP: return WCO_COMP_SWAP;
    case FF_WR_ATOMIC_FETCH_AND_ADD: return WCO_FETCH_ADD;
    default: return WCO_SEND;
  }
}

void SetState(Qp& q, uint32_t s) {
  q.state = s;
  __atomic_store_n(&q.shm->state, s, __ATOMIC_RELEASE);
}

// ------------------------------------------------------------------ memory access

// Resolves [addr, addr+len) under key to an address in the owner's address space.
// Returns false (and the reason in *why) if the key, PD, owner, range or access do not fit.
bool Resolve(uint32_t key, uint32_t pd, int pid, uint64_t addr, uint64_t len, uint32_t need, uint64_t* out) {
  auto it = mrs.find(key);
  if (it == mrs.end()) return false;
  const Mr& m = it->second;
  if (m.pd != pd || m.pid != pid) return false;
  if ((m.access & need) != need) return false;
  if (addr < m.iova || len > m.len || addr - m.iova > m.len - len) return false;
  *out = m.addr + (addr - m.iova);
  return true;
}

// Local SGE list -> iovecs in the owner's address space (truncated to `limit` bytes).
bool LocalIov(const Qp& q, const ff_sge* sge, uint32_t n, uint32_t need, uint64_t limit, std::vector<iovec>& iov, uint64_t* total) {
  *total = 0;
  iov.clear();
  for (uint32_t i = 0; i < n && i < FF_RDMA_MAX_SGE; i++) {
    if (!sge[i].length) continue;
    uint64_t a;
    if (!Resolve(sge[i].lkey, q.pd, q.pid, sge[i].addr, sge[i].length, need, &a)) return false;
    uint64_t l = sge[i].length;
    if (*total + l > limit) l = limit - *total;
    if (l) iov.push_back({reinterpret_cast<void*>(a), size_t(l)});
    *total += sge[i].length;
  }
  return true;
}

// The view of process pid that covers all of [addr, addr+len), if any.
const View* ViewCovering(int pid, uint64_t addr, uint64_t len) {
  for (const View& v : views)
    if (v.pid == pid && addr >= v.addr && len <= v.len && addr - v.addr <= v.len - len) return &v;
  return nullptr;
}

// The engine's own pointer to [addr, addr+len) of process pid, if a view covers all of it.
uint8_t* ViewOf(int pid, uint64_t addr, uint64_t len) {
  const View* v = ViewCovering(pid, addr, len);
  return v ? v->ptr + (addr - v->addr) : nullptr;
}

// Unmaps a deregistered view, or leaves that to PlaceDone if a reader is writing into it, or to
// the next sweep if a copy without mu may be using it.
void UnmapView(uint8_t* v, uint64_t len) {
  if (yielded) {
    retired_views.emplace_back(v, len);
    return;
  }
  std::lock_guard<std::mutex> g(pin_mu);
  if (std::any_of(pinned.begin(), pinned.end(), [v](const Pin& p) { return p.view == v; })) retired.emplace_back(v, len);
  else munmap(v, len);
}

// The mem file of an owner, or -1 (none sent, or the session is gone).
int MemFdOf(int owner) {
  auto it = mem_owners.find(owner);
  return it == mem_owners.end() ? -1 : it->second.fd;
}

// True if [addr, addr+len) of the owner's memory still lies inside one of its MRs.
bool Registered(int owner, uint64_t addr, uint64_t len) {
  for (const auto& [k, m] : mrs)
    if (m.pid == owner && addr >= m.addr && len <= m.len && addr - m.addr <= m.len - len) return true;
  return false;
}

// The control path's lock (every function the router's main thread calls). Counts the requests
// (a copy without mu checks what it copies again if one came meanwhile) and the longest wait.
struct CtlLock {
  CtlLock() {
    if (!mu.try_lock()) {
      uint64_t t0 = NowNs();
      mu.lock();
      ctl_wait_max = std::max(ctl_wait_max, NowNs() - t0);
    }
    ctl_epoch++;
  }
  ~CtlLock() { mu.unlock(); }
  CtlLock(const CtlLock&) = delete;
  CtlLock& operator=(const CtlLock&) = delete;
};

// What the control path deleted while a copy ran without mu: taken when a sweep begins (none
// runs then), freed once the sweep has released mu (unmapping a large view takes milliseconds).
struct Reaped {
  std::vector<Qp*> qps;
  std::vector<std::pair<uint8_t*, uint64_t>> views;
  std::vector<int> fds;
};
void TakeRetired(Reaped* r) {
  r->qps.swap(retired_qps);
  r->views.swap(retired_views);
  r->fds.swap(retired_fds);
}
void FreeReaped(Reaped* r) {
  for (Qp* q : r->qps) {
    munmap(q->shm, q->map_len);
    delete q;
  }
  for (auto& [v, len] : r->views) {
    std::lock_guard<std::mutex> g(pin_mu);  // (see UnmapView)
    if (std::any_of(pinned.begin(), pinned.end(), [v = v](const Pin& p) { return p.view == v; })) retired.emplace_back(v, len);
    else munmap(v, len);
  }
  for (int fd : r->fds) close(fd);
  r->qps.clear();
  r->views.clear();
  r->fds.clear();
}

// Moves len bytes between buf and an owner's memory (the iovecs are addresses in it): what a
// view covers by memmove, the rest through the owner's mem file (memory.h). A copy of
// kCopyChunk bytes or more runs without mu, one chunk at a time (the sweep keeps sweep_mu);
// if control requests were served meanwhile, it goes on only while what is left is still
// registered (an MR deregistered meanwhile ends it: false, as for a bad address).
bool Xfer(int pid, std::vector<iovec>& remote, uint8_t* buf, uint64_t len, bool write) {
  const bool unlocked = len >= kCopyChunk;
  uint64_t done = 0;
  for (size_t idx = 0; idx < remote.size(); idx++) {
    const uint64_t base = reinterpret_cast<uint64_t>(remote[idx].iov_base), seg = remote[idx].iov_len;
    for (uint64_t off = 0; off < seg;) {
      uint64_t n = std::min(seg - off, kCopyChunk);
      uint8_t* v = ViewOf(pid, base + off, n);
      int fd = v ? -1 : MemFdOf(pid);
      if (!v && fd < 0) return false;
      uint64_t epoch = ctl_epoch;
      if (unlocked) {
        if (hold_since) HoldMax(NowNs() - hold_since);
        yielded = true;
        mu.unlock();
      }
      bool ok = true;
      if (!v) ok = MemIo(fd, base + off, buf + done, n, write);
      else if (write) memmove(v, buf + done, n);
      else memmove(buf + done, v, n);
      if (unlocked) {
        mu.lock();
        yielded = false;
        if (hold_since) hold_since = NowNs();
        st_yields++;
      }
      if (!ok) return false;
      if (v) st_mapped += n;
      off += n;
      done += n;
      if (epoch != ctl_epoch)
        for (size_t i = idx; i < remote.size(); i++) {
          uint64_t from = i == idx ? off : 0;
          if (from < remote[i].iov_len && !Registered(pid, reinterpret_cast<uint64_t>(remote[i].iov_base) + from, remote[i].iov_len - from))
            return false;
        }
    }
  }
  return done == len;
}

// One 8-byte access of an atomic: local->iov_len bytes between local and remote in the owner's
// memory (view or mem file). Returns the bytes moved, as process_vm_readv/writev did.
ssize_t MemRw(int owner, const iovec* local, const iovec* remote, bool write) {
  uint64_t a = reinterpret_cast<uint64_t>(remote->iov_base), n = local->iov_len;
  if (uint8_t* v = ViewOf(owner, a, n)) {
    if (write) memcpy(v, local->iov_base, n);
    else memcpy(local->iov_base, v, n);
    return ssize_t(n);
  }
  int fd = MemFdOf(owner);
  return fd >= 0 && MemIo(fd, a, local->iov_base, n, write) ? ssize_t(n) : -1;
}

// ------------------------------------------------------------------ rate limit

// Returns false when the sending container has no tokens left for len bytes (retry later).
bool RateAllows(const Qp& q, uint64_t len) {
  if (!rate_bps) return true;
  uint64_t key;
  memcpy(&key, q.gid + 8, 8);
  uint64_t now = NowNs();
  auto [it, fresh] = buckets.try_emplace(key, Bucket{double(rate_bps) / 100, now});
  Bucket& b = it->second;
  double cap = std::max<double>(double(rate_bps) / 100, double(len));  // 10 ms burst
  b.tokens = std::min(cap, b.tokens + double(now - b.last_ns) * 1e-9 * double(rate_bps));
  b.last_ns = now;
  if (b.tokens < double(len)) return false;
  b.tokens -= double(len);
  return true;
}

// ------------------------------------------------------------------ work requests

enum class Outcome { Done, Retry, Error, InFlight };

const uint8_t kZeroGid[16] = {0};

// The destination QP on this host, or nullptr. *elsewhere is set when the destination GID
// belongs to no QP of this host (so the peer must be on another host).
Qp* Peer(Qp& q, bool* elsewhere) {
  *elsewhere = false;
  bool has_gid = memcmp(q.dgid, kZeroGid, 16) != 0;
  auto it = qps.find(q.dest_qpn);
  Qp* d = it == qps.end() ? nullptr : it->second;
  if (d && has_gid && memcmp(q.dgid, d->gid, 16)) d = nullptr;  // same number, another container
  if (!d) {
    *elsewhere = has_gid && OwnerOf(q.dgid) != kLocal;  // another host's, or not known yet
    return nullptr;
  }
  if (d->state != FF_QPS_RTR && d->state != FF_QPS_RTS) return nullptr;
  // A QP accepts only the QP and GID it was moved to RTR with, on one host as across hosts: a
  // co-located QP that got the number of d's remote peer is still another container.
  if (d->dest_qpn != q.qpn || memcmp(d->dgid, q.gid, 16)) return nullptr;
  return d;
}

// The remote access an operation needs on the responder's QP and MR (IBV_ACCESS_REMOTE_*).
uint32_t RemoteAccess(uint32_t opcode) {
  switch (opcode) {
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: return ACC_REMOTE_WRITE;
    case FF_WR_RDMA_READ: return ACC_REMOTE_READ;
    case FF_WR_ATOMIC_CMP_AND_SWP:
    case FF_WR_ATOMIC_FETCH_AND_ADD: return ACC_REMOTE_ATOMIC;
    default: return 0;
  }
}

Outcome ExecuteRemote(Qp& q, const ff_swqe& w);

// Completions of the requester's own work requests are pushed only after its send-queue tail
// has moved past them: an application that sees the completion may post again at once and
// must find the slot free.
struct Deferred {
  uint32_t cq;
  ff_cqe e;
  bool solicited;
};
std::vector<Deferred> deferred;
void Defer(uint32_t cq, const ff_cqe& e, bool solicited) { deferred.push_back({cq, e, solicited}); }
void FlushDeferred() {
  for (auto& d : deferred) PushCqe(d.cq, d.e, d.solicited);
  deferred.clear();
}
void AdvanceSq(Qp& q) {
  q.sq_tail++;
  if (int32_t(q.sq_next - q.sq_tail) < 0) q.sq_next = q.sq_tail;
  __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
  FlushDeferred();
}

void Fail(Qp& q, const ff_swqe& w, uint32_t status) {
  Defer(q.scq, MakeCqe(w.wr_id, status, SendWcOpcode(w.opcode), 0, q.qpn), true);
  SetState(q, FF_QPS_ERR);
  st_errors++;
}

// A request the responder's QP or MR does not allow: IBV_WC_REM_ACCESS_ERR at the requester,
// and the responder's QP goes to the error state too, as on RC (its receives are flushed).
Outcome DenyRemote(Qp& q, const ff_swqe& w, Qp& d) {
  SetState(d, FF_QPS_ERR);
  Fail(q, w, WC_REM_ACCESS_ERR);
  return Outcome::Error;
}

// The RNR NAK timer in ns for an IB min_rnr_timer code (0 = 655.36 ms, 1 = 0.01 ms ... 31 =
// 491.52 ms).
uint64_t RnrNs(uint8_t code) {
  static const uint32_t us[32] = {655360, 10,    20,    30,    40,    60,     80,     120,    160,    240,    320,
                                  480,    640,   960,   1280,  1920,  2560,   3840,   5120,   7680,   10240,  15360,
                                  20480,  30720, 40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520};
  return uint64_t(us[code & 31]) * 1000;
}

// Send WQE idx found the responder not ready (no receive posted). True if it may be tried
// again (not before rnr_until, which `wait` or a finite rnr_retry sets), false once the QP's
// rnr_retry is used up: then it completes with IBV_WC_RNR_RETRY_EXC_ERR. rnr_retry 7 retries
// forever; on one host such a retry runs as soon as a receive is posted (a NIC would wait
// the timer), across hosts after the responder's timer.
bool RnrRetry(Qp& q, uint32_t idx, uint8_t timer, bool wait) {
  if (!q.rnr_armed || q.rnr_wqe != idx) {
    q.rnr_armed = true;
    q.rnr_wqe = idx;
    q.rnr_left = q.rnr_retry;
  }
  if (q.rnr_retry != 7) {
    if (!q.rnr_left) return false;
    q.rnr_left--;
  }
  q.rnr_until = q.rnr_retry != 7 || wait ? NowNs() + RnrNs(timer) : 0;
  return true;
}

// True while the requester must wait for its RNR timer (or a busy responder).
bool RnrWaiting(Qp& q) {
  if (!q.rnr_until) return false;
  if (NowNs() < q.rnr_until) return true;
  q.rnr_until = 0;
  return false;
}

// The WQE's local data: *data points into the sender's shared view when the data is one
// segment of it (no copy: the one copy goes straight to the destination), else into the bounce
// buffer it was gathered into. Valid until the next Gather.
bool Gather(Qp& q, const ff_swqe& w, uint64_t* len, uint8_t** data) {
  if (w.flags & FF_SWQE_INLINE) {
    if (w.inline_len > FF_RDMA_MAX_INLINE) return false;
    *len = w.inline_len;
    if (bounce.size() < *len) bounce.resize(*len);
    memcpy(bounce.data(), w.inline_data, *len);
    *data = bounce.data();
    return true;
  }
  std::vector<iovec> iov;
  uint64_t total;
  if (!LocalIov(q, w.sge, w.num_sge, 0, UINT64_MAX, iov, &total)) return false;
  if (total > FF_RDMA_MAX_MSG) return false;
  *len = total;
  if (iov.size() == 1) {
    if (uint8_t* v = ViewOf(q.pid, reinterpret_cast<uint64_t>(iov[0].iov_base), iov[0].iov_len)) {
      *data = v;
      st_mapped += total;
      return true;
    }
  }
  if (bounce.size() < total) bounce.resize(total);
  *data = bounce.data();
  return Xfer(q.pid, iov, bounce.data(), total, false);
}

// Takes the responder's next receive WQE; false if none is posted (RNR).
bool NextRecv(Qp& d, ff_rwqe* r) {
  if (d.srq) {
    auto it = srqs.find(d.srq);
    if (it == srqs.end()) return false;
    Srq& q = it->second;
    uint32_t head = __atomic_load_n(&q.shm->ring.head, __ATOMIC_ACQUIRE);
    if (head == q.tail) return false;
    memcpy(r, &ff_srq_entries(q.shm)[q.tail & (q.depth - 1)], sizeof *r);
    return true;
  }
  uint32_t head = __atomic_load_n(&d.shm->rq.head, __ATOMIC_ACQUIRE);
  if (head == d.rq_tail) return false;
  *r = RqEntry(d);
  return true;
}

// Releases the receive request NextRecv returned.
void ConsumeRecv(Qp& d) {
  if (d.srq) {
    auto it = srqs.find(d.srq);
    if (it == srqs.end()) return;
    it->second.tail++;
    __atomic_store_n(&it->second.shm->ring.tail, it->second.tail, __ATOMIC_RELEASE);
    return;
  }
  d.rq_tail++;
  __atomic_store_n(&d.shm->rq.tail, d.rq_tail, __ATOMIC_RELEASE);
}

Outcome Execute(Qp& q, const ff_swqe& w) {
  bool signaled = q.sig_all || (w.flags & FF_SWQE_SIGNALED);
  if (signaled && !CqHasRoom(q.scq)) return Outcome::Retry;
  bool elsewhere;
  Qp* d = Peer(q, &elsewhere);
  if (!d && elsewhere && transport) return ExecuteRemote(q, w);
  if (!d) {
    Fail(q, w, WC_RETRY_EXC_ERR);
    return Outcome::Error;
  }
  if (uint32_t need = RemoteAccess(w.opcode); (d->access & need) != need) return DenyRemote(q, w, *d);
  uint64_t len = 0;
  switch (w.opcode) {
    case FF_WR_SEND:
    case FF_WR_SEND_WITH_IMM:
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: {
      bool consumes = w.opcode != FF_WR_RDMA_WRITE;
      ff_rwqe r{};
      if (consumes) {
        if (RnrWaiting(q)) return Outcome::Retry;
        if (!NextRecv(*d, &r)) {  // receiver not ready
          if (RnrRetry(q, q.sq_next, d->min_rnr_timer, false)) return Outcome::Retry;
          Fail(q, w, WC_RNR_RETRY_EXC_ERR);
          return Outcome::Error;
        }
        if (!CqHasRoom(d->rcq)) return Outcome::Retry;
      }
      uint64_t peek = (w.flags & FF_SWQE_INLINE) ? w.inline_len : 0;
      if (!(w.flags & FF_SWQE_INLINE))
        for (uint32_t i = 0; i < w.num_sge && i < FF_RDMA_MAX_SGE; i++) peek += w.sge[i].length;
      if (!RateAllows(q, peek)) return Outcome::Retry;
      uint8_t* data = nullptr;
      if (!Gather(q, w, &len, &data)) {
        Fail(q, w, WC_LOC_PROT_ERR);
        return Outcome::Error;
      }
      std::vector<iovec> dst;
      if (w.opcode == FF_WR_SEND || w.opcode == FF_WR_SEND_WITH_IMM) {
        uint64_t room;
        if (!LocalIov(*d, r.sge, r.num_sge, ACC_LOCAL_WRITE, len, dst, &room) || room < len) {
          ConsumeRecv(*d);
          PushCqe(d->rcq, MakeCqe(r.wr_id, room < len ? WC_LOC_LEN_ERR : WC_LOC_PROT_ERR, WCO_RECV, 0, d->qpn), true);
          SetState(*d, FF_QPS_ERR);
          Fail(q, w, WC_REM_INV_REQ_ERR);
          return Outcome::Error;
        }
      } else {
        uint64_t a;
        if (len && !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, len, ACC_REMOTE_WRITE, &a)) return DenyRemote(q, w, *d);
        if (len) dst.push_back({reinterpret_cast<void*>(a), size_t(len)});
      }
      if (len && !Xfer(d->pid, dst, data, len, true)) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (consumes) {
        ConsumeRecv(*d);
        bool imm = w.opcode != FF_WR_SEND;
        ff_cqe e = MakeCqe(r.wr_id, WC_SUCCESS, w.opcode == FF_WR_RDMA_WRITE_WITH_IMM ? WCO_RECV_RDMA_WITH_IMM : WCO_RECV,
                           uint32_t(len), d->qpn);
        e.src_qp = q.qpn;
        if (imm) {
          e.imm = w.imm;
          e.wc_flags = WC_WITH_IMM;
        }
        PushCqe(d->rcq, e, (w.flags & FF_SWQE_SOLICITED) != 0);
      }
      break;
    }
    case FF_WR_RDMA_READ: {
      std::vector<iovec> local;
      uint64_t total;
      if (!LocalIov(q, w.sge, w.num_sge, ACC_LOCAL_WRITE, UINT64_MAX, local, &total) || total > FF_RDMA_MAX_MSG) {
        Fail(q, w, WC_LOC_PROT_ERR);
        return Outcome::Error;
      }
      if (!RateAllows(q, total)) return Outcome::Retry;
      len = total;
      uint64_t a;
      if (len && !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, len, ACC_REMOTE_READ, &a)) return DenyRemote(q, w, *d);
      if (bounce.size() < len) bounce.resize(len);
      std::vector<iovec> src{{reinterpret_cast<void*>(a), size_t(len)}};
      uint8_t* sv = len ? ViewOf(d->pid, a, len) : nullptr;  // one copy when the source is shared
      if (sv) st_mapped += len;
      if (len && (sv ? !Xfer(q.pid, local, sv, len, true)
                     : (!Xfer(d->pid, src, bounce.data(), len, false) || !Xfer(q.pid, local, bounce.data(), len, true)))) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      break;
    }
    case FF_WR_ATOMIC_CMP_AND_SWP:
    case FF_WR_ATOMIC_FETCH_AND_ADD: {
      std::vector<iovec> local;
      uint64_t total;
      if (w.num_sge != 1 || w.sge[0].length != 8 || !LocalIov(q, w.sge, 1, ACC_LOCAL_WRITE, 8, local, &total)) {
        Fail(q, w, WC_LOC_PROT_ERR);
        return Outcome::Error;
      }
      uint64_t a;
      if ((w.remote_addr & 7) || !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, 8, ACC_REMOTE_ATOMIC, &a)) return DenyRemote(q, w, *d);
      // One engine thread serves every QP of the host, so read-modify-write here is atomic
      // with respect to all other RDMA operations (as IBV_ATOMIC_HCA promises).
      uint64_t orig = 0, upd;
      iovec r{reinterpret_cast<void*>(a), 8};
      iovec l{&orig, 8};
      if (MemRw(d->pid, &l, &r, false) != 8) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (w.opcode == FF_WR_ATOMIC_FETCH_AND_ADD) upd = orig + w.compare_add;
      else upd = orig == w.compare_add ? w.swap : orig;
      iovec lu{&upd, 8};
      if (upd != orig && MemRw(d->pid, &lu, &r, true) != 8) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (MemRw(q.pid, &l, local.data(), true) != 8) {
        Fail(q, w, WC_LOC_PROT_ERR);
        return Outcome::Error;
      }
      len = 8;
      break;
    }
    default:
      Fail(q, w, WC_LOC_QP_OP_ERR);
      return Outcome::Error;
  }
  st_ops++;
  st_bytes += len;
  if (signaled) Defer(q.scq, MakeCqe(w.wr_id, WC_SUCCESS, SendWcOpcode(w.opcode), uint32_t(len), q.qpn), false);
  return Outcome::Done;
}

// Completes every outstanding WQE of a QP in the error state with IBV_WC_WR_FLUSH_ERR.
bool Flush(Qp& q) {
  bool did = false;
  if (!CqHasRoom(q.scq) || !CqHasRoom(q.rcq)) blocked = true;
  uint32_t head = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
  while (q.sq_tail != head && CqHasRoom(q.scq)) {
    ff_swqe w = ff_qp_sq_entries(q.shm)[q.sq_tail & (q.sqd - 1)];
    Defer(q.scq, MakeCqe(w.wr_id, WC_WR_FLUSH_ERR, SendWcOpcode(w.opcode), 0, q.qpn), true);
    AdvanceSq(q);
    did = true;
  }
  __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
  head = __atomic_load_n(&q.shm->rq.head, __ATOMIC_ACQUIRE);
  while (q.rq_tail != head && CqHasRoom(q.rcq)) {
    ff_rwqe r = RqEntry(q);
    q.rq_tail++;
    __atomic_store_n(&q.shm->rq.tail, q.rq_tail, __ATOMIC_RELEASE);
    PushCqe(q.rcq, MakeCqe(r.wr_id, WC_WR_FLUSH_ERR, WCO_RECV, 0, q.qpn), true);
    did = true;
  }
  __atomic_store_n(&q.shm->rq.tail, q.rq_tail, __ATOMIC_RELEASE);
  return did;
}


// ------------------------------------------------------------------ cross-host (transport.h)

void Kick() {
  if (deep_sleep.load(std::memory_order_seq_cst)) bells.RingHere();
}

NetHdr NewHdr(uint32_t type) {
  NetHdr h{};
  h.magic = NET_MAGIC;
  h.type = type;
  return h;
}

// Requester side: sends the work request to the peer's host; completes in OnAck.
// An error is reported only once everything before it has completed (RC completes in order).
Outcome FailRemote(Qp& q, const ff_swqe& w, uint32_t status) {
  if (!q.flights.empty()) return Outcome::Retry;
  Fail(q, w, status);
  return Outcome::Error;
}

// Requests of one QP's sweep (Service) that go to its peer host, written with one SendMany
// when the sweep ends or kBatchMax are collected: one write per message put a short TCP
// segment after every payload (header + 64 KiB is one full segment and 64-odd bytes under
// TCP_NODELAY), twice the segments, transmissions and receive passes iperf3 needs for the
// same bytes. Only payloads that stay put until then (views, or none): the bounce buffer is
// reused by the next Gather. Needs mu.
struct SendBatch {
  int conn = -1;
  std::vector<NetHdr> hdrs;
  std::vector<const void*> payloads;
};
SendBatch batch;
bool batching = false;  // Service is sweeping a send queue
// FFR_RDMA_SEND_BATCH: at most this many per write (1: one write per message, as before).
const size_t kBatchMax = [] {
  const char* e = getenv("FFR_RDMA_SEND_BATCH");
  long v = e ? strtol(e, nullptr, 10) : 8;
  return size_t(v < 1 ? 1 : v > 64 ? 64 : v);
}();

// A failed write needs no handling here: the connection's reader reports it down (NET_DOWN),
// which fails the requests in flight on it.
void FlushBatch() {
  if (batch.hdrs.empty()) return;
  transport->SendMany(batch.conn, batch.hdrs.data(), batch.payloads.data(), batch.hdrs.size());
  batch.hdrs.clear();
  batch.payloads.clear();
}

Outcome ExecuteRemote(Qp& q, const ff_swqe& w) {
  if (q.flights.size() >= kWindow) return Outcome::Retry;
  if ((q.probing && !q.flights.empty()) || RnrWaiting(q)) return Outcome::Retry;  // after a NAK
  if (q.remote < 0 || !transport) {
    uint64_t now = NowNs();
    if (!q.resolving) {
      q.resolving = true;
      q.resolve_conn = -1;
      q.resolve_left = 1;
      q.resolve_deadline = now + 3000000000ull;
    }
    if (now >= q.resolve_deadline || q.resolve_left <= 0) {
      q.resolving = false;
      return FailRemote(q, w, WC_RETRY_EXC_ERR);  // no host has that QP (or accepts this one)
    }
    // Only the host the directory names for the destination GID is asked, and believed; until
    // the directory names one (a peer router announces its GIDs when it connects), wait.
    int owner = OwnerOf(q.dgid);
    if (q.resolve_conn < 0 && owner >= 0)
      for (int c : transport->Peers()) {
        if (transport->PeerOf(c) != owner) continue;
        NetHdr h = NewHdr(NET_WHO_HAS);
        h.dst_qpn = q.dest_qpn;
        h.src_qpn = q.qpn;
        memcpy(h.gid, q.dgid, 16);
        memcpy(h.src_gid, q.gid, 16);
        if (transport->Send(c, h, nullptr)) q.resolve_conn = c;
        break;
      }
    return Outcome::Retry;
  }
  NetHdr h = NewHdr(NET_OP);
  h.src_qpn = q.qpn;
  h.dst_qpn = q.dest_qpn;
  h.opcode = w.opcode;
  h.rkey = w.rkey;
  h.imm = w.imm;
  h.flags = w.flags;
  h.remote_addr = w.remote_addr;
  h.compare_add = w.compare_add;
  h.swap = w.swap;
  memcpy(h.gid, q.dgid, 16);
  memcpy(h.src_gid, q.gid, 16);
  const void* payload = nullptr;
  std::shared_ptr<void> read_charge;
  switch (w.opcode) {
    case FF_WR_SEND:
    case FF_WR_SEND_WITH_IMM:
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: {
      uint64_t peek = (w.flags & FF_SWQE_INLINE) ? w.inline_len : 0;
      if (!(w.flags & FF_SWQE_INLINE))
        for (uint32_t i = 0; i < w.num_sge && i < FF_RDMA_MAX_SGE; i++) peek += w.sge[i].length;
      if (!RateAllows(q, peek)) return Outcome::Retry;
      uint64_t len;
      uint8_t* data = nullptr;
      if (!Gather(q, w, &len, &data)) {
        return FailRemote(q, w, WC_LOC_PROT_ERR);
      }
      h.len = uint32_t(len);
      payload = data;
      break;
    }
    case FF_WR_RDMA_READ: {
      std::vector<iovec> local;
      uint64_t total;
      if (!LocalIov(q, w.sge, w.num_sge, ACC_LOCAL_WRITE, UINT64_MAX, local, &total) || total > FF_RDMA_MAX_MSG) {
        return FailRemote(q, w, WC_LOC_PROT_ERR);
      }
      // The answer's data is read by this host's transport: a container may have at most
      // kReadPerContainer bytes of READs outstanding, all together kReadTotal (one larger READ
      // only when none is outstanding). Over that, the READ waits at the head of its queue.
      uint64_t key;
      memcpy(&key, q.gid + 8, 8);
      auto out = reads_out.find(key);
      uint64_t mine = out == reads_out.end() ? 0 : out->second;
      if (total && ((mine && mine + total > kReadPerContainer) || (reads_out_total && reads_out_total + total > kReadTotal))) return Outcome::Retry;
      if (!RateAllows(q, total)) return Outcome::Retry;
      if (total) {
        reads_out[key] += total;
        reads_out_total += total;
        read_charge = std::shared_ptr<void>(nullptr, [key, total](void*) {  // runs under mu, wherever the flight goes
          auto it = reads_out.find(key);
          if (it != reads_out.end() && (it->second -= total) == 0) reads_out.erase(it);
          reads_out_total -= total;
        });
      }
      h.compare_add = total;  // READ: the length asked for
      break;
    }
    case FF_WR_ATOMIC_CMP_AND_SWP:
    case FF_WR_ATOMIC_FETCH_AND_ADD: {
      std::vector<iovec> local;
      uint64_t total;
      if (w.num_sge != 1 || w.sge[0].length != 8 || !LocalIov(q, w.sge, 1, ACC_LOCAL_WRITE, 8, local, &total)) {
        return FailRemote(q, w, WC_LOC_PROT_ERR);
      }
      break;
    }
    default:
      return FailRemote(q, w, WC_LOC_QP_OP_ERR);
  }
  h.cookie = NewCookie();
  if (q.resend) {  // the first request after a NAK: the responder takes requests again from here
    h.flags |= NET_F_RESEND;
    q.resend = false;
    q.probing = true;
  }
  if (batching && (!payload || payload != bounce.data())) {
    if (batch.conn != q.remote) FlushBatch();
    batch.conn = q.remote;
    batch.hdrs.push_back(h);
    batch.payloads.push_back(payload);
    if (batch.hdrs.size() >= kBatchMax) FlushBatch();
  } else {
    FlushBatch();  // what was collected goes first: RC keeps a QP's requests in order
    if (!transport->Send(q.remote, h, payload)) {
      q.remote = -1;
      return FailRemote(q, w, WC_RETRY_EXC_ERR);
    }
  }
  q.flights.push_back({w, h.cookie, std::move(read_charge)});
  return Outcome::InFlight;
}

// Requester side: the answer to the work request in flight.
void OnAck(const Inbound& in) {
  auto it = qps.find(in.h.src_qpn);
  if (it == qps.end()) return;
  Qp& q = *it->second;
  if (in.conn != q.remote) {  // only the connection the request went out on answers it
    st_refused++;
    return;
  }
  if (q.flights.empty() || q.flights.front().cookie != in.h.cookie) return;
  const ff_swqe w = q.flights.front().w;
  if (in.h.status == NET_NAK_RNR || in.h.status == NET_NAK_BUSY) {
    // The responder took nothing from this request on: all of them go again, from this one,
    // once its timer has run (RNR, counted against rnr_retry) or after a short pause (busy).
    if (in.h.status == NET_NAK_BUSY) q.rnr_until = NowNs() + kBusyNs;
    else if (!RnrRetry(q, q.sq_tail, uint8_t(in.h.imm), true)) {
      q.flights.pop_front();
      Fail(q, w, WC_RNR_RETRY_EXC_ERR);
      AdvanceSq(q);
      while (!q.flights.empty()) {  // dropped by the responder: flushed
        ff_swqe x = q.flights.front().w;
        q.flights.pop_front();
        Defer(q.scq, MakeCqe(x.wr_id, WC_WR_FLUSH_ERR, SendWcOpcode(x.opcode), 0, q.qpn), true);
        AdvanceSq(q);
      }
      return;
    }
    q.flights.clear();
    q.sq_next = q.sq_tail;
    q.resend = true;
    q.probing = false;
    st_naks++;
    blocked = true;
    return;
  }
  q.probing = false;
  q.flights.pop_front();
  uint32_t status = in.h.status;
  // After an earlier error everything behind it is flushed, whatever the responder said (it may
  // have moved its QP to ERR too, and then answers "no such QP").
  if (q.state == FF_QPS_ERR) status = WC_WR_FLUSH_ERR;
  uint64_t len = in.h.compare_add;  // bytes moved, as the responder reports
  if (status == WC_SUCCESS && (w.opcode == FF_WR_RDMA_READ || w.opcode == FF_WR_ATOMIC_CMP_AND_SWP || w.opcode == FF_WR_ATOMIC_FETCH_AND_ADD)) {
    std::vector<iovec> local;
    uint64_t total;
    uint32_t n = w.opcode == FF_WR_RDMA_READ ? w.num_sge : 1;
    if (!LocalIov(q, w.sge, n, ACC_LOCAL_WRITE, in.payload.size(), local, &total) ||
        (in.payload.size() && !Xfer(q.pid, local, const_cast<uint8_t*>(in.payload.data()), in.payload.size(), true)))
      status = WC_LOC_PROT_ERR;
    len = in.payload.size();
  }
  if (status != WC_SUCCESS) Fail(q, w, status);
  else {
    st_ops++;
    st_bytes += len;
    if (q.sig_all || (w.flags & FF_SWQE_SIGNALED)) Defer(q.scq, MakeCqe(w.wr_id, WC_SUCCESS, SendWcOpcode(w.opcode), uint32_t(len), q.qpn), false);
  }
  AdvanceSq(q);
}

void Answer(const Inbound& in, uint32_t status, const void* data, uint32_t len, uint64_t moved) {
  NetHdr h = NewHdr(NET_ACK);
  h.src_qpn = in.h.src_qpn;
  h.dst_qpn = in.h.dst_qpn;
  h.cookie = in.h.cookie;
  h.status = status;
  h.len = len;
  h.compare_add = moved;
  transport->Send(in.conn, h, data);
}

// True if d (a QP of this host, or nullptr) takes request m that came on connection conn: d
// has the destination GID, is ready to receive, and was moved to RTR with exactly the
// requester's QP number and GID (a QP without a destination GID accepts nobody), and the
// directory says that GID is on the host of the peer router at the other end of conn.
bool Accepts(const Qp* d, const NetHdr& m, int conn) {
  if (!d || memcmp(d->gid, m.gid, 16) || (d->state != FF_QPS_RTR && d->state != FF_QPS_RTS) || d->dest_qpn != m.src_qpn ||
      memcmp(d->dgid, m.src_gid, 16))
    return false;
  // ... and the requester's GID lives on the host of the router that sent it.
  if (OwnerOf(m.src_gid) == transport->PeerOf(conn)) return true;
  st_refused++;
  return false;
}

// Receiver not ready or busy (NetNak): d drops the requester's next requests until its resend.
bool Nak(const Inbound& in, Qp& d, uint32_t why) {
  d.nak_discard = true;
  NetHdr h = NewHdr(NET_ACK);
  h.src_qpn = in.h.src_qpn;
  h.dst_qpn = in.h.dst_qpn;
  h.cookie = in.h.cookie;
  h.status = why;
  h.imm = d.min_rnr_timer;
  transport->Send(in.conn, h, nullptr);
  return true;
}

// Responder side of an access violation (DenyRemote across hosts).
bool DenyAnswer(const Inbound& in, Qp& d) {
  SetState(d, FF_QPS_ERR);
  Answer(in, WC_REM_ACCESS_ERR, nullptr, 0, 0);
  return true;
}

// Responder side: runs a work request from another host against a local QP. Returns false
// when it must wait (no receive posted, CQ full).
bool Respond(Inbound& in) {
  const NetHdr& m = in.h;
  auto it = qps.find(m.dst_qpn);
  Qp* d = it == qps.end() ? nullptr : it->second;
  if (!Accepts(d, m, in.conn)) {
    Answer(in, WC_RETRY_EXC_ERR, nullptr, 0, 0);
    return true;
  }
  if (d->nak_discard) {
    if (!(m.flags & NET_F_RESEND)) return true;  // behind a NAK: dropped, the requester sends it again
    d->nak_discard = false;
  }
  if (uint32_t need = RemoteAccess(m.opcode); (d->access & need) != need) return DenyAnswer(in, *d);
  if (in.dropped) return Nak(in, *d, NET_NAK_BUSY);  // over the inbound bound: sent again later
  uint64_t len = in.placed ? m.len : in.payload.size();
  switch (m.opcode) {
    case FF_WR_SEND:
    case FF_WR_SEND_WITH_IMM:
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: {
      bool consumes = m.opcode != FF_WR_RDMA_WRITE;
      ff_rwqe r{};
      // Receiver not ready: a NAK, as a NIC answers; nothing is buffered here.
      if (consumes && !NextRecv(*d, &r)) return Nak(in, *d, NET_NAK_RNR);
      if (consumes && !CqHasRoom(d->rcq)) return Nak(in, *d, NET_NAK_BUSY);
      std::vector<iovec> dst;
      if (m.opcode == FF_WR_SEND || m.opcode == FF_WR_SEND_WITH_IMM) {
        uint64_t room;
        if (!LocalIov(*d, r.sge, r.num_sge, ACC_LOCAL_WRITE, len, dst, &room) || room < len) {
          ConsumeRecv(*d);
          PushCqe(d->rcq, MakeCqe(r.wr_id, room < len ? WC_LOC_LEN_ERR : WC_LOC_PROT_ERR, WCO_RECV, 0, d->qpn), true);
          SetState(*d, FF_QPS_ERR);
          Answer(in, WC_REM_INV_REQ_ERR, nullptr, 0, 0);
          return true;
        }
      } else {
        uint64_t a;
        if (len && !Resolve(m.rkey, d->pd, d->pid, m.remote_addr, len, ACC_REMOTE_WRITE, &a)) return DenyAnswer(in, *d);
        if (len) dst.push_back({reinterpret_cast<void*>(a), size_t(len)});
      }
      if (in.placed) st_placed += len;
      if (len && !in.placed && !Xfer(d->pid, dst, in.payload.data(), len, true)) {
        Answer(in, WC_REM_OP_ERR, nullptr, 0, 0);
        return true;
      }
      if (consumes) {
        ConsumeRecv(*d);
        ff_cqe e = MakeCqe(r.wr_id, WC_SUCCESS, m.opcode == FF_WR_RDMA_WRITE_WITH_IMM ? WCO_RECV_RDMA_WITH_IMM : WCO_RECV, uint32_t(len), d->qpn);
        e.src_qp = m.src_qpn;
        if (m.opcode != FF_WR_SEND) {
          e.imm = m.imm;
          e.wc_flags = WC_WITH_IMM;
        }
        PushCqe(d->rcq, e, (m.flags & FF_SWQE_SOLICITED) != 0);
      }
      Answer(in, WC_SUCCESS, nullptr, 0, len);
      return true;
    }
    case FF_WR_RDMA_READ: {
      uint64_t want = m.compare_add, a;
      // A reader must not block on a send, so what it cannot write at once is copied to the
      // connection's outbox: large answers are left to an engine worker, which writes them
      // straight from the bounce buffer (the outbox stays small).
      if (on_reader && want > kReaderAnswerMax) return false;
      if (want > FF_RDMA_MAX_MSG || (want && !Resolve(m.rkey, d->pd, d->pid, m.remote_addr, want, ACC_REMOTE_READ, &a))) return DenyAnswer(in, *d);
      if (bounce.size() < want) bounce.resize(want);
      std::vector<iovec> src{{reinterpret_cast<void*>(a), size_t(want)}};
      if (want && !Xfer(d->pid, src, bounce.data(), want, false)) {
        Answer(in, WC_REM_OP_ERR, nullptr, 0, 0);
        return true;
      }
      Answer(in, WC_SUCCESS, bounce.data(), uint32_t(want), want);
      return true;
    }
    case FF_WR_ATOMIC_CMP_AND_SWP:
    case FF_WR_ATOMIC_FETCH_AND_ADD: {
      uint64_t a;
      if ((m.remote_addr & 7) || !Resolve(m.rkey, d->pd, d->pid, m.remote_addr, 8, ACC_REMOTE_ATOMIC, &a)) return DenyAnswer(in, *d);
      uint64_t orig = 0, upd;
      iovec r{reinterpret_cast<void*>(a), 8}, l{&orig, 8};
      if (MemRw(d->pid, &l, &r, false) != 8) {
        Answer(in, WC_REM_OP_ERR, nullptr, 0, 0);
        return true;
      }
      upd = m.opcode == FF_WR_ATOMIC_FETCH_AND_ADD ? orig + m.compare_add : (orig == m.compare_add ? m.swap : orig);
      iovec lu{&upd, 8};
      if (upd != orig && MemRw(d->pid, &lu, &r, true) != 8) {
        Answer(in, WC_REM_OP_ERR, nullptr, 0, 0);
        return true;
      }
      Answer(in, WC_SUCCESS, &orig, 8, 8);
      return true;
    }
    default:
      Answer(in, WC_REM_INV_REQ_ERR, nullptr, 0, 0);
      return true;
  }
}

// Handles everything the transport received; requests that must wait stay in `pending`, in
// order per destination QP.
bool ServeNetwork() {
  bool did = transport->Drain(pending);
  std::vector<uint32_t> blocked;
  for (auto it = pending.begin(); it != pending.end();) {
    Inbound& in = *it;
    bool done = true;
    switch (in.h.type) {
      case NET_WHO_HAS: {
        auto q = qps.find(in.h.dst_qpn);
        NetHdr h = NewHdr(NET_HAVE);
        h.src_qpn = in.h.src_qpn;
        h.dst_qpn = in.h.dst_qpn;
        // Yes only if the QP would take this requester's work (so the answer tells nobody
        // else whether a QP number exists).
        h.status = Accepts(q != qps.end() ? q->second : nullptr, in.h, in.conn) ? 0 : 1;
        transport->Send(in.conn, h, nullptr);
        break;
      }
      case NET_HAVE: {
        auto q = qps.find(in.h.src_qpn);
        if (q != qps.end() && q->second->resolving && (in.conn != q->second->resolve_conn || in.h.dst_qpn != q->second->dest_qpn)) {
          st_refused++;  // only the host that was asked answers
        } else if (q != qps.end() && q->second->resolving) {
          Qp& r = *q->second;
          r.resolve_left--;
          if (in.h.status == 0) {
            r.remote = in.conn;
            r.resolving = false;
          }
        }
        break;
      }
      case NET_OP: {
        if (std::find(blocked.begin(), blocked.end(), in.h.dst_qpn) != blocked.end()) {
          done = false;
          break;
        }
        done = Respond(in);
        if (!done) blocked.push_back(in.h.dst_qpn);
        else st_served++;
        break;
      }
      case NET_ACK:
        OnAck(in);
        break;
      case NET_CM:
        if (cm_inbox.size() >= kCmInboxMax || cm_inbox_bytes + in.payload.size() > kCmInboxBytes) {
          st_refused++;
          break;
        }
        cm_inbox_bytes += in.payload.size();
        cm_inbox.push_back(std::move(in));
        if (cm_eventfd >= 0) {
          uint64_t one = 1;
          ssize_t r = write(cm_eventfd, &one, sizeof one);
          (void)r;
        }
        break;
      case NET_DOWN:
        if (in.h.magic == NET_MAGIC) {  // the transport's own notice has no magic: this came from a peer
          st_refused++;
          break;
        }
        for (auto& [n, q] : qps) {
          if (q->resolve_conn == in.conn) q->resolve_conn = -1;  // ask again once it is back
          if (q->remote != in.conn) continue;
          q->remote = -1;
          bool first = true;  // the answers will never come
          while (!q->flights.empty()) {
            ff_swqe w = q->flights.front().w;
            q->flights.pop_front();
            if (first && q->state != FF_QPS_ERR) Fail(*q, w, WC_RETRY_EXC_ERR);
            else Defer(q->scq, MakeCqe(w.wr_id, WC_WR_FLUSH_ERR, SendWcOpcode(w.opcode), 0, q->qpn), true);
            first = false;
            AdvanceSq(*q);
          }
        }
        break;
    }
    if (done) {
      it = pending.erase(it);
      did = true;
    } else {
      ++it;
    }
  }
  return did;
}

bool Service(Qp& q) {
  // Answers in flight need no timed wake-up: the transport's reader kicks the doorbell when
  // they arrive (a timed sleep here put ~100 us into every cross-host round trip).
  if (q.resolving) blocked = true;
  if (q.state == FF_QPS_ERR && !q.flights.empty()) return false;  // wait for the answers in flight
  if (q.state == FF_QPS_ERR) return Flush(q);
  if (q.state != FF_QPS_RTS) return false;
  bool did = false;
  batching = true;
  for (int n = 0; n < 16 && !q.dead; n++) {  // (dead: destroyed while a copy ran without mu)
    uint32_t head = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
    if (head == q.sq_next) break;
    ff_swqe w;
    memcpy(&w, &ff_qp_sq_entries(q.shm)[q.sq_next & (q.sqd - 1)], sizeof w);
    Outcome o = Execute(q, w);
    if (o == Outcome::Retry) {
      FlushDeferred();  // (nothing is deferred on a retry; keep the list empty regardless)
      blocked = true;
      break;
    }
    if (o == Outcome::InFlight) {  // completes when the peer host answers (OnAck)
      sent_to_network = true;
      q.sq_next++;
      did = true;
      continue;
    }
    AdvanceSq(q);
    did = true;
    if (o == Outcome::Error) break;
  }
  batching = false;
  FlushBatch();
  return did;
}

// True if a sweep would find something to do right now. Needs mu.
bool HasWork() {
  if (!pending.empty() || (transport && (transport->HasPending() || transport->HasUnsent()))) return true;
  for (auto& [n, q] : qps) {
    uint32_t sh = __atomic_load_n(&q->shm->sq.head, __ATOMIC_SEQ_CST), rh = __atomic_load_n(&q->shm->rq.head, __ATOMIC_SEQ_CST);
    if ((q->state == FF_QPS_RTS && sh != q->sq_next) || (q->state == FF_QPS_ERR && (sh != q->sq_tail || rh != q->rq_tail))) return true;
  }
  return false;
}

void SetSleepingFlags(uint32_t v) {
  for (auto& [n, q] : qps) __atomic_store_n(&q->shm->engine_sleeping, v, __ATOMIC_SEQ_CST);
}

// Needs mu.
bool AllAsleep() {
  return std::all_of(worker_asleep.begin(), worker_asleep.end(), [](uint8_t a) { return a != 0; });
}

// Containers whose ring woke worker w (mu); the worker's next sweep charges them if it finds
// nothing to do (Doorbells::Spurious).
std::vector<std::vector<uint64_t>> rang_by;
// What each worker waits on (only that worker touches its own; kept to reuse its memory).
std::vector<Doorbells::Snapshot> snaps;

// Sleeps on worker w's doorbells (snapshot taken before w was marked asleep). True if it was
// woken by a hand-over (HandOver already marked it awake).
bool WaitForBell(int w, const Doorbells::Snapshot& snap) {
  int index = Doorbells::Wait(snap, 1000);
  std::lock_guard<std::mutex> g(mu);
  bells.WhoRang(snap, index, &rang_by[w]);
  if (handed_over[w]) {
    handed_over[w] = 0;
    return true;
  }
  if (AllAsleep()) {  // the first one up
    deep_sleep.store(false);
    SetSleepingFlags(0);
  }
  worker_asleep[w] = 0;
  return false;
}

// Nothing is waiting anywhere: sleep on this worker's doorbell until a library posts (it sees
// engine_sleeping in its QP's shared header), a peer host sends, or the control path changes a
// QP. The last worker to go to sleep tells the libraries (engine_sleeping) and then looks once
// more, so a post racing with it is never missed; a worker that is not the last leaves that
// to the others. The doorbell's sequence number is read first: a ring after it makes the wait
// return at once.
bool DeepSleep(int w) {
  Doorbells::Snapshot& snap = snaps[w];
  {
    std::lock_guard<std::mutex> g(mu);
    bells.Take(w, NowNs(), &snap);
    worker_asleep[w] = 1;
    if (AllAsleep()) {
      deep_sleep.store(true, std::memory_order_seq_cst);
      SetSleepingFlags(1);
      __atomic_thread_fence(__ATOMIC_SEQ_CST);
      if (HasWork() || blocked) {
        worker_asleep[w] = 0;
        deep_sleep.store(false);
        SetSleepingFlags(0);
        return false;
      }
    }
  }
  return WaitForBell(w, snap);
}

// A worker runs on the CPU of the application that rang it, which therefore cannot post
// while the worker works. Fine for a round trip's few microseconds; a stream of work (a
// bandwidth test) would be served strictly in turns. So a worker that has been busy for a
// while hands the engine to a sleeping worker on another CPU (one inter-processor wake-up)
// and sleeps; the application and the engine then run side by side. A worker woken that way
// keeps the engine until it runs out of work, so they do not pass it back and forth.
// False if no worker was asleep; else sets *by_hand_over to how this worker was woken again.
bool HandOver(int w, bool* by_hand_over) {
  Doorbells::Snapshot& snap = snaps[w];
  int to = -1;
  {
    std::lock_guard<std::mutex> g(mu);
    bells.Take(w, NowNs(), &snap);
    for (size_t k = 1; k < worker_asleep.size() && to < 0; k++) {
      int x = int((size_t(w) + k) % worker_asleep.size());
      if (worker_asleep[x] && !handed_over[x]) to = x;
    }
    if (to < 0) return false;
    worker_asleep[to] = 0;
    handed_over[to] = 1;  // awake from now on: the libraries keep seeing an awake engine
    worker_asleep[w] = 1;
  }
  bells.Ring(to);
  *by_hand_over = WaitForBell(w, snap);
  return true;
}

bool AloneAwake() {
  std::lock_guard<std::mutex> g(mu);
  return std::count(worker_asleep.begin(), worker_asleep.end(), 0) <= 1;
}

// The workers take the lock from each other only briefly: spin for it rather than sleep in
// the mutex, whose wake-up would cost an inter-processor interrupt. A sweep holds sweep_mu,
// then mu (the control path takes mu only).
void LockForSweep() {
  bool got = false;
  for (int i = 0; i < 2000 && !got; i++) {
    got = sweep_mu.try_lock();
    if (!got) __builtin_ia32_pause();
  }
  if (!got) sweep_mu.lock();
  mu.lock();
}

// One worker per CPU, pinned. Any worker serves everything (one lock); which one runs is
// decided by where the application that rang was running.
void Loop(int w) {
  PinToCpu(worker_cpus[w]);
  RaiseToDataPathPriority();
  char name[16];
  snprintf(name, sizeof name, "ffr-worker%d", worker_cpus[w]);
  pthread_setname_np(pthread_self(), name);
  prctl(PR_SET_TIMERSLACK, 1UL);  // short sleeps must stay short
  uint64_t idle_since = 0;
  // How long to spin after the last work before sleeping on the doorbell (FFR_RDMA_SPIN_NS).
  // With fewer than 4 CPUs the busy-polling applications need every core: a spinning worker
  // (SCHED_FIFO) keeps the application on its CPU from running, so it sleeps at once and the
  // next post wakes it. With spare cores a short spin saves that wake-up.
  const char* spin_env = getenv("FFR_RDMA_SPIN_NS");
  const uint64_t spin_ns = spin_env ? strtoull(spin_env, nullptr, 10) : (std::thread::hardware_concurrency() < 4 ? 0 : 20000);
  // After how long busy a worker hands the engine to another CPU (FFR_RDMA_HANDOVER_NS, 0 = never).
  const char* handover_env = getenv("FFR_RDMA_HANDOVER_NS");
  const uint64_t handover_ns = handover_env ? strtoull(handover_env, nullptr, 10) : 30000;
  // A worker that got the engine by a hand-over serves a stream from another CPU: it spins
  // this long before sleeping, so that the stream's next posts find it awake.
  const uint64_t stream_spin_ns = std::max<uint64_t>(spin_ns, 50000);
  // A worker woken for one piece of work waits this long for a second before it sleeps: in a
  // ping-pong the answer is posted by an application on another CPU while this one waits
  // anyway, and catching it saves a whole wake-up (FFR_RDMA_CATCH_NS).
  const char* catch_env = getenv("FFR_RDMA_CATCH_NS");
  const uint64_t catch_ns = std::max<uint64_t>(spin_ns, catch_env ? strtoull(catch_env, nullptr, 10) : 3000);
  unsigned busy_sweeps = 0;  // sweeps that found work since this worker woke
  bool sent_away = false;    // ... and one of them sent a request to another host
  uint64_t busy_since = 0;
  bool by_hand_over = false;  // this worker got the engine by a hand-over (and keeps it until idle)
  std::vector<Qp*> sweep;
  Reaped reaped;
  uint64_t held_from = 0;
  for (;;) {
    bool did = false;
    bool was_blocked;
    uint64_t sweep_start = NowNs();
    LockForSweep();
    {
      std::lock_guard<std::mutex> s(sweep_mu, std::adopt_lock);
      std::lock_guard<std::mutex> g(mu, std::adopt_lock);
      if (!running) return;
      hold_since = NowNs();
      TakeRetired(&reaped);
      blocked = false;
      sent_to_network = false;
      if (transport) did |= transport->FlushUnsent() | ServeNetwork();
      if (!pending.empty()) blocked = true;
      // Over a copy of the list: the control path may add or delete QPs while a long copy runs
      // without mu.
      sweep.clear();
      for (auto& [n, q] : qps) sweep.push_back(q);
      for (Qp* q : sweep)
        if (!q->dead && Service(*q)) {
          did = true;
          if (q->container < 0) {  // the container had work (its rings were not for nothing)
            auto o = mem_owners.find(q->pid);
            q->container = o == mem_owners.end() ? 0 : int64_t(o->second.container);
          }
          bells.Worked(uint64_t(q->container), sweep_start);
        }
      was_blocked = blocked;
      sent_away |= sent_to_network;
      if (!rang_by[w].empty()) {  // the containers that woke this worker, for nothing?
        if (!did && !was_blocked)
          for (uint64_t c : rang_by[w]) bells.Spurious(c, sweep_start);
        rang_by[w].clear();
      }
      held_from = hold_since;
      hold_since = 0;
    }
    uint64_t now = NowNs();
    HoldMax(now - held_from);
    FreeReaped(&reaped);
    if (did) {
      idle_since = 0;
      busy_sweeps++;
      if (!busy_since) busy_since = sweep_start;
      if (handover_ns && !by_hand_over && now - busy_since > handover_ns && HandOver(w, &by_hand_over)) busy_since = 0;
      continue;
    }
    busy_since = 0;
    if (!idle_since) idle_since = now;
    uint64_t idle = now - idle_since;
    // Spin briefly (latency), then sleep on the doorbell that every post rings while the
    // engine sleeps. Timed sleeps only while work waits on time (RNR, rate limit, acks), and
    // by one worker only: in a VM a 2 us nanosleep costs ~50 us of CPU.
    // An answer from another host takes a network round trip: no point waiting for that one.
    bool catch_answer = busy_sweeps == 1 && !sent_away;
    if (idle < (by_hand_over ? stream_spin_ns : catch_answer ? catch_ns : spin_ns)) {
      for (int i = 0; i < 32; i++) __builtin_ia32_pause();
    } else if ((was_blocked && AloneAwake()) || !bells.ok()) {
      timespec ts{0, 50000};
      nanosleep(&ts, nullptr);
    } else {
      by_hand_over = DeepSleep(w);
      busy_sweeps = 0;
      sent_away = false;
      idle_since = 0;
    }
  }
}

void EnsureThread() {
  if (running) return;
  worker_cpus = DataPathCpus(FF_DOORBELL_MAX_WORKERS);
  if (!bells.ok() && !bells.Init(worker_cpus)) worker_cpus.assign(1, -1);
  running = true;
  worker_asleep.assign(worker_cpus.size(), 0);
  handed_over.assign(worker_cpus.size(), 0);
  rang_by.assign(worker_cpus.size(), {});
  snaps.resize(worker_cpus.size());
  for (size_t w = 0; w < worker_cpus.size(); w++) std::thread(Loop, int(w)).detach();
}

}  // namespace

int AddMr(uint32_t key, uint32_t pd, int pid, uint64_t addr, uint64_t len, uint64_t iova, uint32_t access, int fd,
          uint64_t view_addr, uint64_t view_off, uint64_t view_len) {
  Mr m{pd, pid, addr, len, iova, access};
  if (fd >= 0) {
    // The view must lie inside the region and be whole pages of a sealed memory file.
    long pg = sysconf(_SC_PAGESIZE);
    if (!view_len || (view_addr | view_off | view_len) % uint64_t(pg) || view_addr < addr || view_len > len ||
        view_addr - addr > len - view_len)
      return -EINVAL;
    if (!SafeMemoryFile(fd, view_off, view_len, true)) return -EINVAL;
    // Out of mappings (vm.max_map_count) or views: the region still works, through the
    // owner's mem file, only slower.
    size_t nviews;
    {
      CtlLock g;  // mapped outside the lock: the engine keeps running
      nviews = views.size();
    }
    void* p = nviews < kMaxViews ? MapRange(fd, view_len, view_off) : nullptr;
    if (p) {
      m.view = static_cast<uint8_t*>(p);
      m.view_addr = view_addr;
      m.view_len = view_len;
    }
  }
  CtlLock g;
  if (!len || mrs.count(key)) {
    if (m.view) munmap(m.view, m.view_len);
    return -EINVAL;
  }
  mrs[key] = m;
  if (m.view) views.push_back({pid, m.view_addr, m.view_len, m.view});
  return 0;
}

int DelMr(uint32_t key) {
  CtlLock g;
  auto it = mrs.find(key);
  if (it == mrs.end()) return -ENOENT;
  if (uint8_t* v = it->second.view) {
    views.erase(std::remove_if(views.begin(), views.end(), [v](const View& x) { return x.ptr == v; }), views.end());
    UnmapView(v, it->second.view_len);
  }
  mrs.erase(it);
  return 0;
}

int AddChannel(uint32_t id, int fd) {
  CtlLock g;
  if (channels.count(id)) return -EEXIST;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  channels[id] = Channel{fd};
  return 0;
}

int DelChannel(uint32_t id) {
  CtlLock g;
  auto it = channels.find(id);
  if (it == channels.end()) return -ENOENT;
  close(it->second.fd);
  channels.erase(it);
  return 0;
}

int AddCq(uint32_t id, int fd, uint32_t depth, uint32_t channel) {
  if (!Pow2(depth)) return -EINVAL;
  size_t len = ff_cq_shm_size(depth);
  void* p = MapFd(fd, len);
  if (!p) return -EINVAL;
  CtlLock g;
  if (cqs.count(id) || (channel && !channels.count(channel))) {
    munmap(p, len);
    return -EINVAL;
  }
  Cq c{static_cast<ff_cq_shm*>(p), len, depth, channel, 0};
  c.head = __atomic_load_n(&c.shm->ring.head, __ATOMIC_RELAXED);
  cqs[id] = c;
  return 0;
}

int DelCq(uint32_t id) {
  CtlLock g;
  auto it = cqs.find(id);
  if (it == cqs.end()) return -ENOENT;
  munmap(it->second.shm, it->second.map_len);
  cqs.erase(it);
  return 0;
}

int AddSrq(uint32_t id, int fd, uint32_t depth, uint32_t pd) {
  if (!Pow2(depth) || depth > FF_RDMA_MAX_DEPTH) return -EINVAL;
  size_t len = ff_srq_shm_size(depth);
  void* p = MapFd(fd, len);
  if (!p) return -EINVAL;
  CtlLock g;
  if (srqs.count(id)) {
    munmap(p, len);
    return -EEXIST;
  }
  Srq q{static_cast<ff_srq_shm*>(p), len, depth, pd, 0};
  q.tail = __atomic_load_n(&q.shm->ring.tail, __ATOMIC_RELAXED);
  srqs[id] = q;
  return 0;
}

int DelSrq(uint32_t id) {
  CtlLock g;
  auto it = srqs.find(id);
  if (it == srqs.end()) return -ENOENT;
  for (auto& [n, q] : qps)
    if (q->srq == id) return -EBUSY;
  munmap(it->second.shm, it->second.map_len);
  srqs.erase(it);
  return 0;
}

int AddQp(uint32_t qpn, int pid, uint32_t pd, uint32_t scq, uint32_t rcq, int fd, uint32_t sqd, uint32_t rqd, bool sig_all,
          const uint8_t gid[16], uint32_t srq) {
  if (!Pow2(sqd) || !Pow2(rqd) || sqd > FF_RDMA_MAX_DEPTH || rqd > FF_RDMA_MAX_DEPTH) return -EINVAL;
  size_t len = ff_qp_shm_size(sqd, rqd);
  void* p = MapFd(fd, len);
  if (!p) return -EINVAL;
  CtlLock g;
  if (qps.count(qpn) || !cqs.count(scq) || !cqs.count(rcq) || (srq && (!srqs.count(srq) || srqs[srq].pd != pd))) {
    munmap(p, len);
    return -EINVAL;
  }
  Qp* q = new Qp();
  q->srq = srq;
  q->qpn = qpn;
  q->pid = pid;
  q->pd = pd;
  q->scq = scq;
  q->rcq = rcq;
  q->shm = static_cast<ff_qp_shm*>(p);
  q->map_len = len;
  q->sqd = sqd;
  q->rqd = rqd;
  q->sig_all = sig_all;
  memcpy(q->gid, gid, 16);
  q->sq_tail = q->sq_next = __atomic_load_n(&q->shm->sq.tail, __ATOMIC_RELAXED);
  q->rq_tail = __atomic_load_n(&q->shm->rq.tail, __ATOMIC_RELAXED);
  SetState(*q, FF_QPS_RESET);
  __atomic_store_n(&q->shm->engine_sleeping, deep_sleep.load() ? 1u : 0u, __ATOMIC_SEQ_CST);
  qps[qpn] = q;
  EnsureThread();
  return 0;
}

int ModifyQp(uint32_t qpn, uint32_t state, int64_t dest_qpn, const uint8_t* dgid, int32_t access, int32_t rnr_retry, int32_t min_rnr_timer) {
  CtlLock g;
  auto it = qps.find(qpn);
  if (it == qps.end()) return -ENOENT;
  Qp& q = *it->second;
  if (state > FF_QPS_ERR) return -EINVAL;
  if (dest_qpn >= 0) q.dest_qpn = uint32_t(dest_qpn);
  if (dgid) memcpy(q.dgid, dgid, 16);
  if (access >= 0) q.access = uint32_t(access);
  if (rnr_retry >= 0) q.rnr_retry = uint8_t(rnr_retry & 7);
  if (min_rnr_timer >= 0) q.min_rnr_timer = uint8_t(min_rnr_timer & 31);
  if (state == FF_QPS_RESET || state == FF_QPS_RTR) {  // a new connection starts without NAK state
    q.rnr_armed = q.resend = q.probing = q.nak_discard = false;
    q.rnr_until = 0;
  }
  if (state == FF_QPS_RESET) {  // a reset QP forgets its outstanding work requests
    q.sq_tail = q.sq_next = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
    q.flights.clear();
    q.rq_tail = __atomic_load_n(&q.shm->rq.head, __ATOMIC_ACQUIRE);
    __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
    __atomic_store_n(&q.shm->rq.tail, q.rq_tail, __ATOMIC_RELEASE);
  }
  SetState(q, state);
  Kick();  // a state change can make work (flush on ERR, start on RTS)
  return 0;
}

int DelQp(uint32_t qpn) {
  CtlLock g;
  auto it = qps.find(qpn);
  if (it == qps.end()) return -ENOENT;
  if (yielded) {  // a copy without mu runs in a sweep that may hold it: freed after the next sweep
    it->second->dead = true;
    retired_qps.push_back(it->second);
  } else {
    munmap(it->second->shm, it->second->map_len);
    delete it->second;
  }
  qps.erase(it);
  return 0;
}

// The transport's reader asks where a large incoming RDMA WRITE may go (see Placement): straight
// into the destination's view if everything received before it has been handled (RC order:
// an earlier SEND still waiting for a receive must not be overtaken), the QP accepts it and
// the rkey grants remote write on the whole range. Anything else takes the ordinary path,
// whose Respond gives the error completion. Never waits for the engine: a reader that blocked
// here while the engine blocked sending to the peer could deadlock the two routers.
uint8_t* PlaceTarget(int conn, const NetHdr& m) {
  if (m.opcode != FF_WR_RDMA_WRITE && m.opcode != FF_WR_RDMA_WRITE_WITH_IMM) return nullptr;
  std::unique_lock<std::mutex> s(sweep_mu, std::try_to_lock);
  if (!s.owns_lock()) return nullptr;
  std::unique_lock<std::mutex> g(mu, std::try_to_lock);
  if (!g.owns_lock() || !running || !transport) return nullptr;
  on_reader = true;
  ServeNetwork();
  on_reader = false;
  for (const Inbound& p : pending)
    if (p.h.type == NET_OP && p.h.dst_qpn == m.dst_qpn) return nullptr;
  auto it = qps.find(m.dst_qpn);
  Qp* d = it == qps.end() ? nullptr : it->second;
  if (!Accepts(d, m, conn) || !(d->access & ACC_REMOTE_WRITE) || (d->nak_discard && !(m.flags & NET_F_RESEND))) return nullptr;
  uint64_t a;
  if (!Resolve(m.rkey, d->pd, d->pid, m.remote_addr, m.len, ACC_REMOTE_WRITE, &a)) return nullptr;
  const View* v = ViewCovering(d->pid, a, m.len);
  if (!v) return nullptr;
  uint8_t* dst = v->ptr + (a - v->addr);
  std::lock_guard<std::mutex> p(pin_mu);
  pinned.push_back(Pin{dst, v->ptr});
  return dst;
}

void PlaceDone(uint8_t* dst) {
  std::lock_guard<std::mutex> g(pin_mu);
  auto pin = std::find_if(pinned.begin(), pinned.end(), [dst](const Pin& p) { return p.dst == dst; });
  if (pin == pinned.end()) return;
  uint8_t* view = pin->view;
  pinned.erase(pin);
  if (std::any_of(pinned.begin(), pinned.end(), [view](const Pin& p) { return p.view == view; })) return;
  auto r = std::find_if(retired.begin(), retired.end(), [view](const auto& x) { return x.first == view; });
  if (r == retired.end()) return;
  munmap(r->first, r->second);  // deregistered while the reader wrote into it
  retired.erase(r);
}

// Called by the transport's reader thread after it queued a message. Waking a sleeping
// engine costs a context switch (several us in a VM) on each hop of a cross-host round trip,
// only to copy a payload or complete a request; the reader does that itself under the engine's
// lock and wakes the engine only if more work remains (the engine stays marked asleep, so
// applications that post meanwhile still ring the doorbell).
void OnNetworkMessage() {
  if (deep_sleep.load(std::memory_order_seq_cst)) {
    std::unique_lock<std::mutex> s(sweep_mu, std::try_to_lock);
    std::unique_lock<std::mutex> g(mu, std::defer_lock);
    if (s.owns_lock()) g.try_lock();
    if (g.owns_lock() && running && transport && deep_sleep.load(std::memory_order_seq_cst)) {
      on_reader = true;
      ServeNetwork();
      on_reader = false;
      if (!HasWork()) return;
    }
  }
  Kick();
}

int StartTransport(const std::string& host_ip, int port, const std::vector<std::string>& peers, const std::vector<uint8_t>& key) {
  CtlLock g;
  if (transport) return cm_eventfd;
  cm_eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  transport = StartTcpTransport(host_ip, port, peers, key, OnNetworkMessage, Placement{PlaceTarget, PlaceDone});
  EnsureThread();
  return cm_eventfd;
}

bool CmSend(int conn, const uint8_t* data, uint32_t len) {
  if (!transport) return false;
  NetHdr h = NewHdr(NET_CM);
  h.len = len;
  return transport->Send(conn, h, data);
}

std::vector<int> CmPeers() { return transport ? transport->Peers() : std::vector<int>{}; }

int ConnPeer(int conn) { return transport ? transport->PeerOf(conn) : -1; }

void SetGidOwners(const uint8_t* entries, size_t n) {
  std::unordered_map<GidKey, int, GidHash> m;
  m.reserve(n);
  for (size_t i = 0; i < n; i++) {
    int32_t owner;
    memcpy(&owner, entries + i * 20 + 16, 4);
    m[KeyOf(entries + i * 20)] = owner < 0 ? kLocal : owner;
  }
  CtlLock g;
  gid_owner.swap(m);
}

std::vector<std::pair<int, std::vector<uint8_t>>> CmTake() {
  CtlLock g;
  uint64_t v;
  if (cm_eventfd >= 0) {
    ssize_t r = read(cm_eventfd, &v, sizeof v);
    (void)r;
  }
  std::vector<std::pair<int, std::vector<uint8_t>>> out;
  for (auto& in : cm_inbox) out.emplace_back(in.conn, std::vector<uint8_t>(in.payload.begin(), in.payload.end()));
  cm_inbox.clear();
  cm_inbox_bytes = 0;
  return out;
}

int DoorbellDup(uint64_t container) {
  CtlLock g;
  EnsureThread();
  return bells.Dup(container);
}

void DoorbellDrop(uint64_t container) {
  CtlLock g;
  bells.Drop(container);
}

int AddMemOwner(int owner, uint64_t container) {
  if (owner <= 0) return -EINVAL;
  CtlLock g;
  if (mem_owners.count(owner)) return -EEXIST;
  mem_owners[owner] = MemOwner{-1, container};
  return 0;
}

int SetMemOwner(int owner, int fd) {
  if (!IsProcMem(fd)) return -EINVAL;
  CtlLock g;
  auto it = mem_owners.find(owner);
  if (it == mem_owners.end()) return -ENOENT;
  if (it->second.fd >= 0) return -EEXIST;
  it->second.fd = fd;
  return 0;
}

void DelMemOwner(int owner) {
  CtlLock g;
  auto it = mem_owners.find(owner);
  if (it == mem_owners.end()) return;
  if (it->second.fd >= 0 && yielded) retired_fds.push_back(it->second.fd);  // a copy without mu may be using it
  else if (it->second.fd >= 0) close(it->second.fd);
  mem_owners.erase(it);
}

SafetyStats GetSafetyStats() {
  CtlLock g;
  SafetyStats s{bells.containers(), bells.spurious(), bells.mutes(), st_yields.load(), mem_owners.size(), ctl_wait_max / 1000,
                hold_max.exchange(0) / 1000};
  ctl_wait_max = 0;
  return s;
}

void SetRateLimit(uint64_t bps) {
  CtlLock g;
  rate_bps = bps;
  buckets.clear();
}

Stats GetStats() {
  CtlLock g;
  return Stats{st_ops.load(), st_bytes.load(), st_errors.load(), st_served.load(), qps.size(), mrs.size(), cqs.size(),
               st_mapped.load(), st_placed.load(), srqs.size(), channels.size(), views.size(), pending.size(),
               st_naks.load(), st_refused.load(), gid_owner.size()};
}

}  // namespace ffrdma
