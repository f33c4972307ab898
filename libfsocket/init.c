#define _GNU_SOURCE
#include "init.h"
#include <pthread.h>
#include "config.h"
#include "fdtable.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_once(void) {
  ff_config_load();
  ff_table_init();
  pthread_atfork(NULL, NULL, ff_router_after_fork);
  ff_real_init(); /* last: ff_real.socket != NULL tells FF_INIT() we are done */
}

void ff_init(void) { pthread_once(&once, init_once); }

__attribute__((constructor)) static void ff_constructor(void) { ff_init(); }
