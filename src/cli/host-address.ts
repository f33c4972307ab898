// Picks this host's address on the host network from HOST_IP_PREFIX (like the original router).
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';

export function parsePrefix(prefix: string): [ipaddr.IPv4 | ipaddr.IPv6, number] {
  try {
    return ipaddr.parseCIDR(prefix);
  } catch {
    throw new Error(`HOST_IP_PREFIX "${prefix}" is not a CIDR prefix like 192.168.1.0/24`);
  }
}

export function inPrefix(ip: string, prefix: [ipaddr.IPv4 | ipaddr.IPv6, number]): boolean {
  try {
    const a = ipaddr.process(ip);
    return a.kind() === prefix[0].kind() && a.match(prefix);
  } catch {
    return false;
  }
}

export function hostAddressIn(prefixText: string): string {
  const prefix = parsePrefix(prefixText);
  if (prefix[0].kind() !== 'ipv4') throw new Error('HOST_IP_PREFIX must be an IPv4 prefix (host sockets are IPv4)');
  for (const addrs of Object.values(networkInterfaces()))
    for (const a of addrs ?? []) if (a.family === 'IPv4' && inPrefix(a.address, prefix)) return a.address;
  throw new Error(`no interface address of this network namespace is in HOST_IP_PREFIX ${prefixText}`);
}
