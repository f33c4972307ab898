/* FreeFlow's drop-in librdmacm.so.1: the RDMA connection manager carried by the host router.
 * Every rdma_cm_id is a router object found by handle; asynchronous outcomes (address and
 * route resolution, connection requests, establishment, disconnection) arrive as CM_EVENT
 * records on the event channel's socket, which the router writes. The router also moves both
 * QPs of a connection to ERR on disconnect (by QP number, so a QP the application already
 * destroyed is never touched). Entry points not implemented here are generated stubs failing
 * with EOPNOTSUPP (gen-exports.mjs). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <rdma/rdma_cma.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ffv.h"

#define EXPORT __attribute__((visibility("default")))

struct ffcm_channel {
  struct rdma_event_channel ch;
  uint32_t h;
};

struct ffcm_id {
  struct rdma_cm_id id;
  uint32_t h;
  uint32_t peer_qpn;
  uint8_t peer_gid[16];
  struct ffcm_id *next;
};

struct ffcm_event {
  struct rdma_cm_event ev;
  uint8_t priv[256];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct ffcm_id *ids; /* events name ids by handle */
static struct ibv_context *dev_ctx;
static struct ibv_pd *dev_pd;

static int fail(int e) { errno = e; return -1; }

static struct ibv_context *context(void) {
  pthread_mutex_lock(&lock);
  if (!dev_ctx) {
    int n = 0;
    struct ibv_device **l = ibv_get_device_list(&n);
    if (l && n > 0) dev_ctx = ibv_open_device(l[0]);
    if (l) ibv_free_device_list(l);
    if (dev_ctx) dev_pd = ibv_alloc_pd(dev_ctx);
  }
  pthread_mutex_unlock(&lock);
  return dev_ctx;
}

static struct ffcm_id *find_id(uint32_t h) {
  struct ffcm_id *f = NULL;
  pthread_mutex_lock(&lock);
  for (struct ffcm_id *i = ids; i; i = i->next)
    if (i->h == h) { f = i; break; }
  pthread_mutex_unlock(&lock);
  return f;
}

static void add_id(struct ffcm_id *i) {
  pthread_mutex_lock(&lock);
  i->next = ids;
  ids = i;
  pthread_mutex_unlock(&lock);
}

/* IPv4 address -> 16-byte IPv4-mapped wire form; returns the port (host order). */
static uint16_t put_sin(uint8_t *wire, const struct sockaddr *sa) {
  memset(wire, 0, 16);
  if (!sa || sa->sa_family != AF_INET) return 0;
  const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
  wire[10] = wire[11] = 0xff;
  memcpy(wire + 12, &s->sin_addr, 4);
  return ntohs(s->sin_port);
}

static void get_sin(struct sockaddr_storage *out, const uint8_t *wire, uint16_t port) {
  struct sockaddr_in *s = (struct sockaddr_in *)out;
  memset(out, 0, sizeof *out);
  s->sin_family = AF_INET;
  memcpy(&s->sin_addr, wire + 12, 4);
  s->sin_port = htons(port);
}

static int call(int type, uint32_t h0, uint32_t h1, const struct ff_msg *hdr, const void *priv, uint32_t plen, int fd, struct ff_msg *rep,
                struct ff_rdma_args *out) {
  struct ff_rdma_args a = {.h = {h0, h1}};
  int rc = ffv_call_ex(type, hdr, &a, priv, plen, fd, rep, out, NULL, NULL, NULL);
  return rc < 0 ? fail(-rc) : 0;
}

/* ------------------------------------------------------------------ channels and ids */

EXPORT struct rdma_event_channel *rdma_create_event_channel(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return NULL;
  struct ff_rdma_args out;
  int rc = call(FF_T_CM_CREATE_CHANNEL, 0, 0, NULL, NULL, 0, sv[1], NULL, &out);
  close(sv[1]);
  if (rc) { close(sv[0]); return NULL; }
  struct ffcm_channel *c = calloc(1, sizeof *c);
  if (!c) { close(sv[0]); errno = ENOMEM; return NULL; }
  c->ch.fd = sv[0];
  c->h = out.h[0];
  return &c->ch;
}

