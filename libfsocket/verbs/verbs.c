/* FreeFlow's drop-in libibverbs.so.1: one virtual RoCE device per container ("ffvnic0").
 * Control verbs are requests to the host router; work requests and completions go through
 * shared-memory rings (ff_rdma_shm.h) that the router's native engine serves. */
#define _GNU_SOURCE
#include <infiniband/verbs.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ffv.h"

#undef ibv_get_device_list
#undef ibv_query_port
#undef ibv_reg_mr
#undef ibv_reg_mr_iova

#define EXPORT __attribute__((visibility("default")))
#define FFV_VENDOR_ID 0x4646 /* "FF": not a vendor perftest special-cases */
#define FFV_PART_ID 0x0001

struct ffv_device {
  struct ibv_device dev;
  uint8_t gid[16];
};

struct ffv_context {
  struct verbs_context vctx; /* verbs_context lies before ibv_context, as libibverbs lays it out */
  struct ffv_device *dev;
};

struct ffv_pd {
  struct ibv_pd pd;
};

struct ffv_channel {
  struct ibv_comp_channel ch;
  uint32_t h;
};

struct ffv_cq {
  struct ibv_cq cq;
  struct ff_cq_shm *shm;
  size_t map_len;
  uint32_t depth;
  pthread_spinlock_t lock;
  struct ffv_cq *next; /* registry: events name CQs by handle */
};

struct ffv_srq {
  struct ibv_srq srq;
  struct ff_srq_shm *shm;
  size_t map_len;
  uint32_t depth;
  pthread_spinlock_t lock;
};

struct ffv_qp {
  struct ibv_qp qp;
  struct ff_qp_shm *shm;
  size_t map_len;
  uint32_t sq_depth, rq_depth;
  pthread_spinlock_t sq_lock, rq_lock;
  int sq_sig_all;
  struct ibv_qp_cap cap;
  struct ibv_qp_attr attr; /* what ibv_query_qp reports */
};

static struct ffv_context *fctx(struct ibv_context *ctx) {
  return (struct ffv_context *)((char *)ctx - offsetof(struct ffv_context, vctx.context));
}

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ffv_cq *cq_list;
static struct ffv_device *the_device;
static struct ff_doorbells *doorbells; /* the engine's doorbell page: rung when it sleeps and we posted */

static void ring_doorbell(struct ff_qp_shm *s) {
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  struct ff_doorbells *db = __atomic_load_n(&doorbells, __ATOMIC_ACQUIRE);
  if (__atomic_load_n(&s->engine_sleeping, __ATOMIC_SEQ_CST) && db) ff_doorbell_ring(db);
}

/* Maps the doorbell page that came with RDMA_OPEN (once per process; the fd is not kept). */
static void map_doorbells(int fd) {
  struct stat st;
  if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(struct ff_doorbells)) {
    void *p = mmap(NULL, sizeof(struct ff_doorbells), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    void *none = NULL;
    if (p != MAP_FAILED && !__atomic_compare_exchange_n(&doorbells, &none, p, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      munmap(p, sizeof(struct ff_doorbells));
  }
  close(fd);
}

static int err_ret(int e) { errno = e; return e; }
static void *err_null(int e) { errno = e; return NULL; }
static uint32_t pow2(uint32_t n) { uint32_t p = 1; while (p < n) p <<= 1; return p; }

static int make_shm(const char *name, size_t len, void **map) {
  int fd = ff_sealed_memfd(name, len);
  if (fd < 0) return -errno;
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) { int e = errno; close(fd); return -e; }
  *map = p;
  return fd;
}

/* ---------------------------------------------------------------- devices */

EXPORT struct ibv_device **ibv_get_device_list(int *num) {
  if (num) *num = 0;
  if (!the_device) {
    struct ff_msg rep;
    int bell = -1;
    int rc = ffv_call_ex(FF_T_RDMA_OPEN, NULL, NULL, NULL, 0, -1, &rep, NULL, NULL, NULL, &bell);
    if (rc < 0) return err_null(ENOSYS); /* as stock libibverbs without devices */
    if (bell >= 0) map_doorbells(bell);
    struct ffv_device *d = calloc(1, sizeof *d);
    if (!d) return err_null(ENOMEM);
    d->dev.node_type = IBV_NODE_CA;
    d->dev.transport_type = IBV_TRANSPORT_IB;
    snprintf(d->dev.name, sizeof d->dev.name, "ffvnic0");
    snprintf(d->dev.dev_name, sizeof d->dev.dev_name, "uverbs0");
    snprintf(d->dev.dev_path, sizeof d->dev.dev_path, "/sys/class/infiniband_verbs/uverbs0");
    snprintf(d->dev.ibdev_path, sizeof d->dev.ibdev_path, "/sys/class/infiniband/ffvnic0");
    memcpy(d->gid, rep.local_addr, 16);
    pthread_mutex_lock(&reg_lock);
    if (!the_device) the_device = d;
    else free(d);
    pthread_mutex_unlock(&reg_lock);
  }
  struct ibv_device **list = calloc(2, sizeof *list);
  if (!list) return err_null(ENOMEM);
  list[0] = &the_device->dev;
  if (num) *num = 1;
  return list;
}

EXPORT void ibv_free_device_list(struct ibv_device **list) { free(list); }
EXPORT const char *ibv_get_device_name(struct ibv_device *dev) { return dev ? dev->name : NULL; }
EXPORT int ibv_get_device_index(struct ibv_device *dev) { return 0; }

static uint64_t guid_of(const uint8_t *gid) {
  /* EUI-64 style from the IPv4 address: 02:46:46:ff:fe:<ip> is 9 bytes; keep it simple */
  uint64_t g = 0x0246460000000000ull | ((uint64_t)gid[12] << 24) | ((uint64_t)gid[13] << 16) | ((uint64_t)gid[14] << 8) | gid[15];
  return __builtin_bswap64(g); /* network byte order, as the kernel reports it */
}
EXPORT __be64 ibv_get_device_guid(struct ibv_device *dev) { return guid_of(((struct ffv_device *)dev)->gid); }

static int ffv_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc);
static int ffv_req_notify_cq(struct ibv_cq *cq, int solicited);
static int ffv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int ffv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);
/* Appends receive requests to a receive ring (a QP's RQ or an SRQ); the caller holds its lock.
 * Stops at the first request that does not fit or is malformed and leaves *wrp pointing at it. */
