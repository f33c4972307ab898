#define _GNU_SOURCE
#include "tcp_emul.h"
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* SOL_SOCKET options the kernel applies to an AF_UNIX socket as it would to a TCP one (or
 * whose TCP meaning has no effect between two local sockets, like SO_LINGER's timeout). */
static bool socket_option_shared(int name) {
  switch (name) {
    case SO_KEEPALIVE: case SO_RCVBUF: case SO_SNDBUF: case SO_RCVBUFFORCE: case SO_SNDBUFFORCE:
    case SO_LINGER: case SO_REUSEADDR: case SO_REUSEPORT: case SO_RCVTIMEO_OLD: case SO_SNDTIMEO_OLD:
    case SO_RCVTIMEO_NEW: case SO_SNDTIMEO_NEW: case SO_RCVLOWAT: case SO_PRIORITY: case SO_OOBINLINE:
      return true;
    default:
      return false;
  }
}

/* A TCP/IP-level option kept here: its value is remembered and read back; its effect is
 * either already how a pair behaves (no Nagle, no delayed ACKs: TCP_NODELAY, TCP_QUICKACK) or
 * immaterial between two local sockets (congestion control, keep-alive timing, TOS, TTL). */
struct emulated {
  int level, name;
  int dflt; /* what a fresh connected loopback TCP socket reports */
};

static const struct emulated EMULATED[] = {
    {IPPROTO_TCP, TCP_NODELAY, 0},      {IPPROTO_TCP, TCP_CORK, 0},         {IPPROTO_TCP, TCP_QUICKACK, 1},
    {IPPROTO_TCP, TCP_KEEPIDLE, 7200},  {IPPROTO_TCP, TCP_KEEPINTVL, 75},   {IPPROTO_TCP, TCP_KEEPCNT, 9},
    {IPPROTO_TCP, TCP_USER_TIMEOUT, 0}, {IPPROTO_TCP, TCP_NOTSENT_LOWAT, 0}, {IPPROTO_TCP, TCP_MAXSEG, 65483},
    {IPPROTO_TCP, TCP_LINGER2, 60},     {IPPROTO_TCP, TCP_CONGESTION, 0},   {IPPROTO_IP, IP_TOS, 0},
    {IPPROTO_IP, IP_TTL, 64},           {IPPROTO_IPV6, IPV6_TCLASS, 0},     {IPPROTO_IPV6, IPV6_UNICAST_HOPS, 64},
    {IPPROTO_IPV6, IPV6_V6ONLY, 0},
};

static const struct emulated *emulated(int level, int name) {
  for (size_t i = 0; i < sizeof EMULATED / sizeof *EMULATED; i++)
    if (EMULATED[i].level == level && EMULATED[i].name == name) return &EMULATED[i];
  return NULL;
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif

/* What identifies the process at the other end of a Unix socket (the router, which made the
 * pair) must not reach the application, nor may descriptors or credentials travel between
 * the two containers: a TCP socket has no peer process (SO_PEERCRED says pid 0, uid and gid
 * -1; the others fail), and asking for credentials to be passed has no effect on it. */
static int peer_identity(int name, void *val, socklen_t *len) {
  switch (name) {
    case SO_PEERCRED: {
      struct ucred none = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
      if (!val || !len) {
        errno = EFAULT;
        return -1;
      }
      if (*len > sizeof none) *len = sizeof none;
      memcpy(val, &none, *len);
      return 0;
    }
    case SO_PEERPIDFD:
    case SO_PEERGROUPS:
      errno = ENODATA;
      return -1;
    case SO_PEERSEC:
      errno = ENOPROTOOPT;
      return -1;
    default:
      return 1;
  }
}

static bool is_credential_passing(int name) {
  return name == SO_PASSCRED || name == SO_PASSSEC || name == SO_PASSPIDFD;
}

static bool is_emulated_level(int level) {
  return level == IPPROTO_TCP || level == IPPROTO_IP || level == IPPROTO_IPV6;
}

bool ff_tcp_emul_pairable(const struct ff_sock *s) {
  for (int i = 0; i < s->nopts; i++) {
    const struct ff_sockopt *o = &s->opts[i];
    if (o->level == SOL_SOCKET ? !socket_option_shared(o->name) : !emulated(o->level, o->name)) return false;
  }
  return true;
}

int ff_tcp_emul_set(struct ff_sock *s, int level, int name, const void *val, socklen_t len) {
  if (level == SOL_SOCKET && is_credential_passing(name)) { /* remembered, never applied */
    if (!val || len < (socklen_t)sizeof(int)) {
      errno = val ? EINVAL : EFAULT;
      return -1;
    }
    return ff_sock_store_opt(s, level, name, val, sizeof(int)) ? 0 : (errno = ENOMEM, -1);
  }
  if (!is_emulated_level(level)) return 1;
  if (!emulated(level, name)) {
    errno = EOPNOTSUPP;
    return -1;
  }
  if (!val) {
    errno = EFAULT;
    return -1;
  }
  if (name == TCP_CONGESTION && level == IPPROTO_TCP ? len < 1 : len < (socklen_t)sizeof(int)) {
    errno = EINVAL;
    return -1;
  }
  if (!ff_sock_store_opt(s, level, name, val, len > FF_OPT_MAXLEN ? FF_OPT_MAXLEN : len)) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

/* The network namespace's default congestion control, as a new TCP socket would get it. */
static void default_congestion(char *out, size_t size) {
  snprintf(out, size, "cubic");
  int fd = open("/proc/sys/net/ipv4/tcp_congestion_control", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[16];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  buf[strcspn(buf, "\n")] = 0;
  if (*buf && strlen(buf) < size) memcpy(out, buf, strlen(buf) + 1);
}

static int give(void *val, socklen_t *len, const void *v, socklen_t vlen) {
  if (!val || !len) {
    errno = EFAULT;
    return -1;
  }
  if (*len > vlen) *len = vlen;
  memcpy(val, v, *len);
  return 0;
}

/* A TCP socket's TCP_INFO with what is true of a pair: established, loopback's segment sizes,
 * and no retransmissions or losses (there is no TCP state machine behind it). */
static int tcp_info(void *val, socklen_t *len) {
  struct tcp_info ti;
  memset(&ti, 0, sizeof ti);
  ti.tcpi_state = TCP_ESTABLISHED;
  ti.tcpi_snd_mss = ti.tcpi_rcv_mss = ti.tcpi_advmss = 65483;
  ti.tcpi_pmtu = 65536;
  ti.tcpi_snd_cwnd = 10;
  ti.tcpi_snd_ssthresh = 0x7fffffff;
  return give(val, len, &ti, sizeof ti);
}

int ff_tcp_emul_get(const struct ff_sock *s, int level, int name, void *val, socklen_t *len) {
  if (level == SOL_SOCKET && (name == SO_DOMAIN || name == SO_PROTOCOL)) {
    int v = name == SO_DOMAIN ? s->family : IPPROTO_TCP;
    return give(val, len, &v, sizeof v);
  }
  if (level == SOL_SOCKET && is_credential_passing(name)) {
    const struct ff_sockopt *o = ff_sock_find_opt(s, level, name);
    int v = 0;
    if (o) memcpy(&v, o->value, sizeof v);
    v = v != 0;
    return give(val, len, &v, sizeof v);
  }
  if (level == SOL_SOCKET) {
    int r = peer_identity(name, val, len);
    if (r != 1) return r;
  }
  if (!is_emulated_level(level)) return 1;
  if (level == IPPROTO_TCP && name == TCP_INFO) return tcp_info(val, len);
  const struct emulated *em = emulated(level, name);
  if (!em) {
    errno = EOPNOTSUPP;
    return -1;
  }
  const struct ff_sockopt *o = ff_sock_find_opt(s, level, name);
  if (level == IPPROTO_TCP && name == TCP_CONGESTION) {
    char cc[16] = {0};
    if (o) memcpy(cc, o->value, o->len < sizeof cc - 1 ? o->len : sizeof cc - 1);
    else default_congestion(cc, sizeof cc);
    return give(val, len, cc, sizeof cc); /* the kernel copies TCP_CA_NAME_MAX bytes */
  }
  int v = em->dflt;
  if (o) memcpy(&v, o->value, sizeof v);
  /* Boolean options read back as 0/1, as the kernel reports them. */
  if ((level == IPPROTO_TCP && (name == TCP_NODELAY || name == TCP_CORK || name == TCP_QUICKACK)) ||
      (level == IPPROTO_IPV6 && name == IPV6_V6ONLY))
    v = v != 0;
  return give(val, len, &v, sizeof v);
}
