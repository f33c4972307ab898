/* Shared-memory layout between the container's libibverbs replacement (producer of work
 * requests, consumer of completions) and the router's native RDMA engine (the reverse).
 * Included by C (libfsocket/verbs) and C++ (native/rdma). Each QP and each CQ is one memfd
 * the library creates and hands to the router (SCM_RIGHTS) at create time.
 *
 * Rings are single-producer/single-consumer: `head` is written only by the producer, `tail`
 * only by the consumer, both free-running uint32 counters; slot = counter & (depth - 1).
 * The engine copies every entry out of shared memory before looking at it (the container
 * may scribble on it at any time) and checks everything it reads. */
#ifndef FF_RDMA_SHM_H
#define FF_RDMA_SHM_H
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "../ff_shm.h"

#define FF_RDMA_MAX_SGE 8
#define FF_RDMA_MAX_INLINE 256
#define FF_RDMA_MAX_DEPTH 16384
#define FF_RDMA_MAX_MSG (1u << 30)

/* QP states as the engine tracks them (values of enum ibv_qp_state). */
enum { FF_QPS_RESET = 0, FF_QPS_INIT = 1, FF_QPS_RTR = 2, FF_QPS_RTS = 3, FF_QPS_SQD = 4, FF_QPS_SQE = 5, FF_QPS_ERR = 6 };

/* Send opcodes (values of enum ibv_wr_opcode) */
enum { FF_WR_RDMA_WRITE = 0, FF_WR_RDMA_WRITE_WITH_IMM = 1, FF_WR_SEND = 2, FF_WR_SEND_WITH_IMM = 3,
       FF_WR_RDMA_READ = 4, FF_WR_ATOMIC_CMP_AND_SWP = 5, FF_WR_ATOMIC_FETCH_AND_ADD = 6 };

/* Flags in ff_swqe.flags */
#define FF_SWQE_SIGNALED 1u
#define FF_SWQE_INLINE 2u
#define FF_SWQE_SOLICITED 4u

struct ff_sge {
  uint64_t addr;
  uint32_t length;
  uint32_t lkey;
};

struct ff_ring {
  volatile uint32_t head; /* producer */
  uint32_t pad0[15];
  volatile uint32_t tail; /* consumer */
  uint32_t pad1[15];
};

struct ff_swqe {
  uint64_t wr_id;
  uint32_t opcode;
  uint32_t flags;
  uint32_t num_sge;
  uint32_t imm; /* network byte order, as in ibv_send_wr */
  uint64_t remote_addr;
  uint32_t rkey;
  uint32_t inline_len;
  uint64_t compare_add;
  uint64_t swap;
  struct ff_sge sge[FF_RDMA_MAX_SGE];
  uint8_t inline_data[FF_RDMA_MAX_INLINE];
};

struct ff_rwqe {
  uint64_t wr_id;
  uint32_t num_sge;
  uint32_t pad;
  struct ff_sge sge[FF_RDMA_MAX_SGE];
};

struct ff_cqe {
  uint64_t wr_id;
  uint32_t status;   /* enum ibv_wc_status */
  uint32_t opcode;   /* enum ibv_wc_opcode */
  uint32_t byte_len;
  uint32_t imm;      /* network byte order */
  uint32_t qp_num;
  uint32_t src_qp;
  uint32_t wc_flags; /* IBV_WC_WITH_IMM, IBV_WC_GRH */
  uint32_t vendor_err;
};

struct ff_qp_shm {
  struct ff_ring sq;
  struct ff_ring rq;
  uint32_t sq_depth; /* power of two */
  uint32_t rq_depth; /* power of two; 0 when the QP uses an SRQ (unsupported yet) */
  volatile uint32_t state; /* mirror of the engine's QP state, for the library */
  /* 1 while every engine worker sleeps: after posting, the library then rings the doorbell
   * of its CPU in the page it got with RDMA_OPEN (ff_doorbell_ring). */
  volatile uint32_t engine_sleeping;
  uint32_t pad[12];
  /* then struct ff_swqe sq_entries[sq_depth]; struct ff_rwqe rq_entries[rq_depth]; */
};

