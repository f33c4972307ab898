/* What the application's environment asks of us: which overlay prefixes to accelerate and
 * where the router listens. Read once at load time. */
#ifndef FF_CONFIG_H
#define FF_CONFIG_H
#include <netinet/in.h>
#include <stdbool.h>

#define FF_MAX_PREFIXES 8

struct ff_prefix {
  struct in6_addr addr; /* IPv4 prefixes stored IPv4-mapped */
  int bits;             /* prefix length counted over the 128-bit form */
};

struct ff_config {
  bool enabled; /* false: VNET_PREFIX unset or malformed -> every call passes through */
  bool debug;   /* FFR_DEBUG=1: one line on stderr per decision */
  enum { FF_SAME_HOST_AUTO, FF_SAME_HOST_UNIX, FF_SAME_HOST_TCP } same_host; /* FFR_SAME_HOST */
  int nprefixes;
  struct ff_prefix prefixes[FF_MAX_PREFIXES];
  char router_path[108];
};

extern struct ff_config ff_config;
void ff_config_load(void);
bool ff_config_in_vnet(const struct in6_addr *addr);
/* Parses "a.b.c.d/n" or "x::/n"; returns false on any malformation. Exposed for tests. */
bool ff_parse_prefix(const char *text, struct ff_prefix *out);

#define FF_DEBUG(...) do { if (ff_config.debug) ff_debug(__VA_ARGS__); } while (0)
void ff_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
