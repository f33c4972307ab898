/* Tenant isolation checks of FreeFlow's RDMA mode (run with LD_LIBRARY_PATH=build/verbs; the
 * test test/rdma-qp-isolation.test.ts orchestrates them across containers and hosts).
 *   qp_isolation qpns N                        create N QPs, print their numbers on one line
 *   qp_isolation attacker K NUMS GO            hold K QPs, write their numbers to NUMS, wait for GO
 *                                              ("target victim_qpn victim_gid addr rkey"), then
 *                                              SEND and WRITE from the QP numbered target
 *   qp_isolation victim PORT DONE              a QP connected to `peer`; after DONE exists, checks
 *                                              that nothing else reached its QP or memory
 *   qp_isolation peer IP PORT NUMS TRIES       creates QPs until one has a number in NUMS, then
 *                                              connects it to the victim and sends one message
 *   qp_isolation access-server PORT QPACC MRACC
 *   qp_isolation access-client IP PORT write|read|atomic
 *   qp_isolation rnr-server PORT NQP TIMER
 *   qp_isolation rnr-client IP PORT NQP NMSG SIZE RNR_RETRY HOLD_MS
 *   qp_isolation stream-server PORT N          N messages each way with `stream-client`, each
 *   qp_isolation stream-client IP PORT N GO    verified byte by byte (the client starts at GO)
 * Exchanges QP numbers, GIDs, addresses and rkeys over TCP, like rdma_check. Prints "ok ..." /
 * "FAIL ..." lines and result lines the test parses; exit code = failures (or 100 on setup
 * errors). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF (8u << 20)
#define MAXQ 64
static int fails;
#define OK(name, ...) (printf("ok " name "\n", ##__VA_ARGS__), fflush(stdout))
#define FAIL(name, ...) (printf("FAIL " name "\n", ##__VA_ARGS__), fflush(stdout), fails++)
#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(100); } while (0)

struct info {
  uint32_t qpn;
  uint8_t gid[16];
  uint64_t addr;
  uint32_t rkey;
  uint64_t counter_addr;
};

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_mr *mr;
static uint8_t *buf;
static uint64_t *counter;
static struct ibv_qp *qps[MAXQ];
static int nq;

static void fill(uint8_t *p, size_t n, uint32_t seed) {
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    p[i] = (uint8_t)x;
  }
}
static int same(const uint8_t *p, size_t n, uint32_t seed) {
  uint8_t *e = malloc(n);
  fill(e, n, seed);
  int r = memcmp(p, e, n) == 0;
  free(e);
  return r;
}
static int all(const uint8_t *p, size_t n, uint8_t v) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != v) return 0;
  return 1;
}

static void open_dev(int mr_access, int cqe) {
  int n;
  struct ibv_device **l = ibv_get_device_list(&n);
  if (!l || n < 1) DIE("no RDMA device");
  ctx = ibv_open_device(l[0]);
  if (!ctx) DIE("open device");
  pd = ibv_alloc_pd(ctx);
  cq = ibv_create_cq(ctx, cqe, NULL, NULL, 0);
  if (!pd || !cq) DIE("pd/cq");
  buf = aligned_alloc(4096, BUF + 4096);
  memset(buf, 0, BUF + 4096);
  counter = (uint64_t *)(buf + BUF);
  mr = ibv_reg_mr(pd, buf, BUF + 4096, IBV_ACCESS_LOCAL_WRITE | mr_access);
  if (!mr) DIE("reg_mr: %s", strerror(errno));
}

static struct ibv_qp *new_qp(int depth) {
  struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                .cap = {.max_send_wr = depth, .max_recv_wr = depth, .max_send_sge = 1, .max_recv_sge = 1}};
  return ibv_create_qp(pd, &ia);
}

static void to_init(struct ibv_qp *qp, int qp_access) {
  struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1, .qp_access_flags = qp_access};
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) DIE("INIT: %s", strerror(errno));
}

static void to_rts(struct ibv_qp *qp, uint32_t dqpn, const uint8_t *dgid, int timer, int rnr_retry) {
  struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024, .dest_qp_num = dqpn, .max_dest_rd_atomic = 1,
                          .min_rnr_timer = timer, .ah_attr = {.is_global = 1, .port_num = 1}};
  memcpy(a.ah_attr.grh.dgid.raw, dgid, 16);
  a.ah_attr.grh.hop_limit = 1;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    DIE("RTR: %s", strerror(errno));
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = rnr_retry;
  a.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
    DIE("RTS: %s", strerror(errno));
}

static struct info info_of(struct ibv_qp *qp) {
  struct info i = {.qpn = qp ? qp->qp_num : 0, .addr = (uintptr_t)buf, .rkey = mr->rkey, .counter_addr = (uintptr_t)counter};
  union ibv_gid g;
  if (ibv_query_gid(ctx, 1, 0, &g)) DIE("query_gid");
  memcpy(i.gid, g.raw, 16);
  return i;
}

static long ms_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Waits up to ms for one completion. Returns 1 with *wc filled, 0 on timeout. */
static int wait_wc(struct ibv_wc *wc, int ms) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n < 0) DIE("poll_cq");
    if (n == 1) return 1;
    if (ms_since(&t0) > ms) return 0;
    usleep(50);
  }
}

