// N-API surface of the RDMA engine (see engine.h): thin argument conversion only.
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "../addon.h"
#include "engine.h"
#include "ff_wire.h"

namespace {

uint32_t U32(const Napi::CallbackInfo& info, int i) { return info[i].As<Napi::Number>().Uint32Value(); }
int32_t I32(const Napi::CallbackInfo& info, int i) { return info[i].As<Napi::Number>().Int32Value(); }
uint64_t U64(const Napi::CallbackInfo& info, int i) { return uint64_t(info[i].As<Napi::Number>().DoubleValue()); }
const uint8_t* Gid(const Napi::CallbackInfo& info, int i) {
  if (!info[i].IsBuffer()) return nullptr;
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  return b.Length() == 16 ? b.Data() : nullptr;
}
Napi::Value Num(const Napi::CallbackInfo& info, double v) { return Napi::Number::New(info.Env(), v); }

// The engine takes ownership of fds it accepts (channels); memfds are mapped and closed here.
// addMr(key, pd, pid, addr, len, iova, access, viewFd, viewAddr, viewOff, viewLen); viewFd -1: no view.
Napi::Value AddMr(const Napi::CallbackInfo& i) {
  int fd = I32(i, 7);
  int rc = ffrdma::AddMr(U32(i, 0), U32(i, 1), I32(i, 2), U64(i, 3), U64(i, 4), U64(i, 5), U32(i, 6), fd, U64(i, 8), U64(i, 9), U64(i, 10));
  if (fd >= 0) close(fd);
  return Num(i, rc);
}
Napi::Value DelMr(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DelMr(U32(i, 0))); }
Napi::Value AddChannel(const Napi::CallbackInfo& i) {
  int rc = ffrdma::AddChannel(U32(i, 0), I32(i, 1));
  if (rc < 0) close(I32(i, 1));
  return Num(i, rc);
}
Napi::Value DelChannel(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DelChannel(U32(i, 0))); }
Napi::Value AddCq(const Napi::CallbackInfo& i) {
  int rc = ffrdma::AddCq(U32(i, 0), I32(i, 1), U32(i, 2), U32(i, 3));
  close(I32(i, 1));
  return Num(i, rc);
}
Napi::Value DelCq(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DelCq(U32(i, 0))); }
Napi::Value AddQp(const Napi::CallbackInfo& i) {
  const uint8_t* gid = Gid(i, 9);
  int rc = gid ? ffrdma::AddQp(U32(i, 0), I32(i, 1), U32(i, 2), U32(i, 3), U32(i, 4), I32(i, 5), U32(i, 6), U32(i, 7),
                               i[8].As<Napi::Boolean>().Value(), gid, i.Length() > 10 ? U32(i, 10) : 0)
               : -22;
  close(I32(i, 5));
  return Num(i, rc);
}
Napi::Value AddSrq(const Napi::CallbackInfo& i) {
  int rc = ffrdma::AddSrq(U32(i, 0), I32(i, 1), U32(i, 2), U32(i, 3));
  close(I32(i, 1));
  return Num(i, rc);
}
Napi::Value DelSrq(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DelSrq(U32(i, 0))); }
Napi::Value ModifyQp(const Napi::CallbackInfo& i) {
  return Num(i, ffrdma::ModifyQp(U32(i, 0), U32(i, 1), int64_t(i[2].As<Napi::Number>().DoubleValue()), Gid(i, 3), I32(i, 4), I32(i, 5), I32(i, 6)));
}
Napi::Value DelQp(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DelQp(U32(i, 0))); }
Napi::Value Doorbell(const Napi::CallbackInfo& i) { return Num(i, ffrdma::DoorbellDup(U64(i, 0))); }
Napi::Value DoorbellDrop(const Napi::CallbackInfo& i) {
  ffrdma::DoorbellDrop(U64(i, 0));
  return i.Env().Undefined();
}
// setMemOwner(owner, fd): the engine keeps fd on success; closed here otherwise.
Napi::Value SetMemOwner(const Napi::CallbackInfo& i) {
  int rc = ffrdma::SetMemOwner(I32(i, 0), I32(i, 1));
  if (rc < 0) close(I32(i, 1));
  return Num(i, rc);
}
Napi::Value AddMemOwner(const Napi::CallbackInfo& i) { return Num(i, ffrdma::AddMemOwner(I32(i, 0), U64(i, 1))); }
Napi::Value DelMemOwner(const Napi::CallbackInfo& i) {
  ffrdma::DelMemOwner(I32(i, 0));
  return i.Env().Undefined();
}
// The connecting process of a router session: a pidfd from SO_PEERPIDFD (the kernel pinned it
// at connect(); -ESRCH once that process has exited), and whether a pidfd's process still runs.
Napi::Value PeerPidfd(const Napi::CallbackInfo& i) {
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(I32(i, 0), SOL_SOCKET, 77 /* SO_PEERPIDFD */, &pidfd, &len) < 0) return Num(i, -errno);
  return Num(i, pidfd);
}
Napi::Value PidfdAlive(const Napi::CallbackInfo& i) {
  return Napi::Boolean::New(i.Env(), syscall(SYS_pidfd_send_signal, I32(i, 0), 0, nullptr, 0) == 0);
}
Napi::Value SafetyStats(const Napi::CallbackInfo& i) {
  ffrdma::SafetyStats s = ffrdma::GetSafetyStats();
  Napi::Object o = Napi::Object::New(i.Env());
  o.Set("bellContainers", double(s.bell_containers));
  o.Set("spuriousWakeups", double(s.spurious_wakeups));
  o.Set("bellMutes", double(s.bell_mutes));
  o.Set("unlockedChunks", double(s.unlocked_chunks));
  o.Set("memOwners", double(s.mem_owners));
  o.Set("ctlWaitMaxUs", double(s.ctl_wait_max_us));
  o.Set("holdMaxUs", double(s.hold_max_us));
  return o;
}
Napi::Value SetRate(const Napi::CallbackInfo& i) {
  ffrdma::SetRateLimit(U64(i, 0));
  return i.Env().Undefined();
}
// startTransport(hostIp, port, peers, clusterKey): -EINVAL unless the key is a Buffer of
// FF_PEER_AUTH_KEY_SIZE bytes (no engine port without it).
Napi::Value StartTransport(const Napi::CallbackInfo& i) {
  std::vector<std::string> peers;
  Napi::Array a = i[2].As<Napi::Array>();
  for (uint32_t k = 0; k < a.Length(); k++) peers.push_back(a.Get(k).As<Napi::String>().Utf8Value());
  if (!i[3].IsBuffer() || i[3].As<Napi::Buffer<uint8_t>>().Length() != FF_PEER_AUTH_KEY_SIZE) return Num(i, -22);
  auto k = i[3].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> key(k.Data(), k.Data() + k.Length());
  return Num(i, ffrdma::StartTransport(i[0].As<Napi::String>().Utf8Value(), I32(i, 1), peers, key));
}
Napi::Value CmSend(const Napi::CallbackInfo& i) {
  auto b = i[1].As<Napi::Buffer<uint8_t>>();
  return Napi::Boolean::New(i.Env(), ffrdma::CmSend(I32(i, 0), b.Data(), uint32_t(b.Length())));
}
Napi::Value CmPeers(const Napi::CallbackInfo& i) {
  auto v = ffrdma::CmPeers();
  Napi::Array a = Napi::Array::New(i.Env(), v.size());
  for (uint32_t k = 0; k < v.size(); k++) a.Set(k, Napi::Number::New(i.Env(), v[k]));
  return a;
}
Napi::Value CmTake(const Napi::CallbackInfo& i) {
  auto v = ffrdma::CmTake();
  Napi::Array a = Napi::Array::New(i.Env(), v.size());
  for (uint32_t k = 0; k < v.size(); k++) {
    Napi::Object o = Napi::Object::New(i.Env());
    o.Set("conn", Napi::Number::New(i.Env(), v[k].first));
    o.Set("data", Napi::Buffer<uint8_t>::Copy(i.Env(), v[k].second.data(), v[k].second.size()));
    a.Set(k, o);
  }
  return a;
}
Napi::Value ConnPeer(const Napi::CallbackInfo& i) { return Num(i, ffrdma::ConnPeer(I32(i, 0))); }
Napi::Value SetGidOwners(const Napi::CallbackInfo& i) {
  auto b = i[0].As<Napi::Buffer<uint8_t>>();
  ffrdma::SetGidOwners(b.Data(), b.Length() / 20);
  return i.Env().Undefined();
}
Napi::Value Stats(const Napi::CallbackInfo& i) {
  ffrdma::Stats s = ffrdma::GetStats();
  Napi::Object o = Napi::Object::New(i.Env());
  o.Set("ops", double(s.ops));
  o.Set("bytes", double(s.bytes));
  o.Set("errors", double(s.errors));
  o.Set("served", double(s.served));
  o.Set("qps", double(s.qps));
  o.Set("mrs", double(s.mrs));
  o.Set("cqs", double(s.cqs));
  o.Set("mapped", double(s.mapped));
  o.Set("placed", double(s.placed));
  o.Set("srqs", double(s.srqs));
  o.Set("channels", double(s.channels));
  o.Set("views", double(s.views));
  o.Set("pending", double(s.pending));
  o.Set("naks", double(s.naks));
  o.Set("refused", double(s.refused));
  o.Set("gids", double(s.gids));
  return o;
}

}  // namespace

