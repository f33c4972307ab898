// FreeFlow RDMA engine: the data path of full RDMA mode. One C++ thread in the router
// process serves the shared-memory rings of every QP on this host; application memory outside
// MR views is read and written through the /proc/<pid>/mem file each process sent when it
// bound its session (memory.h), never by pid.
// The JS extension (src/router/rdma/) owns the control path and calls the functions below.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ffrdma {

// pid (here and in AddQp): the memory owner, an id of the session (SetMemOwner), not an OS pid.
// fd >= 0: a sealed memory file holding [view_addr, view_addr+view_len) of the region (at
// offset view_off), which the application mapped in place; the engine maps it too.
int AddMr(uint32_t key, uint32_t pd, int pid, uint64_t addr, uint64_t len, uint64_t iova, uint32_t access, int fd,
          uint64_t view_addr, uint64_t view_off, uint64_t view_len);
int DelMr(uint32_t key);
int AddChannel(uint32_t id, int fd);
int DelChannel(uint32_t id);
int AddCq(uint32_t id, int fd, uint32_t depth, uint32_t channel);
int DelCq(uint32_t id);
int AddSrq(uint32_t id, int fd, uint32_t depth, uint32_t pd);
int DelSrq(uint32_t id);
// srq: a shared receive queue of the same PD, or 0.
int AddQp(uint32_t qpn, int pid, uint32_t pd, uint32_t scq, uint32_t rcq, int fd, uint32_t sqd, uint32_t rqd, bool sig_all,
          const uint8_t gid[16], uint32_t srq);
// dest_qpn < 0, dgid == nullptr, access < 0, rnr_retry < 0 (0-7, 7 = forever) and
// min_rnr_timer < 0 (IB code 0-31) leave those unchanged.
int ModifyQp(uint32_t qpn, uint32_t state, int64_t dest_qpn, const uint8_t* dgid, int32_t access, int32_t rnr_retry, int32_t min_rnr_timer);
int DelQp(uint32_t qpn);
// Cross-host: serve and reach the peer routers' engines over TCP on host_ip:port, with the
// routers' cluster key (FF_PEER_AUTH_KEY_SIZE bytes) proved on every connection.
// Returns an eventfd that is readable while connection-manager messages wait in CmTake().
int StartTransport(const std::string& host_ip, int port, const std::vector<std::string>& peers, const std::vector<uint8_t>& key);
// Connection-manager messages between the routers, carried by the same transport.
bool CmSend(int conn, const uint8_t* data, uint32_t len);
std::vector<int> CmPeers();
// The peer router (index in --peers) at the other end of transport connection conn, or -1.
int ConnPeer(int conn);
// The directory of GIDs: n entries of 20 bytes, a GID and its owner (int32, little endian: the
// peer's index in --peers, or -1 for this host); replaces the previous one.
void SetGidOwners(const uint8_t* entries, size_t n);
std::vector<std::pair<int, std::vector<uint8_t>>> CmTake();
// A new descriptor of a container's doorbell page (struct ff_doorbells; ff_doorbell_ring wakes
// the engine), made on first use; -ENOSPC when Doorbells::kMaxContainers containers have one.
// DoorbellDrop when the container's last session is gone.
int DoorbellDup(uint64_t container);
void DoorbellDrop(uint64_t container);
// A memory owner (> 0, one per session) of a container (whose doorbell page its rings use).
int AddMemOwner(int owner, uint64_t container);
// Binds the owner to the /proc/<pid>/mem file fd its process sent; the engine keeps fd.
// -EINVAL if fd is not such a file, -EEXIST if the owner has one, -ENOENT: no such owner.
int SetMemOwner(int owner, int fd);
// Forgets the owner and closes its file (its MRs and QPs are gone already).
void DelMemOwner(int owner);
// Bytes per second a sending container (identified by its GID) may move; 0 = unlimited.
void SetRateLimit(uint64_t bytes_per_sec);

struct Stats {
  uint64_t ops, bytes, errors, served, qps, mrs, cqs;  // served: requests from other hosts
  uint64_t mapped;  // bytes copied through MRs' shared-memory views
  uint64_t placed;  // bytes read from another host straight into a view (no copy in the engine)
  // What the engine still holds: SRQs, completion channels (each an fd), mapped MR views,
  // requests from other hosts not yet served (all 0 once every application is gone).
  uint64_t srqs, channels, views, pending;
  uint64_t naks;     // receiver-not-ready and busy NAKs this host's requesters got
  uint64_t refused;  // messages from peer routers refused: for QPs, GIDs or requests not theirs
  uint64_t gids;     // entries of the GID directory (this host's and the peers')
};
Stats GetStats();
// Tenant isolation (docs/security-rdma-memory.md): containers with a doorbell page, wake-ups
// that found no work, containers muted for ringing too often, chunks of long copies made
// without the engine lock, memory owners (sessions); since the previous call, the longest a
// control request waited for the engine lock and the longest a worker held it at once (us).
struct SafetyStats {
  uint64_t bell_containers, spurious_wakeups, bell_mutes, unlocked_chunks, mem_owners, ctl_wait_max_us, hold_max_us;
};
SafetyStats GetSafetyStats();

}  // namespace ffrdma
