// The engine's per-CPU doorbells (struct ff_doorbells in ff_rdma_shm.h), one page per container.
//
// A library that posted while every engine worker sleeps rings the bell of its CPU's worker in
// its container's page. Each container gets a page of its own (made at its first RDMA_OPEN,
// shared by all its sessions), so it can only ring or scribble on its own: a garbage
// worker_of_cpu sends its own wake-ups astray, nobody else's. The router keeps a page of its
// own (never handed out) for the control path, the transport and hand-overs between workers.
// A worker sleeps on its bell in every page at once (futex_waitv). Nothing the engine reads
// from a container's page is trusted: a bell's value only decides whether the wait starts.
// A container whose rings wake a worker that then finds nothing to do, while no work of its own
// was done in the last kWorkWindowNs (a ring loop; a library rings only after it posted, and
// that work is done by this worker or was just done by another), spends a budget
// (kSpuriousPerSec, burst kSpuriousBurst); over it, its page is left out of the waits
// for kMuteNs, twice as long each time it is over again within a second of the last mute (up
// to kMuteMaxNs), and earns no budget meanwhile. Its queues are still served by every sweep
// and at least once per mute; only its own wake-ups are slower.
#pragma once
#include <linux/futex.h>

#include <cstdint>
#include <vector>

#include "ff_rdma_shm.h"

namespace ffrdma {

class Doorbells {
 public:
  // Pages a worker can wait on at once: the router's own and one per container.
  static constexpr size_t kMaxContainers = FUTEX_WAITV_MAX - 1;
  static constexpr double kSpuriousPerSec = 500, kSpuriousBurst = 50;
  static constexpr uint64_t kMuteNs = 1000000, kMuteMaxNs = 100000000, kWorkWindowNs = 1000000;

  // Creates the router's page for workers pinned to `cpus` (at most FF_DOORBELL_MAX_WORKERS). A
  // CPU without a worker rings worker 0. False if the page cannot be made.
  bool Init(const std::vector<int>& cpus);
  bool ok() const { return page_ != nullptr; }

  // The rest needs the engine's lock (pages come and go under it).
  // A new descriptor of container `id`'s page, made on first use; -errno (-ENOSPC: kMaxContainers
  // containers have pages already).
  int Dup(uint64_t id);
  // Unmaps and closes container id's page (its last session is gone).
  void Drop(uint64_t id);
  size_t containers() const { return pages_.size(); }
  uint64_t spurious() const { return spurious_; }
  uint64_t mutes() const { return mutes_; }

  // What worker w waits on: its bell in the router's page and in every page not muted, with
  // the values seen now (a ring after this makes the wait return at once).
  struct Snapshot {
    std::vector<futex_waitv> bells;
    std::vector<uint64_t> ids;  // container of each bell (0: the router's page)
    uint64_t until_ns = 0;      // wake up by then at the latest (a mute ends)
  };
  void Take(int worker, uint64_t now, Snapshot* s) const;
  // Sleeps (without the lock) until a bell of s rings or timeout_ms pass. Returns the index of
  // the bell that rang, or -1 (a value had changed already, timeout, signal).
  static int Wait(const Snapshot& s, int timeout_ms);
  // After Wait (with the lock): the containers whose bell woke the worker.
  void WhoRang(const Snapshot& s, int index, std::vector<uint64_t>* who) const;
  // A sweep did work for container id.
  void Worked(uint64_t id, uint64_t now);
  // The wake-up container id caused found no work: charged to its budget unless it had work
  // done lately.
  void Spurious(uint64_t id, uint64_t now);

  // Wakes worker w, or the worker of the calling thread's CPU, through the router's page.
  void RingHere() const;
  void Ring(int worker) const;
  void RingAll() const;

 private:
  struct Page {
    uint64_t id;
    ff_doorbells* page;
    int fd;
    double tokens;
    uint64_t refill_ns, muted_until, mute_ns, worked_ns;
  };
  Page* Find(uint64_t id);
  const Page* Find(uint64_t id) const;
  ff_doorbells* page_ = nullptr;
  std::vector<int> cpus_;
  std::vector<Page> pages_;
  uint64_t spurious_ = 0, mutes_ = 0;
};

}  // namespace ffrdma
