#define _GNU_SOURCE
#include "plain_dests.h"
#include <pthread.h>
#include <string.h>
#include "pool.h"

/* Direct-mapped: a collision only forgets a destination early (one more router round trip). */
#define FF_PLAIN_SLOTS 64

struct plain_dest {
  struct ff_endpoint dst;
  long long until_ns; /* 0: empty */
};

static struct plain_dest slots[FF_PLAIN_SLOTS];
static pthread_mutex_t plain_lock = PTHREAD_MUTEX_INITIALIZER;

static struct plain_dest *slot_of(const struct ff_endpoint *dst) {
  uint32_t h = dst->port;
  for (size_t i = 0; i < sizeof dst->addr; i++) h = h * 31 + dst->addr.s6_addr[i];
  return &slots[h % FF_PLAIN_SLOTS];
}

void ff_plain_dest_note(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&plain_lock);
  struct plain_dest *s = slot_of(dst);
  s->dst = *dst;
  s->until_ns = ff_pool_now_ns() + FF_PLAIN_DEST_NS;
  pthread_mutex_unlock(&plain_lock);
}

bool ff_plain_dest_recent(const struct ff_endpoint *dst) {
  pthread_mutex_lock(&plain_lock);
  struct plain_dest *s = slot_of(dst);
  bool recent = s->until_ns && ff_endpoint_equal(&s->dst, dst) && ff_pool_now_ns() < s->until_ns;
  pthread_mutex_unlock(&plain_lock);
  return recent;
}

void ff_plain_dests_after_fork(void) {
  pthread_mutex_init(&plain_lock, NULL);
}
