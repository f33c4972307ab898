/* Shared memory between a container's library and the router: the one way both sides create
 * it. Included by C (libfsocket) and C++ (native). */
#ifndef FF_SHM_H
#define FF_SHM_H
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* A memory file of len bytes for sharing between a container and the router, sealed against
 * shrinking and growing before anyone else sees it: a file that could shrink under the other
 * side's mapping would fault it (SIGBUS). Returns the fd, or -1 with errno set. */
static inline int ff_sealed_memfd(const char *name, size_t len) {
  int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  if (ftruncate(fd, (off_t)len) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

#endif