static int post_op(struct ibv_qp *qp, enum ibv_wr_opcode op, uint64_t laddr, uint32_t len, uint64_t raddr, uint32_t rkey, uint64_t id) {
  struct ibv_sge s = {.addr = laddr, .length = len, .lkey = mr->lkey};
  struct ibv_send_wr wr = {.wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED}, *bad;
  wr.wr.rdma.remote_addr = raddr;
  wr.wr.rdma.rkey = rkey;
  if (op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
    wr.wr.atomic.remote_addr = raddr;
    wr.wr.atomic.rkey = rkey;
    wr.wr.atomic.compare_add = 1;
  }
  return ibv_post_send(qp, &wr, &bad);
}
static int post_recv(struct ibv_qp *qp, uint64_t addr, uint32_t len, uint64_t id) {
  struct ibv_sge s = {.addr = addr, .length = len, .lkey = mr->lkey};
  struct ibv_recv_wr wr = {.wr_id = id, .sg_list = &s, .num_sge = 1}, *bad;
  return ibv_post_recv(qp, &wr, &bad);
}

static void xfull(int fd, void *p, size_t n, int wr) {
  for (size_t d = 0; d < n;) {
    ssize_t r = wr ? write(fd, (char *)p + d, n - d) : read(fd, (char *)p + d, n - d);
    if (r <= 0) DIE("tcp %s", wr ? "write" : "read");
    d += (size_t)r;
  }
}
static void say(int fd, uint32_t v) { xfull(fd, &v, 4, 1); }
static uint32_t hear(int fd) { uint32_t v; xfull(fd, &v, 4, 0); return v; }

static int tcp_server(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1)) DIE("listen");
  printf("listening %d\n", port);
  fflush(stdout);
  int fd = accept(ls, NULL, NULL);
  close(ls);
  return fd;
}
static int tcp_client(const char *ip, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, ip, &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) DIE("connect %s:%d: %s", ip, port, strerror(errno));
  return fd;
}

static void wait_file(const char *path, int ms) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (access(path, F_OK)) {
    if (ms_since(&t0) > ms) DIE("no %s after %d ms", path, ms);
    usleep(20000);
  }
}

static void hex(const uint8_t *g, char *out) {
  for (int i = 0; i < 16; i++) sprintf(out + 2 * i, "%02x", g[i]);
}
static void unhex(const char *s, uint8_t *g) {
  for (int i = 0; i < 16; i++) sscanf(s + 2 * i, "%2hhx", &g[i]);
}

/* ------------------------------------------------------------------ QP numbers */

static int qpns(int n) {
  open_dev(0, 16);
  printf("qpns");
  for (int i = 0; i < n; i++) {
    struct ibv_qp *q = new_qp(4);
    if (!q) DIE("create_qp %d: %s", i, strerror(errno));
    printf(" %u", q->qp_num);
  }
  printf("\n");
  return 0;
}

/* A co-located attacker holds K QPs; the test finds the victim a remote peer whose number is
 * one of them (so that the attacker really has the number of the victim's peer), then tells
 * the attacker to send into the victim's QP from that QP. */
