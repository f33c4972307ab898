/* Internals of FreeFlow's libibverbs replacement. */
#ifndef FFV_H
#define FFV_H
#include <stdint.h>
#include "../ff_wire.h"
#include "ff_rdma_shm.h"

/* Sends one RDMA request (with fd_in attached when >= 0) and waits for its reply.
 * Returns the reply status: 0 or a negative errno. */
int ffv_call(int type, const struct ff_rdma_args *args, int fd_in, const uint8_t *remote_addr, struct ff_msg *rep, struct ff_rdma_args *out);

#endif