EXPORT void rdma_destroy_event_channel(struct rdma_event_channel *ch) {
  struct ffcm_channel *c = (struct ffcm_channel *)ch;
  /* The router keeps its end open until the process goes away: a thread still blocked in
   * rdma_get_cm_event on this fd sees no EOF. */
  call(FF_T_CM_DESTROY_CHANNEL, c->h, 0, NULL, NULL, 0, -1, NULL, NULL);
  close(ch->fd);
  free(c);
}

EXPORT int rdma_create_id(struct rdma_event_channel *ch, struct rdma_cm_id **out, void *ctx, enum rdma_port_space ps) {
  if (!ch || !out) return fail(EINVAL);
  struct ff_rdma_args r;
  if (call(FF_T_CM_CREATE_ID, ((struct ffcm_channel *)ch)->h, ps, NULL, NULL, 0, -1, NULL, &r)) return -1;
  struct ffcm_id *i = calloc(1, sizeof *i);
  if (!i) return fail(ENOMEM);
  i->h = r.h[0];
  i->id.channel = ch;
  i->id.context = ctx;
  i->id.ps = ps;
  i->id.qp_type = IBV_QPT_RC;
  add_id(i);
  *out = &i->id;
  return 0;
}

EXPORT int rdma_destroy_id(struct rdma_cm_id *id) {
  struct ffcm_id *i = (struct ffcm_id *)id;
  call(FF_T_CM_DESTROY_ID, i->h, 0, NULL, NULL, 0, -1, NULL, NULL);
  pthread_mutex_lock(&lock);
  for (struct ffcm_id **p = &ids; *p; p = &(*p)->next)
    if (*p == i) { *p = i->next; break; }
  pthread_mutex_unlock(&lock);
  free(i);
  return 0;
}

EXPORT int rdma_bind_addr(struct rdma_cm_id *id, struct sockaddr *addr) {
  struct ffcm_id *i = (struct ffcm_id *)id;
  if (!addr || addr->sa_family != AF_INET) return fail(EAFNOSUPPORT);
  struct ff_msg m = {0}, rep;
  m.local_port = put_sin(m.local_addr, addr);
  if (call(FF_T_CM_BIND, i->h, 0, &m, NULL, 0, -1, &rep, NULL)) return -1;
  get_sin(&id->route.addr.src_storage, rep.local_addr, rep.local_port);
  id->verbs = context();
  id->port_num = 1;
  return 0;
}

EXPORT int rdma_listen(struct rdma_cm_id *id, int backlog) {
  return call(FF_T_CM_LISTEN, ((struct ffcm_id *)id)->h, (uint32_t)backlog, NULL, NULL, 0, -1, NULL, NULL);
}

EXPORT int rdma_resolve_addr(struct rdma_cm_id *id, struct sockaddr *src, struct sockaddr *dst, int timeout_ms) {
  struct ffcm_id *i = (struct ffcm_id *)id;
  if (!dst || dst->sa_family != AF_INET) return fail(EAFNOSUPPORT);
  struct ff_msg m = {0}, rep;
  m.remote_port = put_sin(m.remote_addr, dst);
  if (src) m.local_port = put_sin(m.local_addr, src);
  if (!context()) return fail(ENODEV);
  if (call(FF_T_CM_RESOLVE_ADDR, i->h, 0, &m, NULL, 0, -1, &rep, NULL)) return -1;
  get_sin(&id->route.addr.src_storage, rep.local_addr, rep.local_port);
  get_sin(&id->route.addr.dst_storage, m.remote_addr, m.remote_port);
  id->verbs = dev_ctx;
  id->port_num = 1;
  return 0;
}

EXPORT int rdma_resolve_route(struct rdma_cm_id *id, int timeout_ms) {
  return call(FF_T_CM_RESOLVE_ROUTE, ((struct ffcm_id *)id)->h, 0, NULL, NULL, 0, -1, NULL, NULL);
}

