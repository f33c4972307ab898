/* FreeFlow's drop-in librdmacm.so.1. The connection manager is not carried yet: every entry
 * point is a generated stub failing with EOPNOTSUPP (see gen-exports.mjs), except the few
 * harmless helpers below. */
#define _GNU_SOURCE
#include <rdma/rdma_cma.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT const char *rdma_event_str(enum rdma_cm_event_type event) {
  static const char *const s[] = {"RDMA_CM_EVENT_ADDR_RESOLVED", "RDMA_CM_EVENT_ADDR_ERROR", "RDMA_CM_EVENT_ROUTE_RESOLVED",
    "RDMA_CM_EVENT_ROUTE_ERROR", "RDMA_CM_EVENT_CONNECT_REQUEST", "RDMA_CM_EVENT_CONNECT_RESPONSE", "RDMA_CM_EVENT_CONNECT_ERROR",
    "RDMA_CM_EVENT_UNREACHABLE", "RDMA_CM_EVENT_REJECTED", "RDMA_CM_EVENT_ESTABLISHED", "RDMA_CM_EVENT_DISCONNECTED",
    "RDMA_CM_EVENT_DEVICE_REMOVAL", "RDMA_CM_EVENT_MULTICAST_JOIN", "RDMA_CM_EVENT_MULTICAST_ERROR", "RDMA_CM_EVENT_ADDR_CHANGE",
    "RDMA_CM_EVENT_TIMEWAIT_EXIT"};
  return (unsigned)event < sizeof s / sizeof *s ? s[event] : "UNKNOWN EVENT";
}