static int attacker(int k, const char *nums, const char *go) {
  open_dev(0, 64);
  struct ibv_qp **held = calloc((size_t)k, sizeof *held);
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s.tmp", nums);
  FILE *f = fopen(tmp, "w");
  for (int i = 0; i < k; i++) {
    held[i] = new_qp(4);
    if (!held[i]) DIE("create_qp %d: %s", i, strerror(errno));
    fprintf(f, "%u\n", held[i]->qp_num);
  }
  fclose(f);
  rename(tmp, nums);
  printf("numbers written\n");
  fflush(stdout);
  wait_file(go, 180000);
  unsigned target, vqpn, vrkey;
  unsigned long long vaddr;
  char gh[64];
  f = fopen(go, "r");
  if (!f || fscanf(f, "%u %u %63s %llu %u", &target, &vqpn, gh, &vaddr, &vrkey) != 5) DIE("bad go file");
  fclose(f);
  uint8_t vgid[16];
  unhex(gh, vgid);
  struct ibv_qp *q = NULL;
  for (int i = 0; i < k; i++)
    if (held[i]->qp_num == target) q = held[i];
  if (!q) DIE("no QP numbered %u", target);
  printf("attacker qpn=%u (the number of the victim's peer)\n", q->qp_num);
  to_init(q, 0);
  to_rts(q, vqpn, vgid, 12, 7);
  struct ibv_wc wc;
  memset(buf, 'E', 4096);
  int got = !post_op(q, IBV_WR_SEND, (uintptr_t)buf, 64, 0, 0, 1) && wait_wc(&wc, 10000);
  printf("attack send status=%d (%s)\n", got ? (int)wc.status : -1, got ? ibv_wc_status_str(wc.status) : "no completion");
  /* Again with a fresh connection of the same QP: RDMA WRITE into the victim's buffer. */
  struct ibv_qp_attr a = {.qp_state = IBV_QPS_RESET};
  if (ibv_modify_qp(q, &a, IBV_QP_STATE)) DIE("RESET");
  to_init(q, 0);
  to_rts(q, vqpn, vgid, 12, 7);
  got = !post_op(q, IBV_WR_RDMA_WRITE, (uintptr_t)buf, 64, vaddr + 8192, vrkey, 2) && wait_wc(&wc, 10000);
  printf("attack write status=%d (%s)\n", got ? (int)wc.status : -1, got ? ibv_wc_status_str(wc.status) : "no completion");
  fflush(stdout);
  return 0;
}

static int victim(int port, const char *done) {
  int fd = tcp_server(port);
  open_dev(IBV_ACCESS_REMOTE_WRITE, 64);
  struct ibv_qp *q = new_qp(16);
  if (!q) DIE("create_qp");
  to_init(q, IBV_ACCESS_REMOTE_WRITE);
  struct info me = info_of(q), peer;
  xfull(fd, &me, sizeof me, 1);
  xfull(fd, &peer, sizeof peer, 0);
  to_rts(q, peer.qpn, peer.gid, 12, 7);
  memset(buf + 8192, 'V', 4096);
  post_recv(q, (uintptr_t)buf, 4096, 1);
  post_recv(q, (uintptr_t)buf + 4096, 4096, 2);
  say(fd, 1);
  struct ibv_wc wc;
  if (wait_wc(&wc, 10000) && wc.status == IBV_WC_SUCCESS && wc.wr_id == 1 && wc.byte_len == 64 && same(buf, 64, 44))
    OK("legit: the peer's message arrived intact");
  else
    FAIL("legit");
  char g[33];
  hex(me.gid, g);
  printf("victim qpn=%u gid=%s addr=%llu rkey=%u peer=%u\n", q->qp_num, g, (unsigned long long)me.addr, me.rkey, peer.qpn);
  fflush(stdout);
  wait_file(done, 180000);
  if (wait_wc(&wc, 1000)) FAIL("a foreign completion reached the victim: status=%d len=%u", wc.status, wc.byte_len);
  else OK("no foreign receive reached the victim's QP");
  if (all(buf + 4096, 4096, 0) && all(buf + 8192, 4096, 'V')) OK("the victim's memory is unchanged");
  else FAIL("the victim's memory changed");
  say(fd, 2);
  close(fd);
  return fails;
}

