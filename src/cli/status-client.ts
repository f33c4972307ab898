// `freeflow status`: asks a running router for its state over its FreeFlow socket.
import { askRouter } from '../client/ask-router.js';
import { MSG_SIZE, MsgType, Reply } from '../protocol/codec.js';

export async function fetchStatus(path: string, timeoutMs = 3000): Promise<any> {
  const { reply, payload } = await askRouter(path, MsgType.STATUS, timeoutMs, MSG_SIZE + (1 << 20));
  if (reply.type !== MsgType.REPLY || reply.status !== Reply.ACCEL) throw new Error('router refused the status request');
  return JSON.parse(payload.toString('utf8'));
}

/** Polls until the router answers, all its peers are connected and (optionally) the
 * directory holds `listener` ("ip:port"). Rejects with the last problem seen. */
export async function waitForStatus(path: string, timeoutMs: number, listener?: string): Promise<any> {
  const end = Date.now() + timeoutMs;
  let problem = 'no answer';
  for (;;) {
    try {
      const s = await fetchStatus(path, 1000);
      const down = s.peers.filter((p: any) => !p.connected).map((p: any) => p.ip);
      const known = !listener || s.directory.some((d: any) => `${d.overlayIp}:${d.port}` === listener && d.fenced !== false);
      if (!down.length && known) return s;
      problem = down.length ? `peers not connected: ${down.join(', ')}` : `listener ${listener} not in the directory`;
    } catch (err) {
      problem = (err as Error).message;
    }
    if (Date.now() > end) throw new Error(`gave up waiting: ${problem}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function formatStatus(s: any): string {
  const lines: string[] = [];
  lines.push(`router ${s.name} (pid ${s.pid}) host ${s.hostIp} socket ${s.socket}`);
  lines.push(`peers: ${s.peers.map((p: any) => `${p.ip} ${p.connected ? 'up' : 'down'}`).join(', ') || 'none'}`);
  lines.push(`registered namespaces: ${(s.registered ?? []).map((r: any) => `${r.netns} (${r.ips.join(',')})`).join(', ') || 'none (every caller gets the plain overlay)'}`);
  lines.push(`clients: ${s.clients}   pairing: ${s.pairing.announced} announced, ${s.pairing.parked} waiting`);
  lines.push('listeners (this host):');
  for (const l of s.listeners) lines.push(`  ${l.overlay.join(' ')}  ->  host ${l.host}`);
  if (s.listenersTotal > s.listeners.length) lines.push(`  ... and ${s.listenersTotal - s.listeners.length} more`);
  lines.push(`directory: ${s.directoryTotal ?? s.directory.length} entries`);
  for (const d of s.directory) lines.push(`  ${d.overlayIp}:${d.port}  ->  ${d.hostIp}:${d.hostPort}`);
  if (s.directoryTotal > s.directory.length) lines.push(`  ... and ${s.directoryTotal - s.directory.length} more`);
  lines.push('counters: ' + (Object.entries(s.counters).map(([k, v]) => `${k}=${v}`).join(' ') || 'none'));
  lines.push('recent connections (newest last):');
  for (const c of s.connections.slice(-20))
    lines.push(
      `  ${c.at} ${c.role.padEnd(7)} ${c.src} -> ${c.dst}  ${c.path}${c.host ? ` via ${c.host}` : ''}` +
        `${c.sockets > 1 ? ` (${c.sockets} host sockets, spares prefetched)` : ''}${c.reason ? ` (${c.reason})` : ''}`,
    );
  return lines.join('\n');
}