static int push_recvs(struct ff_ring *ring, struct ff_rwqe *ents, uint32_t depth, struct ibv_recv_wr **wrp) {
  int rc = 0;
  uint32_t head = ring->head;
  struct ibv_recv_wr *wr = *wrp;
  for (; wr; wr = wr->next) {
    if (head - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) >= depth) { rc = ENOMEM; break; }
    if (wr->num_sge < 0 || wr->num_sge > FF_RDMA_MAX_SGE) { rc = EINVAL; break; }
    struct ff_rwqe *e = &ents[head & (depth - 1)];
    e->wr_id = wr->wr_id;
    e->num_sge = (uint32_t)wr->num_sge;
    for (int i = 0; i < wr->num_sge; i++) {
      e->sge[i].addr = wr->sg_list[i].addr;
      e->sge[i].length = wr->sg_list[i].length;
      e->sge[i].lkey = wr->sg_list[i].lkey;
    }
    head++;
  }
  __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
  *wrp = wr;
  return rc;
}

static int ffv_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);

EXPORT struct ibv_context *ibv_open_device(struct ibv_device *dev) {
  if (!dev || dev != &the_device->dev) return err_null(ENODEV);
  struct ffv_context *c = calloc(1, sizeof *c);
  if (!c) return err_null(ENOMEM);
  c->dev = the_device;
  struct ibv_context *ctx = &c->vctx.context;
  ctx->device = dev;
  ctx->cmd_fd = -1;
  ctx->async_fd = -1;
  ctx->num_comp_vectors = 1;
  ctx->abi_compat = NULL; /* not extended: the inline _ex verbs fall back to the exported ones */
  pthread_mutex_init(&ctx->mutex, NULL);
  ctx->ops.poll_cq = ffv_poll_cq;
  ctx->ops.req_notify_cq = ffv_req_notify_cq;
  ctx->ops.post_send = ffv_post_send;
  ctx->ops.post_recv = ffv_post_recv;
  ctx->ops.post_srq_recv = ffv_post_srq_recv;
  return ctx;
}

EXPORT int ibv_close_device(struct ibv_context *ctx) {
  if (!ctx) return err_ret(EINVAL);
  free(fctx(ctx));
  return 0;
}

EXPORT int ibv_query_device(struct ibv_context *ctx, struct ibv_device_attr *a) {
  struct ffv_device *d = fctx(ctx)->dev;
  memset(a, 0, sizeof *a);
  snprintf(a->fw_ver, sizeof a->fw_ver, "freeflow-1.0");
  a->node_guid = guid_of(d->gid);
  a->sys_image_guid = a->node_guid;
  a->max_mr_size = FF_RDMA_MAX_MSG;
  a->page_size_cap = 0x1000;
  a->vendor_id = FFV_VENDOR_ID;
  a->vendor_part_id = FFV_PART_ID;
  a->hw_ver = 1;
  a->max_qp = 16384;
  a->max_qp_wr = FF_RDMA_MAX_DEPTH;
  a->device_cap_flags = IBV_DEVICE_RC_RNR_NAK_GEN | IBV_DEVICE_PORT_ACTIVE_EVENT;
  a->max_sge = FF_RDMA_MAX_SGE;
  a->max_sge_rd = FF_RDMA_MAX_SGE;
  a->max_cq = 65536;
  a->max_cqe = FF_RDMA_MAX_DEPTH * 4;
  a->max_mr = 65536;
  a->max_pd = 65536;
  a->max_qp_rd_atom = 16;
  a->max_qp_init_rd_atom = 16;
  a->max_res_rd_atom = 16 * 16384;
  a->atomic_cap = IBV_ATOMIC_HCA;
  a->max_ah = 65536;
  a->max_pkeys = 1;
  a->local_ca_ack_delay = 15;
  a->phys_port_cnt = 1;
  return 0;
}