/* ------------------------------------------------------------------ QPs */

static int qp_to(struct ibv_qp *qp, enum ibv_qp_state st, uint32_t dest, const uint8_t *gid) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof a);
  a.qp_state = st;
  int mask = IBV_QP_STATE;
  if (st == IBV_QPS_INIT) {
    a.port_num = 1;
    a.qp_access_flags = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC;
    mask |= IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
  } else if (st == IBV_QPS_RTR) {
    a.path_mtu = IBV_MTU_1024;
    a.dest_qp_num = dest;
    a.ah_attr.is_global = 1;
    a.ah_attr.port_num = 1;
    memcpy(a.ah_attr.grh.dgid.raw, gid, 16);
    a.max_dest_rd_atomic = 16;
    a.min_rnr_timer = 12;
    mask |= IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
  } else if (st == IBV_QPS_RTS) {
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 16;
    mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC;
  }
  return ibv_modify_qp(qp, &a, mask);
}

EXPORT int rdma_create_qp(struct rdma_cm_id *id, struct ibv_pd *pd, struct ibv_qp_init_attr *attr) {
  if (!id->verbs && !context()) return fail(ENODEV);
  if (!pd) pd = dev_pd;
  if (!pd) return fail(ENODEV);
  struct ibv_qp *qp = ibv_create_qp(pd, attr);
  if (!qp) return -1;
  int rc = qp_to(qp, IBV_QPS_INIT, 0, NULL);
  if (rc) { ibv_destroy_qp(qp); return fail(rc); }
  id->qp = qp;
  id->pd = pd;
  id->send_cq = attr->send_cq;
  id->recv_cq = attr->recv_cq;
  return 0;
}

EXPORT void rdma_destroy_qp(struct rdma_cm_id *id) {
  if (id->qp) ibv_destroy_qp(id->qp);
  id->qp = NULL;
}

/* ------------------------------------------------------------------ connections */

static uint32_t qpn_of(struct rdma_cm_id *id, struct rdma_conn_param *p) { return id->qp ? id->qp->qp_num : (p ? p->qp_num : 0); }

EXPORT int rdma_connect(struct rdma_cm_id *id, struct rdma_conn_param *p) {
  struct ffcm_id *i = (struct ffcm_id *)id;
  struct ff_msg m = {0};
  m.local_port = put_sin(m.local_addr, &id->route.addr.src_addr);
  m.remote_port = put_sin(m.remote_addr, &id->route.addr.dst_addr);
  return call(FF_T_CM_CONNECT, i->h, qpn_of(id, p), &m, p ? p->private_data : NULL, p && p->private_data ? p->private_data_len : 0, -1, NULL, NULL);
}

EXPORT int rdma_accept(struct rdma_cm_id *id, struct rdma_conn_param *p) {
  struct ffcm_id *i = (struct ffcm_id *)id;
  if (id->qp) { /* ready to receive before the connector may send */
    int rc = qp_to(id->qp, IBV_QPS_RTR, i->peer_qpn, i->peer_gid);
    if (!rc) rc = qp_to(id->qp, IBV_QPS_RTS, 0, NULL);
    if (rc) return fail(rc);
  }
  return call(FF_T_CM_ACCEPT, i->h, qpn_of(id, p), NULL, p ? p->private_data : NULL, p && p->private_data ? p->private_data_len : 0, -1, NULL, NULL);
}

EXPORT int rdma_reject(struct rdma_cm_id *id, const void *priv, uint8_t len) {
  return call(FF_T_CM_REJECT, ((struct ffcm_id *)id)->h, 0, NULL, priv, priv ? len : 0, -1, NULL, NULL);
}

EXPORT int rdma_disconnect(struct rdma_cm_id *id) {
  return call(FF_T_CM_DISCONNECT, ((struct ffcm_id *)id)->h, 0, NULL, NULL, 0, -1, NULL, NULL);
}

