// The bench's private testbed (scripts/testbed.sh with a unique FF_TB) and the FreeFlow routers
// on both hosts. down() kills what this run started and removes only this run's namespaces.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fetchStatus } from '../../src/cli/status-client.js';
import { run, start, killAll, type Started, type RunResult } from './proc.js';
import { ROOT, LIB } from './paths.js';

export type Node = 'h1' | 'h2' | 'c11' | 'c12' | 'c21' | 'c22';

export class Testbed {
  readonly prefix = `ffbench${process.pid % 100000}`;
  private routers: Started[] = [];
  private isUp = false;

  private script(args: string[]): string[] {
    return ['bash', join(ROOT, 'scripts/testbed.sh'), ...args];
  }
  private get env() {
    return { FF_TB: this.prefix };
  }
  netnsNames(): string[] {
    return ['h1', 'h2', 'c11', 'c12', 'c21', 'c22'].map((n) => `${this.prefix}-${n}`);
  }
  socketDir(host: string): string {
    return `/tmp/${this.prefix}/${host}`;
  }

  async up(): Promise<void> {
    this.isUp = true; // down() must run even if up fails half-way
    const r = await run(this.script(['up']), { timeoutMs: 60_000, env: this.env });
    if (r.code !== 0) throw new Error(`testbed up failed: ${r.stderr.slice(-2000)}`);
    for (const h of ['h1', 'h2']) {
      this.routers.push(start(this.script(['exec', h, 'sh', '-c', `exec node ${join(ROOT, 'bin/freeflow.js')} router --peers "$FF_PEERS"`]), this.env));
    }
    for (const h of ['h1', 'h2']) await this.waitRouter(h);
  }

  private async waitRouter(host: string, timeoutMs = 20_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        if (existsSync(join(this.socketDir(host), 'ffrouter.sock'))) {
          const s = await this.status(host);
          if (s.peers.every((p: any) => p.connected)) return;
          last = `peers ${JSON.stringify(s.peers)}`;
        }
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > end) throw new Error(`router on ${host} not ready: ${last}\n${this.routers.map((r) => r.output()).join('\n')}`);
      await sleep(100);
    }
  }

  status(host: string): Promise<any> {
    return fetchStatus(join(this.socketDir(host), 'ffrouter.sock'), 2000);
  }

  async counter(host: string, name: string): Promise<number> {
    return (await this.status(host)).counters[name] ?? 0;
  }

  /** Waits until `host`'s router directory holds the accelerated listener ip:port. */
  async waitListener(host: string, ip: string, port: number, timeoutMs = 10_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status(host);
      if (s.directory.some((d: any) => d.overlayIp === ip && d.port === port && d.fenced !== false)) return;
      if (Date.now() > end) throw new Error(`listener ${ip}:${port} not in ${host}'s router directory`);
      await sleep(50);
    }
  }

  /** PIDs of the routers (h1, h2): every wrapper execs, so it is the node process itself. */
  routerPids(): number[] {
    return this.routers.map((r) => r.proc.pid!).filter(Boolean);
  }

  /** CPU seconds (user+system) the routers have used so far. */
  routerCpuSec(): number {
    let t = 0;
    for (const pid of this.routerPids()) {
      try {
        const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
        t += Number(f[11]) + Number(f[12]);
      } catch {
        /* gone */
      }
    }
    return t / 100;
  }

  /** flannel.1 (VXLAN) tx+rx bytes on a host: what crossed the overlay. Read from /proc/<router pid>/net/dev
   * (the router lives in the host's namespace), without spawning anything; script as fallback. */
  async vxlanBytes(host: string): Promise<number> {
    const pid = this.routers[Number(host.slice(1)) - 1]?.proc.pid;
    try {
      const line = readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n').find((l) => /^\s*flannel\.1:/.test(l));
      if (line) {
        const f = line.split(':')[1].trim().split(/\s+/).map(Number);
        return f[0] + f[8]; // rx bytes + tx bytes
      }
    } catch {
      /* fall back */
    }
    const r = await run(this.script(['counters', host]), { timeoutMs: 10_000, env: this.env });
    const [tx, rx] = r.stdout.trim().split(/\s+/).map(Number);
    return tx + rx;
  }

  private cmdIn(node: Node, cmd: string[], preload: boolean, cpu: number): string[] {
    const env = preload ? ['env', `LD_PRELOAD=${LIB}`] : ['env', '-u', 'LD_PRELOAD'];
    return this.script(['exec', node, ...env, 'taskset', '-c', String(cpu), ...cmd]);
  }

  /** Runs a client to completion inside a node, pinned to `cpu`. */
  exec(node: Node, cmd: string[], o: { preload: boolean; cpu: number; timeoutMs: number; onOutput?: (all: string) => void }): Promise<RunResult> {
    return run(this.cmdIn(node, cmd, o.preload, o.cpu), { timeoutMs: o.timeoutMs, env: this.env, onOutput: o.onOutput });
  }

  /** Starts a server inside a node, pinned to `cpu`. */
  spawn(node: Node, cmd: string[], o: { preload: boolean; cpu: number }): Started {
    return start(this.cmdIn(node, cmd, o.preload, o.cpu), this.env);
  }

  async down(): Promise<void> {
    if (!this.isUp) return;
    this.isUp = false;
    for (const r of this.routers) await r.stop();
    killAll();
    await run(this.script(['down']), { timeoutMs: 60_000, env: this.env });
  }

  /** Synchronous last-resort cleanup (signal handlers). */
  downSync(): void {
    killAll();
    spawnSync('bash', [join(ROOT, 'scripts/testbed.sh'), 'down'], { env: { ...process.env, ...this.env }, timeout: 30_000 });
  }
}