EXPORT int ibv_query_port(struct ibv_context *ctx, uint8_t port, struct _compat_ibv_port_attr *out) {
  if (port != 1) return err_ret(EINVAL);
  struct ibv_port_attr *a = (struct ibv_port_attr *)out; /* the compat struct is its prefix */
  a->state = IBV_PORT_ACTIVE;
  a->max_mtu = IBV_MTU_4096;
  a->active_mtu = IBV_MTU_1024; /* the overlay's 1450-byte MTU, as RoCE would pick */
  a->gid_tbl_len = 1;
  a->port_cap_flags = 0;
  a->max_msg_sz = FF_RDMA_MAX_MSG;
  a->bad_pkey_cntr = 0;
  a->qkey_viol_cntr = 0;
  a->pkey_tbl_len = 1;
  a->lid = 0;
  a->sm_lid = 0;
  a->lmc = 0;
  a->max_vl_num = 1;
  a->sm_sl = 0;
  a->subnet_timeout = 0;
  a->init_type_reply = 0;
  a->active_width = 2;  /* 4X */
  a->active_speed = 32; /* EDR */
  a->phys_state = 5;    /* LinkUp */
  a->link_layer = IBV_LINK_LAYER_ETHERNET;
  a->flags = 0;
  return 0;
}

EXPORT int ibv_query_gid(struct ibv_context *ctx, uint8_t port, int index, union ibv_gid *gid) {
  if (port != 1 || index != 0) return err_ret(EINVAL) ? -1 : -1;
  memcpy(gid->raw, fctx(ctx)->dev->gid, 16);
  return 0;
}

EXPORT int _ibv_query_gid_ex(struct ibv_context *ctx, uint32_t port, uint32_t index, struct ibv_gid_entry *e, uint32_t flags, size_t sz) {
  if (port != 1 || index != 0) return err_ret(ENODATA);
  if (sz < sizeof *e) return err_ret(EINVAL);
  memset(e, 0, sizeof *e);
  memcpy(e->gid.raw, fctx(ctx)->dev->gid, 16);
  e->gid_index = 0;
  e->port_num = 1;
  e->gid_type = IBV_GID_TYPE_ROCE_V2;
  e->ndev_ifindex = 0;
  return 0;
}

EXPORT ssize_t _ibv_query_gid_table(struct ibv_context *ctx, struct ibv_gid_entry *e, size_t max, uint32_t flags, size_t sz) {
  if (max < 1) return -EINVAL;
  int rc = _ibv_query_gid_ex(ctx, 1, 0, e, flags, sz);
  return rc ? -rc : 1;
}

/* IBVERBS_PRIVATE_34, used by ibv_devinfo: GID 0 is RoCE v2 (enum ibv_gid_type_sysfs value 1). */
EXPORT int ibv_query_gid_type(struct ibv_context *ctx, uint8_t port, unsigned int index, int *type) {
  if (port != 1 || index != 0) return err_ret(EINVAL) ? -1 : -1;
  *type = 1;
  return 0;
}

EXPORT int ibv_query_pkey(struct ibv_context *ctx, uint8_t port, int index, __be16 *pkey) {
  if (port != 1 || index != 0) return -1;
  *pkey = 0xffff;
  return 0;
}

EXPORT int ibv_get_pkey_index(struct ibv_context *ctx, uint8_t port, __be16 pkey) { return pkey == 0xffff ? 0 : -1; }

/* ---------------------------------------------------------------- PD, MR */

EXPORT struct ibv_pd *ibv_alloc_pd(struct ibv_context *ctx) {
  struct ff_rdma_args out;
  int rc = ffv_call(FF_T_RDMA_ALLOC_PD, NULL, -1, NULL, NULL, &out);
  if (rc < 0) return err_null(-rc);
  struct ffv_pd *p = calloc(1, sizeof *p);
  if (!p) return err_null(ENOMEM);
  p->pd.context = ctx;
  p->pd.handle = out.h[0];
  return &p->pd;
}

EXPORT int ibv_dealloc_pd(struct ibv_pd *pd) {
  struct ff_rdma_args a = {.h = {pd->handle}};
  int rc = ffv_call(FF_T_RDMA_DEALLOC_PD, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  free(pd);
  return 0;
}

EXPORT struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, unsigned int access) {
  if (!pd || !length) return err_null(EINVAL);
  struct ff_rdma_args a = {.h = {pd->handle, access}, .v = {(uintptr_t)addr, length, iova}};
  struct ff_rdma_args out;
  struct ffv_view view;
  int view_fd = ffv_share_region(addr, length, &view);
  if (view_fd >= 0) {
    a.h[2] = (uint32_t)(view.len / 4096);
    a.h[3] = (uint32_t)(view.file_offset / 4096);
    a.v[3] = view.addr;
  }
  int rc = ffv_call(FF_T_RDMA_REG_MR, &a, view_fd, NULL, NULL, &out);
  if (view_fd >= 0) close(view_fd);
  if (rc < 0) return err_null(-rc);
  struct ibv_mr *mr = calloc(1, sizeof *mr);
  if (!mr) return err_null(ENOMEM);
  mr->context = pd->context;
  mr->pd = pd;
  mr->addr = addr;
  mr->length = length;
  mr->handle = out.h[0];
  mr->lkey = out.h[0];
  mr->rkey = out.h[1];
  return mr;
}
EXPORT struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
  return ibv_reg_mr_iova2(pd, addr, length, (uintptr_t)addr, (unsigned)access);
}
EXPORT struct ibv_mr *ibv_reg_mr_iova(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, int access) {
  return ibv_reg_mr_iova2(pd, addr, length, iova, (unsigned)access);
}

