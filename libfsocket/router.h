/* The process's one connection to its host's router (SOCK_SEQPACKET, one request and one
 * reply at a time). Re-opened lazily after fork() and after a failure; a missing or dead
 * router makes every request fail fast so callers fall back to the plain overlay path. */
#ifndef FF_ROUTER_H
#define FF_ROUTER_H
#include <stdbool.h>
#include "addr.h"
#include "ff_wire.h"

#define FF_MAX_REPLY_FDS FF_LIMIT_MAX_CONNECT_SOCKETS

/* Sends req (type and addressing filled by the caller) and waits for the REPLY with the same
 * seq. Returns the number of fds attached (stored in fds[0..max)) and fills *rep, or -1 if the
 * router cannot be reached or does not answer in time. ports (may be NULL) receives the host
 * port of each fd from a CONNECT reply's payload (0 where the reply has none). */
int ff_router_call(struct ff_msg *req, struct ff_msg *rep, int *fds, uint16_t *ports, int max);
/* Sends a CONNECT for a batch of sockets to dst without waiting: the reply goes to the pool
 * whenever it is read (by a later call, or ff_router_collect). At most one is outstanding;
 * returns false if one already is or the router cannot be reached. */
bool ff_router_prefetch(struct ff_msg *req, const struct ff_endpoint *dst);
/* Waits (at most the reply timeout) for an outstanding prefetch to dst. true if it arrived. */
bool ff_router_collect(const struct ff_endpoint *dst);
/* Receives one message with up to max fds from a router-owned socket (MSG_DONTWAIT); extra
 * fds are closed. Returns 1 on a message (*nfds set), 0 on EOF, -1 with errno (EAGAIN when
 * empty). ports (may be NULL) receives up to max uint16 host ports from the payload, the rest
 * zeroed; without it a payload is ignored. */
int ff_recv_msg(int chan, struct ff_msg *msg, int *fds, uint16_t *ports, int max, int *nfds, int cloexec);
/* Moves fd to a high number so the application's own fd numbers stay as it expects. */
int ff_move_high(int fd);
void ff_msg_init(struct ff_msg *m, int type);

#endif
