// Measures a router's CONNECT round trip as an ordinary client sees it: N requests one after
// another on one router connection, each to an address nobody listens on. Prints
// {"n", "p50", "p99", "max", "timeouts"} (milliseconds). Run inside a testbed namespace:
//   node --import tsx connect-latency.ts SOCKET IP N
import { request } from './raw-request.js';
import { RawSession } from './raw-session.js';

const [socket, ip, count] = process.argv.slice(2);
const s = new RawSession(socket, 5000);
const req = request('CONNECT', [ip, 0], ['10.244.9.9', 9]);
const ms: number[] = [];
let timeouts = 0;
for (let i = 0; i < Number(count) && timeouts < 3; i++) {
  const t0 = process.hrtime.bigint();
  try {
    const r = await s.raw(req);
    if (r.closed) throw new Error('router closed the connection');
  } catch {
    timeouts++;
  }
  ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
s.close();
ms.sort((a, b) => a - b);
const at = (q: number) => Number(ms[Math.min(ms.length - 1, Math.floor(q * ms.length))].toFixed(3));
console.log(JSON.stringify({ n: ms.length, p50: at(0.5), p99: at(0.99), max: at(1), timeouts }));