EXPORT int ibv_dereg_mr(struct ibv_mr *mr) {
  struct ff_rdma_args a = {.h = {mr->lkey}};
  int rc = ffv_call(FF_T_RDMA_DEREG_MR, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  free(mr);
  return 0;
}

EXPORT int ibv_fork_init(void) { return 0; }
EXPORT enum ibv_fork_status ibv_is_fork_initialized(void) { return IBV_FORK_UNNEEDED; }
EXPORT int ibv_dontfork_range(void *base, size_t size) { return 0; }
EXPORT int ibv_dofork_range(void *base, size_t size) { return 0; }

/* ---------------------------------------------------------------- completion channels, CQs */

EXPORT struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *ctx) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return NULL;
  struct ff_rdma_args out;
  int rc = ffv_call(FF_T_RDMA_CREATE_CHANNEL, NULL, p[1], NULL, NULL, &out);
  close(p[1]);
  if (rc < 0) { close(p[0]); return err_null(-rc); }
  struct ffv_channel *c = calloc(1, sizeof *c);
  if (!c) { close(p[0]); return err_null(ENOMEM); }
  c->ch.context = ctx;
  c->ch.fd = p[0];
  c->h = out.h[0];
  return &c->ch;
}

EXPORT int ibv_destroy_comp_channel(struct ibv_comp_channel *ch) {
  struct ffv_channel *c = (struct ffv_channel *)ch;
  struct ff_rdma_args a = {.h = {c->h}};
  int rc = ffv_call(FF_T_RDMA_DESTROY_CHANNEL, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  close(ch->fd);
  free(c);
  return 0;
}

EXPORT struct ibv_cq *ibv_create_cq(struct ibv_context *ctx, int cqe, void *cq_context, struct ibv_comp_channel *channel, int comp_vector) {
  if (cqe < 1 || cqe > FF_RDMA_MAX_DEPTH * 4) return err_null(EINVAL);
  uint32_t depth = pow2((uint32_t)cqe + 1);
  void *map;
  size_t len = ff_cq_shm_size(depth);
  int fd = make_shm("ffv-cq", len, &map);
  if (fd < 0) return err_null(-fd);
  struct ff_cq_shm *shm = map;
  shm->depth = depth;
  struct ff_rdma_args a = {.h = {depth, channel ? ((struct ffv_channel *)channel)->h : 0}};
  struct ff_rdma_args out;
  int rc = ffv_call(FF_T_RDMA_CREATE_CQ, &a, fd, NULL, NULL, &out);
  close(fd);
  if (rc < 0) { munmap(map, len); return err_null(-rc); }
  struct ffv_cq *c = calloc(1, sizeof *c);
  c->shm = shm;
  c->map_len = len;
  c->depth = depth;
  pthread_spin_init(&c->lock, PTHREAD_PROCESS_PRIVATE);
  c->cq.context = ctx;
  c->cq.channel = channel;
  c->cq.cq_context = cq_context;
  c->cq.handle = out.h[0];
  c->cq.cqe = (int)depth - 1;
  pthread_mutex_init(&c->cq.mutex, NULL);
  pthread_cond_init(&c->cq.cond, NULL);
  if (channel) channel->refcnt++;
  pthread_mutex_lock(&reg_lock);
  c->next = cq_list;
  cq_list = c;
  pthread_mutex_unlock(&reg_lock);
  return &c->cq;
}

EXPORT int ibv_destroy_cq(struct ibv_cq *cq) {
  struct ffv_cq *c = (struct ffv_cq *)cq;
  struct ff_rdma_args a = {.h = {cq->handle}};
  int rc = ffv_call(FF_T_RDMA_DESTROY_CQ, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  pthread_mutex_lock(&reg_lock);
  for (struct ffv_cq **p = &cq_list; *p; p = &(*p)->next)
    if (*p == c) { *p = c->next; break; }
  pthread_mutex_unlock(&reg_lock);
  if (cq->channel) cq->channel->refcnt--;
  munmap(c->shm, c->map_len);
  free(c);
  return 0;
}

EXPORT int ibv_resize_cq(struct ibv_cq *cq, int cqe) { return err_ret(EOPNOTSUPP); }

EXPORT int ibv_get_cq_event(struct ibv_comp_channel *ch, struct ibv_cq **cq, void **cq_context) {
  for (;;) {
    uint32_t h;
    ssize_t n = read(ch->fd, &h, sizeof h);
    if (n < 0 && errno == EINTR) continue;
    if (n != sizeof h) { if (n >= 0) errno = EIO; return -1; }
    struct ffv_cq *found = NULL;
    pthread_mutex_lock(&reg_lock);
    for (struct ffv_cq *c = cq_list; c; c = c->next)
      if (c->cq.handle == h && c->cq.channel == ch) { found = c; break; }
    pthread_mutex_unlock(&reg_lock);
    if (!found) continue; /* an event for a CQ destroyed meanwhile */
    *cq = &found->cq;
    *cq_context = found->cq.cq_context;
    return 0;
  }
}

EXPORT void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int n) {
  pthread_mutex_lock(&cq->mutex);
  cq->comp_events_completed += n;
  pthread_cond_signal(&cq->cond);
  pthread_mutex_unlock(&cq->mutex);
}

static int ffv_req_notify_cq(struct ibv_cq *cq, int solicited) {
  struct ffv_cq *c = (struct ffv_cq *)cq;
  __atomic_store_n(&c->shm->armed, solicited ? 2u : 1u, __ATOMIC_SEQ_CST);
  return 0;
}

static int ffv_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc) {
  struct ffv_cq *c = (struct ffv_cq *)cq;
  /* Empty, the common case of a busy-polling application: no lock, and no store to the shared
   * tail, whose cache line the engine reads before every completion it writes. */
  if (__atomic_load_n(&c->shm->ring.head, __ATOMIC_ACQUIRE) == __atomic_load_n(&c->shm->ring.tail, __ATOMIC_RELAXED))
    return 0;
  pthread_spin_lock(&c->lock);
  uint32_t tail = c->shm->ring.tail;
  uint32_t head = __atomic_load_n(&c->shm->ring.head, __ATOMIC_ACQUIRE);
  int got = 0;
  struct ff_cqe *ents = ff_cq_entries(c->shm);
  while (got < n && tail != head) {
    struct ff_cqe *e = &ents[tail & (c->depth - 1)];
    struct ibv_wc *w = &wc[got++];
    memset(w, 0, sizeof *w);
    w->wr_id = e->wr_id;
    w->status = (enum ibv_wc_status)e->status;
    w->opcode = (enum ibv_wc_opcode)e->opcode;
    w->vendor_err = e->vendor_err;
    w->byte_len = e->byte_len;
    w->imm_data = e->imm;
    w->qp_num = e->qp_num;
    w->src_qp = e->src_qp;
    w->wc_flags = e->wc_flags;
    w->pkey_index = 0;
    tail++;
  }
  __atomic_store_n(&c->shm->ring.tail, tail, __ATOMIC_RELEASE);
  pthread_spin_unlock(&c->lock);
  return got;
}