EXPORT int rdma_notify(struct rdma_cm_id *id, enum ibv_event_type event) { return 0; }
EXPORT int rdma_set_option(struct rdma_cm_id *id, int level, int optname, void *optval, size_t optlen) { return 0; }
EXPORT int rdma_establish(struct rdma_cm_id *id) {
  return call(FF_T_CM_RTU, ((struct ffcm_id *)id)->h, 0, NULL, NULL, 0, -1, NULL, NULL);
}

/* ------------------------------------------------------------------ events */

EXPORT int rdma_get_cm_event(struct rdma_event_channel *ch, struct rdma_cm_event **out) {
  for (;;) {
    struct {
      struct ff_msg m;
      struct ff_rdma_args a;
      uint8_t priv[256];
    } __attribute__((packed)) rec;
    ssize_t n = recv(ch->fd, &rec, sizeof rec, 0);
    if (n < 0) return -1; /* errno as recv set it (EAGAIN for a non-blocking channel) */
    if (n < (ssize_t)(sizeof rec.m + sizeof rec.a) || rec.m.type != FF_T_CM_EVENT) { if (n == 0) return fail(ENODATA); continue; }
    struct ffcm_id *id = find_id(rec.a.h[1]);
    if (!id) continue; /* for an id destroyed meanwhile */
    struct ffcm_event *e = calloc(1, sizeof *e);
    if (!e) return fail(ENOMEM);
    e->ev.event = (enum rdma_cm_event_type)rec.a.h[0];
    e->ev.status = (int)rec.a.h[4];
    uint32_t plen = rec.a.h[5] > sizeof e->priv ? sizeof e->priv : rec.a.h[5];
    memcpy(e->priv, rec.priv, plen);
    e->ev.param.conn.private_data = plen ? e->priv : NULL;
    e->ev.param.conn.private_data_len = (uint8_t)plen;
    e->ev.param.conn.responder_resources = 16;
    e->ev.param.conn.initiator_depth = 16;
    e->ev.param.conn.rnr_retry_count = 7;
    e->ev.param.conn.retry_count = 7;
    e->ev.param.conn.qp_num = rec.a.h[3];
    e->ev.id = &id->id;
    if (e->ev.event == RDMA_CM_EVENT_CONNECT_REQUEST) {
      /* a new id for the incoming connection, on the listener's channel */
      struct ffcm_id *c = calloc(1, sizeof *c);
      if (!c) { free(e); return fail(ENOMEM); }
      c->h = rec.a.h[2];
      c->peer_qpn = rec.a.h[3];
      memcpy(c->peer_gid, rec.m.host_addr, 16);
      c->id.channel = id->id.channel;
      c->id.context = id->id.context;
      c->id.ps = id->id.ps;
      c->id.qp_type = IBV_QPT_RC;
      c->id.verbs = context();
      c->id.port_num = 1;
      get_sin(&c->id.route.addr.src_storage, rec.m.local_addr, rec.m.local_port);
      get_sin(&c->id.route.addr.dst_storage, rec.m.remote_addr, rec.m.remote_port);
      add_id(c);
      e->ev.listen_id = &id->id;
      e->ev.id = &c->id;
    } else if (e->ev.event == RDMA_CM_EVENT_ESTABLISHED && rec.a.h[2] == 1) {
      /* connector side (h2 = 1): the acceptor's QP is ready; make ours ready, then tell it */
      id->peer_qpn = rec.a.h[3];
      memcpy(id->peer_gid, rec.m.host_addr, 16);
      if (id->id.qp) {
        int rc = qp_to(id->id.qp, IBV_QPS_RTR, id->peer_qpn, id->peer_gid);
        if (!rc) rc = qp_to(id->id.qp, IBV_QPS_RTS, 0, NULL);
        if (rc) e->ev.event = RDMA_CM_EVENT_CONNECT_ERROR, e->ev.status = -rc;
      }
      call(FF_T_CM_RTU, id->h, 0, NULL, NULL, 0, -1, NULL, NULL);
    }
    *out = &e->ev;
    id->id.event = &e->ev;
    return 0;
  }
}

