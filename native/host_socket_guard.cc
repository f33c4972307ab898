// Loads and attaches the host socket guard (bpf/host_socket_guard.bpf.c) and marks the host
// sockets the router hands to containers. The router moves itself into a cgroup of its own
// first: sockets belong for life to the cgroup of the process that created them, so the
// programs run only for the router's sockets, wherever their descriptors go, and nothing else
// on the host pays for them. Links are bpf_links: they vanish with the router.
#include "host_socket_guard.h"
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include "bpf/ff_guard.h"

namespace {

bpf_object* obj = nullptr;
std::vector<bpf_link*> links;
int map_fd = -1;
std::string own_cgroup;     // the router's cgroup directory while the guard is on
std::string parent_cgroup;  // where it came from
std::string libbpf_said;    // libbpf's last complaint, for the error message

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list ap) {
  if (level == LIBBPF_DEBUG) return 0;
  char buf[512];
  vsnprintf(buf, sizeof buf, fmt, ap);
  libbpf_said = buf;
  while (!libbpf_said.empty() && libbpf_said.back() == '\n') libbpf_said.pop_back();
  return 0;
}

// Where cgroup v2 is mounted; mounts a private one if the host has none (hybrid or v1 hosts).
std::string Cgroup2Mount() {
  std::ifstream mi("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mi, line)) {
    // fields: id parent maj:min root mountpoint options [optional...] - fstype source super
    size_t dash = line.find(" - ");
    if (dash == std::string::npos || line.compare(dash + 3, 8, "cgroup2 ") != 0) continue;
    std::istringstream f(line.substr(0, dash));
    std::string id, parent, dev, root, mnt;
    f >> id >> parent >> dev >> root >> mnt;
    if (root == "/") return mnt;
  }
  const char* own = "/run/freeflow/cgroup2";
  mkdir("/run/freeflow", 0755);
  mkdir(own, 0755);
  if (mount("none", own, "cgroup2", 0, nullptr) == 0 || errno == EBUSY) return own;
  return "";
}

// This process's cgroup v2 path ("0::/path" in /proc/self/cgroup).
std::string OwnCgroupPath() {
  std::ifstream cg("/proc/self/cgroup");
  std::string line;
  while (std::getline(cg, line))
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return "";
}

bool WriteFile(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == ssize_t(text.size());
  close(fd);
  return ok;
}

// Removes the empty cgroups of routers that died without stopping (kill -9).
void RemoveStale(const std::string& parent) {
  DIR* d = opendir(parent.c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    int pid = 0;
    if (sscanf(e->d_name, "freeflow-router-%d", &pid) != 1 || pid <= 0) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) continue;
    rmdir((parent + "/" + e->d_name).c_str());
  }
  closedir(d);
}

std::string Fail(const std::string& what) {
  std::string msg = what + (errno ? std::string(": ") + strerror(errno) : "");
  if (!libbpf_said.empty()) msg += " (libbpf: " + libbpf_said + ")";
  return msg;
}

}  // namespace

std::string HostSocketGuardStart(const std::string& object_path) {
  if (obj) return "";
  libbpf_set_print(LibbpfPrint);
  errno = 0;
  std::string mnt = Cgroup2Mount();
  if (mnt.empty()) return Fail("no cgroup v2 hierarchy and none can be mounted");
  std::string path = OwnCgroupPath();
  if (path.empty()) return Fail("this process is in no cgroup v2");
  parent_cgroup = mnt + (path == "/" ? "" : path);
  RemoveStale(parent_cgroup);
  own_cgroup = parent_cgroup + "/freeflow-router-" + std::to_string(getpid());
  if (mkdir(own_cgroup.c_str(), 0755) < 0 && errno != EEXIST) return Fail("cannot create cgroup " + own_cgroup);
  if (!WriteFile(own_cgroup + "/cgroup.procs", std::to_string(getpid()))) return Fail("cannot move the router into " + own_cgroup);
  int cg = open(own_cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) return Fail("cannot open " + own_cgroup);
  obj = bpf_object__open_file(object_path.c_str(), nullptr);
  if (!obj || libbpf_get_error(obj)) {
    obj = nullptr;
    close(cg);
    return Fail("cannot open " + object_path);
  }
  if (bpf_object__load(obj) < 0) {
    close(cg);
    HostSocketGuardStop();
    return Fail("cannot load the guard's BPF programs (the router needs root: CAP_BPF and CAP_NET_ADMIN)");
  }
  bpf_program* prog;
  bpf_object__for_each_program(prog, obj) {
    bpf_link* l = bpf_program__attach_cgroup(prog, cg);
    if (!l || libbpf_get_error(l)) {
      std::string name = bpf_program__name(prog);
      close(cg);
      HostSocketGuardStop();
      return Fail("cannot attach " + name + " to " + own_cgroup);
    }
    links.push_back(l);
  }
  close(cg);
  map_fd = bpf_object__find_map_fd_by_name(obj, "ff_guards");
  if (map_fd < 0) {
    HostSocketGuardStop();
    return Fail("the guard object has no ff_guards map");
  }
  return "";
}

void HostSocketGuardStop() {
  for (bpf_link* l : links) bpf_link__destroy(l);
  links.clear();
  if (obj) bpf_object__close(obj);
  obj = nullptr;
  map_fd = -1;
  if (!own_cgroup.empty()) {
    WriteFile(parent_cgroup + "/cgroup.procs", std::to_string(getpid()));
    rmdir(own_cgroup.c_str());
    own_cgroup.clear();
  }
}

namespace {
int Mark(int fd, uint32_t ip_be, uint16_t port_be, uint16_t kind) {
  if (map_fd < 0) return -ENOTCONN;  // fail closed: no guard, no host socket leaves the router
  ff_guard g{ip_be, port_be, kind};
  return bpf_map_update_elem(map_fd, &fd, &g, BPF_ANY) < 0 ? -errno : 0;
}
}  // namespace

int HostSocketGuardMarkClient(int fd, uint32_t ip_be, uint16_t port_be) { return Mark(fd, ip_be, port_be, FF_GUARD_CLIENT); }
int HostSocketGuardMarkListener(int fd) { return Mark(fd, 0, 0, FF_GUARD_LISTENER); }

namespace {
// guard.start(objectPath) -> '' | error text; guard.stop()
Napi::Value Start(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), HostSocketGuardStart(info[0].As<Napi::String>()));
}
Napi::Value Stop(const Napi::CallbackInfo& info) {
  HostSocketGuardStop();
  return info.Env().Undefined();
}
}  // namespace

void InitHostSocketGuard(Napi::Env env, Napi::Object exports) {
  Napi::Object g = Napi::Object::New(env);
  g.Set("start", Napi::Function::New(env, Start));
  g.Set("stop", Napi::Function::New(env, Stop));
  exports.Set("guard", g);
}