/* ---------------------------------------------------------------- QPs */

/* ---------------------------------------------------------------- shared receive queues */

EXPORT struct ibv_srq *ibv_create_srq(struct ibv_pd *pd, struct ibv_srq_init_attr *ia) {
  if (!pd || !ia || ia->attr.max_wr > FF_RDMA_MAX_DEPTH || ia->attr.max_sge > FF_RDMA_MAX_SGE) return err_null(EINVAL);
  uint32_t depth = pow2(ia->attr.max_wr ? ia->attr.max_wr : 1);
  void *map;
  size_t len = ff_srq_shm_size(depth);
  int fd = make_shm("ffv-srq", len, &map);
  if (fd < 0) return err_null(-fd);
  struct ff_srq_shm *shm = map;
  shm->depth = depth;
  struct ff_rdma_args a = {.h = {pd->handle, depth}};
  struct ff_rdma_args out;
  int rc = ffv_call(FF_T_RDMA_CREATE_SRQ, &a, fd, NULL, NULL, &out);
  close(fd);
  if (rc < 0) { munmap(map, len); return err_null(-rc); }
  struct ffv_srq *q = calloc(1, sizeof *q);
  if (!q) { munmap(map, len); return err_null(ENOMEM); }
  q->shm = shm;
  q->map_len = len;
  q->depth = depth;
  pthread_spin_init(&q->lock, PTHREAD_PROCESS_PRIVATE);
  q->srq.context = pd->context;
  q->srq.srq_context = ia->srq_context;
  q->srq.pd = pd;
  q->srq.handle = out.h[0];
  pthread_mutex_init(&q->srq.mutex, NULL);
  pthread_cond_init(&q->srq.cond, NULL);
  ia->attr.max_wr = depth;
  ia->attr.max_sge = FF_RDMA_MAX_SGE;
  return &q->srq;
}

EXPORT int ibv_modify_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr, int mask) {
  /* Arming the limit event is accepted (the event never fires); resizing is not supported. */
  return (mask & IBV_SRQ_MAX_WR) ? err_ret(EOPNOTSUPP) : 0;
}

EXPORT int ibv_query_srq(struct ibv_srq *srq, struct ibv_srq_attr *attr) {
  struct ffv_srq *q = (struct ffv_srq *)srq;
  attr->max_wr = q->depth;
  attr->max_sge = FF_RDMA_MAX_SGE;
  attr->srq_limit = 0;
  return 0;
}

