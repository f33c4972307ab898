#define _GNU_SOURCE
#include "real.h"
#include <dlfcn.h>

struct ff_real ff_real;

#define RESOLVE(name) ff_real.name = dlsym(RTLD_NEXT, #name)

void ff_real_init(void) {
  if (ff_real.socket) return;
  RESOLVE(bind); RESOLVE(listen); RESOLVE(accept); RESOLVE(accept4); RESOLVE(connect);
  RESOLVE(getsockname); RESOLVE(getpeername); RESOLVE(setsockopt); RESOLVE(getsockopt);
  RESOLVE(close); RESOLVE(dup); RESOLVE(dup2); RESOLVE(dup3); RESOLVE(fcntl);
  RESOLVE(sendto); RESOLVE(sendmsg); RESOLVE(recvfrom); RESOLVE(recvmsg);
  RESOLVE(epoll_ctl); RESOLVE(poll); RESOLVE(ppoll); RESOLVE(select); RESOLVE(pselect);
  RESOLVE(socket); /* last: its presence marks the table complete */
}
