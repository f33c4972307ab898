#define _GNU_SOURCE
#include "pool.h"
#include <pthread.h>
#include <string.h>
#include <time.h>
#include "real.h"

#define FF_POOL_DESTS 16
#define FF_POOL_FRESH_NS (5LL * 1000 * 1000 * 1000)
#define FF_POOL_BUSY_NS (100LL * 1000 * 1000) /* refills closer than this: grow the batch */
#define FF_POOL_SHORT_NS (1000LL * 1000 * 1000) /* a connection closed sooner was short-lived */
#define FF_POOL_STORM 3                         /* this many short-lived ones in a row: a storm */

struct dest_pool {
  bool used;
  struct ff_endpoint dst;
  struct ff_endpoint host;
  int nfds;
  int fds[FF_POOL_MAX_BATCH * 2]; /* a batch plus the refill that arrives before it runs out */
  uint16_t ports[FF_POOL_MAX_BATCH * 2];
  long long born_ns[FF_POOL_MAX_BATCH * 2];
  long long last_use_ns;
  long long last_refill_ns;
  int batch; /* next batch size */
  int short_lived;          /* connections that lived < FF_POOL_SHORT_NS, counted since ... */
  long long last_short_ns;  /* ... the last of them closed (reset after a quiet second) */
};

static struct dest_pool pools[FF_POOL_DESTS];
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void drain(struct dest_pool *p) {
  for (int i = 0; i < p->nfds; i++) ff_real.close(p->fds[i]);
  p->nfds = 0;
}

/* The pool for dst; creates one (evicting the least recently used) if asked to. */
static struct dest_pool *find(const struct ff_endpoint *dst, bool create) {
  struct dest_pool *lru = &pools[0];
  for (int i = 0; i < FF_POOL_DESTS; i++) {
    if (pools[i].used && ff_endpoint_equal(&pools[i].dst, dst)) return &pools[i];
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

/* Next batch: 4 times bigger, up to FF_POOL_MAX_BATCH (1, 4, 16, 32). */
static void grow(struct dest_pool *p) {
  p->batch = p->batch * 4 > FF_POOL_MAX_BATCH ? FF_POOL_MAX_BATCH : p->batch * 4;
}

/* Refills that keep pace never empty the pool, so the batch would stay at the size it had when
 * it last ran dry (often 4): a client that needs refills this often gets bigger batches, so the
 * routers' per-request work (a wake-up, the reply, one announcement frame) is shared by more
 * connections. Measured with wrk Connection: close: 4 sockets per request cost the two routers
 * ~80 CPU-us per connection. */
static void grow_if_busy(struct dest_pool *p, long long now) {
  if (p->last_refill_ns && now - p->last_refill_ns < FF_POOL_BUSY_NS) grow(p);
  p->last_refill_ns = now;
}

/* Removes the oldest socket (FIFO) from the pool. */
static void pop_front(struct dest_pool *p) {
  p->nfds--;
  memmove(p->fds, p->fds + 1, p->nfds * sizeof p->fds[0]);
  memmove(p->ports, p->ports + 1, p->nfds * sizeof p->ports[0]);
  memmove(p->born_ns, p->born_ns + 1, p->nfds * sizeof p->born_ns[0]);
}

bool ff_pool_take(const struct ff_endpoint *dst, struct ff_pooled *out, bool *low) {
  bool ok = false;
  *low = false;
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, false);
  long long now = now_ns();
  /* Oldest first (FIFO), dropping what is too old to be announced still. */
  while (p && p->nfds > 0 && now - p->born_ns[0] > FF_POOL_FRESH_NS) {
    ff_real.close(p->fds[0]);
    pop_front(p);
  }
  if (p && p->nfds > 0) {
    out->fd = p->fds[0];
    out->port = p->ports[0];
    out->host = p->host;
    pop_front(p);
    p->last_use_ns = now;
    *low = p->batch > 1 && p->nfds <= p->batch / 2;
    if (*low) grow_if_busy(p, now);
    ok = true;
  }
  pthread_mutex_unlock(&pool_lock);
  return ok;
}

void ff_pool_put(const struct ff_endpoint *dst, const int *fds, const uint16_t *ports, int n, const struct ff_endpoint *host) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, true);
  if (p->nfds && !ff_endpoint_equal(&p->host, host)) drain(p); /* the listener moved: older sockets point at its old endpoint */
  long long now = now_ns();
  for (int i = 0; i < n; i++) {
    if (p->nfds < FF_POOL_MAX_BATCH * 2) {
      p->born_ns[p->nfds] = now;
      p->ports[p->nfds] = ports ? ports[i] : 0;
      p->fds[p->nfds++] = fds[i];
    } else {
      ff_real.close(fds[i]);
    }
  }
  p->host = *host;
  p->last_use_ns = now;
  pthread_mutex_unlock(&pool_lock);
}

int ff_pool_refill_size(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, false);
  int n = p ? p->batch : 1;
  pthread_mutex_unlock(&pool_lock);
  return n;
}

int ff_pool_batch_size(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, true);
  long long now = now_ns();
  /* Used again within a second: fetch more next time; idle for long: start small again. */
  if (p->last_use_ns && now - p->last_use_ns < 1000000000LL) grow(p);
  else if (p->last_use_ns) p->batch = 1;
  p->last_use_ns = now;
  int n = p->batch;
  pthread_mutex_unlock(&pool_lock);
  return n;
}

long long ff_pool_now_ns(void) {
  return now_ns();
}

void ff_pool_note_closed(const struct ff_endpoint *dst, long long opened_ns) {
  long long now = now_ns();
  if (now - opened_ns >= FF_POOL_SHORT_NS) return;
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, true);
  if (now - p->last_short_ns >= FF_POOL_SHORT_NS) p->short_lived = 0;
  p->short_lived++;
  p->last_short_ns = now;
  pthread_mutex_unlock(&pool_lock);
}

bool ff_pool_storming(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&pool_lock);
  struct dest_pool *p = find(dst, false);
  bool storm = p && p->short_lived >= FF_POOL_STORM && now_ns() - p->last_short_ns < FF_POOL_SHORT_NS;
  pthread_mutex_unlock(&pool_lock);
  return storm;
}

void ff_pool_after_fork(void) {
  pthread_mutex_init(&pool_lock, NULL);
  for (int i = 0; i < FF_POOL_DESTS; i++) {
    drain(&pools[i]);
    pools[i].used = false;
  }
}