EXPORT int ibv_destroy_srq(struct ibv_srq *srq) {
  struct ffv_srq *q = (struct ffv_srq *)srq;
  struct ff_rdma_args a = {.h = {srq->handle}};
  int rc = ffv_call(FF_T_RDMA_DESTROY_SRQ, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  munmap(q->shm, q->map_len);
  free(q);
  return 0;
}

static int ffv_post_srq_recv(struct ibv_srq *srq, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
  struct ffv_srq *q = (struct ffv_srq *)srq;
  int rc = 0;
  pthread_spin_lock(&q->lock);
  rc = push_recvs(&q->shm->ring, ff_srq_entries(q->shm), q->depth, &wr);
  pthread_spin_unlock(&q->lock);
  /* An engine asleep has nothing waiting for receives (it only sleeps when nothing waits). */
  if (rc) *bad = wr;
  return rc;
}

/* ---------------------------------------------------------------- QPs */

EXPORT struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *ia) {
  if (!pd || !ia || !ia->send_cq || !ia->recv_cq) return err_null(EINVAL);
  if (ia->qp_type != IBV_QPT_RC && ia->qp_type != IBV_QPT_UC) return err_null(EOPNOTSUPP);
  struct ibv_qp_cap *cap = &ia->cap;
  if (cap->max_send_wr > FF_RDMA_MAX_DEPTH || cap->max_recv_wr > FF_RDMA_MAX_DEPTH || cap->max_send_sge > FF_RDMA_MAX_SGE ||
      cap->max_recv_sge > FF_RDMA_MAX_SGE || cap->max_inline_data > FF_RDMA_MAX_INLINE)
    return err_null(EINVAL);
  uint32_t sqd = pow2(cap->max_send_wr ? cap->max_send_wr : 1), rqd = ia->srq ? 1 : pow2(cap->max_recv_wr ? cap->max_recv_wr : 1);
  void *map;
  size_t len = ff_qp_shm_size(sqd, rqd);
  int fd = make_shm("ffv-qp", len, &map);
  if (fd < 0) return err_null(-fd);
  struct ff_qp_shm *shm = map;
  shm->sq_depth = sqd;
  shm->rq_depth = rqd;
  struct ff_rdma_args a = {.h = {pd->handle, ia->send_cq->handle, ia->recv_cq->handle, ia->qp_type, sqd, rqd},
                           .v = {ia->sq_sig_all, ia->srq ? ia->srq->handle : 0}};
  struct ff_rdma_args out;
  int rc = ffv_call(FF_T_RDMA_CREATE_QP, &a, fd, NULL, NULL, &out);
  close(fd);
  if (rc < 0) { munmap(map, len); return err_null(-rc); }
  struct ffv_qp *q = calloc(1, sizeof *q);
  q->shm = shm;
  q->map_len = len;
  q->sq_depth = sqd;
  q->rq_depth = rqd;
  q->sq_sig_all = ia->sq_sig_all;
  pthread_spin_init(&q->sq_lock, PTHREAD_PROCESS_PRIVATE);
  pthread_spin_init(&q->rq_lock, PTHREAD_PROCESS_PRIVATE);
  cap->max_send_wr = sqd;
  cap->max_recv_wr = ia->srq ? 0 : rqd;
  cap->max_send_sge = FF_RDMA_MAX_SGE;
  cap->max_recv_sge = FF_RDMA_MAX_SGE;
  cap->max_inline_data = FF_RDMA_MAX_INLINE;
  q->cap = *cap;
  q->qp.context = pd->context;
  q->qp.qp_context = ia->qp_context;
  q->qp.pd = pd;
  q->qp.send_cq = ia->send_cq;
  q->qp.recv_cq = ia->recv_cq;
  q->qp.srq = ia->srq;
  q->qp.handle = out.h[0];
  q->qp.qp_num = out.h[0];
  q->qp.state = IBV_QPS_RESET;
  q->qp.qp_type = ia->qp_type;
  pthread_mutex_init(&q->qp.mutex, NULL);
  pthread_cond_init(&q->qp.cond, NULL);
  q->attr.qp_state = IBV_QPS_RESET;
  q->attr.cap = *cap;
  return &q->qp;
}

