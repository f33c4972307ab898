// See peer_auth.h. HMAC-SHA256 is OpenSSL's (libcrypto): no hand-made cryptography.
#include "peer_auth.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "ff_wire.h"

namespace ffrdma {
namespace {

using Clock = std::chrono::steady_clock;

// Reads exactly n bytes before the deadline (never more: what follows is the engine's).
bool ReadBy(int fd, uint8_t* p, size_t n, Clock::time_point deadline) {
  while (n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    int r = poll(&pfd, 1, int(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t got = recv(fd, p, n, MSG_DONTWAIT);
    if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (got <= 0) return false;
    p += got;
    n -= size_t(got);
  }
  return true;
}

// The handshake's messages are a few dozen bytes on a fresh connection: they fit its buffer.
bool SendAll(int fd, const uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

// 16-byte IPv4-mapped form of a dotted address, as the wire carries addresses.
bool Mapped(const std::string& ip, uint8_t out[16]) {
  memset(out, 0, 16);
  out[10] = out[11] = 0xff;
  return inet_pton(AF_INET, ip.c_str(), out + 12) == 1;
}

// HMAC-SHA256(key, LABEL | role | dialler nonce | acceptor nonce | host address).
bool Proof(const std::vector<uint8_t>& key, PeerRole role, const uint8_t* dn, const uint8_t* an, const std::string& host_ip,
           uint8_t out[FF_PEER_AUTH_MAC_SIZE]) {
  static constexpr char kLabel[] = FF_PEER_AUTH_LABEL;
  constexpr size_t kLabelLen = sizeof kLabel - 1;
  uint8_t msg[kLabelLen + 1 + 2 * FF_PEER_AUTH_NONCE_SIZE + 16];
  uint8_t* p = msg;
  memcpy(p, kLabel, kLabelLen);
  p += kLabelLen;
  *p++ = role == PeerRole::kDialler ? FF_PEER_AUTH_ROLE_DIALLER : FF_PEER_AUTH_ROLE_ACCEPTOR;
  memcpy(p, dn, FF_PEER_AUTH_NONCE_SIZE);
  p += FF_PEER_AUTH_NONCE_SIZE;
  memcpy(p, an, FF_PEER_AUTH_NONCE_SIZE);
  p += FF_PEER_AUTH_NONCE_SIZE;
  if (!Mapped(host_ip, p)) return false;
  unsigned len = 0;
  return HMAC(EVP_sha256(), key.data(), int(key.size()), msg, sizeof msg, out, &len) && len == FF_PEER_AUTH_MAC_SIZE;
}

bool RandomBytes(uint8_t* p, size_t n) {
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

}  // namespace

bool PeerHandshake(int fd, const std::vector<uint8_t>& key, PeerRole role, const std::string& own_ip, const std::string& peer_ip) {
  if (key.size() != FF_PEER_AUTH_KEY_SIZE) return false;
  const auto deadline = Clock::now() + std::chrono::milliseconds(FF_PEER_AUTH_TIMEOUT_MS);
  uint8_t hello[FF_PEER_AUTH_HELLO_SIZE], theirs[FF_PEER_AUTH_HELLO_SIZE];
  const uint32_t magic = FF_PEER_AUTH_MAGIC;  // little-endian on the wire, as the host's (x86, arm64)
  memcpy(hello, &magic, 4);
  if (!RandomBytes(hello + 4, FF_PEER_AUTH_NONCE_SIZE) || !SendAll(fd, hello, sizeof hello)) return false;
  // The magic first: garbage is refused at once, not at the deadline.
  if (!ReadBy(fd, theirs, 4, deadline) || memcmp(theirs, &magic, 4) != 0) return false;
  if (!ReadBy(fd, theirs + 4, sizeof theirs - 4, deadline)) return false;
  const uint8_t* mine = hello + 4;
  const uint8_t* other = theirs + 4;
  const uint8_t* dn = role == PeerRole::kDialler ? mine : other;
  const uint8_t* an = role == PeerRole::kDialler ? other : mine;
  const PeerRole other_role = role == PeerRole::kDialler ? PeerRole::kAcceptor : PeerRole::kDialler;
  uint8_t proof[FF_PEER_AUTH_MAC_SIZE], expected[FF_PEER_AUTH_MAC_SIZE], got[FF_PEER_AUTH_MAC_SIZE];
  if (!Proof(key, role, dn, an, own_ip, proof) || !SendAll(fd, proof, sizeof proof)) return false;
  if (!ReadBy(fd, got, sizeof got, deadline) || !Proof(key, other_role, dn, an, peer_ip, expected)) return false;
  return CRYPTO_memcmp(got, expected, sizeof got) == 0;
}

}  // namespace ffrdma
