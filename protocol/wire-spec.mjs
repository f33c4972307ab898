// The one definition of FreeFlow's wire protocol. `node scripts/gen-wire.mjs` turns it into
// libfsocket/ff_wire.h (C) and src/protocol/wire.generated.ts (TypeScript); a test checks that
// both generated files are current and that the C compiler lays the struct out as TS reads it.
//
// Every message is one fixed-size little-endian record (one SOCK_SEQPACKET datagram on the
// container <-> router socket, a length-free frame on router <-> router TCP), optionally followed
// by `payload_len` bytes (JSON for STATUS replies). File descriptors ride along as SCM_RIGHTS.
// Addresses are 16 bytes, IPv4 stored IPv4-mapped (::ffff:a.b.c.d) so one field serves both.

export const MAGIC = 0x31574646; // "FFW1" read little-endian
export const VERSION = 1;

// [name, C type, byte size]
export const FIELDS = [
  ['magic', 'uint32_t', 4],
  ['version', 'uint16_t', 2],
  ['type', 'uint16_t', 2],
  ['seq', 'uint32_t', 4],
  ['status', 'int32_t', 4], // request: 0; reply: a REPLY_* code or a negative errno
  ['flags', 'uint32_t', 4],
  ['pid', 'uint32_t', 4],
  ['family', 'uint16_t', 2], // the application's socket family (AF_INET / AF_INET6)
  ['local_port', 'uint16_t', 2], // overlay port of the local end (host byte order)
  ['remote_port', 'uint16_t', 2], // overlay port of the remote end
  ['host_port', 'uint16_t', 2], // host-network port (meaning depends on type)
  ['aux_port', 'uint16_t', 2], // second host-network port (ANNOUNCE: the listener's)
  ['reserved', 'uint16_t', 2],
  ['payload_len', 'uint32_t', 4],
  ['local_addr', 'uint8_t[16]', 16], // overlay address of the local end
  ['remote_addr', 'uint8_t[16]', 16], // overlay address of the remote end
  ['host_addr', 'uint8_t[16]', 16], // host-network address
];

export const TYPES = {
  // container library -> router
  // The router checks every overlay address against the addresses registered for the caller's
  // network namespace (read through SO_PEERPIDFD at accept; docs/security.md).
  CONNECT: 2, // remote_* = overlay destination; local_* = overlay source (port 0 if unbound);
  //             flags = sockets wanted (SOCKETS_MASK) | PAIR_OK; reply payload = uint16 LE host
  //             port of each fd, in order; reply flags PAIR: the fd is a connected AF_UNIX end
  LISTEN: 3, // local_* = overlay address/port the application listens on; reply fds: accept
  //            channel, host listener, admission table (sealed memfd, struct ff_admit_table)
  STATUS: 4, // CLI asks for the router's state; reply carries JSON payload
  REGISTRY_CHANGED: 6, // root in the router's own netns (freeflow register, the CNI plugin): re-read
  //                      the namespace registry from the state directory; reply ACCEL, or FALLBACK
  REPLY: 5, // router -> library answer to any request (same seq)
  // router -> library, on a listener's accept channel
  ACCEPTED: 10, // one host connection (fd attached) from overlay peer remote_* to local_*;
  //               flags PAIR: the fd is the listener's end of a same-host AF_UNIX pair
  // library -> router, on the same channel
  ADMIT_MISS: 11, // a connection (fd attached) the library took from the host listener with no
  //                 admission entry: the router parks it until its announcement arrives, or refuses it
  // router <-> router (host network)
  PEER_HELLO: 20,
  LISTEN_ADD: 21, // local_* = overlay listener, host_addr/host_port = its host endpoint
  LISTEN_DEL: 22,
  ANNOUNCE: 23, // host_addr:host_port = client's host source; aux_port = listener host port;
  //               local_* = client's overlay address; remote_* = overlay destination
  // RDMA mode: container libibverbs -> router. Payload: struct ff_rdma_args (RDMA_STRUCTS).
  // Reply status: 0 or a negative errno; reply payload: ff_rdma_args with the results.
  RDMA_OPEN: 100, // reply: local_addr = the container's GID (IPv4-mapped overlay address); fd = the engine's doorbell page (struct ff_doorbells)
  RDMA_ALLOC_PD: 101, // reply h0 = pd
  RDMA_DEALLOC_PD: 102, // h0 = pd
  RDMA_REG_MR: 103, // h0 = pd, h1 = access flags, v0 = addr, v1 = length, v2 = iova; optional fd = sealed memfd holding h2 pages (4 KiB) of the region from v3 (its address), at page h3 of the file; reply h0 = lkey, h1 = rkey
  RDMA_DEREG_MR: 104, // h0 = lkey
  RDMA_CREATE_CQ: 105, // fd = memfd (struct ff_cq_shm), h0 = depth, h1 = channel or 0; reply h0 = cq
  RDMA_DESTROY_CQ: 106, // h0 = cq
  RDMA_CREATE_QP: 107, // fd = memfd (struct ff_qp_shm), h0 = pd, h1 = send cq, h2 = recv cq,
  //                      h3 = qp type, h4 = sq depth, h5 = rq depth, v0 = sq_sig_all, v1 = srq or 0;
  //                      reply h0 = qpn
  RDMA_MODIFY_QP: 108, // h0 = qpn, h1 = attr_mask, h2 = state, h3 = dest qpn, h4 = access flags,
  //                      h5 = rnr_retry | min_rnr_timer << 8, remote_addr = destination GID
  RDMA_DESTROY_QP: 109, // h0 = qpn
  RDMA_CREATE_CHANNEL: 110, // fd = write end of a pipe for CQ events; reply h0 = channel
  RDMA_DESTROY_CHANNEL: 111, // h0 = channel
  RDMA_STATS: 112, // reply payload: JSON {sessions, qps, mrs, cqs, ops, bytes, errors, served, cmListeners}
  RDMA_CREATE_SRQ: 113, // fd = memfd (struct ff_srq_shm), h0 = pd, h1 = depth; reply h0 = srq
  RDMA_DESTROY_SRQ: 114, // h0 = srq
  // RDMA connection manager (container librdmacm -> router); private data follows the args.
  CM_CREATE_CHANNEL: 120, // fd = our end of a SOCK_SEQPACKET pair for CM_EVENTs; reply h0 = channel
  CM_CREATE_ID: 121, // h0 = channel, h1 = port space; reply h0 = id
  CM_BIND: 122, // h0 = id, local_addr/local_port; reply local_addr/local_port as bound
  CM_LISTEN: 123, // h0 = id
  CM_RESOLVE_ADDR: 124, // h0 = id, remote_addr/remote_port; event ADDR_RESOLVED (or ADDR_ERROR)
  CM_RESOLVE_ROUTE: 125, // h0 = id; event ROUTE_RESOLVED
  CM_CONNECT: 126, // h0 = id, h1 = qpn; listener gets CONNECT_REQUEST, we ESTABLISHED/REJECTED
  CM_ACCEPT: 127, // h0 = id (from CONNECT_REQUEST), h1 = qpn; connector gets ESTABLISHED
  CM_REJECT: 128, // h0 = id; connector gets REJECTED
  CM_RTU: 129, // h0 = id: connector's QP is ready; the acceptor gets ESTABLISHED
  CM_DISCONNECT: 130, // h0 = id; both QPs to ERR, both ends get DISCONNECTED
  CM_DESTROY_ID: 131, // h0 = id
  CM_DESTROY_CHANNEL: 132, // h0 = channel
  CM_EVENT: 140, // router -> library on the channel: h0 = event, h1 = id, h2 = new id, h3 = peer qpn,
  //                h4 = status, h5 = private data length; host_addr = peer GID; private data follows
};