EXPORT int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask) {
  struct ffv_qp *q = (struct ffv_qp *)qp;
  uint8_t dgid[16] = {0};
  if ((mask & IBV_QP_AV) && attr->ah_attr.is_global) memcpy(dgid, attr->ah_attr.grh.dgid.raw, 16);
  struct ff_rdma_args a = {.h = {qp->qp_num, (uint32_t)mask, (mask & IBV_QP_STATE) ? attr->qp_state : qp->state,
                                 (mask & IBV_QP_DEST_QPN) ? attr->dest_qp_num : 0, (mask & IBV_QP_ACCESS_FLAGS) ? attr->qp_access_flags : 0,
                                 (uint32_t)attr->rnr_retry | (uint32_t)attr->min_rnr_timer << 8}};
  int rc = ffv_call(FF_T_RDMA_MODIFY_QP, &a, -1, dgid, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  if (mask & IBV_QP_STATE) q->attr.qp_state = attr->qp_state, qp->state = attr->qp_state;
  if (mask & IBV_QP_AV) q->attr.ah_attr = attr->ah_attr;
  if (mask & IBV_QP_DEST_QPN) q->attr.dest_qp_num = attr->dest_qp_num;
  if (mask & IBV_QP_PATH_MTU) q->attr.path_mtu = attr->path_mtu;
  if (mask & IBV_QP_ACCESS_FLAGS) q->attr.qp_access_flags = attr->qp_access_flags;
  if (mask & IBV_QP_PKEY_INDEX) q->attr.pkey_index = attr->pkey_index;
  if (mask & IBV_QP_PORT) q->attr.port_num = attr->port_num;
  if (mask & IBV_QP_RQ_PSN) q->attr.rq_psn = attr->rq_psn;
  if (mask & IBV_QP_SQ_PSN) q->attr.sq_psn = attr->sq_psn;
  if (mask & IBV_QP_TIMEOUT) q->attr.timeout = attr->timeout;
  if (mask & IBV_QP_RETRY_CNT) q->attr.retry_cnt = attr->retry_cnt;
  if (mask & IBV_QP_RNR_RETRY) q->attr.rnr_retry = attr->rnr_retry;
  if (mask & IBV_QP_MIN_RNR_TIMER) q->attr.min_rnr_timer = attr->min_rnr_timer;
  if (mask & IBV_QP_MAX_QP_RD_ATOMIC) q->attr.max_rd_atomic = attr->max_rd_atomic;
  if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) q->attr.max_dest_rd_atomic = attr->max_dest_rd_atomic;
  return 0;
}

EXPORT int ibv_query_qp(struct ibv_qp *qp, struct ibv_qp_attr *attr, int mask, struct ibv_qp_init_attr *init) {
  struct ffv_qp *q = (struct ffv_qp *)qp;
  uint32_t st = __atomic_load_n(&q->shm->state, __ATOMIC_ACQUIRE);
  *attr = q->attr;
  if (st == FF_QPS_ERR) attr->qp_state = IBV_QPS_ERR; /* the engine moved it (error completion) */
  attr->cur_qp_state = attr->qp_state;
  if (init) {
    memset(init, 0, sizeof *init);
    init->qp_context = qp->qp_context;
    init->send_cq = qp->send_cq;
    init->recv_cq = qp->recv_cq;
    init->srq = qp->srq;
    init->cap = q->cap;
    init->qp_type = qp->qp_type;
    init->sq_sig_all = q->sq_sig_all;
  }
  return 0;
}

EXPORT int ibv_destroy_qp(struct ibv_qp *qp) {
  struct ffv_qp *q = (struct ffv_qp *)qp;
  struct ff_rdma_args a = {.h = {qp->qp_num}};
  int rc = ffv_call(FF_T_RDMA_DESTROY_QP, &a, -1, NULL, NULL, NULL);
  if (rc < 0) return err_ret(-rc);
  munmap(q->shm, q->map_len);
  free(q);
  return 0;
}

EXPORT struct ibv_qp_ex *ibv_qp_to_qp_ex(struct ibv_qp *qp) { return err_null(EOPNOTSUPP); }

static int ffv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
  struct ffv_qp *q = (struct ffv_qp *)qp;
  int rc = 0;
  pthread_spin_lock(&q->sq_lock);
  struct ff_qp_shm *s = q->shm;
  uint32_t head = s->sq.head;
  struct ff_swqe *ents = ff_qp_sq_entries(s);
  for (; wr; wr = wr->next) {
    if (head - __atomic_load_n(&s->sq.tail, __ATOMIC_ACQUIRE) >= q->sq_depth) { rc = ENOMEM; break; }
    if (wr->num_sge < 0 || wr->num_sge > FF_RDMA_MAX_SGE || wr->opcode > IBV_WR_ATOMIC_FETCH_AND_ADD) { rc = EINVAL; break; }
    struct ff_swqe *e = &ents[head & (q->sq_depth - 1)];
    e->wr_id = wr->wr_id;
    e->opcode = wr->opcode;
    e->flags = ((q->sq_sig_all || (wr->send_flags & IBV_SEND_SIGNALED)) ? FF_SWQE_SIGNALED : 0) |
               ((wr->send_flags & IBV_SEND_SOLICITED) ? FF_SWQE_SOLICITED : 0);
    e->imm = wr->imm_data;
    e->num_sge = (uint32_t)wr->num_sge;
    e->inline_len = 0;
    if (wr->opcode == IBV_WR_ATOMIC_CMP_AND_SWP || wr->opcode == IBV_WR_ATOMIC_FETCH_AND_ADD) {
      e->remote_addr = wr->wr.atomic.remote_addr;
      e->rkey = wr->wr.atomic.rkey;
      e->compare_add = wr->wr.atomic.compare_add;
      e->swap = wr->wr.atomic.swap;
    } else {
      e->remote_addr = wr->wr.rdma.remote_addr;
      e->rkey = wr->wr.rdma.rkey;
    }
    if ((wr->send_flags & IBV_SEND_INLINE) && wr->opcode != IBV_WR_RDMA_READ && wr->opcode <= IBV_WR_SEND_WITH_IMM) {
      uint32_t off = 0;
      for (int i = 0; i < wr->num_sge; i++) {
        if (off + wr->sg_list[i].length > FF_RDMA_MAX_INLINE) { rc = EINVAL; break; }
        memcpy(e->inline_data + off, (void *)(uintptr_t)wr->sg_list[i].addr, wr->sg_list[i].length);
        off += wr->sg_list[i].length;
      }
      if (rc) break;
      e->flags |= FF_SWQE_INLINE;
      e->inline_len = off;
      e->num_sge = 0;
    } else {
      for (int i = 0; i < wr->num_sge; i++) {
        e->sge[i].addr = wr->sg_list[i].addr;
        e->sge[i].length = wr->sg_list[i].length;
        e->sge[i].lkey = wr->sg_list[i].lkey;
      }
    }
    head++;
  }
  __atomic_store_n(&s->sq.head, head, __ATOMIC_RELEASE);
  pthread_spin_unlock(&q->sq_lock);
  ring_doorbell(s);
  if (rc) *bad = wr;
  return rc;
}

