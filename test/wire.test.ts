// The wire protocol has one definition (protocol/wire-spec.mjs). This checks that the
// generated C header and TS module are current, and that the C compiler lays struct ff_msg
// out exactly where the TypeScript codec reads and writes each field.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIELD_LAYOUT, MSG_SIZE, MsgType, decode, emptyMsg, encode, ipv4ToWire, wireToIpv4 } from '../src/protocol/codec.js';
import { ROOT } from './lib/testbed.js';
import { announcementRecords } from '../src/router/peer-mesh.js';

t.test('generated files are current', async (t) => {
  const r = spawnSync('node', [join(ROOT, 'scripts/gen-wire.mjs'), '--check'], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr || 'libfsocket/ff_wire.h and src/protocol/wire.generated.ts match the spec');
});

t.test('C layout equals the TypeScript layout', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ffwire-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const prints = FIELD_LAYOUT.map((f) => `printf("${f.name} %zu %zu\\n", offsetof(struct ff_msg, ${f.name}), sizeof(((struct ff_msg*)0)->${f.name}));`).join('\n');
  // Also fill a message in C, to be decoded by TS.
  const src = `#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include "ff_wire.h"
int main(int argc, char **argv) {
  ${prints}
  printf("size %zu\\n", sizeof(struct ff_msg));
  struct ff_msg m; memset(&m, 0, sizeof m);
  m.magic = FF_WIRE_MAGIC; m.version = FF_WIRE_VERSION; m.type = FF_T_ANNOUNCE; m.seq = 0xdeadbeef; m.status = -42;
  m.local_port = 1234; m.remote_port = 80; m.host_port = 40000; m.aux_port = 65535; m.payload_len = 0;
  m.local_addr[10] = m.local_addr[11] = 0xff; m.local_addr[12] = 10; m.local_addr[15] = 7;
  FILE *f = fopen(argv[1], "wb"); fwrite(&m, sizeof m, 1, f); fclose(f);
  return 0;
}`;
  writeFileSync(join(dir, 'layout.c'), src);
  execFileSync('cc', ['-I', join(ROOT, 'libfsocket'), '-o', join(dir, 'layout'), join(dir, 'layout.c')]);
  const out = execFileSync(join(dir, 'layout'), [join(dir, 'msg.bin')], { encoding: 'utf8' });
  const c = new Map(out.trim().split('\n').map((l) => { const [n, o, s] = l.split(' '); return [n, [Number(o), Number(s)]]; }));
  for (const f of FIELD_LAYOUT) t.same(c.get(f.name), [f.offset, f.size], `${f.name} at ${f.offset}, ${f.size} bytes`);
  t.same(c.get('size')?.[0], MSG_SIZE, 'record size');
  const m = decode(readFileSync(join(dir, 'msg.bin')));
  t.same([m.type, m.seq, m.status, m.local_port, m.remote_port, m.host_port, m.aux_port], [MsgType.ANNOUNCE, 0xdeadbeef, -42, 1234, 80, 40000, 65535], 'a C-made record decodes in TS');
  t.equal(wireToIpv4(m.local_addr), '10.0.0.7', 'addresses too');
});

t.test('TS round trip', async (t) => {
  const m = emptyMsg(MsgType.LISTEN);
  m.local_addr = ipv4ToWire('10.244.1.11');
  m.local_port = 8080;
  m.status = -5;
  const back = decode(encode(m));
  t.same(back, m);
  t.throws(() => decode(Buffer.alloc(10)), /short/);
  t.throws(() => ipv4ToWire('10.1.2'), /bad IPv4/);
});

// A CONNECT batch's announcements are copies of one encoded template with the ports patched
// in: every record must decode to the fields of its own socket.
t.test('announcement records of a batch', async (t) => {
  const ports = Buffer.alloc(6);
  [40001, 40002, 65535].forEach((p, i) => ports.writeUInt16LE(p, 2 * i));
  const batch = { clientHostIp: '192.168.77.1', listenerHostPort: 33000, srcIp: '10.244.1.11', srcPort: 0, dstIp: '10.244.2.11', dstPort: 8088 };
  const recs = announcementRecords(batch, ports);
  t.equal(recs.length, 3 * MSG_SIZE, 'one record per socket');
  for (let i = 0; i < 3; i++) {
    const m = decode(recs.subarray(i * MSG_SIZE, (i + 1) * MSG_SIZE));
    const port = ports.readUInt16LE(2 * i);
    t.same(
      [m.type, wireToIpv4(m.host_addr), m.host_port, m.aux_port, wireToIpv4(m.local_addr), m.local_port, wireToIpv4(m.remote_addr), m.remote_port, m.payload_len],
      [MsgType.ANNOUNCE, '192.168.77.1', port, 33000, '10.244.1.11', port, '10.244.2.11', 8088, 0],
      `record ${i}: unbound source, overlay port = host port ${port}`,
    );
  }
  const bound = decode(announcementRecords({ ...batch, srcPort: 40123 }, ports.subarray(0, 2)));
  t.same([bound.host_port, bound.local_port], [40001, 40123], 'an application-bound source keeps its own port');
  t.equal(announcementRecords(batch, Buffer.alloc(0)).length, 0, 'an empty batch has no records');
});
