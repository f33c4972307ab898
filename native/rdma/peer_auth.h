// The cluster-key handshake on the RDMA engines' port: the same protocol as the routers' peer
// port (src/router/peer-auth.ts; sizes, label and roles from the wire spec, ff_wire.h), so an
// engine honours frames only from a router that proved the cluster key.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ffrdma {

enum class PeerRole { kDialler, kAcceptor };

// Runs the handshake on a connected blocking socket within FF_PEER_AUTH_TIMEOUT_MS. own_ip is
// this host's address, peer_ip the other end's as this end sees it (IPv4, dotted). Reads no byte
// past the handshake, so the frame reader can take the socket over. True if the other end
// proved the key; on false the caller closes the socket.
bool PeerHandshake(int fd, const std::vector<uint8_t>& key, PeerRole role, const std::string& own_ip, const std::string& peer_ip);

}  // namespace ffrdma
