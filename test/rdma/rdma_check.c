/* RDMA semantics checker for FreeFlow's full RDMA mode (run with LD_LIBRARY_PATH=build/verbs).
 *   rdma_check server PORT
 *   rdma_check client SERVER_IP PORT integrity|badrkey|flush|killpeer
 *   rdma_check unsupported | fork
 * The two ends exchange QP numbers, GIDs, buffer addresses and rkeys over TCP, then run the
 * named check. Every check prints "ok <name> ..." or "FAIL <name> ..." and the exit code is
 * the number of failures. Payloads are deterministic pseudo-random patterns, verified byte by
 * byte on the receiving side. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUF (8u << 20)
static int fails;
#define OK(name, ...) (printf("ok " name "\n", ##__VA_ARGS__), fflush(stdout))
#define FAIL(name, ...) (printf("FAIL " name "\n", ##__VA_ARGS__), fflush(stdout), fails++)
#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(100); } while (0)

struct info {
  uint32_t qpn;
  uint8_t gid[16];
  uint64_t addr;
  uint32_t rkey;
  uint64_t counter_addr; /* 8-byte aligned word for atomics */
};

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_qp *qp;
static struct ibv_mr *mr;
static uint8_t *buf;
static uint64_t *counter;

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

static void setup(void) {
  int n;
  struct ibv_device **l = ibv_get_device_list(&n);
  if (!l || n < 1) DIE("no RDMA device");
  ctx = ibv_open_device(l[0]);
  if (!ctx) DIE("open device");
  pd = ibv_alloc_pd(ctx);
  cq = ibv_create_cq(ctx, 256, NULL, NULL, 0);
  if (!pd || !cq) DIE("pd/cq");
  buf = aligned_alloc(4096, BUF + 4096);
  memset(buf, 0, BUF + 4096);
  counter = (uint64_t *)(buf + BUF);
  mr = ibv_reg_mr(pd, buf, BUF + 4096, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC);
  if (!mr) DIE("reg_mr: %s", strerror(errno));
  struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                .cap = {.max_send_wr = 64, .max_recv_wr = 64, .max_send_sge = 4, .max_recv_sge = 4}};
  qp = ibv_create_qp(pd, &ia);
  if (!qp) DIE("create_qp: %s", strerror(errno));
  struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
                          .qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC};
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) DIE("INIT");
}

static void connect_qp(const struct info *r) {
  struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024, .dest_qp_num = r->qpn, .max_dest_rd_atomic = 1,
                          .min_rnr_timer = 12, .ah_attr = {.is_global = 1, .port_num = 1}};
  memcpy(a.ah_attr.grh.dgid.raw, r->gid, 16);
  a.ah_attr.grh.hop_limit = 1;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    DIE("RTR");
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
    DIE("RTS");
}

static struct info local_info(void) {
  struct info i = {.qpn = qp->qp_num, .addr = (uintptr_t)buf, .rkey = mr->rkey, .counter_addr = (uintptr_t)counter};
  union ibv_gid g;
  if (ibv_query_gid(ctx, 1, 0, &g)) DIE("query_gid");
  memcpy(i.gid, g.raw, 16);
  return i;
}

/* Waits up to ms for one completion. Returns 1 with *wc filled, 0 on timeout. */
static int wait_wc(struct ibv_wc *wc, int ms) {
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    int n = ibv_poll_cq(cq, 1, wc);
    if (n < 0) DIE("poll_cq");
    if (n == 1) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 > ms) return 0;
    usleep(50);
  }
}

