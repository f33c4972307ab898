/* TCP's face on a same-host AF_UNIX pair. A same-host accelerated connection is an AF_UNIX
 * stream pair (docs/design.md: 1.6x loopback TCP's throughput, 0.7x its latency). The kernel
 * serves what both socket types share (data, shutdown, SO_ERROR, SO_KEEPALIVE, buffers,
 * MSG_OOB, SIOCINQ/SIOCOUTQ, poll/epoll); this module answers the TCP-, IP- and IPv6-level
 * options and the socket's identity (SO_DOMAIN, SO_PROTOCOL) as a TCP socket would. Options
 * whose effect a pair cannot give (MD5 signatures, kTLS, zero-copy, pacing, a bound device ...)
 * keep a connection on loopback TCP if set before connect(), and fail with EOPNOTSUPP after. */
#ifndef FF_TCP_EMUL_H
#define FF_TCP_EMUL_H
#include <stdbool.h>
#include <sys/socket.h>
#include "fdtable.h"

/* Whether a connection whose socket carries these options may be a pair. */
bool ff_tcp_emul_pairable(const struct ff_sock *s);
/* setsockopt/getsockopt on a pair end. Return 1: not ours, ask the kernel; else the call's
 * result (0, or -1 with errno). */
int ff_tcp_emul_set(struct ff_sock *s, int level, int name, const void *val, socklen_t len);
int ff_tcp_emul_get(const struct ff_sock *s, int level, int name, void *val, socklen_t *len);

#endif
