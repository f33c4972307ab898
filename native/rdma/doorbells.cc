#include "doorbells.h"

#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace ffrdma {

namespace {

ff_doorbells* NewPage(int* fd_out) {
  int fd = ff_sealed_memfd("ff-doorbells", sizeof(ff_doorbells));
  if (fd < 0) return nullptr;
  void* p = mmap(nullptr, sizeof(ff_doorbells), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return nullptr;
  }
  *fd_out = fd;
  return static_cast<ff_doorbells*>(p);
}

uint32_t Load(const ff_doorbells* p, int worker) { return __atomic_load_n(&p->bell[worker].seq, __ATOMIC_SEQ_CST); }

}  // namespace

bool Doorbells::Init(const std::vector<int>& cpus) {
  int fd;
  ff_doorbells* db = NewPage(&fd);
  if (!db) return false;
  close(fd);  // never handed out: the mapping is all the router needs
  for (size_t w = 0; w < cpus.size() && w < FF_DOORBELL_MAX_WORKERS; w++)
    if (cpus[w] >= 0 && cpus[w] < FF_DOORBELL_MAX_CPUS) db->worker_of_cpu[cpus[w]] = uint16_t(w);
  cpus_ = cpus;
  page_ = db;
  return true;
}

Doorbells::Page* Doorbells::Find(uint64_t id) {
  auto it = std::find_if(pages_.begin(), pages_.end(), [id](const Page& p) { return p.id == id; });
  return it == pages_.end() ? nullptr : &*it;
}

const Doorbells::Page* Doorbells::Find(uint64_t id) const { return const_cast<Doorbells*>(this)->Find(id); }

int Doorbells::Dup(uint64_t id) {
  if (!page_) return -ENODEV;
  Page* p = Find(id);
  if (!p) {
    if (pages_.size() >= kMaxContainers) return -ENOSPC;
    int fd;
    ff_doorbells* db = NewPage(&fd);
    if (!db) return -errno;
    memcpy(db->worker_of_cpu, page_->worker_of_cpu, sizeof db->worker_of_cpu);
    pages_.push_back(Page{id, db, fd, kSpuriousBurst, 0, 0, 0, 0});
    p = &pages_.back();
    RingAll();  // sleeping workers wait on the new page from now on
  }
  int d = fcntl(p->fd, F_DUPFD_CLOEXEC, 0);
  return d < 0 ? -errno : d;
}

void Doorbells::Drop(uint64_t id) {
  Page* p = Find(id);
  if (!p) return;
  // A worker asleep on this page's futex keeps sleeping harmlessly (the kernel keys a shared
  // futex by file and offset, not by this mapping); the ring makes it wait on the new set.
  munmap(p->page, sizeof(ff_doorbells));
  close(p->fd);
  pages_.erase(pages_.begin() + (p - pages_.data()));
  RingAll();
}

void Doorbells::Take(int worker, uint64_t now, Snapshot* s) const {
  s->bells.clear();
  s->ids.clear();
  s->until_ns = 0;
  auto add = [&](const ff_doorbells* p, uint64_t id) {
    futex_waitv v{};
    v.val = Load(p, worker);
    v.uaddr = reinterpret_cast<uint64_t>(&p->bell[worker].seq);
    v.flags = FUTEX_32;  // shared: the libraries ring it from their own mapping
    s->bells.push_back(v);
    s->ids.push_back(id);
  };
  add(page_, 0);
  for (const Page& p : pages_) {
    if (p.muted_until > now) {
      if (!s->until_ns || p.muted_until < s->until_ns) s->until_ns = p.muted_until;
      continue;
    }
    add(p.page, p.id);
  }
}

int Doorbells::Wait(const Snapshot& s, int timeout_ms) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t now = uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
  uint64_t until = now + uint64_t(timeout_ms) * 1000000ull;
  if (s.until_ns && s.until_ns < until) until = std::max(s.until_ns, now);
  ts.tv_sec = time_t(until / 1000000000ull);
  ts.tv_nsec = long(until % 1000000000ull);
  long r = syscall(SYS_futex_waitv, s.bells.data(), s.bells.size(), 0, &ts, CLOCK_MONOTONIC);
  return r >= 0 ? int(r) : -1;
}

void Doorbells::WhoRang(const Snapshot& s, int index, std::vector<uint64_t>* who) const {
  who->clear();
  if (index > 0 && size_t(index) < s.ids.size()) {
    who->push_back(s.ids[index]);
    return;
  }
  if (index == 0) return;
  // The wait did not start (a value had moved) or timed out: whichever container's bell moved
  // since the snapshot rang. Read only pages that still exist.
  for (size_t i = 1; i < s.ids.size(); i++) {
    const Page* p = Find(s.ids[i]);
    if (!p) continue;
    auto* seq = reinterpret_cast<const uint32_t*>(s.bells[i].uaddr);
    if (seq >= &p->page->bell[0].seq && seq <= &p->page->bell[FF_DOORBELL_MAX_WORKERS - 1].seq &&
        __atomic_load_n(seq, __ATOMIC_SEQ_CST) != uint32_t(s.bells[i].val))
      who->push_back(s.ids[i]);
  }
}

void Doorbells::Worked(uint64_t id, uint64_t now) {
  if (Page* p = Find(id)) p->worked_ns = now;
}

void Doorbells::Spurious(uint64_t id, uint64_t now) {
  Page* p = Find(id);
  if (!p || (p->worked_ns && now - p->worked_ns < kWorkWindowNs)) return;
  spurious_++;
  if (p->refill_ns && now > p->refill_ns) p->tokens = std::min(kSpuriousBurst, p->tokens + double(now - p->refill_ns) * 1e-9 * kSpuriousPerSec);
  p->refill_ns = std::max(p->refill_ns, now);
  p->tokens -= 1;
  if (p->tokens < 0) {
    // Over again within a second of the last mute: twice as long; no budget earned meanwhile.
    p->mute_ns = p->muted_until && now < p->muted_until + 1000000000ull ? std::min(kMuteMaxNs, p->mute_ns * 2) : kMuteNs;
    p->muted_until = now + p->mute_ns;
    p->refill_ns = p->muted_until;
    p->tokens = 0;
    mutes_++;
  }
}

void Doorbells::RingHere() const {
  if (page_) ff_doorbell_ring(page_);
}

void Doorbells::Ring(int worker) const {
  if (page_) ff_doorbell_ring_worker(page_, unsigned(worker));
}

void Doorbells::RingAll() const {
  if (!page_) return;
  for (size_t w = 0; w < cpus_.size() && w < FF_DOORBELL_MAX_WORKERS; w++) ff_doorbell_ring_worker(page_, unsigned(w));
}

}  // namespace ffrdma
