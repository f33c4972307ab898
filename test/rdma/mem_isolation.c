/* Attacks on the memory the RDMA engine reaches (docs/security-rdma-memory.md); run with
 * LD_LIBRARY_PATH=build/verbs inside a testbed container.
 *
 *   mem_isolation handover exit            process P registers memory, forks C (which inherits
 *                                          P's router connection and QP rings) and exits; C makes
 *                                          a victim V with P's pid (clone3 set_tid: the same
 *                                          address space layout as P, a secret where P's MR was)
 *                                          and RDMA READs and WRITEs through P's QPs and MRs.
 *   mem_isolation handover exec PROG...    the same, but P execs PROG (a setuid program, run as
 *                                          a non-root user) instead of exiting; C holds PROG's
 *                                          stdin open so that it waits.
 *   mem_isolation memfile ADDRFILE PROG... the kernel property the design rests on: a
 *                                          /proc/self/mem file opened before an exec reads and
 *                                          writes nothing afterwards (also at an address the new
 *                                          image maps, which the harness writes into ADDRFILE).
 *   mem_isolation regions                  MRs over memory the caller has not mapped (a hole, a
 *                                          range mapped only in another process, 1 TiB), over
 *                                          read-only memory with local write; controls.
 *
 * Each check prints "ok <what>" or "FAIL <what>" (with a control run first that must work);
 * the last line is "RESULT {json}". Exit code: the number of failures. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fails;
#define OK(...) (printf("ok "), printf(__VA_ARGS__), printf("\n"), fflush(stdout))
#define FAIL(...) (printf("FAIL "), printf(__VA_ARGS__), printf("\n"), fflush(stdout), fails++)
#define CHECK(c, ...) ((c) ? OK(__VA_ARGS__) : FAIL(__VA_ARGS__))
#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); exit(100); } while (0)

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_qp *qa, *qb;

static void setup(void) {
  int n;
  struct ibv_device **l = ibv_get_device_list(&n);
  if (!l || n < 1) DIE("no RDMA device");
  ctx = ibv_open_device(l[0]);
  pd = ctx ? ibv_alloc_pd(ctx) : NULL;
  cq = ctx ? ibv_create_cq(ctx, 64, NULL, NULL, 0) : NULL;
  if (!pd || !cq) DIE("pd/cq");
}

/* Two QPs of this process connected to each other (same GID), ready to send. */
static void loopback(void) {
  struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
                                .cap = {.max_send_wr = 16, .max_recv_wr = 16, .max_send_sge = 1, .max_recv_sge = 1}};
  qa = ibv_create_qp(pd, &ia);
  qb = ibv_create_qp(pd, &ia);
  if (!qa || !qb) DIE("create_qp: %s", strerror(errno));
  union ibv_gid gid;
  if (ibv_query_gid(ctx, 1, 0, &gid)) DIE("query_gid");
  struct ibv_qp *q[2] = {qa, qb};
  for (int i = 0; i < 2; i++) {
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
                            .qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ};
    if (ibv_modify_qp(q[i], &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) DIE("INIT");
    struct ibv_qp_attr r = {.qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024, .dest_qp_num = q[1 - i]->qp_num, .max_dest_rd_atomic = 1,
                            .min_rnr_timer = 12, .ah_attr = {.is_global = 1, .port_num = 1}};
    r.ah_attr.grh.dgid = gid;
    r.ah_attr.grh.hop_limit = 1;
    if (ibv_modify_qp(q[i], &r, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
      DIE("RTR: %s", strerror(errno));
    struct ibv_qp_attr s = {.qp_state = IBV_QPS_RTS, .timeout = 14, .retry_cnt = 7, .rnr_retry = 7, .max_rd_atomic = 1};
    if (ibv_modify_qp(q[i], &s, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
      DIE("RTS");
  }
}

/* One RDMA READ or WRITE on qa between local [l, l+len) (lkey) and remote address r (rkey).
 * Returns the completion status, or -1 if none came within ms. */
static int rdma(int op, void *l, uint32_t len, uint32_t lkey, void *r, uint32_t rkey, int ms) {
  struct ibv_sge sge = {.addr = (uintptr_t)l, .length = len, .lkey = lkey};
  struct ibv_send_wr wr = {.wr_id = 7, .sg_list = &sge, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED};
  wr.wr.rdma.remote_addr = (uintptr_t)r;
  wr.wr.rdma.rkey = rkey;
  struct ibv_send_wr *bad;
  if (ibv_post_send(qa, &wr, &bad)) return -2;
  for (int i = 0; i < ms * 10; i++) {
    struct ibv_wc wc;
    int n = ibv_poll_cq(cq, 1, &wc);
    if (n > 0) return wc.status;
    usleep(100);
  }
  return -1;
}

static const char *st(int s) { return s == -1 ? "no completion" : s == -2 ? "post failed" : ibv_wc_status_str(s); }

/* A child with exactly pid `want` (clone3 set_tid; root in the pid namespace); 0 in the child. */
static pid_t clone_as(pid_t want) {
  struct clone_args a;
  memset(&a, 0, sizeof a);
  a.exit_signal = SIGCHLD;
  a.set_tid = (uintptr_t)&want;
  a.set_tid_size = 1;
  return (pid_t)syscall(SYS_clone3, &a, sizeof a);
}

/* ------------------------------------------------------------------ handover */

#define SECRET "V-SECRET-0123456789"

static int handover(int argc, char **argv) {
  int exec_mode = argc > 2 && !strcmp(argv[2], "exec");
  /* A pid that still names a process group or session cannot be reused: if we lead one (the
   * harness starts us so), P is a child of ours, and we only reap it. */
  if (!exec_mode && (getpgrp() == getpid() || getsid(0) == getpid())) {
    pid_t p = fork();
    if (p < 0) DIE("fork");
    if (p > 0) {
      int status;
      waitpid(p, &status, 0);
      return 0; /* C reports (its output ends this program's) */
    }
  }
  setup();
  loopback();
  /* shared: MAP_SHARED anonymous (no view: already shared memory), seen by P, C and V alike.
   * target: on P's stack (no view either), so every access goes to P's memory itself. */
  char *shared = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  char target[4096];
  memset(target, 0, sizeof target);
  strcpy(target, "P-OWN-BUFFER");
  int acc = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  struct ibv_mr *ms = ibv_reg_mr(pd, shared, 8192, acc), *mt = ibv_reg_mr(pd, target, sizeof target, acc);
  if (!ms || !mt) DIE("reg_mr: %s", strerror(errno));
  /* Control: P's own RDMA between its own buffers works. */
  strcpy(shared, "CONTROL-WRITE");
  int s = rdma(IBV_WR_RDMA_WRITE, shared, 64, ms->lkey, target, mt->rkey, 3000);
  CHECK(s == IBV_WC_SUCCESS && !strcmp(target, "CONTROL-WRITE"), "control: P writes into its own MR (%s)", st(s));
  strcpy(target, "P-OWN-BUFFER");
  memset(shared, 0, 64);
  s = rdma(IBV_WR_RDMA_READ, shared, 64, ms->lkey, target, mt->rkey, 3000);
  CHECK(s == IBV_WC_SUCCESS && !strcmp(shared, "P-OWN-BUFFER"), "control: P reads its own MR (%s)", st(s));

  int ready[2], hold[2];
  if (pipe(ready) || pipe(hold)) DIE("pipe");
  pid_t p = getpid();
  pid_t c = fork();
  if (c < 0) DIE("fork");
  if (c > 0) { /* P */
    char x;
    close(ready[1]);
    if (read(ready[0], &x, 1) != 1) _exit(1); /* C has its pidfd of P */
    if (!exec_mode) _exit(0);
    dup2(hold[0], 0);
    close(hold[1]);
    execv(argv[3], argv + 3);
    _exit(127);
  }
  /* C: the router connection and QP/CQ rings are inherited; P goes away. */
  close(ready[0]);
  close(hold[0]);
  int pidfd = (int)syscall(SYS_pidfd_open, p, 0);
  if (write(ready[1], "x", 1) != 1) DIE("ready");
  int reused = 0, victim_status = -1;
  pid_t v = -1;
  int vpipe[2];
  if (pipe(vpipe)) DIE("pipe");
  if (!exec_mode) {
    struct pollfd pf = {pidfd, POLLIN, 0};
    poll(&pf, 1, 5000); /* P has exited; now wait until its parent reaped it and take its pid */
    for (int i = 0; i < 300 && v < 0; i++) {
      v = clone_as(p);
      if (v < 0) usleep(10000);
    }
    if (v == 0) { /* V: P's pid, P's layout; a secret where P's MR was */
      char x;
      close(vpipe[1]);
      memset(target, 0, sizeof target);
      strcpy(target, SECRET);
      strcpy(shared + 4096, "V-READY");
      if (read(vpipe[0], &x, 1) < 0) _exit(3);
      _exit(strcmp(target, SECRET) ? 1 : 0); /* 1: someone wrote into V's memory */
    }
    reused = v == p;
    if (!reused) printf("# could not take pid %d for a victim: %s\n", (int)p, strerror(errno));
    for (int i = 0; i < 300 && strcmp(shared + 4096, "V-READY"); i++) usleep(10000);
  } else {
    usleep(300000); /* P has exec'd */
  }
  /* The attack through P's QP and MRs: READ what is at `target` now into `shared` (seen by C),
   * and WRITE into it. */
  memset(shared, 0, 64);
  int rs = rdma(IBV_WR_RDMA_READ, shared, 64, ms->lkey, target, mt->rkey, 3000);
  int leaked = !strcmp(shared, SECRET);
  int leaked_any = rs == IBV_WC_SUCCESS;
  strcpy(shared, "ATTACKER-WROTE-THIS");
  int ws = rdma(IBV_WR_RDMA_WRITE, shared, 64, ms->lkey, target, mt->rkey, 3000);
  if (v > 0) {
    close(vpipe[1]);
    int status;
    waitpid(v, &status, 0);
    victim_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  close(hold[1]); /* PROG's stdin: it ends */
  if (exec_mode) {
    CHECK(rs != IBV_WC_SUCCESS, "after P exec'd %s: RDMA READ through P's session does not succeed (%s)", argv[3], st(rs));
    CHECK(ws != IBV_WC_SUCCESS, "after P exec'd %s: RDMA WRITE through P's session does not succeed (%s)", argv[3], st(ws));
  } else {
    CHECK(reused, "a victim process got P's pid %d", (int)p);
    CHECK(!leaked && !leaked_any, "RDMA READ through the dead process's session gets nothing (%s%s)", st(rs), leaked ? ", victim's secret read" : "");
    CHECK(ws != IBV_WC_SUCCESS && victim_status == 0, "RDMA WRITE through it does not reach the victim (%s, victim %s)", st(ws),
          victim_status == 0 ? "untouched" : victim_status == 1 ? "OVERWRITTEN" : "?");
  }
  printf("RESULT {\"mode\":\"%s\",\"reused\":%d,\"read\":\"%s\",\"leaked\":%d,\"write\":\"%s\",\"victim\":%d,\"fails\":%d}\n", exec_mode ? "exec" : "exit",
         reused, st(rs), leaked, st(ws), victim_status, fails);
  fflush(stdout);
  return fails;
}

/* ------------------------------------------------------------------ memfile */

static char probe[64] = "BEFORE-EXEC";

static int memfile(char **argv) {
  int fd = open("/proc/self/mem", O_RDWR); /* not close-on-exec: C inherits it too */
  int ready[2], hold[2];
  if (fd < 0 || pipe(ready) || pipe(hold)) DIE("open/pipe");
  char buf[64] = {0};
  ssize_t n = pread(fd, buf, sizeof buf, (off_t)(uintptr_t)probe);
  CHECK(n == sizeof buf && !strcmp(buf, "BEFORE-EXEC"), "control: the mem file reads its own process before the exec (%zd)", n);
  pid_t p = getpid();
  if (fork() > 0) {
    char x;
    close(ready[1]);
    if (read(ready[0], &x, 1) != 1) _exit(1);
    dup2(hold[0], 0);
    close(hold[1]);
    execv(argv[3], argv + 3);
    _exit(127);
  }
  close(ready[0]);
  close(hold[0]);
  if (write(ready[1], "x", 1) != 1) DIE("ready");
  usleep(300000);
  memset(buf, 0, sizeof buf);
  ssize_t r = pread(fd, buf, sizeof buf, (off_t)(uintptr_t)probe);
  ssize_t w = pwrite(fd, "X", 1, (off_t)(uintptr_t)probe);
  /* An address the new image maps (the harness reads its maps as root and writes it here). */
  unsigned long there = 0;
  char line[64] = {0};
  printf("NEED-ADDRESS %d\n", (int)p);
  fflush(stdout);
  for (int i = 0; i < 100 && !there; i++) {
    FILE *f = fopen(argv[2], "r");
    if (f && fgets(line, sizeof line, f)) there = strtoul(line, NULL, 16);
    if (f) fclose(f);
    if (!there) usleep(50000);
  }
  ssize_t r2 = there ? pread(fd, buf, 8, (off_t)there) : -2;
  close(hold[1]);
  CHECK(r <= 0, "after exec of %s: the old mem file reads nothing at the old address (%zd)", argv[3], r);
  CHECK(w <= 0, "... and writes nothing (%zd)", w);
  CHECK(there && r2 <= 0, "... nor reads at %#lx, mapped in the new image (%zd)", there, r2);
  printf("RESULT {\"read\":%zd,\"write\":%zd,\"readNew\":%zd,\"fails\":%d}\n", r, w, r2, fails);
  return fails;
}

/* ------------------------------------------------------------------ regions */

static int regions(void) {
  setup();
  int rw = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  char stack[4096];
  struct ibv_mr *m = ibv_reg_mr(pd, stack, sizeof stack, rw);
  CHECK(m, "control: an MR over the caller's own stack buffer (%s)", m ? "registered" : strerror(errno));
  char *heap = malloc(100000);
  m = ibv_reg_mr(pd, heap, 100000, rw);
  CHECK(m, "control: an MR over heap memory (%s)", m ? "registered" : strerror(errno));
  char *three = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  munmap(three + 4096, 4096);
  errno = 0;
  m = ibv_reg_mr(pd, three + 4096, 4096, rw);
  CHECK(!m && errno == EFAULT, "an MR over a hole in the address space is refused (%s)", m ? "registered" : strerror(errno));
  errno = 0;
  m = ibv_reg_mr(pd, three, 3 * 4096, rw);
  CHECK(!m && errno == EFAULT, "an MR spanning a hole is refused (%s)", m ? "registered" : strerror(errno));
  errno = 0;
  m = ibv_reg_mr(pd, (void *)0x7f0000000000ull, 1ull << 40, IBV_ACCESS_REMOTE_READ);
  CHECK(!m && errno == EFAULT, "an MR over 1 TiB of the address space is refused (%s)", m ? "registered" : strerror(errno));
  /* Memory another process has mapped at an address this one has not. */
  void *want = three + 4096;
  int sync[2];
  if (pipe(sync)) DIE("pipe");
  pid_t v = fork();
  if (v == 0) {
    char *x = mmap(want, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (x != MAP_FAILED) strcpy(x, "FOREIGN-SECRET");
    if (write(sync[1], "x", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  char x;
  if (read(sync[0], &x, 1) != 1) DIE("sync");
  errno = 0;
  m = ibv_reg_mr(pd, want, 4096, rw);
  CHECK(!m && errno == EFAULT, "an MR over memory only another process maps is refused (%s)", m ? "registered" : strerror(errno));
  kill(v, SIGKILL);
  waitpid(v, NULL, 0);
  char *ro = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  errno = 0;
  m = ibv_reg_mr(pd, ro, 4096, IBV_ACCESS_LOCAL_WRITE);
  CHECK(!m && errno == EFAULT, "an MR with local write over read-only memory is refused (%s)", m ? "registered" : strerror(errno));
  m = ibv_reg_mr(pd, ro, 4096, IBV_ACCESS_REMOTE_READ);
  CHECK(m, "control: read-only memory for remote read only (%s)", m ? "registered" : strerror(errno));
  printf("RESULT {\"fails\":%d}\n", fails);
  return fails;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 2 && !strcmp(argv[1], "handover") && (!strcmp(argv[2], "exit") || (!strcmp(argv[2], "exec") && argc > 3))) return handover(argc, argv);
  if (argc > 3 && !strcmp(argv[1], "memfile")) return memfile(argv);
  if (argc > 1 && !strcmp(argv[1], "regions")) return regions();
  fprintf(stderr, "usage: mem_isolation handover exit | handover exec PROG [ARGS] | memfile ADDRFILE PROG [ARGS] | regions\n");
  return 100;
}
