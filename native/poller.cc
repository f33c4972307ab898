// Watches raw fds on Node's own libuv loop, so the router reacts to fd readiness without
// threads. One uv_poll_t per watched fd; JS gets (status, events) on each wake-up.
#include <uv.h>
#include <map>
#include "addon.h"

namespace {

struct Watch {
  uv_poll_t handle;
  Napi::FunctionReference callback;
  int id;
};

std::map<int, Watch*> watches;
int next_id = 1;
napi_env g_env = nullptr;

void OnPoll(uv_poll_t* handle, int status, int events) {
  Watch* w = static_cast<Watch*>(handle->data);
  Napi::Env env(g_env);
  Napi::HandleScope scope(env);
  Napi::AsyncContext ctx(env, "freeflow.poll");
  int flags = 0;
  if (events & UV_READABLE) flags |= 1;
  if (events & UV_WRITABLE) flags |= 2;
  if (events & UV_DISCONNECT) flags |= 4;
  w->callback.MakeCallback(env.Global(), {Napi::Number::New(env, status), Napi::Number::New(env, flags)}, ctx);
}

void OnClose(uv_handle_t* handle) {
  Watch* w = static_cast<Watch*>(handle->data);
  w->callback.Reset();
  delete w;
}

// watch(fd, events /*1 read, 2 write*/, cb) -> id
Napi::Value WatchFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int ev = info[1].As<Napi::Number>().Int32Value();
  uv_loop_t* loop = nullptr;
  napi_get_uv_event_loop(env, &loop);
  Watch* w = new Watch();
  if (uv_poll_init(loop, &w->handle, fd) != 0) {
    delete w;
    return Napi::Number::New(env, -1);
  }
  w->handle.data = w;
  w->callback = Napi::Persistent(info[2].As<Napi::Function>());
  w->id = next_id++;
  int uvev = ((ev & 1) ? UV_READABLE : 0) | ((ev & 2) ? UV_WRITABLE : 0) | UV_DISCONNECT;
  uv_poll_start(&w->handle, uvev, OnPoll);
  watches[w->id] = w;
  return Napi::Number::New(env, w->id);
}

// unwatch(id): stop watching; the fd itself is closed by the caller afterwards
Napi::Value UnwatchFd(const Napi::CallbackInfo& info) {
  auto it = watches.find(info[0].As<Napi::Number>().Int32Value());
  if (it == watches.end()) return info.Env().Undefined();
  Watch* w = it->second;
  watches.erase(it);
  uv_poll_stop(&w->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->handle), OnClose);
  return info.Env().Undefined();
}

}  // namespace

void InitPoller(Napi::Env env, Napi::Object exports) {
  g_env = env;
  exports.Set("watch", Napi::Function::New(env, WatchFd));
  exports.Set("unwatch", Napi::Function::New(env, UnwatchFd));
}
