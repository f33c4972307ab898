/* Overlay destinations the router recently said it cannot accelerate (no accelerated listener
 * there, or its host's router unreachable): plain servers, or clients of a mix-and-match pair.
 * Without this memory every connect() to such a destination would pay a router round trip
 * before falling back, doubling a plain server's connection set-up time (measured: connlat
 * p50 57 us on the overlay, 120 us with a round trip per connect). A destination is
 * remembered for FF_PLAIN_DEST_NS; a listener that appears meanwhile is used once that is over. */
#ifndef FF_PLAIN_DESTS_H
#define FF_PLAIN_DESTS_H
#include <stdbool.h>
#include "addr.h"

#define FF_PLAIN_DEST_NS (1000LL * 1000 * 1000)

/* The router answered "no accelerated listener" for dst. */
void ff_plain_dest_note(const struct ff_endpoint *dst);
/* Whether dst was noted less than FF_PLAIN_DEST_NS ago. */
bool ff_plain_dest_recent(const struct ff_endpoint *dst);
/* In a forked child: the lock may have been held by a thread that did not come along. */
void ff_plain_dests_after_fork(void);

#endif
