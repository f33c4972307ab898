/* Registered memory the router's engine can reach without a system call.
 *
 * At ibv_reg_mr the whole pages inside the region are moved into a sealed memfd mapped at the
 * same address (contents copied first), and the memfd goes to the router, which maps it too.
 * The engine then copies between applications' registered memory with one memcpy, like a
 * NIC's DMA, instead of process_vm_readv into its own buffer and process_vm_writev out.
 *
 * Only private anonymous read-write memory qualifies (heap and mmap'd buffers, not the stack,
 * files or memory already shared), and only whole pages inside the region, so no neighbouring
 * data becomes shared. A region that partly overlaps an earlier one keeps the slower path; one
 * inside an earlier one reuses its file. The pages stay shared after ibv_dereg_mr (a later
 * registration of the same buffer reuses them). After fork() the child gets private copies, as
 * the kernel gives a child copies of pinned pages: parent and child never share them.
 * FF_VERBS_SHARE_MR=0 turns this off. A write by another thread in the instant between the
 * copy and the remap would be lost; applications register buffers before using them. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "ffv.h"

#define SHARE_MIN 4096 /* one page: even a latency test's small buffer gains */

struct shared_region {
  uintptr_t start, end;
  int fd;
  struct shared_region *next;
};

static pthread_mutex_t share_lock = PTHREAD_MUTEX_INITIALIZER;
static struct shared_region *regions;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* In the child after fork(): every shared region becomes private memory with the same bytes. */
static void unshare_in_child(void) {
  struct shared_region *r = regions;
  regions = NULL;
  pthread_mutex_init(&share_lock, NULL);
  while (r) {
    struct shared_region *next = r->next;
    size_t len = r->end - r->start;
    void *copy = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy != MAP_FAILED) {
      memcpy(copy, (void *)r->start, len);
      /* Moves the private copy over the shared mapping in one step. */
      if (mremap(copy, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)r->start) == MAP_FAILED) munmap(copy, len);
    }
    close(r->fd);
    free(r);
    r = next;
  }
}

static void install_atfork(void) { pthread_atfork(NULL, NULL, unshare_in_child); }

/* 1 if [start, end) is covered, without gaps, by private anonymous read-write mappings. */
static int private_anonymous(uintptr_t start, uintptr_t end) {
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return 0;
  char line[512];
  uintptr_t covered = start;
  int ok = 1;
  while (ok && covered < end && fgets(line, sizeof line, f)) {
    unsigned long lo, hi, off, inode;
    unsigned dmaj, dmin;
    char perms[5];
    int n = 0;
    if (sscanf(line, "%lx-%lx %4s %lx %x:%x %lu %n", &lo, &hi, perms, &off, &dmaj, &dmin, &inode, &n) < 7) continue;
    if (hi <= covered || lo >= end) continue;
    const char *path = line + n;
    int anon = inode == 0 && (path[0] == '\0' || path[0] == '\n' || strncmp(path, "[heap]", 6) == 0);
    if (lo > covered || strcmp(perms, "rw-p") != 0 || !anon) ok = 0;
    covered = hi;
  }
  fclose(f);
  return ok && covered >= end;
}

static int new_shared_file(uintptr_t start, size_t len) {
  int fd = ff_sealed_memfd("ffv-mr", len);
  if (fd < 0) return -1;
  void *tmp = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (tmp == MAP_FAILED) goto fail;
  memcpy(tmp, (void *)start, len);
  if (mmap((void *)start, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) goto fail;
  munmap(tmp, len);
  return fd;
fail:
  if (tmp != MAP_FAILED) munmap(tmp, len);
  close(fd);
  return -1;
}

int ffv_share_region(void *addr, size_t length, struct ffv_view *v) {
  const char *env = getenv("FF_VERBS_SHARE_MR");
  if (env && env[0] == '0') return -1;
  uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
  if (pg != 4096) return -1; /* the wire protocol counts views in 4 KiB pages */
  uintptr_t start = ((uintptr_t)addr + pg - 1) & ~(pg - 1);
  uintptr_t end = ((uintptr_t)addr + length) & ~(pg - 1);
  if ((uintptr_t)addr + length < (uintptr_t)addr || end <= start || end - start < SHARE_MIN) return -1;
  pthread_once(&atfork_once, install_atfork);
  pthread_mutex_lock(&share_lock);
  int fd = -1;
  struct shared_region *r;
  for (r = regions; r; r = r->next) {
    if (r->end <= start || r->start >= end) continue;
    if (start >= r->start && end <= r->end) fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0); /* inside: reuse */
    break;                                                                      /* partial overlap: no view */
  }
  if (r) {
    if (fd >= 0) {
      v->addr = start;
      v->len = end - start;
      v->file_offset = start - r->start;
    }
    pthread_mutex_unlock(&share_lock);
    return fd;
  }
  struct shared_region *n = malloc(sizeof *n);
  int own = n && private_anonymous(start, end) ? new_shared_file(start, end - start) : -1;
  if (own < 0) {
    free(n);
    pthread_mutex_unlock(&share_lock);
    return -1;
  }
  *n = (struct shared_region){start, end, own, regions};
  regions = n;
  fd = fcntl(own, F_DUPFD_CLOEXEC, 0);
  pthread_mutex_unlock(&share_lock);
  if (fd < 0) return -1;
  v->addr = start;
  v->len = end - start;
  v->file_offset = 0;
  return fd;
}
