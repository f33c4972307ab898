// Asks a router for many accelerated listeners on ONE client connection, keeping every reply's
// descriptors open (a listener lives as long as its accept channel), and prints a JSON tally of
// the replies. Run inside a container namespace:
//   node --import tsx test/lib/listen-many.ts <socket> <ownIp> <firstPort> <count>
import { native } from '../../src/native.js';
import { request } from './raw-request.js';
import { RawSession } from './raw-session.js';

const [socket, ip, first, count] = process.argv.slice(2);
const session = new RawSession(socket);
const kept: number[] = [];
const tally: Record<string, number> = {};
for (let i = 0; i < Number(count); i++) {
  const r = await session.raw(request('LISTEN', [ip, Number(first) + i], ['0.0.0.0', 0]));
  if (r.closed) throw new Error('router closed the connection');
  kept.push(...r.fds);
  const key = `status${r.msg!.status}/flags${r.msg!.flags}`;
  tally[key] = (tally[key] ?? 0) + 1;
}
console.log(JSON.stringify({ tally, fds: kept.length }));
native.closeAll(kept);
session.close();
