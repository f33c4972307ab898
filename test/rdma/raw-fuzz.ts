// Run inside a container namespace (node --import tsx test/rdma/raw-fuzz.ts <socket> <ownIp>
// [seed] [rounds]): sends the router garbage for every RDMA and rdma_cm message type (random
// bytes, wrong and huge lengths, bad headers, random handles and addresses, stray
// descriptors, private data past its limit), then call sequences the library never makes
// (rdma_connect without a resolved address, accept/reject of ids that never had a request).
// Every message must get a reply; prints one JSON object with what happened.
import { openSync, ftruncateSync, unlinkSync } from 'node:fs';
import { native } from '../../src/native.js';
import { emptyMsg, encode, FF_RDMA_ARGS_SIZE, ipv4ToWire, MSG_SIZE, MsgType, OFFSET } from '../../src/protocol/codec.js';
import { Rng } from './fuzz-rng.js';
import { RawSession, rdmaArgs, type Reply } from '../lib/raw-session.js';

const [socket, ownIp] = process.argv.slice(2, 4);
const seed = Number(process.argv[4] ?? Date.now() % 1e9);
const rounds = Number(process.argv[5] ?? 40);
const rng = new Rng(seed);
const TYPES = [
  ...Object.values(MsgType).filter((t) => (t >= MsgType.RDMA_OPEN && t <= MsgType.RDMA_DESTROY_SRQ) || (t >= MsgType.CM_CREATE_CHANNEL && t <= MsgType.CM_EVENT)),
  MsgType.REPLY, 0, 99, 115, 119, 133, 139, 141, 0xffff, // neighbours and strangers
];
const out = { seed, sent: 0, replies: 0, closedByRouter: 0, statuses: {} as Record<string, number>, sequences: {} as Record<string, number>, after: -1 };

const shmFile = (size: number) => {
  const path = `/dev/shm/ff-fuzz-${process.pid}-${rng.u32()}`;
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, size);
  unlinkSync(path);
  return fd;
};
const devNull = openSync('/dev/null', 'r');
const pair = native.seqpacketPair();
const pairEnd = Array.isArray(pair) ? pair[1] : devNull;

let s!: RawSession;
const known: number[] = [];
async function setup(): Promise<void> {
  s = new RawSession(socket);
  native.closeAll((await s.call(MsgType.RDMA_OPEN)).fds);
  // Real objects, so that random requests also name handles that exist.
  known.length = 0;
  known.push((await s.call(MsgType.RDMA_ALLOC_PD)).h[0]);
  known.push((await s.call(MsgType.RDMA_CREATE_CHANNEL, [], [], [devNull])).h[0]);
  const ch = (await s.call(MsgType.CM_CREATE_CHANNEL, [], [], [pairEnd])).h[0];
  known.push(ch);
  for (let i = 0; i < 3; i++) known.push((await s.call(MsgType.CM_CREATE_ID, [ch, 0x106])).h[0]);
  await s.call(MsgType.CM_BIND, [known[3]], [], [], undefined, { local_addr: ipv4ToWire(ownIp), local_port: 30000 + (seed % 20000) });
  await s.call(MsgType.CM_LISTEN, [known[3]]);
}

function address(): Buffer {
  return rng.pick([() => rng.bytes(16), () => ipv4ToWire(ownIp), () => ipv4ToWire(`10.244.${rng.int(4)}.${rng.int(256)}`), () => Buffer.alloc(16), () => Buffer.alloc(16, 0xff)])();
}

/** One malformed (or merely odd) message of a type, with the descriptors to pass. */
function garbage(type: number): { bytes: Buffer; fds: number[]; variant: string } {
  const m = emptyMsg(type);
  m.seq = rng.u32();
  m.pid = rng.pick([process.pid, 0, 1, rng.u32()]);
  const variant = rng.pick(['random payload', 'random args', 'random header', 'lying length', 'short header', 'bad magic', 'oversize', 'descriptors', 'private data']);
  let payload: Buffer = rdmaArgs(
    Array.from({ length: 6 }, () => rng.edgeU32(known)),
    Array.from({ length: 4 }, () => rng.edgeU64()),
  );
  let fds: number[] = [];
  if (variant === 'random payload') payload = rng.bytes(rng.pick([0, 1, 3, 4, 23, 24, 55, 56, 57, 100, FF_RDMA_ARGS_SIZE + 255, FF_RDMA_ARGS_SIZE + 256, 4000]));
  if (variant === 'random header' || variant === 'lying length') {
    m.local_addr = address();
    m.remote_addr = address();
    m.host_addr = address();
    m.local_port = rng.int(65536);
    m.remote_port = rng.int(65536);
    m.flags = rng.edgeU32();
    m.status = rng.edgeU32() | 0;
    m.family = rng.pick([0, 2, 10, 0xffff]);
  }
  if (variant === 'private data') payload = Buffer.concat([payload, rng.bytes(rng.pick([1, 254, 255, 256, 600]))]);
  if (variant === 'descriptors') fds = Array.from({ length: 1 + rng.int(3) }, () => rng.pick([() => devNull, () => pairEnd, () => shmFile(rng.pick([0, 4096, 1 << 20]))])());
  let bytes = encode(m, payload);
  if (variant === 'lying length') bytes.writeUInt32LE(rng.pick([0xffffffff, 0x80000000, payload.length + 1, Math.max(0, payload.length - 1), 65536, 0]), OFFSET.payload_len);
  if (variant === 'short header') bytes = bytes.subarray(0, 1 + rng.int(MSG_SIZE - 1));
  if (variant === 'bad magic') bytes.writeUInt32LE(rng.u32(), rng.pick([0, 4]));
  if (variant === 'oversize') bytes = Buffer.concat([bytes, rng.bytes(65536 + 100)]);
  return { bytes, fds, variant };
}

