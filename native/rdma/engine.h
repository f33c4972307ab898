// FreeFlow RDMA engine: the data path of full RDMA mode. One C++ thread in the router
// process serves the shared-memory rings of every QP on this host; application memory is read
// and written with process_vm_readv/process_vm_writev (the pid comes from SO_PEERCRED).
// The JS extension (src/router/rdma/) owns the control path and calls the functions below.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ffrdma {

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
// A new descriptor of the engine's doorbell page (struct ff_doorbells; ff_doorbell_ring wakes it).
int DoorbellDup();
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

}  // namespace ffrdma
