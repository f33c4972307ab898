#include "doorbells.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

namespace ffrdma {

bool Doorbells::Init(const std::vector<int>& cpus) {
  int fd = ff_sealed_memfd("ff-doorbells", sizeof(ff_doorbells));
  if (fd < 0) return false;
  void* p = mmap(nullptr, sizeof(ff_doorbells), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return false;
  }
  auto* db = static_cast<ff_doorbells*>(p);
  for (size_t w = 0; w < cpus.size() && w < FF_DOORBELL_MAX_WORKERS; w++)
    if (cpus[w] >= 0 && cpus[w] < FF_DOORBELL_MAX_CPUS) db->worker_of_cpu[cpus[w]] = uint16_t(w);
  page_ = db;
  fd_ = fd;
  return true;
}

int Doorbells::Dup() const { return fd_ >= 0 ? fcntl(fd_, F_DUPFD_CLOEXEC, 0) : -1; }

uint32_t Doorbells::Seq(int worker) const { return __atomic_load_n(&page_->bell[worker].seq, __ATOMIC_SEQ_CST); }

void Doorbells::Wait(int worker, uint32_t seq, int timeout_ms) const {
  timespec ts{timeout_ms / 1000, long(timeout_ms % 1000) * 1000000L};
  syscall(SYS_futex, &page_->bell[worker].seq, FUTEX_WAIT, seq, &ts, nullptr, 0);
}

void Doorbells::RingHere() const {
  if (page_) ff_doorbell_ring(page_);
}

void Doorbells::Ring(int worker) const {
  if (page_) ff_doorbell_ring_worker(page_, unsigned(worker));
}

}  // namespace ffrdma