static int peer(const char *ip, int port, const char *nums, int tries) {
  wait_file(nums, 180000);
  FILE *f = fopen(nums, "r");
  uint32_t *set = NULL;
  size_t n = 0, cap = 0;
  unsigned v;
  while (f && fscanf(f, "%u", &v) == 1) {
    if (n == cap) set = realloc(set, (cap = cap ? 2 * cap : 1024) * sizeof *set);
    set[n++] = v;
  }
  if (f) fclose(f);
  open_dev(0, 64);
  struct ibv_qp *q = NULL;
  int t;
  for (t = 1; t <= tries && !q; t++) {
    struct ibv_qp *c = new_qp(16);
    if (!c) DIE("create_qp: %s", strerror(errno));
    for (size_t i = 0; i < n && !q; i++)
      if (set[i] == c->qp_num) q = c;
    if (!q) ibv_destroy_qp(c);
  }
  if (!q) {
    printf("no collision after %d tries\n", tries);
    return 4;
  }
  printf("collision qpn=%u after %d tries\n", q->qp_num, t - 1);
  fflush(stdout);
  int fd = tcp_client(ip, port);
  to_init(q, 0);
  struct info me = info_of(q), vic;
  xfull(fd, &vic, sizeof vic, 0);
  xfull(fd, &me, sizeof me, 1);
  to_rts(q, vic.qpn, vic.gid, 12, 7);
  hear(fd);
  fill(buf, 64, 44);
  struct ibv_wc wc;
  if (!post_op(q, IBV_WR_SEND, (uintptr_t)buf, 64, 0, 0, 1) && wait_wc(&wc, 10000) && wc.status == IBV_WC_SUCCESS) OK("legit message sent");
  else FAIL("legit send");
  hear(fd); /* the victim is done: keep this QP (and its number) alive until then */
  return fails;
}

/* ------------------------------------------------------------------ access flags */

enum { CMD_CHECK = 1, CMD_BYE, CMD_POST, CMD_COUNT };

static int access_server(int port, int qpacc, int mracc) {
  int fd = tcp_server(port);
  open_dev(mracc, 64);
  struct ibv_qp *q = new_qp(16);
  if (!q) DIE("create_qp");
  to_init(q, qpacc);
  fill(buf, 4096, 55);
  *counter = 1000;
  struct info me = info_of(q), peer;
  xfull(fd, &me, sizeof me, 1);
  xfull(fd, &peer, sizeof peer, 0);
  to_rts(q, peer.qpn, peer.gid, 12, 7);
  post_recv(q, (uintptr_t)buf + (1u << 20), 4096, 1);
  say(fd, 1);
  for (;;) {
    uint32_t cmd = hear(fd);
    if (cmd != CMD_CHECK) break;
    struct ibv_qp_attr a;
    struct ibv_qp_init_attr ia;
    int err = !ibv_query_qp(q, &a, IBV_QP_STATE, &ia) && a.qp_state == IBV_QPS_ERR;
    say(fd, (uint32_t)(same(buf, 4096, 55) && *counter == 1000) | (uint32_t)err << 1);
  }
  return 0;
}

static int access_client(const char *ip, int port, const char *op) {
  int fd = tcp_client(ip, port);
  open_dev(IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ, 64);
  struct ibv_qp *q = new_qp(16);
  if (!q) DIE("create_qp");
  to_init(q, 0);
  struct info me = info_of(q), peer;
  xfull(fd, &peer, sizeof peer, 0);
  xfull(fd, &me, sizeof me, 1);
  to_rts(q, peer.qpn, peer.gid, 12, 7);
  hear(fd);
  fill(buf, 4096, 66);
  struct ibv_wc wc;
  int rc = !strcmp(op, "write")  ? post_op(q, IBV_WR_RDMA_WRITE, (uintptr_t)buf, 4096, peer.addr, peer.rkey, 1)
           : !strcmp(op, "read") ? post_op(q, IBV_WR_RDMA_READ, (uintptr_t)buf + 8192, 4096, peer.addr, peer.rkey, 1)
                                 : post_op(q, IBV_WR_ATOMIC_FETCH_AND_ADD, (uintptr_t)buf + 8192, 8, peer.counter_addr, peer.rkey, 1);
  int got = !rc && wait_wc(&wc, 10000);
  printf("op=%s status=%d (%s)\n", op, got ? (int)wc.status : -1, got ? ibv_wc_status_str(wc.status) : "no completion");
  if (got && wc.status == IBV_WC_SUCCESS && !strcmp(op, "read")) printf("read data %s\n", same(buf + 8192, 4096, 55) ? "intact" : "wrong");
  usleep(100000);
  say(fd, CMD_CHECK);
  uint32_t r = hear(fd);
  printf("responder unchanged=%u qp_err=%u\n", r & 1, (r >> 1) & 1);
  say(fd, CMD_BYE);
  fflush(stdout);
  return 0;
}

