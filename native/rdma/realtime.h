// Scheduling of the engine's data-path threads (the engine thread, the transport's readers).
#pragma once
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>

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

}  // namespace ffrdma
