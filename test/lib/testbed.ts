// Test harness: a private testbed (scripts/testbed.sh) with routers, and helpers to run real
// programs inside its namespaces. Everything a test starts is killed and the namespaces are
// removed in teardown, also when the test fails.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { fetchStatus } from '../../src/cli/status-client.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
export const LIB = join(ROOT, 'build/lib/libfsocket.so');
export const EDGE = join(ROOT, 'build/test-apps/edge');
export const VNET = '10.244.0.0/16';

export interface TestLike {
  teardown(fn: () => unknown): void;
  comment(...args: unknown[]): void;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** true: LD_PRELOAD=libfsocket.so with VNET_PREFIX; false: no preload. */
  preload?: boolean;
  env?: Record<string, string>;
  timeoutMs?: number;
}

export interface Started {
  proc: ChildProcess;
  output: () => string;
  waitFor: (re: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
}

let counter = 0;

/** Container overlay address of node cXY (host X, container Y). */
export function overlayIp(node: string): string {
  const m = /^c(\d+)(\d)$/.exec(node);
  if (!m) throw new Error(`not a container node: ${node}`);
  return `10.244.${m[1]}.${10 + Number(m[2])}`;
}

export function hostIp(host: string): string {
  return `192.168.77.${host.slice(1)}`;
}

export class Testbed {
  private readonly procs = new Set<ChildProcess>();
  private readonly routers = new Map<string, Started>();

  private constructor(readonly prefix: string, readonly hosts: number) {}

  static async up(t: TestLike, opts: { hosts?: number; containers?: number; routers?: boolean } = {}): Promise<Testbed> {
    const prefix = `fft${process.pid % 100000}${String.fromCharCode(97 + (counter++ % 26))}`;
    const tb = new Testbed(prefix, opts.hosts ?? 2);
    t.teardown(() => tb.down());
    const r = spawnSync('bash', [join(ROOT, 'scripts/testbed.sh'), 'up'], {
      env: { ...process.env, FF_TB: prefix, FF_TB_HOSTS: String(tb.hosts), FF_TB_CONTAINERS: String(opts.containers ?? 2) },
      encoding: 'utf8',
    });
    if (r.status !== 0) throw new Error(`testbed up failed: ${r.stderr}`);
    try {
      if (opts.routers !== false) for (let h = 1; h <= tb.hosts; h++) await tb.startRouter(`h${h}`);
      if (opts.routers !== false) await tb.waitPeers();
    } catch (err) {
      // A failure here ends the test file before tap runs its teardowns: clean up now.
      await tb.down();
      throw err;
    }
    return tb;
  }

  socketDir(host: string): string {
    return `/tmp/${this.prefix}/${host}`;
  }

  private envFor(opts: RunOptions): string[] {
    const env: Record<string, string> = { ...(opts.env ?? {}) };
    if (opts.preload) {
      env.LD_PRELOAD = LIB;
      env.VNET_PREFIX ??= VNET;
    }
    return Object.entries(env).map(([k, v]) => `${k}=${v}`);
  }

  private spawnIn(node: string, cmd: string[], opts: RunOptions): ChildProcess {
    const p = spawn('bash', [join(ROOT, 'scripts/testbed.sh'), 'exec', node, 'env', ...this.envFor(opts), ...cmd], {
      env: { ...process.env, FF_TB: this.prefix },
      detached: true, // own process group: teardown kills exactly what we started
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.procs.add(p);
    p.on('exit', () => this.procs.delete(p));
    return p;
  }

  /** Runs a command to completion inside a node. */
  run(node: string, cmd: string[], opts: RunOptions = {}): Promise<RunResult> {
    const p = this.spawnIn(node, cmd, opts);
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (d) => (stdout += d));
    p.stderr!.on('data', (d) => (stderr += d));
    const timeout = setTimeout(() => killGroup(p), opts.timeoutMs ?? 60_000);
    return new Promise((resolve) =>
      p.on('close', (code) => {
        clearTimeout(timeout);
        resolve({ code, stdout, stderr });
      }),
    );
  }

  /** Starts a long-running command (a server); killed at teardown. */
  start(node: string, cmd: string[], opts: RunOptions = {}): Started {
    const p = this.spawnIn(node, cmd, opts);
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => p.on('close', (code) => resolve(code)));
    const waitFor = async (re: RegExp, timeoutMs = 15_000) => {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const m = out.match(re);
        if (m) return m;
        if (Date.now() > end || p.exitCode !== null) throw new Error(`timed out waiting for ${re} in output:\n${out}`);
        await sleep(50);
      }
    };
    return { proc: p, output: () => out, waitFor, exited };
  }

  stop(s: Started): Promise<number | null> {
    killGroup(s.proc);
    return s.exited;
  }

  async startRouter(host: string, extraArgs: string[] = []): Promise<Started> {
    const r = this.start(host, ['sh', '-c', `exec node ${join(ROOT, 'bin/freeflow.js')} router --peers "$FF_PEERS" ${extraArgs.join(' ')}`], {
      env: { FFR_LOG_LEVEL: 'info' },
    });
    this.routers.set(host, r);
    const sock = join(this.socketDir(host), 'ffrouter.sock');
    const end = Date.now() + 20_000;
    while (!existsSync(sock) || !(await this.status(host).then(() => true, () => false))) {
      if (Date.now() > end || r.proc.exitCode !== null) throw new Error(`router on ${host} did not start:\n${r.output()}`);
      await sleep(100);
    }
    return r;
  }