static int post(enum ibv_wr_opcode op, uint64_t laddr, uint32_t len, uint64_t raddr, uint32_t rkey, uint64_t id) {
  struct ibv_sge s = {.addr = laddr, .length = len, .lkey = mr->lkey};
  struct ibv_send_wr wr = {.wr_id = id, .sg_list = &s, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED}, *bad;
  wr.wr.rdma.remote_addr = raddr;
  wr.wr.rdma.rkey = rkey;
  return ibv_post_send(qp, &wr, &bad);
}
static int post_atomic(enum ibv_wr_opcode op, uint64_t laddr, uint64_t raddr, uint32_t rkey, uint64_t cmp_add, uint64_t swap) {
  struct ibv_sge s = {.addr = laddr, .length = 8, .lkey = mr->lkey};
  struct ibv_send_wr wr = {.wr_id = 77, .sg_list = &s, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED}, *bad;
  wr.wr.atomic.remote_addr = raddr;
  wr.wr.atomic.rkey = rkey;
  wr.wr.atomic.compare_add = cmp_add;
  wr.wr.atomic.swap = swap;
  return ibv_post_send(qp, &wr, &bad);
}
static int post_recv(uint64_t addr, uint32_t len, uint64_t id) {
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

enum { CMD_CHECK_SEND = 1, CMD_CHECK_WRITE, CMD_FILL_READ, CMD_DIE, CMD_BYE, CMD_IMM };

static int server(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1)) DIE("listen");
  printf("listening %d\n", port);
  fflush(stdout);
  int fd = accept(ls, NULL, NULL);
  setup();
  struct info me = local_info(), peer;
  xfull(fd, &me, sizeof me, 1);
  xfull(fd, &peer, sizeof peer, 0);
  connect_qp(&peer);
  /* receives for SEND and WRITE_WITH_IMM */
  post_recv((uintptr_t)buf, 1u << 20, 1);
  post_recv((uintptr_t)buf + (1u << 20), 64, 2);
  say(fd, 1); /* ready */
  for (;;) {
    uint32_t cmd = hear(fd), arg = hear(fd);
    struct ibv_wc wc;
    uint32_t res = 0;
    if (cmd == CMD_CHECK_SEND) {
      res = wait_wc(&wc, 5000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV && wc.byte_len == arg && same(buf, arg, 11);
    } else if (cmd == CMD_CHECK_WRITE) {
      res = same(buf + (2u << 20), arg, 22);
    } else if (cmd == CMD_IMM) {
      res = wait_wc(&wc, 5000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM && (wc.wc_flags & IBV_WC_WITH_IMM) &&
            ntohl(wc.imm_data) == arg;
    } else if (cmd == CMD_FILL_READ) {
      fill(buf + (4u << 20), arg, 33);
      *counter = 1000;
      res = 1;
    } else if (cmd == CMD_DIE) {
      say(fd, 1);
      raise(SIGKILL); /* a killed application: the router must clean up and the peer see an error */
    } else
      break;
    say(fd, res);
  }
  return 0;
}

static int client(const char *ip, int port, const char *mode) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, ip, &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) DIE("connect %s:%d: %s", ip, port, strerror(errno));
  setup();
  struct info me = local_info(), peer;
  xfull(fd, &peer, sizeof peer, 0);
  xfull(fd, &me, sizeof me, 1);
  connect_qp(&peer);
  hear(fd);
  struct ibv_wc wc;
  if (!strcmp(mode, "integrity")) {
    uint32_t n = (1u << 20) - 100; /* SEND with two SGEs */
    fill(buf, n, 11);
    struct ibv_sge s[2] = {{(uintptr_t)buf, 4096, mr->lkey}, {(uintptr_t)buf + 4096, n - 4096, mr->lkey}};
    struct ibv_send_wr wr = {.wr_id = 5, .sg_list = s, .num_sge = 2, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED}, *bad;
    if (ibv_post_send(qp, &wr, &bad)) DIE("post send");
    int okc = wait_wc(&wc, 5000) && wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_SEND && wc.wr_id == 5;
    say(fd, CMD_CHECK_SEND), say(fd, n);
    if (okc && hear(fd)) OK("send %u bytes in 2 SGEs, receiver verified every byte", n);
    else FAIL("send");
    n = 4u << 20; /* RDMA WRITE 4 MiB at offset 2 MiB of the server's buffer */
    fill(buf + (2u << 20), n, 22);
    okc = !post(IBV_WR_RDMA_WRITE, (uintptr_t)buf + (2u << 20), n, peer.addr + (2u << 20), peer.rkey, 6) && wait_wc(&wc, 5000) &&
          wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_WRITE;
    say(fd, CMD_CHECK_WRITE), say(fd, n);
    if (okc && hear(fd)) OK("write %u bytes, receiver verified every byte", n);
    else FAIL("write");
    say(fd, CMD_FILL_READ), say(fd, n);
    hear(fd);
    memset(buf, 0, n);
    okc = !post(IBV_WR_RDMA_READ, (uintptr_t)buf, n, peer.addr + (4u << 20), peer.rkey, 7) && wait_wc(&wc, 5000) &&
          wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_READ && wc.byte_len == n;
    if (okc && same(buf, n, 33)) OK("read %u bytes, every byte as the responder wrote it", n);
    else FAIL("read");
    int good = 1;
    for (int i = 0; i < 100 && good; i++)
      good = !post_atomic(IBV_WR_ATOMIC_FETCH_AND_ADD, (uintptr_t)buf, peer.counter_addr, peer.rkey, 3, 0) && wait_wc(&wc, 5000) &&
             wc.status == IBV_WC_SUCCESS && *(uint64_t *)buf == 1000u + 3u * (uint64_t)i;
    good = good && !post_atomic(IBV_WR_ATOMIC_CMP_AND_SWP, (uintptr_t)buf, peer.counter_addr, peer.rkey, 1300, 42) && wait_wc(&wc, 5000) &&
           wc.status == IBV_WC_SUCCESS && *(uint64_t *)buf == 1300;
    good = good && !post_atomic(IBV_WR_ATOMIC_CMP_AND_SWP, (uintptr_t)buf, peer.counter_addr, peer.rkey, 1300, 7) && wait_wc(&wc, 5000) &&
           wc.status == IBV_WC_SUCCESS && *(uint64_t *)buf == 42;
    if (good) OK("atomics fetch_add x100 and cmp_swap return and leave the expected values");
    else FAIL("atomics");
    struct ibv_send_wr iw = {.wr_id = 8, .sg_list = s, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE_WITH_IMM, .send_flags = IBV_SEND_SIGNALED,
                             .imm_data = htonl(0xabcd1234)};
    s[0].length = 16;
    iw.wr.rdma.remote_addr = peer.addr + (6u << 20);
    iw.wr.rdma.rkey = peer.rkey;
    okc = !ibv_post_send(qp, &iw, &bad) && wait_wc(&wc, 5000) && wc.status == IBV_WC_SUCCESS;
    say(fd, CMD_IMM), say(fd, 0xabcd1234);
    if (okc && hear(fd)) OK("write with immediate: the responder got the immediate value");
    else FAIL("write-imm");
  } else if (!strcmp(mode, "badrkey")) {
    int okc = !post(IBV_WR_RDMA_WRITE, (uintptr_t)buf, 64, peer.addr, peer.rkey ^ 0x5a5a5a5a, 9) && !post(IBV_WR_RDMA_WRITE, (uintptr_t)buf, 64, peer.addr, peer.rkey, 10);
    int got = okc && wait_wc(&wc, 5000);
    if (got && wc.wr_id == 9 && wc.status == IBV_WC_REM_ACCESS_ERR) OK("badrkey status=%s", ibv_wc_status_str(wc.status));
    else FAIL("badrkey status=%d", got ? (int)wc.status : -1);
    got = wait_wc(&wc, 5000);
    if (got && wc.wr_id == 10 && wc.status == IBV_WC_WR_FLUSH_ERR) OK("after-error: next request flushed (%s)", ibv_wc_status_str(wc.status));
    else FAIL("after-error status=%d", got ? (int)wc.status : -1);
    struct ibv_qp_attr qa;
    struct ibv_qp_init_attr qi;
    if (!ibv_query_qp(qp, &qa, IBV_QP_STATE, &qi) && qa.qp_state == IBV_QPS_ERR) OK("qp-state-err");
    else FAIL("qp-state-err");
  } else if (!strcmp(mode, "range")) {
    int got = !post(IBV_WR_RDMA_WRITE, (uintptr_t)buf, 8192, peer.addr + BUF, peer.rkey, 9) && wait_wc(&wc, 5000);
    if (got && wc.status == IBV_WC_REM_ACCESS_ERR) OK("range: write past the end of the remote MR refused (%s)", ibv_wc_status_str(wc.status));
    else FAIL("range status=%d", got ? (int)wc.status : -1);
  } else if (!strcmp(mode, "flush")) {
    for (int i = 0; i < 4; i++) post_recv((uintptr_t)buf + 4096u * i, 4096, 100 + i);
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE)) DIE("ERR");
    int n = 0;
    while (n < 4 && wait_wc(&wc, 5000) && wc.status == IBV_WC_WR_FLUSH_ERR && wc.wr_id == 100u + n) n++;
    if (n == 4) OK("flush: 4 posted receives completed with %s after modify to ERR", ibv_wc_status_str(IBV_WC_WR_FLUSH_ERR));
    else FAIL("flush got %d", n);
  } else if (!strcmp(mode, "killpeer")) {
    say(fd, CMD_DIE), say(fd, 0);
    hear(fd);
    usleep(500000); /* the peer is SIGKILLed now; its router session closes */
    int got = !post(IBV_WR_RDMA_WRITE, (uintptr_t)buf, 4096, peer.addr, peer.rkey, 11) && wait_wc(&wc, 10000);
    if (got && wc.status != IBV_WC_SUCCESS) OK("killpeer: write to a killed peer completes with %s (no hang)", ibv_wc_status_str(wc.status));
    else FAIL("killpeer got=%d status=%d", got, got ? (int)wc.status : -1);
    close(fd);
    return fails;
  }
  say(fd, CMD_BYE), say(fd, 0);
  ibv_destroy_qp(qp);
  ibv_dereg_mr(mr);
  ibv_destroy_cq(cq);
  ibv_dealloc_pd(pd);
  ibv_close_device(ctx);
  return fails;
}