function tally(r: Reply, key: string): void {
  native.closeAll(r.fds);
  if (r.closed) {
    out.closedByRouter++;
    return;
  }
  out.replies++;
  out.statuses[key] = (out.statuses[key] ?? 0) + 1;
}

await setup();
for (let round = 0; round < rounds; round++) {
  for (const type of TYPES) {
    const g = garbage(type);
    out.sent++;
    const r = await s.raw(g.bytes, g.fds);
    for (const fd of g.fds) if (fd !== devNull && fd !== pairEnd) native.close(fd);
    tally(r, `${type}/${g.variant}/${r.status}`);
    if (r.closed) {
      s.close();
      await setup();
    }
  }
}

// Sequences a well-behaved library never sends.
const seq = async (name: string, steps: (ch: number) => Promise<Reply>) => {
  const ch = (await s.call(MsgType.CM_CREATE_CHANNEL, [], [], [pairEnd])).h[0];
  const r = await steps(ch);
  out.sequences[name] = r.status;
  native.closeAll(r.fds);
};
const newId = async (ch: number) => (await s.call(MsgType.CM_CREATE_ID, [ch, 0x106])).h[0];
// A listener of their own (the random requests above may have destroyed the first one).
const listener = { remote_addr: ipv4ToWire(ownIp), remote_port: 20000 + (seed % 10000) };
await seq('listen', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_BIND, [id], [], [], undefined, { local_addr: listener.remote_addr, local_port: listener.remote_port });
  return s.call(MsgType.CM_LISTEN, [id]);
});
await seq('connect without resolve', async (ch) => s.call(MsgType.CM_CONNECT, [await newId(ch), 0], [], [], undefined, listener));
await seq('connect without resolve, with descriptor', async (ch) => s.call(MsgType.CM_CONNECT, [await newId(ch), 0], [], [devNull], undefined, listener));
await seq('accept without request', async (ch) => s.call(MsgType.CM_ACCEPT, [await newId(ch), 0]));
await seq('reject without request', async (ch) => s.call(MsgType.CM_REJECT, [await newId(ch)]));
await seq('rtu without connection', async (ch) => s.call(MsgType.CM_RTU, [await newId(ch)]));
await seq('connect twice', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_RESOLVE_ADDR, [id], [], [], undefined, listener);
  await s.call(MsgType.CM_CONNECT, [id, 0], [], [], undefined, listener);
  return s.call(MsgType.CM_CONNECT, [id, 0], [], [], undefined, listener);
});
await seq('listen twice on one address', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_BIND, [id], [], [], undefined, { local_addr: listener.remote_addr, local_port: listener.remote_port });
  return s.call(MsgType.CM_LISTEN, [id]);
});
// A listening id moved elsewhere and listening again would leave its first listener behind
// (a leak seed 174236260 found): the move is refused, a second rdma_listen is a no-op.
const elsewhere = { local_addr: listener.remote_addr, local_port: listener.remote_port + 1 };
await seq('bind a listening id elsewhere', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_BIND, [id], [], [], undefined, elsewhere);
  await s.call(MsgType.CM_LISTEN, [id]);
  return s.call(MsgType.CM_BIND, [id], [], [], undefined, { ...elsewhere, local_port: elsewhere.local_port + 1 });
});
await seq('listen again on a listening id', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_BIND, [id], [], [], undefined, { ...elsewhere, local_port: elsewhere.local_port + 2 });
  await s.call(MsgType.CM_LISTEN, [id]);
  return s.call(MsgType.CM_LISTEN, [id]);
});
await seq('destroy channel with ids, then events for them', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_DESTROY_CHANNEL, [ch]);
  return s.call(MsgType.CM_RESOLVE_ADDR, [id], [], [], undefined, listener); // its ADDR_RESOLVED has nowhere to go
});
await seq('connect after the channel is gone', async (ch) => {
  const id = await newId(ch);
  await s.call(MsgType.CM_RESOLVE_ADDR, [id], [], [], undefined, listener);
  await s.call(MsgType.CM_DESTROY_CHANNEL, [ch]);
  return s.call(MsgType.CM_CONNECT, [id, 0], [], [], undefined, listener);
});
// Wait for the asynchronous parts (connection attempts retried for 2 s, peers' answers).
await new Promise((r) => setTimeout(r, 2500));
s.close();

const fresh = new RawSession(socket);
native.closeAll((await fresh.call(MsgType.RDMA_OPEN)).fds);
out.after = (await fresh.call(MsgType.RDMA_ALLOC_PD)).status;
fresh.close();
console.log(JSON.stringify(out));
process.exit(0);