struct ff_cq_shm {
  struct ff_ring ring; /* head: engine, tail: library */
  uint32_t depth;      /* power of two */
  volatile uint32_t armed; /* 1 = library asked for an event on the next completion; 2 = solicited only */
  volatile uint32_t overflow;
  uint32_t pad[13];
  /* then struct ff_cqe entries[depth]; */
};

/* A shared receive queue: receive requests any QP attached to it consumes. */
struct ff_srq_shm {
  struct ff_ring ring; /* head: library, tail: engine */
  uint32_t depth;      /* power of two */
  uint32_t pad[15];
  /* then struct ff_rwqe entries[depth]; */
};

static inline uint64_t ff_srq_shm_size(uint32_t depth) { return sizeof(struct ff_srq_shm) + (uint64_t)depth * sizeof(struct ff_rwqe); }
static inline struct ff_rwqe *ff_srq_entries(struct ff_srq_shm *s) { return (struct ff_rwqe *)(s + 1); }

static inline uint64_t ff_qp_shm_size(uint32_t sq_depth, uint32_t rq_depth) {
  return sizeof(struct ff_qp_shm) + (uint64_t)sq_depth * sizeof(struct ff_swqe) + (uint64_t)rq_depth * sizeof(struct ff_rwqe);
}
static inline struct ff_swqe *ff_qp_sq_entries(struct ff_qp_shm *q) { return (struct ff_swqe *)(q + 1); }
static inline struct ff_rwqe *ff_qp_rq_entries(struct ff_qp_shm *q) {
  return (struct ff_rwqe *)((char *)(q + 1) + (uint64_t)q->sq_depth * sizeof(struct ff_swqe));
}
static inline uint64_t ff_cq_shm_size(uint32_t depth) { return sizeof(struct ff_cq_shm) + (uint64_t)depth * sizeof(struct ff_cqe); }
static inline struct ff_cqe *ff_cq_entries(struct ff_cq_shm *c) { return (struct ff_cqe *)(c + 1); }

/* The engine's doorbells: a sealed page per container that the router creates and the
 * container's libraries map (RDMA_OPEN). The engine runs one worker per CPU, pinned there, each
 * asleep on its own futex word in every container's page at once (futex_waitv). A library
 * that posted while all workers sleep wakes the worker of the CPU it runs on: waking a thread
 * on another CPU costs an inter-processor interrupt, ~20 us in a VM against ~3 us on the same
 * CPU (measured here), and that was the whole of a same-host round trip's slow mode.
 * worker_of_cpu is written once by the router; a library that scribbles on its page only
 * misdirects its own container's wake-ups, and one that rings for nothing is muted for a while
 * (native/rdma/doorbells.h). */
#define FF_DOORBELL_MAX_CPUS 1024
#define FF_DOORBELL_MAX_WORKERS 32
struct ff_doorbells {
  uint16_t worker_of_cpu[FF_DOORBELL_MAX_CPUS];
  struct {
    volatile uint32_t seq; /* bumped by every ring: a worker waits only while it is unchanged */
    uint32_t pad[15];
  } bell[FF_DOORBELL_MAX_WORKERS];
};

static inline void ff_doorbell_ring_worker(struct ff_doorbells *db, unsigned w) {
  if (w >= FF_DOORBELL_MAX_WORKERS) w = 0;
  __atomic_fetch_add(&db->bell[w].seq, 1u, __ATOMIC_SEQ_CST);
  syscall(SYS_futex, &db->bell[w].seq, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Wakes the worker of the CPU the caller runs on. */
static inline void ff_doorbell_ring(struct ff_doorbells *db) {
  int cpu = sched_getcpu();
  ff_doorbell_ring_worker(db, cpu >= 0 && cpu < FF_DOORBELL_MAX_CPUS ? db->worker_of_cpu[cpu] : 0);
}

#endif
