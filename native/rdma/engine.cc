// See engine.h. Everything read from shared memory is copied first and checked: a container
// can scribble on its rings at any time, and the engine must neither crash nor touch memory of
// another container that did not register it for remote access.
#include "engine.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ff_rdma_shm.h"

namespace ffrdma {
namespace {

// enum ibv_wc_status / ibv_wc_opcode / ibv_access_flags values (kept numeric: the router does
// not depend on the verbs headers).
enum { WC_SUCCESS = 0, WC_LOC_LEN_ERR = 1, WC_LOC_QP_OP_ERR = 2, WC_LOC_PROT_ERR = 4, WC_WR_FLUSH_ERR = 5,
       WC_REM_INV_REQ_ERR = 9, WC_REM_ACCESS_ERR = 10, WC_REM_OP_ERR = 11, WC_RETRY_EXC_ERR = 12 };
enum { WCO_SEND = 0, WCO_RDMA_WRITE = 1, WCO_RDMA_READ = 2, WCO_COMP_SWAP = 3, WCO_FETCH_ADD = 4, WCO_RECV = 128,
       WCO_RECV_RDMA_WITH_IMM = 129 };
enum { ACC_LOCAL_WRITE = 1, ACC_REMOTE_WRITE = 2, ACC_REMOTE_READ = 4, ACC_REMOTE_ATOMIC = 8 };
constexpr uint32_t WC_WITH_IMM = 2;

struct Mr {
  uint32_t pd;
  int pid;
  uint64_t addr, len, iova;
  uint32_t access;
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

struct Qp {
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
};

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
std::thread worker;
bool running = false;
std::vector<uint8_t> bounce;
std::atomic<uint64_t> st_ops{0}, st_bytes{0}, st_errors{0};
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

void* MapFd(int fd, size_t need) {
  struct stat st;
  if (fstat(fd, &st) < 0 || uint64_t(st.st_size) < need) return nullptr;
  void* p = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : p;
}

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

// Moves len bytes between the bounce buffer and a process, in IOV_MAX-sized batches.
bool Xfer(int pid, std::vector<iovec>& remote, uint8_t* buf, uint64_t len, bool write) {
  uint64_t done = 0;
  size_t idx = 0;
  while (idx < remote.size()) {
    size_t cnt = std::min<size_t>(remote.size() - idx, 1024);
    uint64_t chunk = 0;
    for (size_t i = idx; i < idx + cnt; i++) chunk += remote[i].iov_len;
    iovec local{buf + done, size_t(chunk)};
    ssize_t r = write ? process_vm_writev(pid, &local, 1, &remote[idx], cnt, 0)
                      : process_vm_readv(pid, &local, 1, &remote[idx], cnt, 0);
    if (r < 0 || uint64_t(r) != chunk) return false;
    done += chunk;
    idx += cnt;
  }
  return done == len;
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

enum class Outcome { Done, Retry, Error };

Qp* Peer(Qp& q) {
  auto it = qps.find(q.dest_qpn);
  if (it == qps.end()) return nullptr;
  Qp* d = it->second;
  if (d->state != FF_QPS_RTR && d->state != FF_QPS_RTS) return nullptr;
  if (d->dest_qpn != q.qpn) return nullptr;
  static const uint8_t zero[16] = {0};
  if (memcmp(q.dgid, zero, 16) && memcmp(q.dgid, d->gid, 16)) return nullptr;  // GID must match the peer's container
  return d;
}

void Fail(Qp& q, const ff_swqe& w, uint32_t status) {
  PushCqe(q.scq, MakeCqe(w.wr_id, status, SendWcOpcode(w.opcode), 0, q.qpn), true);
  SetState(q, FF_QPS_ERR);
  st_errors++;
}

// Gathers the WQE's local data into the bounce buffer.
bool Gather(Qp& q, const ff_swqe& w, uint64_t* len) {
  if (w.flags & FF_SWQE_INLINE) {
    if (w.inline_len > FF_RDMA_MAX_INLINE) return false;
    *len = w.inline_len;
    if (bounce.size() < *len) bounce.resize(*len);
    memcpy(bounce.data(), w.inline_data, *len);
    return true;
  }
  std::vector<iovec> iov;
  uint64_t total;
  if (!LocalIov(q, w.sge, w.num_sge, 0, UINT64_MAX, iov, &total)) return false;
  if (total > FF_RDMA_MAX_MSG) return false;
  if (bounce.size() < total) bounce.resize(total);
  *len = total;
  return Xfer(q.pid, iov, bounce.data(), total, false);
}

// Takes the responder's next receive WQE; false if none is posted (RNR).
bool NextRecv(Qp& d, ff_rwqe* r) {
  uint32_t head = __atomic_load_n(&d.shm->rq.head, __ATOMIC_ACQUIRE);
  if (head == d.rq_tail) return false;
  *r = RqEntry(d);
  return true;
}

Outcome Execute(Qp& q, const ff_swqe& w) {
  bool signaled = q.sig_all || (w.flags & FF_SWQE_SIGNALED);
  if (signaled && !CqHasRoom(q.scq)) return Outcome::Retry;
  Qp* d = Peer(q);
  if (!d) {
    Fail(q, w, WC_RETRY_EXC_ERR);
    return Outcome::Error;
  }
  uint64_t len = 0;
  switch (w.opcode) {
    case FF_WR_SEND:
    case FF_WR_SEND_WITH_IMM:
    case FF_WR_RDMA_WRITE:
    case FF_WR_RDMA_WRITE_WITH_IMM: {
      bool consumes = w.opcode != FF_WR_RDMA_WRITE;
      ff_rwqe r{};
      if (consumes) {
        if (!NextRecv(*d, &r)) return Outcome::Retry;  // receiver not ready: RNR, retried forever
        if (!CqHasRoom(d->rcq)) return Outcome::Retry;
      }
      uint64_t peek = (w.flags & FF_SWQE_INLINE) ? w.inline_len : 0;
      if (!(w.flags & FF_SWQE_INLINE))
        for (uint32_t i = 0; i < w.num_sge && i < FF_RDMA_MAX_SGE; i++) peek += w.sge[i].length;
      if (!RateAllows(q, peek)) return Outcome::Retry;
      if (!Gather(q, w, &len)) {
        Fail(q, w, WC_LOC_PROT_ERR);
        return Outcome::Error;
      }
      std::vector<iovec> dst;
      if (w.opcode == FF_WR_SEND || w.opcode == FF_WR_SEND_WITH_IMM) {
        uint64_t room;
        if (!LocalIov(*d, r.sge, r.num_sge, ACC_LOCAL_WRITE, len, dst, &room) || room < len) {
          d->rq_tail++;
          __atomic_store_n(&d->shm->rq.tail, d->rq_tail, __ATOMIC_RELEASE);
          PushCqe(d->rcq, MakeCqe(r.wr_id, room < len ? WC_LOC_LEN_ERR : WC_LOC_PROT_ERR, WCO_RECV, 0, d->qpn), true);
          SetState(*d, FF_QPS_ERR);
          Fail(q, w, WC_REM_INV_REQ_ERR);
          return Outcome::Error;
        }
      } else {
        uint64_t a;
        if (len && !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, len, ACC_REMOTE_WRITE, &a)) {
          Fail(q, w, WC_REM_ACCESS_ERR);
          return Outcome::Error;
        }
        if (len) dst.push_back({reinterpret_cast<void*>(a), size_t(len)});
      }
      if (len && !Xfer(d->pid, dst, bounce.data(), len, true)) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (consumes) {
        d->rq_tail++;
        __atomic_store_n(&d->shm->rq.tail, d->rq_tail, __ATOMIC_RELEASE);
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
      if (len && !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, len, ACC_REMOTE_READ, &a)) {
        Fail(q, w, WC_REM_ACCESS_ERR);
        return Outcome::Error;
      }
      if (bounce.size() < len) bounce.resize(len);
      std::vector<iovec> src{{reinterpret_cast<void*>(a), size_t(len)}};
      if (len && (!Xfer(d->pid, src, bounce.data(), len, false) || !Xfer(q.pid, local, bounce.data(), len, true))) {
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
      if ((w.remote_addr & 7) || !Resolve(w.rkey, d->pd, d->pid, w.remote_addr, 8, ACC_REMOTE_ATOMIC, &a)) {
        Fail(q, w, WC_REM_ACCESS_ERR);
        return Outcome::Error;
      }
      // One engine thread serves every QP of the host, so read-modify-write here is atomic
      // with respect to all other RDMA operations (as IBV_ATOMIC_HCA promises).
      uint64_t orig = 0, upd;
      iovec r{reinterpret_cast<void*>(a), 8};
      iovec l{&orig, 8};
      if (process_vm_readv(d->pid, &l, 1, &r, 1, 0) != 8) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (w.opcode == FF_WR_ATOMIC_FETCH_AND_ADD) upd = orig + w.compare_add;
      else upd = orig == w.compare_add ? w.swap : orig;
      iovec lu{&upd, 8};
      if (upd != orig && process_vm_writev(d->pid, &lu, 1, &r, 1, 0) != 8) {
        Fail(q, w, WC_REM_OP_ERR);
        return Outcome::Error;
      }
      if (process_vm_writev(q.pid, &l, 1, local.data(), 1, 0) != 8) {
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
  if (signaled) PushCqe(q.scq, MakeCqe(w.wr_id, WC_SUCCESS, SendWcOpcode(w.opcode), uint32_t(len), q.qpn), false);
  return Outcome::Done;
}

// Completes every outstanding WQE of a QP in the error state with IBV_WC_WR_FLUSH_ERR.
bool Flush(Qp& q) {
  bool did = false;
  uint32_t head = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
  while (q.sq_tail != head && CqHasRoom(q.scq)) {
    ff_swqe w = ff_qp_sq_entries(q.shm)[q.sq_tail & (q.sqd - 1)];
    PushCqe(q.scq, MakeCqe(w.wr_id, WC_WR_FLUSH_ERR, SendWcOpcode(w.opcode), 0, q.qpn), true);
    q.sq_tail++;
    did = true;
  }
  __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
  head = __atomic_load_n(&q.shm->rq.head, __ATOMIC_ACQUIRE);
  while (q.rq_tail != head && CqHasRoom(q.rcq)) {
    ff_rwqe r = RqEntry(q);
    PushCqe(q.rcq, MakeCqe(r.wr_id, WC_WR_FLUSH_ERR, WCO_RECV, 0, q.qpn), true);
    q.rq_tail++;
    did = true;
  }
  __atomic_store_n(&q.shm->rq.tail, q.rq_tail, __ATOMIC_RELEASE);
  return did;
}

bool Service(Qp& q) {
  if (q.state == FF_QPS_ERR) return Flush(q);
  if (q.state != FF_QPS_RTS) return false;
  bool did = false;
  for (int n = 0; n < 16; n++) {
    uint32_t head = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
    if (head == q.sq_tail) break;
    ff_swqe w;
    memcpy(&w, &ff_qp_sq_entries(q.shm)[q.sq_tail & (q.sqd - 1)], sizeof w);
    Outcome o = Execute(q, w);
    if (o == Outcome::Retry) break;
    q.sq_tail++;
    __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
    did = true;
    if (o == Outcome::Error) break;
  }
  return did;
}

void Loop() {
  // The engine plays the NIC: applications busy-poll their CQs, so on a small machine a
  // normal-priority engine thread would wait for their time slices (milliseconds per op).
  // A high CFS weight lets it run as soon as there is work; it sleeps when idle.
  setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), -15);
  prctl(PR_SET_TIMERSLACK, 1UL);  // short sleeps must stay short
  uint64_t idle_since = 0;
  std::vector<Qp*> list;
  for (;;) {
    bool did = false;
    {
      std::lock_guard<std::mutex> g(mu);
      if (!running) return;
      for (auto& [n, q] : qps) did |= Service(*q);
    }
    if (did) {
      idle_since = 0;
      continue;
    }
    uint64_t now = NowNs();
    if (!idle_since) idle_since = now;
    uint64_t idle = now - idle_since;
    // Spin briefly (latency), then sleep in short, then longer steps: applications that
    // busy-poll need the CPU to post their next request, and idle must cost ~nothing.
    if (idle < 20000) {
      for (int i = 0; i < 32; i++) __builtin_ia32_pause();
    } else {
      timespec ts{0, idle < 2000000 ? 2000 : idle < 100000000 ? 50000 : 500000};
      nanosleep(&ts, nullptr);
    }
  }
}

void EnsureThread() {
  if (running) return;
  running = true;
  worker = std::thread(Loop);
  worker.detach();
}

}  // namespace

int AddMr(uint32_t key, uint32_t pd, int pid, uint64_t addr, uint64_t len, uint64_t iova, uint32_t access) {
  std::lock_guard<std::mutex> g(mu);
  if (!len || mrs.count(key)) return -EINVAL;
  mrs[key] = Mr{pd, pid, addr, len, iova, access};
  return 0;
}

int DelMr(uint32_t key) {
  std::lock_guard<std::mutex> g(mu);
  return mrs.erase(key) ? 0 : -ENOENT;
}

int AddChannel(uint32_t id, int fd) {
  std::lock_guard<std::mutex> g(mu);
  if (channels.count(id)) return -EEXIST;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
  channels[id] = Channel{fd};
  return 0;
}

int DelChannel(uint32_t id) {
  std::lock_guard<std::mutex> g(mu);
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
  std::lock_guard<std::mutex> g(mu);
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
  std::lock_guard<std::mutex> g(mu);
  auto it = cqs.find(id);
  if (it == cqs.end()) return -ENOENT;
  munmap(it->second.shm, it->second.map_len);
  cqs.erase(it);
  return 0;
}

int AddQp(uint32_t qpn, int pid, uint32_t pd, uint32_t scq, uint32_t rcq, int fd, uint32_t sqd, uint32_t rqd, bool sig_all,
          const uint8_t gid[16]) {
  if (!Pow2(sqd) || !Pow2(rqd) || sqd > FF_RDMA_MAX_DEPTH || rqd > FF_RDMA_MAX_DEPTH) return -EINVAL;
  size_t len = ff_qp_shm_size(sqd, rqd);
  void* p = MapFd(fd, len);
  if (!p) return -EINVAL;
  std::lock_guard<std::mutex> g(mu);
  if (qps.count(qpn) || !cqs.count(scq) || !cqs.count(rcq)) {
    munmap(p, len);
    return -EINVAL;
  }
  Qp* q = new Qp();
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
  q->sq_tail = __atomic_load_n(&q->shm->sq.tail, __ATOMIC_RELAXED);
  q->rq_tail = __atomic_load_n(&q->shm->rq.tail, __ATOMIC_RELAXED);
  SetState(*q, FF_QPS_RESET);
  qps[qpn] = q;
  EnsureThread();
  return 0;
}

int ModifyQp(uint32_t qpn, uint32_t state, int64_t dest_qpn, const uint8_t* dgid, int32_t access) {
  std::lock_guard<std::mutex> g(mu);
  auto it = qps.find(qpn);
  if (it == qps.end()) return -ENOENT;
  Qp& q = *it->second;
  if (state > FF_QPS_ERR) return -EINVAL;
  if (dest_qpn >= 0) q.dest_qpn = uint32_t(dest_qpn);
  if (dgid) memcpy(q.dgid, dgid, 16);
  if (access >= 0) q.access = uint32_t(access);
  if (state == FF_QPS_RESET) {  // a reset QP forgets its outstanding work requests
    q.sq_tail = __atomic_load_n(&q.shm->sq.head, __ATOMIC_ACQUIRE);
    q.rq_tail = __atomic_load_n(&q.shm->rq.head, __ATOMIC_ACQUIRE);
    __atomic_store_n(&q.shm->sq.tail, q.sq_tail, __ATOMIC_RELEASE);
    __atomic_store_n(&q.shm->rq.tail, q.rq_tail, __ATOMIC_RELEASE);
  }
  SetState(q, state);
  return 0;
}

int DelQp(uint32_t qpn) {
  std::lock_guard<std::mutex> g(mu);
  auto it = qps.find(qpn);
  if (it == qps.end()) return -ENOENT;
  munmap(it->second->shm, it->second->map_len);
  delete it->second;
  qps.erase(it);
  return 0;
}

void SetRateLimit(uint64_t bps) {
  std::lock_guard<std::mutex> g(mu);
  rate_bps = bps;
  buckets.clear();
}

Stats GetStats() {
  std::lock_guard<std::mutex> g(mu);
  return Stats{st_ops.load(), st_bytes.load(), st_errors.load(), qps.size(), mrs.size(), cqs.size()};
}

}  // namespace ffrdma
