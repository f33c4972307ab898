// Application memory the engine reaches outside MR views (docs/security-rdma-memory.md).
//
// The engine never addresses a process by its pid. Each router session is bound, at RDMA_OPEN, to
// the /proc/<pid>/mem file that the process itself opened and sent (the verbs library opens
// /proc/self/mem). That file is tied to the address space (mm) of the process that opened it, not
// to a pid: once that process exits, or execs another image (a setuid one included), every read
// and write through it moves 0 bytes. So a pid that is reused, a process that inherits the router
// connection, or the image after an exec is never reached; and a process can only hand over a
// file it was allowed to open, i.e. memory it could already read and write itself.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ffrdma {

// True if fd is a /proc/<pid>/mem (or /proc/<pid>/task/<tid>/mem) file: procfs, a regular file
// named "mem", opened for reading and writing. Anything else (a FUSE file that could block the
// engine, a pipe, a regular file) is refused.
bool IsProcMem(int fd);

// Moves len bytes between buf and [addr, addr+len) of the address space behind a mem file:
// reads when write is false. True only if every byte moved (unmapped memory, a process that is
// gone or has exec'd: false).
bool MemIo(int fd, uint64_t addr, void* buf, size_t len, bool write);

}  // namespace ffrdma
