// Entry point of freeflow_native: the socket calls Node cannot make itself (SCM_RIGHTS,
// SOCK_SEQPACKET, raw host sockets handed to other processes) and an fd readiness watcher.
#include "addon.h"
#include "host_socket_guard.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitSyscalls(env, exports);
  InitPoller(env, exports);
  InitAcceptor(env, exports);
  InitRdma(env, exports);
  InitHostSocketGuard(env, exports);
  return exports;
}

NODE_API_MODULE(freeflow_native, Init)
