// The host socket guard (docs/security.md, "A host socket reaches only its endpoint"): cgroup
// BPF programs on the router's own cgroup, so they run only for sockets the router creates,
// which keep that cgroup for life, also after the router hands them to a container. A socket
// the router marked (struct ff_guard in socket-local storage) may connect only to the one
// endpoint it was made for, may not bind, and a client socket never accepts a connection.
// Unmarked sockets (the router's own peer connections) pass untouched.
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "ff_guard.h"

struct {
  __uint(type, BPF_MAP_TYPE_SK_STORAGE);
  // CLONE: connections accepted from a marked listener inherit its mark.
  __uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
  __type(key, int);
  __type(value, struct ff_guard);
} ff_guards SEC(".maps");

static __always_inline struct ff_guard *guard_of(struct bpf_sock *sk) {
  if (!sk) return 0;
  return bpf_sk_storage_get(&ff_guards, sk, 0, 0);
}

SEC("cgroup/connect4")
int ff_guard_connect4(struct bpf_sock_addr *ctx) {
  struct ff_guard *g = guard_of(ctx->sk);
  if (!g) return 1;
  return g->kind == FF_GUARD_CLIENT && ctx->user_ip4 == g->ip && (__u16)ctx->user_port == g->port;
}

SEC("cgroup/connect6")
int ff_guard_connect6(struct bpf_sock_addr *ctx) {
  return guard_of(ctx->sk) ? 0 : 1;
}

SEC("cgroup/bind4")
int ff_guard_bind4(struct bpf_sock_addr *ctx) {
  return guard_of(ctx->sk) ? 0 : 1;
}

SEC("cgroup/bind6")
int ff_guard_bind6(struct bpf_sock_addr *ctx) {
  return guard_of(ctx->sk) ? 0 : 1;
}

// Reads the IPv4/TCP headers of a packet (cgroup_skb data starts at the network header).
static __always_inline int tcp_of(struct __sk_buff *skb, struct iphdr *ip, struct tcphdr *tcp) {
  if (bpf_skb_load_bytes(skb, 0, ip, sizeof *ip) < 0 || ip->version != 4 || ip->protocol != IPPROTO_TCP) return -1;
  return bpf_skb_load_bytes(skb, ip->ihl * 4, tcp, sizeof *tcp);
}

// A client socket a container turned into a listener never completes a handshake.
SEC("cgroup_skb/ingress")
int ff_guard_ingress(struct __sk_buff *skb) {
  struct bpf_sock *sk = skb->sk;
  if (!sk || !(sk = bpf_sk_fullsock(sk))) return 1;
  struct ff_guard *g = guard_of(sk);
  if (!g || g->kind != FF_GUARD_CLIENT) return 1;
  struct iphdr ip;
  struct tcphdr tcp;
  if (tcp_of(skb, &ip, &tcp) < 0) return 0;
  return !(tcp.syn && !tcp.ack);
}

// Whatever a client socket sends (connect, sendto with MSG_FASTOPEN, ...) goes to its endpoint.
SEC("cgroup_skb/egress")
int ff_guard_egress(struct __sk_buff *skb) {
  struct bpf_sock *sk = skb->sk;
  if (!sk || !(sk = bpf_sk_fullsock(sk))) return 1;
  struct ff_guard *g = guard_of(sk);
  if (!g || g->kind != FF_GUARD_CLIENT) return 1;
  struct iphdr ip;
  struct tcphdr tcp;
  if (tcp_of(skb, &ip, &tcp) < 0) return 0;
  return ip.daddr == g->ip && tcp.dest == g->port;
}

char LICENSE[] SEC("license") = "GPL";
