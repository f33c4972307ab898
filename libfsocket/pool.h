/* Host sockets fetched ahead of need, per overlay destination. A connection-heavy client
 * (wrk, a proxy, a connection-per-request RPC client) would otherwise wait one router round
 * trip per connect(); with a pool, the router is asked once per batch and the routers'
 * announcements travel in batches too. Sockets are used within FF_POOL_FRESH_NS of their
 * creation, well inside the listener router's announcement lifetime, or thrown away. */
#ifndef FF_POOL_H
#define FF_POOL_H
#include <stdbool.h>
#include <stdint.h>
#include "addr.h"
#include "ff_wire.h"

#define FF_POOL_MAX_BATCH FF_LIMIT_MAX_CONNECT_SOCKETS

struct ff_pooled {
  int fd;
  uint16_t port;           /* its host port (the connection's overlay source port); 0: unknown */
  struct ff_endpoint host; /* where to connect (the listener's host endpoint) */
};

/* Takes a fresh pooled socket for dst, if any. *low is set when the pool for dst is running
 * low and a refill should be requested (in advance, so the next connects never wait). */
bool ff_pool_take(const struct ff_endpoint *dst, struct ff_pooled *out, bool *low);
/* Keeps fds[0..n) (already bound, announced by the router; ports[i] the host port of fds[i], or
 * ports NULL) for later connects to dst. */
void ff_pool_put(const struct ff_endpoint *dst, const int *fds, const uint16_t *ports, int n, const struct ff_endpoint *host);
/* The size of the batch to ask for when refilling in advance. */
int ff_pool_refill_size(const struct ff_endpoint *dst);
/* How many sockets to ask for on the next router call for dst: 1 for a destination seen for
 * the first time, growing while the destination keeps being used. */
int ff_pool_batch_size(const struct ff_endpoint *dst);
/* A connection to dst made at opened_ns (CLOCK_MONOTONIC) was closed by the application. */
void ff_pool_note_closed(const struct ff_endpoint *dst, long long opened_ns);
/* Whether the process is in a connection storm towards dst: several connections to it lived
 * less than a second each, the last of them closed less than a second ago. */
bool ff_pool_storming(const struct ff_endpoint *dst);
long long ff_pool_now_ns(void);
/* In a forked child: the pooled sockets are the parent's to use; drop our copies. */
void ff_pool_after_fork(void);

#endif