static int ffv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
  struct ffv_qp *q = (struct ffv_qp *)qp;
  int rc = 0;
  if (qp->srq) { /* its receives come from the SRQ */
    *bad = wr;
    return EINVAL;
  }
  pthread_spin_lock(&q->rq_lock);
  rc = push_recvs(&q->shm->rq, ff_qp_rq_entries(q->shm), q->rq_depth, &wr);
  pthread_spin_unlock(&q->rq_lock);
  /* A sleeping engine only needs new receives to flush them (QP in error): a sender waiting
   * for a receive keeps it polling. Not ringing here saves a wake-up per receive. */
  if (__atomic_load_n(&q->shm->state, __ATOMIC_ACQUIRE) == FF_QPS_ERR) ring_doorbell(q->shm);
  if (rc) *bad = wr;
  return rc;
}

/* ---------------------------------------------------------------- address handles (local only) */

EXPORT struct ibv_ah *ibv_create_ah(struct ibv_pd *pd, struct ibv_ah_attr *attr) {
  struct ibv_ah *ah = calloc(1, sizeof *ah);
  if (!ah) return err_null(ENOMEM);
  ah->context = pd->context;
  ah->pd = pd;
  return ah;
}
EXPORT int ibv_destroy_ah(struct ibv_ah *ah) { free(ah); return 0; }

/* ---------------------------------------------------------------- strings */

EXPORT const char *ibv_wc_status_str(enum ibv_wc_status status) {
  static const char *const s[] = {"success", "local length error", "local QP operation error", "local EE context operation error",
    "local protection error", "Work Request Flushed Error", "memory management operation error", "bad response error",
    "local access error", "remote invalid request error", "remote access error", "remote operation error",
    "transport retry counter exceeded", "RNR retry counter exceeded", "local RDD violation error", "remote invalid RD request",
    "aborted error", "invalid EE context number", "invalid EE context state", "fatal error", "response timeout error",
    "general error", "TM error", "TM software rendezvous"};
  return (unsigned)status < sizeof s / sizeof *s ? s[status] : "unknown";
}
EXPORT const char *ibv_node_type_str(enum ibv_node_type t) {
  static const char *const s[] = {"unknown", "InfiniBand channel adapter", "InfiniBand switch", "InfiniBand router", "iWARP NIC",
                                  "usNIC", "usNIC UDP", "unspecified"};
  return (t >= 0 && (unsigned)t < sizeof s / sizeof *s) ? s[t] : "unknown";
}
EXPORT const char *ibv_port_state_str(enum ibv_port_state st) {
  static const char *const s[] = {"no state change (NOP)", "down", "init", "armed", "active", "active deferred"};
  return (unsigned)st < sizeof s / sizeof *s ? s[st] : "unknown";
}
EXPORT const char *ibv_event_type_str(enum ibv_event_type ev) {
  static const char *const s[] = {"CQ error", "local work queue catastrophic error", "invalid request local work queue error",
    "local access violation work queue error", "communication established", "send queue drained", "path migrated",
    "path migration request error", "local catastrophic error", "port active", "port error", "LID change", "P_Key change",
    "SM change", "SRQ catastrophic error", "SRQ limit reached", "last WQE reached", "client reregistration", "GID table change",
    "WQ fatal"};
  return (unsigned)ev < sizeof s / sizeof *s ? s[ev] : "unknown";
}
EXPORT int ibv_rate_to_mult(enum ibv_rate rate) { return rate == IBV_RATE_MAX ? 0 : (int)rate; }
EXPORT int ibv_rate_to_mbps(enum ibv_rate rate) { return rate == IBV_RATE_100_GBPS ? 100000 : 0; }

/* verbs_register_driver_34 is called by provider libraries (libmlx5, libefa) that perftest links,
 * from their constructors: accept and ignore. */
EXPORT void verbs_register_driver_34(const void *ops) { (void)ops; }
