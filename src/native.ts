// The C++ addon (native/): socket calls Node cannot make, each returning -errno on failure.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

export interface RecvResult { data: Buffer; fds: number[]; truncated: boolean }

export interface NativeApi {
  seqpacketListen(path: string, mode: number): number;
  seqpacketConnect(path: string): number;
  /** netns: the caller's network namespace inode (0 if it could not be read), via SO_PEERPIDFD. */
  acceptUnix(fd: number): { fd: number; pid: number; uid: number; gid: number; netns: number } | number;
  seqpacketPair(): [number, number] | number;
  recvMsg(fd: number, max: number): RecvResult | number;
  sendMsg(fd: number, data: Buffer, fds?: number[]): number;
  /** count sockets bound to ip:0 in one call (fewer than asked if the host runs out; -errno if
   * none): their fds, and their ports as uint16 LE back to back (the CONNECT reply's payload).
   * Each is guarded (guard below) to reach dstIp:dstPort only. */
  tcpSockets(ip: string, count: number, dstIp: string, dstPort: number): { fds: number[]; ports: Buffer } | number;
  tcpListen(ip: string, port: number, backlog: number): { fd: number; port: number } | number;
  /** SO_MARK of the client host sockets tcpSockets makes from now on (listener-fence.ts). */
  setHostSocketMark(mark: number): void;
  /** The host socket guard (native/host_socket_guard.cc): start returns '' or what failed. */
  guard: { start(objectPath: string): string; stop(): void };
  close(fd: number): number;
  closeAll(fds: number[]): void;
  strerror(errno: number): string;
  acceptor: {
    start(onClosed: () => void): void;
    addListener(chanFd: number, hostPort: number): number;
    removeListener(hostPort: number): void;
    /** Takes only records whose client host address is senderIp. */
    announce(records: Buffer, senderIp: string): number;
    takeClosed(): number[];
    /** A same-host connection as an AF_UNIX pair: the listener's end goes to its accept channel
     * with this identity; returns the client's end, or -errno (-EAGAIN: listener queue full). */
    pairLocal(hostPort: number, clientIp: string, clientPort: number, dstIp: string, dstPort: number): number;
    stats(): { delivered: number; admitted: number; refused: number; announced: number; parked: number; recent: { atMs: number; src: string; dst: string; host: string }[] };
  };
  watch(fd: number, events: number, cb: (status: number, events: number) => void): number;
  unwatch(id: number): void;
}

export const READABLE = 1;
export const EAGAIN = 11;
export const EEXIST = 17;

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

function load(): NativeApi {
  try {
    return require(join(root, 'native/build/Release/freeflow_native.node')) as NativeApi;
  } catch (err) {
    throw new Error(`FreeFlow native addon not built (run \`npm run build\`): ${(err as Error).message}`);
  }
}

export const native: NativeApi = load();

/** The guard's BPF programs, compiled by `npm run build` (native/bpf/host_socket_guard.bpf.c). */
export const HOST_SOCKET_GUARD_OBJECT = join(root, 'build/bpf/host_socket_guard.bpf.o');

/** Message for a negative errno returned by the addon. */
export function errnoText(code: number): string {
  return native.strerror(-code);
}
