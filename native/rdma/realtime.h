// Scheduling of the engine's data-path threads (the engine thread, the transport's readers).
#pragma once
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <vector>

namespace ffrdma {

// The engine plays the NIC while applications busy-poll their CQs and buffers. On a small
// machine a normal thread waits behind those pollers for the scheduler to preempt them
// (EEVDF lets the running task finish its slice: milliseconds per operation). A SCHED_FIFO
// thread runs the moment it is woken; it always sleeps when idle, and the kernel's RT
// throttling still bounds it. FFR_RDMA_RT=0 (or no permission) falls back to a high CFS weight.
inline void RaiseToDataPathPriority() {
  const char* env = getenv("FFR_RDMA_RT");
  sched_param sp{};
  sp.sched_priority = 1;
  bool rt = !(env && env[0] == '0') && sched_setscheduler(0, SCHED_FIFO, &sp) == 0;
  if (!rt) setpriority(PRIO_PROCESS, pid_t(syscall(SYS_gettid)), -15);
}

// The CPUs this process may run on, lowest first, at most `max` of them ({-1} if unknown).
inline std::vector<int> DataPathCpus(size_t max) {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    for (int c = 0; c < CPU_SETSIZE && cpus.size() < max; c++)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  if (cpus.empty()) cpus.push_back(-1);
  return cpus;
}

// Data-path threads are pinned to one CPU each. A real-time thread allowed on several CPUs
// takes part in the kernel's RT push/pull balancing, which moves it with inter-processor
// interrupts; on this VM that put cross-host round trips into a slow mode for whole runs
// (ib_write_lat 107-121 us against 51-84 us with the transport's readers pinned, any CPU).
inline void PinToCpu(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);  // 0 = the calling thread
}

}  // namespace ffrdma
