#include "memory.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>

namespace ffrdma {

bool IsProcMem(int fd) {
  struct statfs fs;
  struct stat st;
  if (fstatfs(fd, &fs) < 0 || fs.f_type != PROC_SUPER_MAGIC) return false;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) return false;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (fl & O_ACCMODE) != O_RDWR) return false;
  char link[64], path[256];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 4) return false;
  path[n] = 0;
  return strcmp(path + n - 4, "/mem") == 0;
}

bool MemIo(int fd, uint64_t addr, void* buf, size_t len, bool write) {
  auto* p = static_cast<uint8_t*>(buf);
  while (len) {
    // The file offset is the address. A mem file moves bytes up to the first page it cannot
    // reach: the next call starts there and fails (EIO), or moves 0 once the mm is gone.
    ssize_t r = write ? pwrite(fd, p, len, off_t(addr)) : pread(fd, p, len, off_t(addr));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    addr += uint64_t(r);
    len -= size_t(r);
  }
  return true;
}

}  // namespace ffrdma
