#include "addr.h"
#include <string.h>

bool ff_addr_is_v4mapped(const struct in6_addr *a) {
  static const unsigned char prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(a->s6_addr, prefix, 12) == 0;
}

bool ff_addr_is_any(const struct in6_addr *a) {
  static const unsigned char zero[16];
  if (memcmp(a->s6_addr, zero, 16) == 0) return true;
  return ff_addr_is_v4mapped(a) && memcmp(a->s6_addr + 12, zero, 4) == 0;
}

void ff_addr_v4_any(struct in6_addr *a) {
  memset(a, 0, sizeof *a);
  a->s6_addr[10] = a->s6_addr[11] = 0xff;
}

bool ff_endpoint_equal(const struct ff_endpoint *a, const struct ff_endpoint *b) {
  return a->port == b->port && memcmp(&a->addr, &b->addr, sizeof a->addr) == 0;
}

struct ff_endpoint ff_endpoint_v4(uint32_t ip, uint16_t port) {
  struct ff_endpoint ep = {.port = port};
  ff_addr_v4_any(&ep.addr);
  memcpy(&ep.addr.s6_addr[12], &ip, 4);
  return ep;
}

bool ff_endpoint_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct ff_endpoint *out) {
  if (!sa) return false;
  memset(out, 0, sizeof *out);
  if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
    *out = ff_endpoint_v4(sin->sin_addr.s_addr, ntohs(sin->sin_port));
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
    out->addr = sin6->sin6_addr;
    out->port = ntohs(sin6->sin6_port);
    return true;
  }
  return false;
}

void ff_endpoint_to_sockaddr(const struct ff_endpoint *ep, int family, struct sockaddr *sa, socklen_t *len) {
  union {
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
  } u;
  socklen_t full;
  memset(&u, 0, sizeof u);
  if (family == AF_INET) {
    u.sin.sin_family = AF_INET;
    u.sin.sin_port = htons(ep->port);
    memcpy(&u.sin.sin_addr, &ep->addr.s6_addr[12], 4);
    full = sizeof u.sin;
  } else {
    u.sin6.sin6_family = AF_INET6;
    u.sin6.sin6_port = htons(ep->port);
    u.sin6.sin6_addr = ep->addr;
    full = sizeof u.sin6;
  }
  if (sa && len) memcpy(sa, &u, *len < full ? *len : full);
  if (len) *len = full;
}