/* ------------------------------------------------------------------ receiver not ready */

static int rnr_server(int port, int n, int timer) {
  if (n > MAXQ) DIE("too many QPs");
  int fd = tcp_server(port);
  open_dev(0, 4096);
  nq = n;
  for (int i = 0; i < n; i++) {
    if (!(qps[i] = new_qp(64))) DIE("create_qp");
    to_init(qps[i], 0);
  }
  for (int i = 0; i < n; i++) {
    struct info me = info_of(qps[i]), peer;
    xfull(fd, &me, sizeof me, 1);
    xfull(fd, &peer, sizeof peer, 0);
    to_rts(qps[i], peer.qpn, peer.gid, timer, 7);
  }
  say(fd, 1);
  for (;;) {
    uint32_t cmd = hear(fd), arg = hear(fd);
    if (cmd == CMD_POST) {
      for (int i = 0; i < n; i++)
        for (uint32_t k = 0; k < arg; k++) post_recv(qps[i], (uintptr_t)buf, BUF, k);
      say(fd, 1);
    } else if (cmd == CMD_COUNT) {
      uint32_t ok = 0, bad = 0;
      struct ibv_wc wc;
      while (ok + bad < arg && wait_wc(&wc, 20000)) {
        if (wc.status == IBV_WC_SUCCESS) ok++;
        else bad++;
      }
      say(fd, ok);
    } else
      break;
  }
  return 0;
}

static int rnr_client(const char *ip, int port, int n, int msgs, uint32_t size, int rnr_retry, int hold_ms) {
  if (n > MAXQ || msgs > 64 || size > BUF) DIE("bad arguments");
  int fd = tcp_client(ip, port);
  open_dev(0, 4096);
  for (int i = 0; i < n; i++) {
    if (!(qps[i] = new_qp(64))) DIE("create_qp");
    to_init(qps[i], 0);
  }
  for (int i = 0; i < n; i++) {
    struct info me = info_of(qps[i]), peer;
    xfull(fd, &peer, sizeof peer, 0);
    xfull(fd, &me, sizeof me, 1);
    to_rts(qps[i], peer.qpn, peer.gid, 12, rnr_retry);
  }
  hear(fd);
  fill(buf, size, 77);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < msgs; k++)
      if (post_op(qps[i], IBV_WR_SEND, (uintptr_t)buf, size, 0, 0, (uint64_t)i << 32 | (uint32_t)k)) DIE("post_send");
  printf("posted %d sends of %u bytes on %d QPs, rnr_retry %d\n", n * msgs, size, n, rnr_retry);
  fflush(stdout);
  int total = n * msgs, ok = 0, rnr = 0, flush = 0, other = 0;
  struct ibv_wc wc;
  if (rnr_retry == 7) {
    while (ms_since(&t0) < hold_ms)
      if (ibv_poll_cq(cq, 1, &wc) == 1) other++;
      else usleep(1000);
    printf("completed before any receive was posted: %d\n", other);
    printf("holding done\n");
    fflush(stdout);
    say(fd, CMD_POST), say(fd, (uint32_t)msgs);
    hear(fd);
  }
  while (ok + rnr + flush + other < total && wait_wc(&wc, 30000)) {
    if (wc.status == IBV_WC_SUCCESS) ok++;
    else if (wc.status == IBV_WC_RNR_RETRY_EXC_ERR) rnr++;
    else if (wc.status == IBV_WC_WR_FLUSH_ERR) flush++;
    else other++;
  }
  printf("completions success=%d rnr_retry_exceeded=%d flushed=%d other=%d after %ld ms\n", ok, rnr, flush, other, ms_since(&t0));
  if (rnr_retry == 7) {
    say(fd, CMD_COUNT), say(fd, (uint32_t)total);
    printf("receiver got %u messages\n", hear(fd));
  }
  say(fd, CMD_BYE), say(fd, 0);
  fflush(stdout);
  return 0;
}

/* ------------------------------------------------------------------ a verified stream */

