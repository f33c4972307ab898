/* The mark the router puts on every host socket it hands out, in socket-local storage read by
 * native/bpf/host_socket_guard.bpf.c. One definition for the BPF program and the addon. */
#ifndef FF_HOST_SOCKET_GUARD_H
#define FF_HOST_SOCKET_GUARD_H
#include <linux/types.h>

#define FF_GUARD_CLIENT 1   /* may connect to (ip, port) only, never accepts */
#define FF_GUARD_LISTENER 2 /* accepts; it and its accepted connections never connect or bind */

struct ff_guard {
  __u32 ip;   /* network order */
  __u16 port; /* network order */
  __u16 kind;
};
#endif