EXPORT int rdma_ack_cm_event(struct rdma_cm_event *event) {
  if (event && event->id && event->id->event == event) event->id->event = NULL;
  free(event);
  return 0;
}

EXPORT const char *rdma_event_str(enum rdma_cm_event_type event) {
  static const char *const s[] = {"RDMA_CM_EVENT_ADDR_RESOLVED", "RDMA_CM_EVENT_ADDR_ERROR", "RDMA_CM_EVENT_ROUTE_RESOLVED",
    "RDMA_CM_EVENT_ROUTE_ERROR", "RDMA_CM_EVENT_CONNECT_REQUEST", "RDMA_CM_EVENT_CONNECT_RESPONSE", "RDMA_CM_EVENT_CONNECT_ERROR",
    "RDMA_CM_EVENT_UNREACHABLE", "RDMA_CM_EVENT_REJECTED", "RDMA_CM_EVENT_ESTABLISHED", "RDMA_CM_EVENT_DISCONNECTED",
    "RDMA_CM_EVENT_DEVICE_REMOVAL", "RDMA_CM_EVENT_MULTICAST_JOIN", "RDMA_CM_EVENT_MULTICAST_ERROR", "RDMA_CM_EVENT_ADDR_CHANGE",
    "RDMA_CM_EVENT_TIMEWAIT_EXIT"};
  return (unsigned)event < sizeof s / sizeof *s ? s[event] : "UNKNOWN EVENT";
}

/* ------------------------------------------------------------------ helpers */

EXPORT struct ibv_context **rdma_get_devices(int *num) {
  struct ibv_context **l = calloc(2, sizeof *l);
  if (!l) return NULL;
  l[0] = context();
  if (num) *num = l[0] ? 1 : 0;
  return l;
}
EXPORT void rdma_free_devices(struct ibv_context **list) { free(list); }

EXPORT __be16 rdma_get_src_port(struct rdma_cm_id *id) { return id->route.addr.src_sin.sin_port; }
EXPORT __be16 rdma_get_dst_port(struct rdma_cm_id *id) { return id->route.addr.dst_sin.sin_port; }

EXPORT int rdma_getaddrinfo(const char *node, const char *service, const struct rdma_addrinfo *hints, struct rdma_addrinfo **res) {
  struct addrinfo h = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai;
  if (hints && (hints->ai_flags & RAI_PASSIVE)) h.ai_flags |= AI_PASSIVE;
  if (hints && (hints->ai_flags & RAI_NUMERICHOST)) h.ai_flags |= AI_NUMERICHOST;
  int rc = getaddrinfo(node, service, &h, &ai);
  if (rc) return fail(rc == EAI_SYSTEM ? errno : ENOENT);
  struct rdma_addrinfo *r = calloc(1, sizeof *r);
  struct sockaddr_in *sa = calloc(1, sizeof *sa);
  memcpy(sa, ai->ai_addr, sizeof *sa);
  freeaddrinfo(ai);
  r->ai_family = AF_INET;
  r->ai_qp_type = IBV_QPT_RC;
  r->ai_port_space = RDMA_PS_TCP;
  r->ai_flags = hints ? hints->ai_flags : 0;
  if (r->ai_flags & RAI_PASSIVE) r->ai_src_addr = (struct sockaddr *)sa, r->ai_src_len = sizeof *sa;
  else r->ai_dst_addr = (struct sockaddr *)sa, r->ai_dst_len = sizeof *sa;
  *res = r;
  return 0;
}

EXPORT void rdma_freeaddrinfo(struct rdma_addrinfo *res) {
  while (res) {
    struct rdma_addrinfo *n = res->ai_next;
    free(res->ai_src_addr);
    free(res->ai_dst_addr);
    free(res);
    res = n;
  }
}

/* rsockets are not provided; rpoll on ordinary descriptors (rping polls its CM channel). */
EXPORT int rpoll(struct pollfd *fds, nfds_t nfds, int timeout) { return poll(fds, nfds, timeout); }