  async stopRouter(host: string): Promise<void> {
    const r = this.routers.get(host);
    if (r) await this.stop(r);
    this.routers.delete(host);
  }

  /** Freezes the router on `host` (SIGSTOP to its process group): its sockets stay open but it
   * answers nothing, like a hung or descheduled router. Undo with resumeRouter (teardown's
   * SIGKILL also ends a frozen router). */
  pauseRouter(host: string): void {
    this.signalRouter(host, 'SIGSTOP');
  }

  resumeRouter(host: string): void {
    this.signalRouter(host, 'SIGCONT');
  }

  private signalRouter(host: string, sig: NodeJS.Signals): void {
    const pid = this.routers.get(host)?.proc.pid;
    if (pid === undefined) throw new Error(`no router started on ${host}`);
    process.kill(-pid, sig);
  }

  /** Black-holes the underlay from host `from` to host `to` (VXLAN included): `from` gets a
   * permanent neighbour entry with a MAC address nobody has, so its packets to `to` leave and
   * are dropped, with no error anywhere (no tc/netfilter needed). Returns the undo, which puts
   * back `to`'s real address; safe to call twice. */
  async stallUnderlay(from: string, to: string): Promise<() => Promise<void>> {
    const mac = (await this.run(to, ['cat', '/sys/class/net/phy0/address'])).stdout.trim();
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac)) throw new Error(`no phy0 MAC address on ${to}: ${mac}`);
    const neigh = async (lladdr: string, nud: string) => {
      const r = await this.run(from, ['ip', 'neigh', 'replace', hostIp(to), 'lladdr', lladdr, 'dev', 'phy0', 'nud', nud]);
      if (r.code !== 0) throw new Error(`ip neigh replace on ${from}: ${r.stderr}`);
    };
    await neigh('02:00:00:00:00:01', 'permanent');
    let undone = false;
    return async () => {
      if (undone) return;
      undone = true;
      await neigh(mac, 'reachable');
    };
  }

  routerOutput(host: string): string {
    return this.routers.get(host)?.output() ?? '';
  }

  status(host: string): Promise<any> {
    return fetchStatus(join(this.socketDir(host), 'ffrouter.sock'), 5000);
  }

  async waitPeers(timeoutMs = 15_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (const host of this.routers.keys()) {
      for (;;) {
        const s = await this.status(host);
        if (s.peers.every((p: any) => p.connected)) break;
        if (Date.now() > end) throw new Error(`router ${host} peers not connected: ${JSON.stringify(s.peers)}`);
        await sleep(100);
      }
    }
  }

  /** Waits until the router on `host` knows the accelerated listener overlayIp:port and has
   * fenced its host endpoint (from then on its connects to it take the host path). */
  async waitListener(host: string, ip: string, port: number, timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status(host);
      if (s.directory.some((d: any) => d.overlayIp === ip && d.port === port && d.fenced !== false)) return;
      if (Date.now() > end) throw new Error(`listener ${ip}:${port} not in ${host}'s directory`);
      await sleep(50);
    }
  }

  /** Bytes sent and received by host's VXLAN device (the overlay's path), or another of its
   * devices (`lo`: the host's loopback, same-host TCP's path). */
  counters(host: string, dev = 'flannel.1'): { tx: number; rx: number } {
    const r = spawnSync('bash', [join(ROOT, 'scripts/testbed.sh'), 'counters', host, dev], { env: { ...process.env, FF_TB: this.prefix }, encoding: 'utf8' });
    const [tx, rx] = r.stdout.trim().split(/\s+/).map(Number);
    return { tx, rx };
  }

  async down(): Promise<void> {
    for (const p of this.procs) killGroup(p);
    await sleep(100);
    spawnSync('bash', [join(ROOT, 'scripts/testbed.sh'), 'down'], { env: { ...process.env, FF_TB: this.prefix } });
  }
}

function killGroup(p: ChildProcess): void {
  if (p.pid === undefined || p.exitCode !== null) return;
  try {
    process.kill(-p.pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}

/** Bytes over VXLAN while fn runs, measured on the sending host. */
function bytesOf(c: { tx: number; rx: number }): number {
  return c.tx + c.rx;
}

/** Bytes host's VXLAN device (the overlay's path) and its loopback (same-host TCP's path)
 * carried while fn ran. */
export async function pathBytesDuring<T>(tb: Testbed, host: string, fn: () => Promise<T>): Promise<{ result: T; vxlan: number; loopback: number }> {
  const v0 = bytesOf(tb.counters(host)), l0 = bytesOf(tb.counters(host, 'lo'));
  const result = await fn();
  return { result, vxlan: bytesOf(tb.counters(host)) - v0, loopback: bytesOf(tb.counters(host, 'lo')) - l0 };
}

export async function vxlanBytesDuring<T>(tb: Testbed, host: string, fn: () => Promise<T>): Promise<{ result: T; bytes: number }> {
  const a = bytesOf(tb.counters(host));
  const result = await fn();
  return { result, bytes: bytesOf(tb.counters(host)) - a };
}
