// Run inside a host namespace that is a configured peer, with the cluster key in
// FFR_CLUSTER_KEY_FILE (node --import tsx test/rdma/raw-fuzz-net.ts <routerIp> <port>
// <listenerIp> <listenerPort> <latePort> [seed]): proves the key as the peer router's engine
// would (src/router/peer-auth.ts), so that what follows reaches the engine's frame reader, and
// talks to another router's engine transport as if it were the peer router and sends it
// garbage: connection-manager messages (JSON in cm.ts) that are not JSON, not objects, or
// objects with every field of the wrong type or range (also connection requests for a real
// listener, and for latePort, where the test opens a listener while the request is retried),
// engine messages with random headers, and framing that breaks the protocol. Prints "late
// requests sent" when the latePort requests are out, then one JSON object.
import { connect, type Socket } from 'node:net';
import { loadKeyFile } from '../../src/router/cluster-key.js';
import { authenticatePeer } from '../../src/router/peer-auth.js';
import { Rng } from './fuzz-rng.js';

const [host, portArg, listenerIp, listenerPortArg, latePortArg, seedArg] = process.argv.slice(2);
const port = Number(portArg), listenerPort = Number(listenerPortArg), latePort = Number(latePortArg);
const seed = Number(seedArg ?? Date.now() % 1e9);
const rng = new Rng(seed);
const NET = { WHO_HAS: 1, HAVE: 2, OP: 3, ACK: 4, CM: 5, DOWN: 100 };
const MAGIC = 0x4d444646;
const HDR = 104; // struct NetHdr (native/rdma/transport.h), packed
const out = { seed, messages: 0, connections: 0, dropped: 0 };
if (!process.env.FFR_CLUSTER_KEY_FILE) throw new Error('FFR_CLUSTER_KEY_FILE: the cluster key file the routers use');
const key = loadKeyFile(process.env.FFR_CLUSTER_KEY_FILE);

function hdr(type: number, len: number, magic = MAGIC): Buffer {
  const b = Buffer.alloc(HDR);
  b.writeUInt32LE(magic, 0);
  b.writeUInt32LE(type >>> 0, 4);
  b.writeUInt32LE(len >>> 0, 8);
  for (let o = 12; o < 40; o += 4) b.writeUInt32LE(rng.edgeU32(), o); // status .. flags
  for (let o = 40; o < 72; o += 8) b.writeBigUInt64LE(rng.edgeU64(), o); // remote_addr .. cookie
  rng.bytes(32).copy(b, 72); // gids
  return b;
}

// A connection that proved the key, as the peer router's engine opens one.
function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let up = false;
    const s = connect({ host, port }, () => {
      authenticatePeer(s, { key, role: 'dialler', ownIp: s.localAddress!, peerIp: host }).then(() => {
        up = true;
        out.connections++;
        s.on('data', () => {}); // answers (HAVE, ACK, nol, ...) are not looked at
        s.resume();
        resolve(s);
      }, reject);
    });
    s.on('error', (e: NodeJS.ErrnoException) => {
      if (up) out.dropped++;
      else reject(e);
    });
  });
}

async function send(s: Socket, type: number, payload: Buffer): Promise<void> {
  out.messages++;
  await new Promise<void>((r) => s.write(Buffer.concat([hdr(type, payload.length), payload]), () => r()));
}
const cm = (s: Socket, v: unknown) => send(s, NET.CM, Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)));

// Values of every JSON type, and the ranges that matter for each field.
const pool = (): unknown =>
  rng.pick<() => unknown>([
    () => null, () => true, () => 0, () => -1, () => 1.5, () => 2 ** 53 + 2, () => 1e308, () => -(2 ** 31), () => 0xffffffff + 1,
    () => '', () => 'x'.repeat(1 + rng.int(2000)), () => listenerIp, () => '999.1.1.1', () => 'a.b.c.d', () => '10.244.1.11 ',
    () => '::ffff:10.244.1.11', () => [], () => ({}), () => [1, 2], () => ({ t: 'req' }), () => listenerPort, () => rng.u32(),
    () => 'ff'.repeat(16), () => 'zz'.repeat(16), () => '!!!!', () => 'A'.repeat(400), () => '__proto__',
  ])();
const KINDS = ['req', 'nol', 'acc', 'rej', 'rtu', 'disc', 'unknown', '', 5];
const FIELDS = ['cid', 'sid', 'h', 'dst', 'port', 'src', 'sport', 'qpn', 'gid', 'priv', 'status'];
function message(t: unknown): Record<string, unknown> {
  const m: Record<string, unknown> = { t };
  for (const f of FIELDS) if (rng.int(3)) m[f] = pool();
  return m;
}

const s = await open();
// Not JSON, or JSON that is not an object.
for (const g of ['', '{', 'not json', '\u0000\u0001', 'null', '1', '"req"', '[]', '[{"t":"req"}]', 'true', '{"t":"req"', '['.repeat(100000), JSON.stringify('x'.repeat(60000))])
  await cm(s, g);
await send(s, NET.CM, rng.bytes(3000)); // not UTF-8
await cm(s, '{"__proto__":{"t":"req"},"constructor":{"prototype":{"x":1}}}');
// Objects with fields of the wrong type or range, of every kind.
for (let i = 0; i < 400; i++) await cm(s, message(rng.pick(KINDS)));
// Connection requests that reach the real listener with broken fields.
for (let i = 0; i < 30; i++) await cm(s, { ...message('req'), dst: listenerIp, port: listenerPort, cid: 1 + rng.int(1000) });
// Engine messages with random headers and payloads.
for (let i = 0; i < 300; i++) await send(s, rng.pick([NET.WHO_HAS, NET.HAVE, NET.OP, NET.ACK, NET.DOWN, 0, 6, 99, rng.u32()]), rng.bytes(rng.pick([0, 0, 8, 64, 4096])));
// Requests for latePort, still retried (for 2 s) when the test opens a listener there.
for (let i = 0; i < 20; i++) await cm(s, { ...message('req'), dst: listenerIp, port: latePort, cid: 2000 + i });
console.log('late requests sent');
await new Promise((r) => setTimeout(r, 300));
s.destroy();

// Framing that breaks the protocol: each on its own connection, which the router drops.
const broken: [string, () => Buffer][] = [
  ['bad magic', () => hdr(NET.CM, 10, 0x12345678)],
  ['length over the maximum', () => hdr(NET.OP, 2 ** 30 + 1)],
  ['huge CM message, never sent', () => hdr(NET.CM, 2 ** 29)],
  ['huge OP payload, never sent', () => hdr(NET.OP, 2 ** 29)],
  ['half a header', () => hdr(NET.CM, 10).subarray(0, 50)],
];
for (const [, make] of broken) {
  const c = await open();
  out.messages++;
  await new Promise<void>((r) => c.write(make(), () => r()));
  await new Promise((r) => setTimeout(r, 100));
  c.destroy();
}
console.log(JSON.stringify(out));
process.exit(0);
