#define _GNU_SOURCE
#include "config.h"
#include "addr.h"
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ff_config ff_config;

bool ff_parse_prefix(const char *text, struct ff_prefix *out) {
  char buf[64];
  const char *slash = strchr(text, '/');
  if (!slash || (size_t)(slash - text) >= sizeof buf || slash[1] == '\0') return false;
  memcpy(buf, text, slash - text);
  buf[slash - text] = '\0';
  char *end;
  long bits = strtol(slash + 1, &end, 10);
  if (*end != '\0') return false;
  struct in_addr v4;
  memset(out, 0, sizeof *out);
  if (inet_pton(AF_INET, buf, &v4) == 1) {
    if (bits < 0 || bits > 32) return false;
    out->addr = ff_endpoint_v4(v4.s_addr, 0).addr;
    out->bits = 96 + (int)bits;
  } else if (inet_pton(AF_INET6, buf, &out->addr) == 1) {
    if (bits < 0 || bits > 128) return false;
    out->bits = (int)bits;
  } else {
    return false;
  }
  return true;
}

static bool prefix_match(const struct ff_prefix *p, const struct in6_addr *a) {
  int full = p->bits / 8, rest = p->bits % 8;
  if (memcmp(p->addr.s6_addr, a->s6_addr, full) != 0) return false;
  if (rest == 0) return true;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (p->addr.s6_addr[full] & mask) == (a->s6_addr[full] & mask);
}

bool ff_config_in_vnet(const struct in6_addr *addr) {
  for (int i = 0; i < ff_config.nprefixes; i++)
    if (prefix_match(&ff_config.prefixes[i], addr)) return true;
  return false;
}

void ff_debug(const char *fmt, ...) {
  char line[512];
  int n = snprintf(line, sizeof line, "libfsocket[%d]: ", (int)getpid());
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - n, fmt, ap);
  va_end(ap);
  if (n >= (int)sizeof line - 1) n = sizeof line - 2;
  line[n++] = '\n';
  (void)!write(2, line, n);
}

/* VNET_PREFIX is a comma-separated list of CIDR prefixes. An unset prefix means "accelerate
 * nothing" (the original treated it as 0.0.0.0/0 and hijacked every connection); a malformed
 * one gets a single warning and no acceleration, so a typo never changes where traffic goes. */
void ff_config_load(void) {
  memset(&ff_config, 0, sizeof ff_config);
  const char *dbg = getenv("FFR_DEBUG");
  ff_config.debug = dbg && *dbg && strcmp(dbg, "0") != 0;
  /* Same-host connections: "auto" (default) an AF_UNIX pair with TCP's options emulated, but
   * prefetched loopback TCP sockets for a process that connects to one destination again and
   * again; "unix" always a pair where it can be faithful; "tcp" always loopback TCP in the
   * host namespace, for applications that need every TCP detail. */
  const char *same = getenv("FFR_SAME_HOST");
  ff_config.same_host = FF_SAME_HOST_AUTO;
  if (same && !strcmp(same, "unix")) ff_config.same_host = FF_SAME_HOST_UNIX;
  else if (same && !strcmp(same, "tcp")) ff_config.same_host = FF_SAME_HOST_TCP;
  else if (same && *same && strcmp(same, "auto"))
    dprintf(2, "libfsocket: FFR_SAME_HOST=\"%s\" is not \"auto\", \"unix\" or \"tcp\"; using \"auto\"\n", same);
  const char *dir = getenv("FFR_SOCKET_DIR");
  const char *name = getenv("FFR_NAME");
  if (!dir || !*dir) dir = "/freeflow";
  if (!name || !*name) name = "ffrouter";
  int n = snprintf(ff_config.router_path, sizeof ff_config.router_path, "%s/%s.sock", dir, name);
  if (n >= (int)sizeof ff_config.router_path) {
    dprintf(2, "libfsocket: FFR_SOCKET_DIR/FFR_NAME path too long; FreeFlow acceleration disabled\n");
    return;
  }
  const char *vnet = getenv("VNET_PREFIX");
  if (!vnet || !*vnet) return;
  char list[512];
  if (strlen(vnet) >= sizeof list) {
    dprintf(2, "libfsocket: VNET_PREFIX is too long; FreeFlow acceleration disabled\n");
    return;
  }
  strcpy(list, vnet);
  char *save = NULL;
  for (char *tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
    if (ff_config.nprefixes == FF_MAX_PREFIXES || !ff_parse_prefix(tok, &ff_config.prefixes[ff_config.nprefixes])) {
      dprintf(2, "libfsocket: VNET_PREFIX=\"%s\" is malformed at \"%s\" (expected CIDR like 10.32.0.0/12); "
                 "FreeFlow acceleration disabled, connections use the plain overlay\n", vnet, tok);
      ff_config.nprefixes = 0;
      return;
    }
    ff_config.nprefixes++;
  }
  ff_config.enabled = ff_config.nprefixes > 0;
}
