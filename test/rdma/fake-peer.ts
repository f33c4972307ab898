// A lying peer router (node --import tsx test/rdma/fake-peer.ts <routerIp> <port> <spec JSON>),
// run in a peer host's namespace with the cluster key in FFR_CLUSTER_KEY_FILE: it proves the
// key as a peer router's engine does (so it is an authenticated peer), then for spec.ms
// milliseconds sends, over and over, messages that are not its to send:
//   have:  NET_HAVE "yes" for requesters of another host's QPs (to take their traffic)
//   ack:   NET_ACK "success" with guessed cookies (to complete others' requests)
//   op:    NET_OP SENDs naming a source GID of another host (to inject into a QP)
//   cm:    rdma_cm 'disc' and 'rtu' for the id handles 1-64 every round, 'acc', 'rej', 'nol' for
//          every handle up to cmIds, 40 a round (a round every 10 ms: a steady stream, not a flood)
//   gids:  a GID list that claims this host's and other hosts' addresses
// Prints "spraying" once the first round is out, then the counts as JSON every 100 rounds and
// at the end.
import { connect, type Socket } from 'node:net';
import { loadKeyFile } from '../../src/router/cluster-key.js';
import { authenticatePeer } from '../../src/router/peer-auth.js';

interface Spec {
  ms: number;
  have?: { src_qpn: number; dst_qpn: number; gid: string }[];
  ack?: { src_qpn: number; dst_qpn: number }[];
  op?: { dst_qpn: number; gid: string; src_qpn: number; src_gid: string }[];
  cmIds?: number;
  cmGid?: string;
  gids?: string[];
}
const [host, portArg, specArg] = process.argv.slice(2);
const spec = JSON.parse(specArg) as Spec;
const NET = { HAVE: 2, OP: 3, ACK: 4, CM: 5 };
const MAGIC = 0x4d444646;
const HDR = 104; // struct NetHdr (native/rdma/transport.h), packed
const out = { messages: 0, have: 0, ack: 0, op: 0, cm: 0, gids: 0, rounds: 0 };
if (!process.env.FFR_CLUSTER_KEY_FILE) throw new Error('FFR_CLUSTER_KEY_FILE: the cluster key file the routers use');
const key = loadKeyFile(process.env.FFR_CLUSTER_KEY_FILE);

function hdr(type: number, f: { len?: number; status?: number; src_qpn?: number; dst_qpn?: number; opcode?: number; flags?: number; cookie?: bigint; gid?: string; src_gid?: string }): Buffer {
  const b = Buffer.alloc(HDR);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(type, 4);
  b.writeUInt32LE(f.len ?? 0, 8);
  b.writeUInt32LE(f.status ?? 0, 12);
  b.writeUInt32LE(f.src_qpn ?? 0, 16);
  b.writeUInt32LE(f.dst_qpn ?? 0, 20);
  b.writeUInt32LE(f.opcode ?? 0, 24);
  b.writeUInt32LE(f.flags ?? 0, 36);
  b.writeBigUInt64LE(f.cookie ?? 0n, 64);
  if (f.gid) Buffer.from(f.gid, 'hex').copy(b, 72);
  if (f.src_gid) Buffer.from(f.src_gid, 'hex').copy(b, 88);
  return b;
}

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port: Number(portArg) }, () => {
      authenticatePeer(s, { key, role: 'dialler', ownIp: s.localAddress!, peerIp: host }).then(() => {
        s.on('data', () => {}); // the router's answers (HAVE no, ACK errors, nol) are not looked at
        s.resume();
        resolve(s);
      }, reject);
    });
    s.on('error', reject);
  });
}

const s = await open();
const write = (b: Buffer) => new Promise<void>((r) => s.write(b, () => r()));
const cm = (m: object) => {
  const p = Buffer.from(JSON.stringify(m));
  out.cm++;
  return Buffer.concat([hdr(NET.CM, { len: p.length }), p]);
};
const evil = Buffer.alloc(4096, 'E');
const end = Date.now() + spec.ms;
while (Date.now() < end) {
  const parts: Buffer[] = [];
  for (const h of spec.have ?? []) {
    parts.push(hdr(NET.HAVE, { status: 0, src_qpn: h.src_qpn, dst_qpn: h.dst_qpn, gid: h.gid }));
    out.have++;
  }
  for (const a of spec.ack ?? []) {
    // Cookies as a counter would hand them out, and random ones.
    for (let c = 1; c <= 64; c++) parts.push(hdr(NET.ACK, { status: 0, src_qpn: a.src_qpn, dst_qpn: a.dst_qpn, cookie: BigInt(out.rounds * 64 + c) }));
    for (let c = 0; c < 16; c++) parts.push(hdr(NET.ACK, { status: 0, src_qpn: a.src_qpn, dst_qpn: a.dst_qpn, cookie: BigInt.asUintN(64, BigInt(Math.floor(Math.random() * 2 ** 53)) << 11n) }));
    out.ack += 80;
  }
  for (const o of spec.op ?? []) {
    parts.push(hdr(NET.OP, { len: evil.length, opcode: 2 /* SEND */, flags: 0x80000000, src_qpn: o.src_qpn, dst_qpn: o.dst_qpn, gid: o.gid, src_gid: o.src_gid, cookie: 7n }), evil);
    out.op++;
  }
  for (let h = 1; h <= Math.min(64, spec.cmIds ?? 0); h++) parts.push(cm({ t: 'disc', h }), cm({ t: 'rtu', sid: h, qpn: 5, gid: spec.cmGid }));
  for (let k = 0; k < Math.min(40, spec.cmIds ?? 0); k++) {
    const h = 1 + ((out.rounds * 40 + k) % spec.cmIds!);
    parts.push(
      cm({ t: 'acc', cid: h, sid: 1, qpn: 5, gid: spec.cmGid }),
      cm({ t: 'rej', cid: h }),
      cm({ t: 'nol', cid: h }),
    );
  }
  if (spec.gids) {
    parts.push(cm({ t: 'gids', ips: spec.gids }));
    out.gids++;
  }
  out.messages += parts.length;
  await write(Buffer.concat(parts));
  if (out.rounds++ === 0) console.log('spraying');
  if (out.rounds % 100 === 0) console.log(JSON.stringify(out));
  await new Promise((r) => setTimeout(r, 10));
}
s.destroy();
console.log(JSON.stringify(out));
process.exit(0);
