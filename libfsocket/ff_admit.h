/* The admission table of an accelerated listener: which host-network connections the routers
 * set up, and the overlay identity of each. One sealed memfd per listener; the router's
 * acceptor writes an entry for every announcement it receives, the application's library
 * reads it in accept() on the host listener it was handed, so a connection goes from the
 * kernel's accept queue to the application with no router thread and no descriptor passing.
 * A connection with no entry (announcement not there yet, or a host process dialling the
 * endpoint directly) is handed back to the router over the accept channel, which parks it
 * until its announcement arrives or refuses it.
 *
 * Concurrency: one writer (the acceptor thread), any number of claimers (the listener's
 * processes, and the acceptor itself for handed-back connections). A slot's `tag` names its
 * entry: client host address, client host port, a generation (so a reused slot never matches a
 * stale reader) and a CLAIMED bit. The writer fills the fields, then publishes the tag
 * (release); a claimer reads the tag (acquire), copies the fields, and owns the entry only if
 * its compare-and-swap of exactly that tag to tag|CLAIMED succeeds. Only the writer frees
 * slots (claimed ones after counting them, unclaimed ones when they expire). The library may
 * scribble on the table; that only misroutes that listener's own connections.
 * Included by C (libfsocket) and C++ (native/acceptor.cc). */
#ifndef FF_ADMIT_H
#define FF_ADMIT_H
#include <stdbool.h>
#include <stdint.h>

#define FF_ADMIT_SLOTS 8192 /* power of two */
#define FF_ADMIT_PROBE 16   /* slots searched from an entry's home slot */
#define FF_ADMIT_CLAIMED 1ull

struct ff_admit_slot {
  uint64_t tag;         /* 0: free; else ip << 32 | port << 16 | generation << 1 | CLAIMED */
  uint32_t local_ip;    /* overlay address the client dialled (network order) */
  uint32_t peer_ip;     /* the client's overlay address (network order) */
  uint16_t local_port;  /* overlay port the client dialled */
  uint16_t peer_port;   /* the client's overlay port */
  uint32_t reserved[3];
};

struct ff_admit_table {
  struct ff_admit_slot slot[FF_ADMIT_SLOTS];
};

/* The identity part of a tag: client host address and port (network-order address, host-order
 * port, as accept() reports them after ntohs). */
static inline uint64_t ff_admit_key(uint32_t client_ip, uint16_t client_port) {
  return ((uint64_t)client_ip << 32) | ((uint64_t)client_port << 16);
}

static inline uint32_t ff_admit_home(uint64_t key) {
  uint64_t h = (key >> 16) * 0x9E3779B97F4A7C15ull;
  return (uint32_t)(h >> 40) & (FF_ADMIT_SLOTS - 1);
}

/* Claims the entry of a connection from client host address:port. true: *out holds its
 * identity and nobody else will get it. */
static inline bool ff_admit_claim(struct ff_admit_table *t, uint64_t key, struct ff_admit_slot *out) {
  uint32_t home = ff_admit_home(key);
  for (uint32_t i = 0; i < FF_ADMIT_PROBE; i++) {
    struct ff_admit_slot *s = &t->slot[(home + i) & (FF_ADMIT_SLOTS - 1)];
    uint64_t tag = __atomic_load_n(&s->tag, __ATOMIC_ACQUIRE);
    if (!tag || (tag & FF_ADMIT_CLAIMED) || (tag & ~0xffffull) != key) continue;
    out->local_ip = __atomic_load_n(&s->local_ip, __ATOMIC_RELAXED);
    out->peer_ip = __atomic_load_n(&s->peer_ip, __ATOMIC_RELAXED);
    out->local_port = __atomic_load_n(&s->local_port, __ATOMIC_RELAXED);
    out->peer_port = __atomic_load_n(&s->peer_port, __ATOMIC_RELAXED);
    if (__atomic_compare_exchange_n(&s->tag, &tag, tag | FF_ADMIT_CLAIMED, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return true;
  }
  return false;
}

#endif
