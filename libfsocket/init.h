/* Library start-up: resolves the real calls, reads the configuration, sizes the fd table.
 * Every wrapper calls FF_INIT() first because other libraries' constructors may open sockets
 * before ours has run. */
#ifndef FF_INIT_H
#define FF_INIT_H
#include "real.h"

void ff_init(void);
#define FF_INIT() do { if (__builtin_expect(!ff_real.socket, 0)) ff_init(); } while (0)

/* Forgets the router connection in a forked child (the parent keeps using its own). */
void ff_router_after_fork(void);
/* True if fd is the router connection; the application must not be able to close it. */
int ff_router_owns_fd(int fd);
void ff_router_release_fd(void);

#endif
