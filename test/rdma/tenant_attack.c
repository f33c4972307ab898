/* A hostile container against the router's shared resources (docs/security-rdma-memory.md):
 * hand-made requests on router sessions, as the verbs library makes them.
 *
 *   tenant_attack SOCKET inode SECONDS     prints the inode of this container's doorbell page
 *   tenant_attack SOCKET scribble SECONDS  sets every worker_of_cpu entry of its doorbell page to
 *                                          a worker that does not exist and garbles every bell,
 *                                          again and again
 *   tenant_attack SOCKET ring SECONDS      rings every worker's bell in a loop, for nothing
 *   tenant_attack SOCKET spin SECONDS      the same CPU use without ringing (the control)
 *   tenant_attack SOCKET cqs SESSIONS HOLD creates CQs (a ring each, which the router maps) over
 *                                          SESSIONS sessions until one is refused, then holds
 *                                          them HOLD seconds
 *   tenant_attack SOCKET sessions N HOLD   opens N sessions, each bound with RDMA_OPEN; holds
 *
 * and prints "RESULT {json}". */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../../libfsocket/ff_wire.h"
#include "../../libfsocket/verbs/ff_rdma_shm.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct req {
  struct ff_msg m;
  struct ff_rdma_args a;
} __attribute__((packed));

static int session(const char *path) {
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
  if (s < 0 || connect(s, (struct sockaddr *)&sun, sizeof sun) < 0) return -errno;
  return s;
}

/* One request (with fd_in attached if >= 0); returns the reply status (-EPIPE if the router
 * closed the session), the reply's first handle in *h0 and its descriptor in *fd_out. */
static int call(int s, int type, const uint32_t *h, int nh, int fd_in, uint32_t *h0, int *fd_out) {
  static uint32_t seq;
  struct req q, rep;
  memset(&q, 0, sizeof q);
  q.m.magic = FF_WIRE_MAGIC;
  q.m.version = FF_WIRE_VERSION;
  q.m.type = (uint16_t)type;
  q.m.seq = ++seq;
  q.m.pid = (uint32_t)getpid();
  q.m.payload_len = sizeof q.a;
  for (int i = 0; i < nh; i++) q.a.h[i] = h[i];
  struct iovec iov = {&q, sizeof q};
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd_in >= 0) {
    mh.msg_control = ctl.b;
    mh.msg_controllen = sizeof ctl.b;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd_in, sizeof(int));
  }
  if (sendmsg(s, &mh, MSG_NOSIGNAL) != sizeof q) return -EPIPE;
  struct iovec riov = {&rep, sizeof rep};
  struct msghdr rmh = {.msg_iov = &riov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
  memset(&rep, 0, sizeof rep);
  ssize_t n = recvmsg(s, &rmh, MSG_CMSG_CLOEXEC);
  if (n < (ssize_t)sizeof rep.m) return -EPIPE;
  int fd = -1;
  struct cmsghdr *c = CMSG_FIRSTHDR(&rmh);
  if (c && c->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(c), sizeof fd);
  if (fd_out) *fd_out = fd;
  else if (fd >= 0) close(fd);
  if (h0) *h0 = rep.a.h[0];
  return rep.m.status;
}

/* RDMA_OPEN on a new router session; returns the doorbell page's descriptor. The session stays
 * open (its socket is not closed) while we attack. */
static int doorbell_fd(const char *path) {
  int s = session(path);
  if (s < 0) return s;
  int fd = -1;
  int st = call(s, FF_T_RDMA_OPEN, NULL, 0, -1, NULL, &fd);
  if (st < 0) return st;
  return fd < 0 ? -ENOENT : fd;
}

static int cqs(const char *path, int nsessions, int hold) {
  int ss[64];
  if (nsessions > 64) nsessions = 64;
  for (int i = 0; i < nsessions; i++) {
    ss[i] = session(path);
    if (ss[i] < 0 || call(ss[i], FF_T_RDMA_OPEN, NULL, 0, -1, NULL, NULL) < 0) return 1;
  }
  size_t len = ff_cq_shm_size(1);
  long created = 0;
  int err = 0;
  for (long i = 0; !err && i < 1000000; i++) {
    int ring = ff_sealed_memfd("ff-attack-cq", len);
    uint32_t h[2] = {1, 0};
    int st = call(ss[i % nsessions], FF_T_RDMA_CREATE_CQ, h, 2, ring, NULL, NULL);
    close(ring);
    if (st == 0) created++;
    else err = st;
  }
  printf("RESULT {\"created\":%ld,\"error\":%d,\"sessions\":%d}\n", created, err, nsessions);
  fflush(stdout);
  sleep((unsigned)hold);
  return 0;
}

static int sessions(const char *path, int n, int hold) {
  int opened = 0, bound = 0, refused = 0, closed = 0, err = 0;
  for (int i = 0; i < n; i++) {
    int s = session(path);
    if (s < 0) {
      err = s;
      continue;
    }
    opened++;
    int st = call(s, FF_T_RDMA_OPEN, NULL, 0, -1, NULL, NULL);
    if (st == 0) bound++;
    else if (st == -EPIPE) closed++;
    else {
      refused++;
      err = st;
    }
  }
  printf("RESULT {\"opened\":%d,\"bound\":%d,\"refused\":%d,\"closed\":%d,\"error\":%d}\n", opened, bound, refused, closed, err);
  fflush(stdout);
  sleep((unsigned)hold);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: tenant_attack SOCKET inode|scribble|ring|spin SECONDS | cqs SESSIONS HOLD | sessions N HOLD\n");
    return 100;
  }
  if (!strcmp(argv[2], "cqs") && argc > 4) return cqs(argv[1], atoi(argv[3]), atoi(argv[4]));
  if (!strcmp(argv[2], "sessions") && argc > 4) return sessions(argv[1], atoi(argv[3]), atoi(argv[4]));
  int fd = doorbell_fd(argv[1]);
  if (fd < 0) {
    fprintf(stderr, "no doorbell page: %s\n", strerror(-fd));
    return 1;
  }
  struct stat st;
  fstat(fd, &st);
  struct ff_doorbells *db = mmap(NULL, sizeof *db, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (db == MAP_FAILED) return 2;
  double end = now() + atof(argv[3]);
  unsigned long rings = 0, scribbles = 0;
  if (!strcmp(argv[2], "scribble")) {
    while (now() < end) {
      for (int c = 0; c < FF_DOORBELL_MAX_CPUS; c++) db->worker_of_cpu[c] = FF_DOORBELL_MAX_WORKERS - 1;
      for (int w = 0; w < FF_DOORBELL_MAX_WORKERS; w++) db->bell[w].seq = 0x5a5a5a5a + (uint32_t)scribbles;
      scribbles++;
      usleep(1000);
    }
  } else if (!strcmp(argv[2], "ring")) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    while (now() < end)
      for (int k = 0; k < 64; k++, rings++) ff_doorbell_ring_worker(db, (unsigned)(rings % (unsigned long)ncpu));
  } else if (!strcmp(argv[2], "spin")) {
    volatile unsigned long x = 0;
    while (now() < end)
      for (int k = 0; k < 100000; k++) x++;
  } else {
    sleep((unsigned)atoi(argv[3]));
  }
  printf("RESULT {\"inode\":%lu,\"rings\":%lu,\"scribbles\":%lu}\n", (unsigned long)st.st_ino, rings, scribbles);
  return 0;
}
