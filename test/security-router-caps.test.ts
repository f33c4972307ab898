// No tenant can starve the router through its router connections (src/router/tenant-caps.ts):
// one client's backlog of requests does not hold another's (fair draining, checked exactly with
// two sessions and end to end with a flooding container and a measuring one), and a process
// cannot escape its container's allowance of router connections by making new network
// namespaces. (1000 connections from one container and the router out of descriptors are in
// test/security-tenants.test.ts.)
import t from 'tap';
import { join } from 'node:path';
import { native } from '../src/native.js';
import { Fallback, MSG_SIZE } from '../src/protocol/codec.js';
import { ClientSession, fallback, type RequestHandler } from '../src/router/client-session.js';
import type { NetnsOwnership } from '../src/router/netns.js';
import { MESSAGES_PER_TURN, SESSIONS_PER_CONTAINER, TurnBudget } from '../src/router/tenant-caps.js';
import { request } from './lib/raw-request.js';
import { ROOT, Testbed, overlayIp } from './lib/testbed.js';

const quiet = { warn() {}, info() {}, error() {}, debug() {} } as any;
const req = (ip: string) => request('CONNECT', [ip, 0], ['10.244.9.9', 9]); // nobody listens there

// Awaited: the testbed's set-up below blocks the event loop this test's sessions run on.
await t.test('fair draining: a session with a backlog is served at most a turn\'s budget before another', async (t) => {
  // Two sessions on socket pairs, the router's real ClientSession and a handler that records
  // whose request it answers. A's 250 requests are queued before B's one; both sessions start
  // together (A's watch first, so A's wake-up runs first).
  const order: string[] = [];
  const handler: RequestHandler = { handle: (s) => (order.push(s === a ? 'A' : 'B'), fallback(Fallback.NO_LISTENER)) };
  const peer = { pid: 1, uid: 0, ownership: { netnsIno: 0 } as NetnsOwnership };
  const [aRouter, aClient] = native.seqpacketPair() as number[];
  const [bRouter, bClient] = native.seqpacketPair() as number[];
  const a = new ClientSession(aRouter, peer, handler, quiet, () => {});
  const b = new ClientSession(bRouter, peer, handler, quiet, () => {});
  const backlog = 250; // what fits in the socket's buffer
  let queued = 0;
  for (let i = 0; i < backlog; i++) if (native.sendMsg(aClient, req('10.244.1.11')) > 0) queued++;
  t.equal(queued, backlog, `A's ${backlog} requests are queued`);
  t.ok(native.sendMsg(bClient, req('10.244.1.12')) > 0, 'then B\'s one');
  a.start();
  b.start();
  for (let i = 0; i < 200 && order.length < backlog + 1; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(order.length, backlog + 1, 'every request was answered');
  const firstB = order.indexOf('B');
  t.ok(firstB <= MESSAGES_PER_TURN, `B was answered after ${firstB} of A's ${backlog} (budget ${MESSAGES_PER_TURN} per turn; without it, after all ${backlog})`);
  let replies = 0;
  while (typeof native.recvMsg(bClient, MSG_SIZE + 4096) !== 'number') replies++;
  t.equal(replies, 1, 'B got its reply');
  a.close();
  b.close();
  native.closeAll([aClient, bClient]);
});

await t.test('fair draining per container: many sessions of one container share one budget a turn', async (t) => {
  // Container 1 has 4 sessions with 100 requests queued each, container 2 one session with one
  // request; all share the router's TurnBudget. Per session alone, container 2 would wait for
  // 4 x 64 of container 1's requests.
  const order: number[] = [];
  const turns = new TurnBudget();
  const handler: RequestHandler = { handle: (s) => (order.push(owner.get(s)!), fallback(Fallback.NO_LISTENER)) };
  const owner = new Map<ClientSession, number>();
  const clients: number[] = [];
  const sessions: ClientSession[] = [];
  for (const [container, queued] of [[1, 100], [1, 100], [1, 100], [1, 100], [2, 1]]) {
    const [routerEnd, clientEnd] = native.seqpacketPair() as number[];
    const peer = { pid: 1, uid: 0, ownership: { netnsIno: container } as NetnsOwnership };
    const s = new ClientSession(routerEnd, peer, handler, quiet, () => {}, { turns, container });
    owner.set(s, container);
    for (let i = 0; i < queued; i++) native.sendMsg(clientEnd, req('10.244.1.11'));
    clients.push(clientEnd);
    sessions.push(s);
  }
  for (const s of sessions) s.start();
  for (let i = 0; i < 300 && order.length < 401; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(order.length, 401, 'every request was answered');
  const first2 = order.indexOf(2);
  t.ok(first2 <= MESSAGES_PER_TURN, `container 2 was answered after ${first2} of container 1's 400 (one budget of ${MESSAGES_PER_TURN} a turn for all its sessions; per session only, after 256)`);
  for (const s of sessions) s.close();
  native.closeAll(clients);
});

const tb = await Testbed.up(t);
const sock = join(tb.socketDir('h1'), 'ffrouter.sock');
const tsx = (script: string, ...args: string[]) => ['node', '--import', 'tsx', join(ROOT, 'test/lib', script), ...args];

// A flooding client: one router connection, WINDOW requests always in flight, a new one sent the
// moment a reply comes (blocking recv, then send: the tightest refill a process can do), so the
// router's queue from it never runs dry. Prints "flooding", and on SIGTERM its rate.
const FLOOD = `
import signal, socket, sys, time
class Stop(Exception): pass
def stop(*_): raise Stop()
signal.signal(signal.SIGTERM, stop)
path, req, window = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(path)
for _ in range(window): s.send(req)
n = 0; t0 = time.time()
try:
    while True:
        s.recv(4096); n += 1
        if n == 1: print("flooding", flush=True)
        s.send(req)
except Stop: pass
print('{"answered": %d, "perSecond": %d}' % (n, n / (time.time() - t0)), flush=True)
`;

t.test('a container flooding the router with requests does not starve another', async (t) => {
  const latency = async () => JSON.parse((await tb.run('c12', tsx('connect-latency.ts', sock, overlayIp('c12'), '2000'), { timeoutMs: 120_000 })).stdout.trim().split('\n').pop()!);
  const idle = await latency();
  t.equal(idle.timeouts, 0, `unloaded: c12's CONNECT round trip p50 ${idle.p50} ms, p99 ${idle.p99} ms, max ${idle.max} ms`);
  const flood = tb.start('c11', ['python3', '-c', FLOOD, sock, req(overlayIp('c11')).toString('hex'), '128']);
  await flood.waitFor(/flooding/, 30_000);
  const loaded = await latency();
  process.kill(-flood.proc.pid!, 'SIGTERM');
  const rate = JSON.parse((await flood.waitFor(/\{"answered".*\}/, 10_000))[0]);
  await tb.stop(flood);
  t.equal(loaded.timeouts, 0, `with c11 flooding: p50 ${loaded.p50} ms, p99 ${loaded.p99} ms, max ${loaded.max} ms`);
  t.ok(rate.perSecond > 2000, `it was a flood: the router answered c11 ${rate.perSecond} times a second meanwhile`);
  const bound = Number(Math.max(10, 5 * idle.p99).toFixed(1));
  t.ok(loaded.p99 <= bound, `p99 under flood ${loaded.p99} ms <= ${bound} ms (the larger of 10 ms and 5x the unloaded p99)`);
  t.ok((await tb.status('h1')).pid, 'the router answers');
});

// Processes in network namespaces nobody registered (unshare -n inside c11) hold many router
// connections at once; each printing what it got after 2 s, then holding them until killed.
t.test('new network namespaces bring no new allowance of router connections', async (t) => {
  const opened = (s: { waitFor: (re: RegExp, ms?: number) => Promise<RegExpMatchArray> }) => s.waitFor(/\{"opened".*\}/, 60_000).then((m) => JSON.parse(m[0]));
  const first = tb.start('c11', ['unshare', '-n', ...tsx('many-sessions.ts', sock, '200', overlayIp('c11'))]);
  const a = await opened(first);
  t.equal(a.served, 200, 'a fresh namespace gets its 200 router connections served (with fallback answers)');
  const second = tb.start('c11', ['unshare', '-n', ...tsx('many-sessions.ts', sock, '200', overlayIp('c11'))]);
  const b = await opened(second);
  t.equal(b.served, SESSIONS_PER_CONTAINER - 200, `another fresh namespace shares the same ${SESSIONS_PER_CONTAINER}: ${b.served} served`);
  t.equal(b.closed, 200 - b.served, `the rest closed at once (${b.closed})`);
  t.match(tb.routerOutput('h1'), /"unregistered":true.*too many router connections from one container/, 'the router says so');
  const lines = tb.routerOutput('h1').split('\n').filter((l) => l.includes('too many router connections')).length;
  t.equal(lines, 1, 'once, not once per refused connection');
  // Registered containers keep their own allowance: c11 itself and c12 are served meanwhile.
  for (const node of ['c11', 'c12']) {
    const r = await tb.run(node, tsx('raw-request.ts', sock, 'CONNECT', overlayIp(node), '0', '10.244.9.9', '9'));
    t.match(r.stdout, /"type":5/, `${node} (registered) is answered (${r.stdout.trim()} ${r.stderr.trim().slice(-200)})`);
  }
  // Once they are gone, the allowance is back.
  await tb.stop(first);
  await tb.stop(second);
  await new Promise((r) => setTimeout(r, 500));
  const third = tb.start('c11', ['unshare', '-n', ...tsx('many-sessions.ts', sock, '200', overlayIp('c11'))]);
  t.equal((await opened(third)).served, 200, 'after they closed, a new namespace is served again');
  await tb.stop(third);
});