void InitRdma(Napi::Env env, Napi::Object exports) {
  exports.Set("rdmaAddMr", Napi::Function::New(env, AddMr));
  exports.Set("rdmaDelMr", Napi::Function::New(env, DelMr));
  exports.Set("rdmaAddChannel", Napi::Function::New(env, AddChannel));
  exports.Set("rdmaDelChannel", Napi::Function::New(env, DelChannel));
  exports.Set("rdmaAddCq", Napi::Function::New(env, AddCq));
  exports.Set("rdmaDelCq", Napi::Function::New(env, DelCq));
  exports.Set("rdmaAddQp", Napi::Function::New(env, AddQp));
  exports.Set("rdmaAddSrq", Napi::Function::New(env, AddSrq));
  exports.Set("rdmaDelSrq", Napi::Function::New(env, DelSrq));
  exports.Set("rdmaModifyQp", Napi::Function::New(env, ModifyQp));
  exports.Set("rdmaDelQp", Napi::Function::New(env, DelQp));
  exports.Set("rdmaDoorbell", Napi::Function::New(env, Doorbell));
  exports.Set("rdmaDoorbellDrop", Napi::Function::New(env, DoorbellDrop));
  exports.Set("rdmaAddMemOwner", Napi::Function::New(env, AddMemOwner));
  exports.Set("rdmaSetMemOwner", Napi::Function::New(env, SetMemOwner));
  exports.Set("rdmaDelMemOwner", Napi::Function::New(env, DelMemOwner));
  exports.Set("rdmaPeerPidfd", Napi::Function::New(env, PeerPidfd));
  exports.Set("rdmaPidfdAlive", Napi::Function::New(env, PidfdAlive));
  exports.Set("rdmaSafetyStats", Napi::Function::New(env, SafetyStats));
  exports.Set("rdmaSetRate", Napi::Function::New(env, SetRate));
  exports.Set("rdmaStartTransport", Napi::Function::New(env, StartTransport));
  exports.Set("rdmaCmSend", Napi::Function::New(env, CmSend));
  exports.Set("rdmaCmPeers", Napi::Function::New(env, CmPeers));
  exports.Set("rdmaCmTake", Napi::Function::New(env, CmTake));
  exports.Set("rdmaStats", Napi::Function::New(env, Stats));
  exports.Set("rdmaConnPeer", Napi::Function::New(env, ConnPeer));
  exports.Set("rdmaSetGidOwners", Napi::Function::New(env, SetGidOwners));
}