/* Entry points FreeFlow does not implement fail cleanly: NULL or an error, errno set, no crash. */
static int unsupported(void) {
  setup();
  struct ibv_wq_init_attr wa = {.wq_type = IBV_WQT_RQ, .max_wr = 16, .max_sge = 1, .pd = pd, .cq = cq};
  errno = 0;
  struct ibv_wq *wq = ibv_create_wq(ctx, &wa);
  if (!wq && errno == EOPNOTSUPP) OK("create_wq: NULL, errno EOPNOTSUPP");
  else FAIL("create_wq wq=%p errno=%d", (void *)wq, errno);
  struct ibv_qp_init_attr ud = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_UD, .cap = {.max_send_wr = 1, .max_recv_wr = 1}};
  errno = 0;
  struct ibv_qp *q = ibv_create_qp(pd, &ud);
  if (!q && errno == EOPNOTSUPP) OK("create_qp UD: NULL, errno EOPNOTSUPP");
  else FAIL("create_qp UD qp=%p errno=%d", (void *)q, errno);
  errno = 0;
  struct ibv_mw *mw = ibv_alloc_mw(pd, IBV_MW_TYPE_1);
  if (!mw) OK("alloc_mw: NULL (errno %d)", errno);
  else FAIL("alloc_mw");
  struct ibv_cq_init_attr_ex cx = {.cqe = 16};
  errno = 0;
  struct ibv_cq_ex *c = ibv_create_cq_ex(ctx, &cx);
  if (!c && errno == EOPNOTSUPP) OK("create_cq_ex: NULL, errno EOPNOTSUPP");
  else FAIL("create_cq_ex errno=%d", errno);
  errno = 0;
  if (!ibv_qp_to_qp_ex(qp) && errno == EOPNOTSUPP) OK("qp_to_qp_ex: NULL, errno EOPNOTSUPP");
  else FAIL("qp_to_qp_ex");
  errno = 0;
  int r = ibv_resize_cq(cq, 512);
  if (r == EOPNOTSUPP) OK("resize_cq: EOPNOTSUPP");
  else FAIL("resize_cq %d", r);
  return fails;
}

