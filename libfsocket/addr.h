/* Overlay endpoints as the library keeps them: a 16-byte address (IPv4 stored IPv4-mapped,
 * the wire protocol's form) and a port, converted to and from the application's sockaddr. */
#ifndef FF_ADDR_H
#define FF_ADDR_H
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct ff_endpoint {
  struct in6_addr addr;
  uint16_t port; /* host byte order */
};

/* sockaddr_in / sockaddr_in6 -> endpoint; false for other families or short lengths. */
bool ff_endpoint_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct ff_endpoint *out);
/* Writes the endpoint as the application's family expects (AF_INET6 gets ::ffff:a.b.c.d),
 * truncating to *len and reporting the full length, like getsockname(2). */
void ff_endpoint_to_sockaddr(const struct ff_endpoint *ep, int family, struct sockaddr *sa, socklen_t *len);
bool ff_addr_is_v4mapped(const struct in6_addr *a);
bool ff_addr_is_any(const struct in6_addr *a); /* 0.0.0.0 or :: */
/* 0.0.0.0 as an IPv4-mapped address */
void ff_addr_v4_any(struct in6_addr *a);
/* An IPv4 endpoint (address in network order, port in host order) in the library's form. */
struct ff_endpoint ff_endpoint_v4(uint32_t ip, uint16_t port);
bool ff_endpoint_equal(const struct ff_endpoint *a, const struct ff_endpoint *b);

#endif
