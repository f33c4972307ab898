// The network paths every workload runs on. Cross-host paths go from host h1 to host h2;
// same-host paths stay on h1. `freeflow` paths preload libfsocket.so in client and server.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Node } from './testbed.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
export const LIB = join(ROOT, 'build/lib/libfsocket.so');
export const CONNLAT = join(ROOT, 'build/bench/connlat');

export type Scope = 'cross-host' | 'same-host';
export type PathName = 'host' | 'overlay' | 'bridge' | 'loopback' | 'freeflow';

export interface Path {
  id: string; // unique: "cross-host/freeflow"
  name: PathName;
  scope: Scope;
  server: Node;
  client: Node;
  addr: string; // address the client connects to (and the server binds where it must)
  preload: boolean;
  /** Router counters on h1 whose sum must grow for a FreeFlow run to count as "took the fast
   * path" (same host: AF_UNIX pairs, or prefetched loopback TCP sockets for connection storms). */
  routerCounter?: string[];
}

export const SERVER_CPU = 1;
export const CLIENT_CPU = 0;

export const PATHS: Path[] = [
  { id: 'cross-host/host', name: 'host', scope: 'cross-host', server: 'h2', client: 'h1', addr: '192.168.77.2', preload: false },
  { id: 'cross-host/overlay', name: 'overlay', scope: 'cross-host', server: 'c21', client: 'c11', addr: '10.244.2.11', preload: false },
  { id: 'cross-host/freeflow', name: 'freeflow', scope: 'cross-host', server: 'c21', client: 'c11', addr: '10.244.2.11', preload: true, routerCounter: ['connect:host-network'] },
  { id: 'same-host/bridge', name: 'bridge', scope: 'same-host', server: 'c12', client: 'c11', addr: '10.244.1.12', preload: false },
  // The FreeFlow same-host path is an AF_UNIX stream pair made by h1's router, with TCP's
  // options emulated by libfsocket (docs/design.md); the baseline the targets name is TCP over
  // h1's loopback, the best a TCP path inside one host can do.
  { id: 'same-host/loopback', name: 'loopback', scope: 'same-host', server: 'h1', client: 'h1', addr: '127.0.0.1', preload: false },
  { id: 'same-host/freeflow', name: 'freeflow', scope: 'same-host', server: 'c12', client: 'c11', addr: '10.244.1.12', preload: true, routerCounter: ['connect:same-host-unix', 'connect:same-host'] },
];
