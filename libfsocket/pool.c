#define _GNU_SOURCE
#include "pool.h"
#include <pthread.h>
#include <string.h>
#include <time.h>
#include "real.h"

#define FF_POOL_DESTS 16
#define FF_POOL_FRESH_NS (5LL * 1000 * 1000 * 1000)

struct dest_pool {
  bool used;
  struct ff_endpoint dst;
  struct ff_endpoint host;
  int nfds;
  int fds[FF_POOL_MAX_BATCH];
  long long filled_ns;
  long long last_use_ns;
  int batch; /* next batch size */
};

static struct dest_pool pools[FF_POOL_DESTS];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool same(const struct ff_endpoint *a, const struct ff_endpoint *b) {
  return a->port == b->port && memcmp(&a->addr, &b->addr, sizeof a->addr) == 0;
}

static void drain(struct dest_pool *p) {
  for (int i = 0; i < p->nfds; i++) ff_real.close(p->fds[i]);
  p->nfds = 0;
}

/* The pool for dst; creates one (evicting the least recently used) if asked to. */
static struct dest_pool *find(const struct ff_endpoint *dst, bool create) {
  struct dest_pool *lru = &pools[0];
  for (int i = 0; i < FF_POOL_DESTS; i++) {
    if (pools[i].used && same(&pools[i].dst, dst)) return &pools[i];
    if (!pools[i].used || (lru->used && pools[i].last_use_ns < lru->last_use_ns)) lru = &pools[i];
  }
  if (!create) return NULL;
  drain(lru);
  memset(lru, 0, sizeof *lru);
  lru->used = true;
  lru->dst = *dst;
  lru->batch = 1;
  return lru;
}

bool ff_pool_take(const struct ff_endpoint *dst, struct ff_pooled *out) {
  bool ok = false;
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, false);
  if (p && p->nfds > 0) {
    long long now = now_ns();
    if (now - p->filled_ns > FF_POOL_FRESH_NS) {
      drain(p);
    } else {
      out->fd = p->fds[--p->nfds];
      out->host = p->host;
      p->last_use_ns = now;
      ok = true;
    }
  }
  pthread_mutex_unlock(&pool_lock);
  return ok;
}

void ff_pool_put(const struct ff_endpoint *dst, const int *fds, int n, const struct ff_endpoint *host) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, true);
  drain(p); /* sockets of an older batch may point at an older host endpoint */
  for (int i = 0; i < n && i < FF_POOL_MAX_BATCH; i++) p->fds[p->nfds++] = fds[i];
  for (int i = FF_POOL_MAX_BATCH; i < n; i++) ff_real.close(fds[i]);
  p->host = *host;
  p->filled_ns = p->last_use_ns = now_ns();
  pthread_mutex_unlock(&pool_lock);
}

int ff_pool_batch_size(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, true);
  long long now = now_ns();
  /* Used again within a second: fetch more next time; idle for long: start small again. */
  if (p->last_use_ns && now - p->last_use_ns < 1000000000LL) p->batch = p->batch * 4 > FF_POOL_MAX_BATCH ? FF_POOL_MAX_BATCH : p->batch * 4;
  else if (p->last_use_ns) p->batch = 1;
  p->last_use_ns = now;
  int n = p->batch;
  pthread_mutex_unlock(&pool_lock);
  return n;
}

void ff_pool_after_fork(void) {
  pthread_mutex_init(&pool_lock, NULL);
  for (int i = 0; i < FF_POOL_DESTS; i++) {
    drain(&pools[i]);
    pools[i].used = false;
  }
}
