// The engine's per-CPU doorbells (struct ff_doorbells in ff_rdma_shm.h): one sealed page that
// libraries map and ring, one futex word per engine worker.
#pragma once
#include <cstdint>
#include <vector>

#include "ff_rdma_shm.h"

namespace ffrdma {

class Doorbells {
 public:
  // Creates the page for workers pinned to `cpus` (at most FF_DOORBELL_MAX_WORKERS). A CPU
  // without a worker rings worker 0. False if the page cannot be made.
  bool Init(const std::vector<int>& cpus);
  bool ok() const { return page_ != nullptr; }
  // A new descriptor of the page for a library (RDMA_OPEN), or -1.
  int Dup() const;
  // What a worker reads before it publishes that it sleeps; Wait returns at once if it moved.
  uint32_t Seq(int worker) const;
  void Wait(int worker, uint32_t seq, int timeout_ms) const;
  // Wakes the worker of the calling thread's CPU (the same mechanism the libraries use).
  void RingHere() const;
  void Ring(int worker) const;

 private:
  ff_doorbells* page_ = nullptr;
  int fd_ = -1;
};

}  // namespace ffrdma
