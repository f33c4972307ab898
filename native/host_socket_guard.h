// The host socket guard (host_socket_guard.cc): every host socket the router hands to a
// container is marked before it leaves, so that it can reach only the endpoint it was made for.
#pragma once
#include <napi.h>
#include <stdint.h>
#include <string>

/** Moves the router into a cgroup of its own and attaches the BPF programs; "" or what failed. */
std::string HostSocketGuardStart(const std::string& object_path);
void HostSocketGuardStop();
/** 0 or -errno (-ENOTCONN if the guard is not running: such a socket must not be handed out). */
int HostSocketGuardMarkClient(int fd, uint32_t ip_be, uint16_t port_be);
int HostSocketGuardMarkListener(int fd);

void InitHostSocketGuard(Napi::Env env, Napi::Object exports);
