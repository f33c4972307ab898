/* The process's one connection to its host's router (SOCK_SEQPACKET, one request and one
 * reply at a time). Re-opened lazily after fork() and after a failure; a missing or dead
 * router makes every request fail fast so callers fall back to the plain overlay path. */
#ifndef FF_ROUTER_H
#define FF_ROUTER_H
#include "ff_wire.h"

/* Sends req (type and addressing filled by the caller) and waits for the REPLY with the same
 * seq. Returns 0 and fills *rep (and *fd_out with an attached fd, or -1) on success, -1 if
 * the router cannot be reached or does not answer in time. */
int ff_router_call(struct ff_msg *req, struct ff_msg *rep, int *fd_out);
/* Receives one message with an optional fd from a router-owned channel (MSG_DONTWAIT).
 * Returns 1 on a message, 0 on EOF, -1 with errno (EAGAIN when empty). */
int ff_recv_with_fd(int chan, struct ff_msg *msg, int *fd_out, int cloexec);
/* Moves fd to a high number so the application's own fd numbers stay as it expects. */
int ff_move_high(int fd);
void ff_msg_init(struct ff_msg *m, int type);

#endif
