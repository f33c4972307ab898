// Helpers for the RDMA-mode tests: running verbs programs with FreeFlow's libibverbs inside the
// testbed, and asking a router for its RDMA resource counters.
import { join } from 'node:path';
import type { Test } from 'tap';
import { native, READABLE } from '../../src/native.js';
import { decode, emptyMsg, encode, MSG_SIZE, MsgType } from '../../src/protocol/codec.js';
import { ROOT, type RunResult, type Started, type Testbed } from '../lib/testbed.js';

export const VERBS_ENV = { LD_LIBRARY_PATH: join(ROOT, 'build/verbs') };
export const RDMA_CHECK = join(ROOT, 'build/test-apps/rdma_check');

export interface RdmaStats {
  sessions: number; qps: number; mrs: number; cqs: number; ops: number; bytes: number; errors: number; served: number; mapped: number; placed: number;
  /** NAKs (receiver not ready, busy) this host's requesters got; messages of peer routers the
   * engine and the connection manager refused; GIDs in the directory, and disputed claims. */
  naks: number; refused: number; cmRefused: number; gids: number; gidConflicts: number;
  cmListeners: string[];
  /** Open descriptors of the router process. */
  fds: number;
  limits: {
    objectsPerContainer: number; fdsPerContainer: number; mappingsPerContainer: number; rdmaSessionsPerContainer: number;
    fdBudget: number; mappingBudget: number; destroyedChannelsOpen: number;
  };
  /** Tenant isolation (docs/security-rdma-memory.md): wake-ups that found no work, containers
   * muted for ringing too often, chunks of long copies made without the engine lock; since the
   * previous RDMA_STATS, the longest a control request waited for the engine lock and the
   * longest a worker held it at once (us); mappings held for applications. */
  isolation: { spuriousWakeups: number; bellMutes: number; unlockedChunks: number; ctlWaitMaxUs: number; holdMaxUs: number; mappings: number };
  /** Every kind of object the router holds for applications, by kind: all 0 when none runs. */
  resources: Record<string, number>;
}

/** Kinds of `resources` the tests expect (so that a renamed counter cannot drop out of the checks). */
export const RESOURCE_KINDS = ['sessions', 'pds', 'mrs', 'cqs', 'qps', 'srqs', 'channels', 'mrKeys', 'qpNumbers', 'channelFds', 'cmIds', 'cmChannels', 'cmDestroyedChannelsOpen', 'cmListeners', 'cmPending', 'cmSessions', 'engineQps', 'engineMrs', 'engineCqs', 'engineSrqs', 'engineChannels', 'engineViews', 'enginePending', 'containers', 'pidfds', 'memFiles', 'doorbellPages', 'engineMemOwners', 'engineDoorbellPages'];

export function rdmaStats(tb: Testbed, host: string, timeoutMs = 2000): Promise<RdmaStats> {
  const fd = native.seqpacketConnect(join(tb.socketDir(host), 'ffrouter.sock'));
  if (fd < 0) return Promise.reject(new Error(`connect: ${native.strerror(-fd)}`));
  const m = emptyMsg(MsgType.RDMA_STATS);
  m.seq = 1;
  native.sendMsg(fd, encode(m));
  return new Promise((resolve, reject) => {
    const done = (v: RdmaStats | Error) => {
      clearTimeout(timer);
      native.unwatch(w);
      native.close(fd);
      v instanceof Error ? reject(v) : resolve(v);
    };
    const timer = setTimeout(() => done(new Error('no reply')), timeoutMs);
    const w = native.watch(fd, READABLE, () => {
      const r = native.recvMsg(fd, MSG_SIZE + 65536);
      if (typeof r === 'number') return done(new Error('router closed the connection'));
      const reply = decode(r.data);
      if (reply.status !== 0) return done(new Error(`status ${reply.status}`));
      done(JSON.parse(r.data.subarray(MSG_SIZE).toString()) as RdmaStats);
    });
  });
}

/** Waits (up to timeoutMs) until the router of host holds nothing for any application (every
 * count under `resources` is 0); returns its last stats either way. */
export async function resourcesFreed(tb: Testbed, host: string, timeoutMs = 5000): Promise<RdmaStats> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = await rdmaStats(tb, host);
    if (Object.values(s.resources).every((n) => n === 0) || Date.now() > end) return s;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Asserts that every resource kind of a router's stats is back to 0. */
export function assertFreed(t: Test, host: string, s: RdmaStats, what = ''): void {
  t.same(RESOURCE_KINDS.filter((k) => !(k in s.resources)), [], `${host}: the router reports every resource kind`);
  const left = Object.entries(s.resources).filter(([, n]) => n !== 0);
  t.same(Object.fromEntries(left), {}, `${host}: nothing left${what} (${Object.keys(s.resources).join(', ')} all 0)`);
}

/** Waits until a TCP port listens in the node's namespace (perftest's stdout is a pipe, so
 * fully buffered: no banner to wait for). */
export async function listening(tb: Testbed, node: string, port: number, s?: Started, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await tb.run(node, ['ss', '-ltnH', `sport = :${port}`]);
    if (r.stdout.trim()) return;
    if (Date.now() > end || (s && s.proc.exitCode !== null)) throw new Error(`nothing listens on ${node}:${port}${s ? `; server output:\n${s.output()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until an rdma_cm listener on that port exists in the router of the node's host.
 * perftest -R servers listen, close that id and listen again while they set up, so the
 * listener must still be there a moment later. */
export async function cmListening(tb: Testbed, node: string, port: number, s?: Started, timeoutMs = 20_000): Promise<void> {
  const host = `h${node.slice(1, -1)}`;
  const end = Date.now() + timeoutMs;
  let seenAt = 0;
  for (;;) {
    const st = await rdmaStats(tb, host);
    const up = st.cmListeners.some((l) => l.endsWith(`:${port}`));
    if (!up) seenAt = 0;
    else if (!seenAt) seenAt = Date.now();
    else if (Date.now() - seenAt >= 1500) return;
    if (Date.now() > end || (s && s.proc.exitCode !== null)) throw new Error(`no rdma_cm listener on port ${port} at ${host}${s ? `; server output:\n${s.output()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The exit code of s, or 'timeout' if it has not exited within ms (the timer does not outlive it). */
export async function exitedWithin(s: Started, ms: number): Promise<number | null | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([s.exited, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]);
  clearTimeout(timer);
  return r;
}

/** Runs a server/client pair of the same verbs program; the client gets the server's overlay IP last. */
export async function pair(tb: Testbed, server: string, client: string, serverIp: string, cmd: string[], opts: { ready?: RegExp; timeoutMs?: number; clientArgs?: string[] } = {}): Promise<{ srv: RunResult; cli: RunResult }> {
  const s: Started = tb.start(server, cmd, { env: VERBS_ENV });
  const p = cmd.indexOf('-p');
  if (opts.ready) await s.waitFor(opts.ready);
  else if (p >= 0 && !cmd.includes('-R')) await listening(tb, server, Number(cmd[p + 1]), s);
  else if (p >= 0) await cmListening(tb, server, Number(cmd[p + 1]), s);
  else await new Promise((r) => setTimeout(r, 2000));
  const cli = await tb.run(client, [...cmd, ...(opts.clientArgs ?? []), serverIp], { env: VERBS_ENV, timeoutMs: opts.timeoutMs ?? 90_000 });
  const timer = setTimeout(() => tb.stop(s), 15_000);
  const code = await s.exited;
  clearTimeout(timer);
  return { srv: { code, stdout: s.output(), stderr: '' }, cli };
}
