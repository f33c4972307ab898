// Child processes for the bench: every command has a timeout, runs in its own process group,
// and is remembered until it exits, so teardown kills exactly what this run started.
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

export interface Started {
  proc: ChildProcess;
  output: () => string;
  waitFor: (re: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>;
  exited: Promise<number | null>;
  stop: () => Promise<void>;
}

const live = new Set<ChildProcess>();

function killGroup(p: ChildProcess, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (p.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
  try {
    process.kill(-p.pid, sig);
  } catch {
    /* already gone */
  }
}

function spawnGroup(cmd: string[], env?: Record<string, string>): ChildProcess {
  const p = spawn(cmd[0], cmd.slice(1), {
    env: { ...process.env, ...(env ?? {}) },
    detached: true, // own process group
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(p);
  p.on('exit', () => live.delete(p));
  p.on('error', () => live.delete(p));
  return p;
}

/** Runs a command to completion; killed (whole group) after timeoutMs. Never throws. */
export function run(cmd: string[], opts: { timeoutMs: number; env?: Record<string, string>; onOutput?: (all: string) => void }): Promise<RunResult> {
  const t0 = Date.now();
  const p = spawnGroup(cmd, opts.env);
  let stdout = '';
  let stderr = '';
  let timedOut = false;
  p.stdout!.on('data', (d) => {
    stdout += d;
    opts.onOutput?.(stdout + stderr);
  });
  p.stderr!.on('data', (d) => {
    stderr += d;
    opts.onOutput?.(stdout + stderr);
  });
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(p);
  }, opts.timeoutMs);
  return new Promise((resolve) => {
    const done = (code: number | null) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut, ms: Date.now() - t0 });
    };
    p.on('error', (err) => {
      stderr += String(err);
      done(-1);
    });
    p.on('close', (code) => done(code));
  });
}

/** Starts a long-running command (a server). */
export function start(cmd: string[], env?: Record<string, string>): Started {
  const p = spawnGroup(cmd, env);
  let out = '';
  p.stdout!.on('data', (d) => (out = (out + d).slice(-65536)));
  p.stderr!.on('data', (d) => (out = (out + d).slice(-65536)));
  const exited = new Promise<number | null>((resolve) => {
    p.on('close', (code) => resolve(code));
    p.on('error', () => resolve(-1));
  });
  const waitFor = async (re: RegExp, timeoutMs = 10_000) => {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = out.match(re);
      if (m) return m;
      if (p.exitCode !== null || p.signalCode !== null) throw new Error(`exited (${p.exitCode ?? p.signalCode}) before ${re}: ${out.slice(-800)}`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${re}: ${out.slice(-800)}`);
      await sleep(30);
    }
  };
  const stop = async () => {
    killGroup(p, 'SIGTERM');
    const t = await Promise.race([exited.then(() => true), sleep(2000).then(() => false)]);
    if (!t) {
      killGroup(p);
      await Promise.race([exited, sleep(2000)]);
    }
  };
  return { proc: p, output: () => out, waitFor, exited, stop };
}

/** Kills every process group this run started that is still alive. */
export function killAll(): void {
  for (const p of live) killGroup(p);
}
