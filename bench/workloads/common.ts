// Helpers shared by workloads: starting a pinned server and making sure a FreeFlow listener is
// known to both routers before anyone connects (else the client would legitimately fall back).
import type { Testbed } from '../lib/testbed.js';
import { SERVER_CPU, CLIENT_CPU, type Path } from '../lib/paths.js';
import type { RunResult, Started } from '../lib/proc.js';

export async function startServer(tb: Testbed, path: Path, port: number, cmd: string[], ready: RegExp | (() => Promise<boolean>), timeoutMs = 15_000): Promise<Started> {
  const srv = tb.spawn(path.server, cmd, { preload: path.preload, cpu: SERVER_CPU });
  try {
    if (ready instanceof RegExp) await srv.waitFor(ready, timeoutMs);
    else {
      const end = Date.now() + timeoutMs;
      while (!(await ready())) {
        if (srv.proc.exitCode !== null) throw new Error(`server exited: ${srv.output().slice(-800)}`);
        if (Date.now() > end) throw new Error(`server not ready: ${srv.output().slice(-800)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    if (path.preload) for (const h of ['h1', 'h2']) await tb.waitListener(h, serverOverlayIp(path), port);
    return srv;
  } catch (err) {
    await srv.stop();
    throw err;
  }
}

/** The server's own overlay address (the one its listener is registered under). */
function serverOverlayIp(path: Path): string {
  return path.addr;
}

export async function client(tb: Testbed, path: Path, cmd: string[], timeoutMs: number, onOutput?: (all: string) => void): Promise<RunResult> {
  const r = await tb.exec(path.client, cmd, { preload: path.preload, cpu: CLIENT_CPU, timeoutMs, onOutput });
  if (r.timedOut) throw new Error(`${cmd[0]} timed out after ${timeoutMs} ms`);
  if (r.code !== 0) throw new Error(`${cmd[0]} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-600)}`);
  return r;
}