export const REPLY = {
  ACCEL: 1, // accelerated: fd attached, host_addr/host_port = where to connect (CONNECT)
  FALLBACK: 2, // use the plain overlay path; flags = FALLBACK_* reason
};

export const FALLBACK = {
  NO_LISTENER: 1, // no accelerated listener known at that overlay address
  NOT_OWNER: 2, // the overlay address is not in the caller's network namespace
  BAD_REQUEST: 3,
  INTERNAL: 4,
  LIMIT: 5, // a per-client limit of the router is reached (e.g. accelerated listeners)
  UNREGISTERED: 6, // the caller's network namespace is not registered (freeflow register, CNI plugin)
  PENDING: 7, // the listener is known but this host has not fenced its endpoint yet (a few ms)
};

// Fixed payload records, emitted as C structs and TS layouts: [name, C type, byte size].
export const RDMA_STRUCTS = {
  ff_rdma_args: [
    ['h', 'uint32_t[6]', 24], // handles, counts, flags (meaning per message type)
    ['v', 'uint64_t[4]', 32], // addresses and lengths
  ],
};

// CONNECT request flags, and the flags of an ACCEL reply / ACCEPTED message.
export const CONNECT_FLAGS = {
  SOCKETS_MASK: 0xffff, // how many host sockets the library wants (a prefetch batch)
  PAIR_OK: 0x10000, // request: a same-host AF_UNIX stream pair is acceptable (options emulable)
  PAIR: 1, // reply / ACCEPTED: the fd is a connected AF_UNIX stream end, not a host TCP socket
};

export const LIMITS = {
  MAX_PAYLOAD: 65536,
  MAX_CONNECT_SOCKETS: 32, // most host sockets one CONNECT gets (a prefetch batch; fds per reply)
  PEER_PORT: 7471, // default router <-> router TCP port on the host network
};

// The cluster-key handshake that opens every router <-> router connection, on the peer port
// (src/router/peer-auth.ts) and on the RDMA engines' port (native/rdma/peer_auth.cc), before
// any frame (docs/security.md ("Routers prove a cluster key")). Both ends send HELLO at once: MAGIC (uint32 LE)
// then a random nonce; on the other's HELLO each sends its PROOF, HMAC-SHA256(cluster key,
// LABEL | role byte | dialler's nonce | acceptor's nonce | the prover's own host address as
// 16 bytes IPv4-mapped), and checks the other's against the address it sees at the other end.
// Frames follow the proofs on the same stream.
const PEER_AUTH_NONCE = 32;
export const PEER_AUTH = {
  LABEL: 'freeflow peer auth v1', // domain separation: the key proves nothing else
  MAGIC: 0x314b4646, // "FFK1" read little-endian
  KEY_SIZE: 32, // the cluster key (freeflow keygen): 256 random bits
  NONCE_SIZE: PEER_AUTH_NONCE,
  HELLO_SIZE: 4 + PEER_AUTH_NONCE,
  MAC_SIZE: 32, // HMAC-SHA256
  ROLE_DIALLER: 1, // the end that opened the connection
  ROLE_ACCEPTOR: 2,
  TIMEOUT_MS: 3000, // a connection without both proofs by then is closed
  MAX_PENDING: 64, // handshakes in progress per port; more connections are closed at once
};
