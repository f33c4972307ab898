/* Internals of FreeFlow's libibverbs replacement. */
#ifndef FFV_H
#define FFV_H
#include <stddef.h>
#include <stdint.h>
#include "../ff_wire.h"
#include "ff_rdma_shm.h"

/* Sends one RDMA request (with fd_in attached when >= 0) and waits for its reply.
 * Returns the reply status: 0 or a negative errno. */
int ffv_call(int type, const struct ff_rdma_args *args, int fd_in, const uint8_t *remote_addr, struct ff_msg *rep, struct ff_rdma_args *out);

#define FFV_MAX_EXTRA 1024
/* The general form: header fields from hdr (addresses, ports), args, extra payload bytes after
 * the args (CM private data), and the reply's extra bytes in extra_out. */
int ffv_call_ex(int type, const struct ff_msg *hdr, const struct ff_rdma_args *args, const void *extra, uint32_t extra_len, int fd_in,
                struct ff_msg *rep, struct ff_rdma_args *out, void *extra_out, uint32_t *extra_out_len, int *fd_out);


/* A part of a memory region moved into shared memory (mr_share.c): addr/len in the
 * application, at file_offset of the memfd returned by ffv_share_region (or -1: no view). */
struct ffv_view {
  uintptr_t addr, len, file_offset;
};
int ffv_share_region(void *addr, size_t length, struct ffv_view *v);

#endif
