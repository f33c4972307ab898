/* What the library knows about each application fd it may have to act on: TCP sockets in the
 * overlay families that are not yet connected or listening (candidates), accelerated
 * listeners, and accelerated connections. Any fd not in the table is passed through untouched,
 * at the cost of one array load. */
#ifndef FF_FDTABLE_H
#define FF_FDTABLE_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include "addr.h"
#include "ff_admit.h"

#define FF_MAX_OPTS 24
#define FF_MAX_REGS 8
#define FF_OPT_MAXLEN 64

enum ff_kind {
  FF_CANDIDATE = 1, /* AF_INET/AF_INET6 stream socket, still on the overlay */
  FF_LISTENER,      /* overlay listener with a router host listener and accept channel beside it */
  FF_ACCEL,         /* connection whose fd is now a host-network socket, or (pair) an AF_UNIX end */
};

/* A setsockopt() the application made before the socket was swapped or accepted from the
 * router; replayed on the host socket so it behaves as configured (TCP_CONGESTION, buffers). */
struct ff_sockopt {
  int level, name;
  socklen_t len;
  unsigned char value[FF_OPT_MAXLEN];
};

/* An epoll registration of this fd, remembered so that it survives the fd swap at connect()
 * and can be mirrored onto a listener's host listener and accept channel. */
struct ff_epoll_reg {
  int epfd;
  struct epoll_event ev;
};

/* Shared by all fds that dup() one another (like the open file description they name). */
struct ff_sock {
  int refs;
  enum ff_kind kind;
  int family; /* the application's family: AF_INET or AF_INET6 */
  int nopts;
  struct ff_sockopt opts[FF_MAX_OPTS];
  struct ff_endpoint local; /* FF_ACCEL: overlay identity shown by getsockname */
  struct ff_endpoint peer;  /* FF_ACCEL: overlay identity shown by getpeername */
  int chan_fd;              /* FF_LISTENER: router accept channel (SOCK_SEQPACKET), or -1 */
  int host_fd;              /* FF_LISTENER: the router's host-network listener, or -1 */
  struct ff_admit_table *admit; /* FF_LISTENER: its admission table (shared with the router) */
  unsigned accept_turn;     /* FF_LISTENER: rotates which source accept() tries first */
  bool prefer_channel;      /* FF_LISTENER: the last router connection came on the channel */
  bool bound;               /* FF_CANDIDATE: bind() succeeded (else connect() need not ask the kernel) */
  int backlog;              /* the backlog listen() was given (asked for again when re-registering) */
  long long relisten_ns;    /* listening, no router serves it: when accept() may ask one (0: never) */
  long long opened_ns;      /* FF_ACCEL made by connect(): when (how long connections live, pool.c) */
  bool pair;                /* FF_ACCEL: the fd is a same-host AF_UNIX stream end; TCP- and IP-level
                             * options live in opts[] (tcp_emul.c), SOL_SOCKET ones in the kernel */
};

struct ff_fd {
  struct ff_sock *sock;
  int nregs;
  struct ff_epoll_reg regs[FF_MAX_REGS];
};

/* Serialises every table change; lookups on hot paths read the slot without it. */
extern pthread_mutex_t ff_table_lock;
/* Number of live listeners with an accept channel (and host listener): poll()/select() pass straight through
 * while it is zero. */
extern atomic_int ff_channel_listeners;

void ff_table_init(void);
struct ff_fd *ff_fd_get(int fd); /* NULL if untracked */
/* Start tracking fd as a new socket of the given kind; replaces any stale entry. */
struct ff_fd *ff_fd_track(int fd, enum ff_kind kind, int family);
/* Make newfd refer to the same ff_sock as oldfd (dup family). Caller holds the lock. */
void ff_fd_share(int oldfd, int newfd);
/* Forget fd; closes a listener's channel and host listener when its last fd goes. Caller
 * holds the lock. */
void ff_fd_forget(int fd);
/* The router went away: the listener carries on as a plain overlay listener (its host
 * listener is closed too; the table stays mapped until the last fd goes, as another thread
 * may be reading it). */
void ff_listener_drop_channel(int fd, struct ff_fd *e);
/* A listening socket no router serves (none answered at listen(), or its router went away)
 * asks again, at most every FF_RELISTEN_NS. accept() calls it, so a router that starts or
 * restarts after the application serves its listeners from the next accepted connection on
 * (the first one comes over the overlay). Defined with listen() in intercept_socket.c. */
#define FF_RELISTEN_NS (1000LL * 1000 * 1000)
void ff_listener_reregister(int fd, struct ff_fd *e);
/* True if the channel's only news is that the router closed it (checked with MSG_PEEK). */
bool ff_channel_at_eof(int chan);
void ff_sock_record_opt(struct ff_sock *s, int level, int name, const void *val, socklen_t len);
/* Stores an option's value as given (replacing an earlier one); false if the store is full. */
bool ff_sock_store_opt(struct ff_sock *s, int level, int name, const void *val, socklen_t len);
const struct ff_sockopt *ff_sock_find_opt(const struct ff_sock *s, int level, int name);
/* Sets the recorded options on fd; on an AF_UNIX pair end only the SOL_SOCKET ones. */
void ff_sock_replay_opts(const struct ff_sock *s, int fd, bool sol_socket_only);
void ff_fd_record_epoll(struct ff_fd *e, int epfd, int op, const struct epoll_event *ev);
/* The fds a listener's readiness also depends on (host listener, channel); returns how many. */
int ff_listener_sources(const struct ff_sock *s, int out[2]);

#endif