/* Message i each way is 4 KiB of pattern i; both sides check every byte and the count. */
static int stream(int fd, struct ibv_qp *q, int n, int client) {
  const uint32_t sz = 4096;
  uint8_t *rx = buf + (1u << 20), *tx = buf;
  int good = 0;
  for (int i = 0; i < n; i++) {
    if (post_recv(q, (uintptr_t)rx, sz, 1000u + i)) DIE("post_recv");
    if (client) { /* both receives are posted before either side sends */
      say(fd, (uint32_t)i);
      hear(fd);
    } else {
      hear(fd);
      say(fd, (uint32_t)i);
    }
    fill(tx, sz, 1 + 2u * i + (uint32_t)client);
    struct ibv_wc wc;
    int sent = 0, recvd = 0;
    if (post_op(q, IBV_WR_SEND, (uintptr_t)tx, sz, 0, 0, (uint64_t)i)) DIE("post_send");
    while ((!sent || !recvd) && wait_wc(&wc, 10000)) {
      if (wc.opcode == IBV_WC_SEND) sent = wc.status == IBV_WC_SUCCESS ? 1 : -1;
      else recvd = wc.status == IBV_WC_SUCCESS && wc.byte_len == sz && wc.wr_id == 1000u + i && same(rx, sz, 1 + 2u * i + (uint32_t)!client) ? 1 : -1;
    }
    if (sent == 1 && recvd == 1) good++;
    else {
      printf("message %d: sent=%d received=%d\n", i, sent, recvd);
      break;
    }
  }
  printf("stream %d/%d messages each way verified\n", good, n);
  fflush(stdout);
  return good == n ? 0 : 1;
}

static int stream_server(int port, int n) {
  int fd = tcp_server(port);
  open_dev(IBV_ACCESS_REMOTE_WRITE, 64);
  struct ibv_qp *q = new_qp(16);
  to_init(q, IBV_ACCESS_REMOTE_WRITE);
  struct info me = info_of(q), peer;
  xfull(fd, &me, sizeof me, 1);
  xfull(fd, &peer, sizeof peer, 0);
  to_rts(q, peer.qpn, peer.gid, 12, 7);
  printf("server qpn=%u peer=%u\n", q->qp_num, peer.qpn);
  fflush(stdout);
  return stream(fd, q, n, 0);
}

static int stream_client(const char *ip, int port, int n, const char *go) {
  int fd = tcp_client(ip, port);
  open_dev(IBV_ACCESS_REMOTE_WRITE, 64);
  struct ibv_qp *q = new_qp(16);
  to_init(q, IBV_ACCESS_REMOTE_WRITE);
  struct info me = info_of(q), peer;
  xfull(fd, &peer, sizeof peer, 0);
  xfull(fd, &me, sizeof me, 1);
  to_rts(q, peer.qpn, peer.gid, 12, 7);
  printf("client qpn=%u peer=%u\n", q->qp_num, peer.qpn);
  fflush(stdout);
  wait_file(go, 60000);
  return stream(fd, q, n, 1);
}

int main(int argc, char **argv) {
  const char *m = argc > 1 ? argv[1] : "";
  if (!strcmp(m, "qpns") && argc == 3) return qpns(atoi(argv[2]));
  if (!strcmp(m, "attacker") && argc == 5) return attacker(atoi(argv[2]), argv[3], argv[4]);
  if (!strcmp(m, "victim") && argc == 4) return victim(atoi(argv[2]), argv[3]);
  if (!strcmp(m, "peer") && argc == 6) return peer(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]));
  if (!strcmp(m, "access-server") && argc == 5) return access_server(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (!strcmp(m, "access-client") && argc == 5) return access_client(argv[2], atoi(argv[3]), argv[4]);
  if (!strcmp(m, "rnr-server") && argc == 5) return rnr_server(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
  if (!strcmp(m, "rnr-client") && argc == 9)
    return rnr_client(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), (uint32_t)atoi(argv[6]), atoi(argv[7]), atoi(argv[8]));
  if (!strcmp(m, "stream-server") && argc == 4) return stream_server(atoi(argv[2]), atoi(argv[3]));
  if (!strcmp(m, "stream-client") && argc == 6) return stream_client(argv[2], atoi(argv[3]), atoi(argv[4]), argv[5]);
  fprintf(stderr, "usage: see the comment at the top of qp_isolation.c\n");
  return 2;
}