/* Registered memory moved into shared memory (the library's MR views) must still behave as
 * private memory across fork(): the child sees the parent's bytes, and its writes do not
 * reach the parent. */
static int fork_check(void) {
  setup();
  FILE *maps = fopen("/proc/self/maps", "r");
  char line[512];
  int shared = 0;
  while (maps && fgets(line, sizeof line, maps)) shared |= strstr(line, "memfd:ffv-mr") != NULL;
  if (maps) fclose(maps);
  if (shared) OK("view: the registered buffer is backed by shared memory");
  else FAIL("view: no memfd:ffv-mr mapping after ibv_reg_mr");
  const size_t n = 1u << 20;
  fill(buf, n, 21);
  pid_t pid = fork();
  if (pid == 0) {
    int saw = same(buf, n, 21);
    fill(buf, n, 22);
    _exit(saw ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) OK("fork: the child saw the parent's bytes");
  else FAIL("fork: child status %d", st);
  if (same(buf, n, 21)) OK("fork: the child's writes did not reach the parent");
  else FAIL("fork: the parent's registered buffer changed when the child wrote to its copy");
  return fails;
}

int main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "unsupported")) return unsupported();
  if (argc >= 2 && !strcmp(argv[1], "fork")) return fork_check();
  if (argc >= 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
  if (argc >= 5 && !strcmp(argv[1], "client")) return client(argv[2], atoi(argv[3]), argv[4]);
  fprintf(stderr, "usage: rdma_check server PORT | client IP PORT integrity|badrkey|range|flush|killpeer\n");
  return 2;
}
