// Tenant isolation of RDMA mode at the QP level (docs/security-rdma-qp.md): attacks and the
// legitimate case beside each one.
//   - QP numbers: random, so a co-located process cannot count its way to a number; and a QP
//     that holds the number of a victim's remote peer still cannot SEND or WRITE into the
//     victim's QP (the requester's GID is checked on one host as across hosts).
//   - access flags of the QP and the MR: REMOTE_WRITE/READ/ATOMIC missing -> the requester gets
//     IBV_WC_REM_ACCESS_ERR, the responder's memory is unchanged and its QP goes to ERR.
//   - receiver not ready across hosts: SENDs to an empty receive queue are NAKed, not buffered
//     (the receiving router's RSS stays within the bound); a finite rnr_retry ends in
//     IBV_WC_RNR_RETRY_EXC_ERR; with receives posted later everything arrives.
//   - a lying peer router (authenticated with the cluster key) answering for other hosts' QPs,
//     completing their requests, forging their GIDs and sending rdma_cm messages for their
//     connections: ignored, the legitimate traffic between the other two hosts is intact.
// Three hosts (h1, h2, h3; containers c11 c12, c21 c22, c31 c32).
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, Testbed, hostIp, overlayIp } from './lib/testbed.js';
import { RDMA_PORT } from '../src/router/rdma/extension.js';
import { ipv4ToWire } from '../src/protocol/codec.js';
import { VERBS_ENV, assertFreed, cmListening, exitedWithin, rdmaStats, resourcesFreed } from './rdma/helpers.js';

const PROBE = join(ROOT, 'build/test-apps/qp_isolation');
const tb = await Testbed.up(t, { hosts: 3 });
const dir = `/tmp/${tb.prefix}`;
const ip = (c: string) => overlayIp(c);
const gidHex = (c: string) => ipv4ToWire(ip(c)).toString('hex');
const IBV_WC_SUCCESS = 0, IBV_WC_WR_FLUSH_ERR = 5, IBV_WC_REM_ACCESS_ERR = 10, IBV_WC_RETRY_EXC_ERR = 12;
const REMOTE_WRITE = 2, REMOTE_READ = 4, REMOTE_ATOMIC = 8;
const INTERNAL_FAULT = /unexpected error|request failed|internal error/;
const faults = (host: string, from: number) => tb.routerOutput(host).slice(from).split('\n').filter((l) => INTERNAL_FAULT.test(l));

/** The router process's resident memory in bytes (its pid from freeflow status). */
async function routerRss(host: string): Promise<number> {
  const pid = (await tb.status(host)).pid;
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

t.test('QP numbers are random 24-bit numbers: counting the numbers one gets says nothing about the next', async (t) => {
  const nums = async (node: string, n: number) => {
    const r = await tb.run(node, [PROBE, 'qpns', String(n)], { env: VERBS_ENV });
    t.equal(r.code, 0, `${node} created ${n} QPs`, { err: r.stderr });
    return (/^qpns (.*)$/m.exec(r.stdout)?.[1] ?? '').trim().split(' ').map(Number);
  };
  const a = await nums('c11', 500);
  const v = await nums('c12', 3); // the "victim", created between two runs of the attacker
  const b = await nums('c11', 500);
  const all = [...a, ...v, ...b];
  t.ok(all.every((q) => Number.isInteger(q) && q >= 2 && q < 2 ** 24), 'every number is in [2, 2^24): 24 bits, never 0 or 1');
  t.equal(new Set(a).size, a.length, 'unique among the QPs of one run');
  const deltas = [...a.slice(1).map((q, i) => q - a[i]), ...b.slice(1).map((q, i) => q - b[i])];
  const near = deltas.filter((d) => Math.abs(d) <= 16).length;
  t.ok(near <= deltas.length * 0.01, `consecutive numbers are not close (${near} of ${deltas.length} within 16; a counter gives all)`);
  const predicted = new Set(Array.from({ length: 64 }, (_, i) => a[a.length - 1] + 1 + i));
  t.ok(v.every((q) => !predicted.has(q)), `another container's next numbers (${v.join(', ')}) are not the ones after the attacker's last (${a[a.length - 1]})`);
  const spread = Math.max(...all) - Math.min(...all);
  t.ok(spread > 2 ** 23, `spread over the 24-bit space (max - min = ${spread})`);
});

t.test("a co-located QP with the number of the victim's remote peer cannot SEND or WRITE into the victim's QP", async (t) => {
  // c11 (attacker) holds 4096 QPs; the victim c12's legitimate peer on h2 (c21) makes QPs until
  // one has a number the attacker holds (numbers are unique per host only), so the attacker
  // has exactly the number the victim's QP accepts. Control: the peer's own message arrives.
  const nums = join(dir, 'qpiso.nums'), go = join(dir, 'qpiso.go'), done = join(dir, 'qpiso.done');
  const a = tb.start('c11', [PROBE, 'attacker', '4096', nums, go], { env: VERBS_ENV });
  await a.waitFor(/numbers written/, 60_000);
  const v = tb.start('c12', [PROBE, 'victim', '9300', done], { env: VERBS_ENV });
  await v.waitFor(/listening/);
  const p = tb.start('c21', [PROBE, 'peer', ip('c12'), '9300', nums, '400000'], { env: VERBS_ENV });
  const col = await p.waitFor(/collision qpn=(\d+) after (\d+) tries/, 180_000);
  t.comment(`the peer's QP on h2 got number ${col[1]} after ${col[2]} tries, one of the attacker's on h1`);
  const vm = await v.waitFor(/victim qpn=(\d+) gid=(\S+) addr=(\d+) rkey=(\d+) peer=(\d+)/, 30_000);
  t.match(v.output(), /^ok legit/m, "control: the victim's peer's message arrived intact");
  t.equal(vm[5], col[1], "the victim's QP accepts the QP with that number");
  writeFileSync(go, `${col[1]} ${vm[1]} ${vm[2]} ${vm[3]} ${vm[4]}\n`);
  const code = await exitedWithin(a, 60_000);
  t.equal(code, 0, 'attacker ran', { out: a.output() });
  const send = Number(/attack send status=(-?\d+)/.exec(a.output())?.[1]);
  const write = Number(/attack write status=(-?\d+)/.exec(a.output())?.[1]);
  t.equal(send, IBV_WC_RETRY_EXC_ERR, `the attacker's SEND fails (status ${send}: the victim's QP never takes it, as if nobody were there)`);
  t.equal(write, IBV_WC_RETRY_EXC_ERR, `its RDMA WRITE with the victim's rkey fails the same way (status ${write})`);
  writeFileSync(done, '');
  t.equal(await exitedWithin(v, 20_000), 0, 'victim checks pass', { out: v.output() });
  t.match(v.output(), /^ok no foreign receive/m, "nothing reached the victim's QP");
  t.match(v.output(), /^ok the victim's memory is unchanged/m, "nor its memory");
  await exitedWithin(p, 10_000);
  for (const h of ['h1', 'h2']) assertFreed(t, h, await resourcesFreed(tb, h), ' after the attack');
});

let aport = 9320;
for (const [server, sip] of [['c12', ip('c12')], ['c21', ip('c21')]] as const)
  t.test(`access flags of QP and MR are enforced for every operation, c11 -> ${server}`, async (t) => {
    const run = async (op: string, qpAcc: number, mrAcc: number) => {
      const port = String(++aport);
      const s = tb.start(server, [PROBE, 'access-server', port, String(qpAcc), String(mrAcc)], { env: VERBS_ENV });
      await s.waitFor(/listening/);
      const c = await tb.run('c11', [PROBE, 'access-client', sip, port, op], { env: VERBS_ENV, timeoutMs: 30_000 });
      await exitedWithin(s, 5000);
      await tb.stop(s);
      const st = Number(/status=(-?\d+)/.exec(c.stdout)?.[1]);
      const r = /responder unchanged=(\d) qp_err=(\d)/.exec(c.stdout);
      return { status: st, unchanged: r?.[1] === '1', qpErr: r?.[2] === '1', out: c.stdout + c.stderr };
    };
    const ALL = REMOTE_WRITE | REMOTE_READ | REMOTE_ATOMIC;
    for (const [op, flag] of [['write', REMOTE_WRITE], ['read', REMOTE_READ], ['atomic', REMOTE_ATOMIC]] as const) {
      const qp = await run(op, ALL & ~flag, ALL);
      t.equal(qp.status, IBV_WC_REM_ACCESS_ERR, `${op} to a QP without ${op === 'write' ? 'REMOTE_WRITE' : op === 'read' ? 'REMOTE_READ' : 'REMOTE_ATOMIC'}: IBV_WC_REM_ACCESS_ERR`, { out: qp.out });
      t.ok(qp.unchanged && qp.qpErr, `  the responder's memory is unchanged and its QP is in ERR`, { out: qp.out });
      const m = await run(op, ALL, ALL & ~flag);
      t.equal(m.status, IBV_WC_REM_ACCESS_ERR, `${op} to an MR without that access: IBV_WC_REM_ACCESS_ERR`, { out: m.out });
      t.ok(m.unchanged && m.qpErr, `  the responder's memory is unchanged and its QP is in ERR`, { out: m.out });
      const ok = await run(op, ALL, ALL);
      t.equal(ok.status, IBV_WC_SUCCESS, `control: ${op} with the access granted succeeds`, { out: ok.out });
      t.ok(!ok.qpErr && (op === 'read' ? ok.unchanged && /read data intact/.test(ok.out) : !ok.unchanged), `  ${op === 'read' ? 'with the responder\'s bytes' : 'and changes the responder\'s memory'}, its QP stays up`, { out: ok.out });
    }
  });

t.test('SENDs to an empty receive queue across hosts are NAKed (receiver not ready), not buffered by the receiving router', async (t) => {
  // 16 QPs x 32 SENDs of 1 MiB in flight (512 MiB) with rnr_retry 7 (retry forever) while the
  // receiver posts nothing for 4 s: the receiving router used to keep all of them.
  const s = tb.start('c21', [PROBE, 'rnr-server', '9400', '16', '12'], { env: VERBS_ENV });
  await s.waitFor(/listening/);
  const rss0 = await routerRss('h2');
  const naks0 = (await rdmaStats(tb, 'h1')).naks;
  const c = tb.start('c11', [PROBE, 'rnr-client', ip('c21'), '9400', '16', '32', String(1 << 20), '7', '4000'], { env: VERBS_ENV });
  await c.waitFor(/posted/, 30_000);
  let peak = rss0;
  while (!/holding done/.test(c.output()) && c.proc.exitCode === null) {
    peak = Math.max(peak, await routerRss('h2'));
    await sleep(100);
  }
  const code = await exitedWithin(c, 60_000);
  await exitedWithin(s, 5000);
  await tb.stop(s);
  t.equal(code, 0, 'client ran', { out: c.output() });
  t.match(c.output(), /completed before any receive was posted: 0/, 'nothing completed while the receiver had no receive posted');
  const growth = peak - rss0;
  t.comment(`h2's router: RSS ${(rss0 / 2 ** 20).toFixed(0)} MiB before, peak ${(peak / 2 ** 20).toFixed(0)} MiB while 512 MiB of SENDs waited`);
  t.ok(growth < 64 * 2 ** 20, `the receiving router grew by ${(growth / 2 ** 20).toFixed(1)} MiB, within the documented bound (64 MiB for one container; 512 MiB were waiting)`);
  t.ok((await rdmaStats(tb, 'h1')).naks > naks0, 'the requester got receiver-not-ready NAKs');
  t.match(c.output(), /completions success=512 rnr_retry_exceeded=0 flushed=0 other=0/, 'control: once receives are posted, every SEND completes');
  t.match(c.output(), /receiver got 512 messages/, 'and the receiver got all of them');
  for (const h of ['h1', 'h2']) assertFreed(t, h, await resourcesFreed(tb, h));
});

let rport = 9410;
for (const [server, sip] of [['c12', ip('c12')], ['c21', ip('c21')]] as const)
  t.test(`a finite rnr_retry ends in IBV_WC_RNR_RETRY_EXC_ERR, c11 -> ${server}`, async (t) => {
    const port = String(++rport);
    // min_rnr_timer 12 (0.64 ms), rnr_retry 3: each QP's first SEND fails after 3 retries.
    const s = tb.start(server, [PROBE, 'rnr-server', port, '4', '12'], { env: VERBS_ENV });
    await s.waitFor(/listening/);
    const c = await tb.run('c11', [PROBE, 'rnr-client', sip, port, '4', '8', '65536', '3', '0'], { env: VERBS_ENV, timeoutMs: 60_000 });
    await exitedWithin(s, 5000);
    await tb.stop(s);
    const m = /completions success=(\d+) rnr_retry_exceeded=(\d+) flushed=(\d+) other=(\d+) after (\d+) ms/.exec(c.stdout);
    t.ok(m, 'completions counted', { out: c.stdout + c.stderr });
    t.equal(m?.[2], '4', 'the first SEND of each of the 4 QPs: IBV_WC_RNR_RETRY_EXC_ERR');
    t.equal(m?.[3], '28', `the 28 behind them: IBV_WC_WR_FLUSH_ERR (status ${IBV_WC_WR_FLUSH_ERR})`);
    t.equal(m?.[1], '0', 'none succeeded');
    t.ok(Number(m?.[5]) >= 1, `after the timer (0.64 ms) had run 3 times (${m?.[5]} ms, whole ms)`);
  });

t.test('a lying peer router cannot answer for, complete, impersonate or disconnect other hosts\' QPs and rdma_cm ids', async (t) => {
  // Legitimate traffic between c11 (h1) and c31 (h3); the liar is an authenticated peer from
  // h2's address talking to h1's engine. It is told every QP number (a perfect guess).
  const log0 = tb.routerOutput('h1').length;
  const st0 = await rdmaStats(tb, 'h1');
  const go = join(dir, 'stream.go');
  const srv = tb.start('c11', [PROBE, 'stream-server', '9500', '400'], { env: VERBS_ENV });
  await srv.waitFor(/listening/);
  const cli = tb.start('c31', [PROBE, 'stream-client', ip('c11'), '9500', '400', go], { env: VERBS_ENV });
  const sq = Number((await srv.waitFor(/server qpn=(\d+)/))[1]);
  const cq = Number((await cli.waitFor(/client qpn=(\d+)/))[1]);
  const spec = {
    ms: 30_000,
    have: [{ src_qpn: sq, dst_qpn: cq, gid: gidHex('c31') }], // "c31's QP is here": take c11's traffic
    ack: [{ src_qpn: sq, dst_qpn: cq }], // complete c11's requests
    op: [{ dst_qpn: sq, gid: gidHex('c11'), src_qpn: cq, src_gid: gidHex('c31') }], // SEND as c31
    cmIds: 400, // disconnect ids 1-64 every 10 ms; accept / reject / "no listener" for every handle up to 400
    cmGid: gidHex('c31'),
    gids: [ip('c21'), ip('c22'), ip('c11'), ip('c32')], // claim h1's c11 and h3's c32 too
  };
  const liar = tb.start('h2', ['node', '--import', 'tsx', join(ROOT, 'test/rdma/fake-peer.ts'), hostIp('h1'), String(RDMA_PORT), JSON.stringify(spec)], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
  });
  await liar.waitFor(/spraying/, 30_000);
  await sleep(300);
  writeFileSync(go, '');
  t.equal(await exitedWithin(cli, 60_000), 0, 'control: the stream between c31 and c11 ran', { out: cli.output() });
  t.equal(await exitedWithin(srv, 10_000), 0, 'on both ends', { out: srv.output() });
  t.match(cli.output(), /stream 400\/400 messages each way verified/, '400 messages each way arrived, every byte as sent (no forged SEND got in, none went to the liar)');
  t.match(srv.output(), /stream 400\/400 messages each way verified/);
  // rdma_cm across the same hosts while the liar keeps disconnecting every id handle.
  const r = tb.start('c31', ['rping', '-s', '-v', '-C', '300', '-a', ip('c31'), '-p', '9501'], { env: VERBS_ENV });
  await cmListening(tb, 'c31', 9501, r);
  const rc = await tb.run('c11', ['rping', '-c', '-v', '-C', '300', '-a', ip('c31'), '-p', '9501'], { env: VERBS_ENV, timeoutMs: 60_000 });
  t.equal(await exitedWithin(r, 10_000), 0, 'control: the rping server exits 0', { out: r.output() });
  t.equal(rc.code, 0, 'rping c11 -> c31 completes while the liar sends disconnects for every id', { out: rc.stdout + rc.stderr });
  t.equal((rc.stdout.match(/^ping data: rdma-ping-/gm) ?? []).length, 300, 'all 300 pings');
  t.ok(liar.proc.exitCode === null, 'the liar was still sending');
  await tb.stop(liar);
  const o = JSON.parse(liar.output().split('\n').filter((l) => l.startsWith('{')).pop() ?? '{}');
  const st = await rdmaStats(tb, 'h1');
  t.comment(`liar: ${JSON.stringify(o)}; h1 refused ${st.refused - st0.refused} engine messages and ${st.cmRefused - st0.cmRefused} rdma_cm messages`);
  t.ok(st.refused - st0.refused > 100, 'h1 refused the forged HAVEs, ACKs and SENDs (engine counter)');
  // Most handles name no id, or one of h1's own (ignored, as before); those that hit rping's id
  // (h1 makes few ids in this test, all below 64), connected to h3, are refused and counted.
  t.ok(st.cmRefused - st0.cmRefused > 0, "and rdma_cm messages for rping's id, which is connected to h3, not h2");
  t.ok(st.gidConflicts >= 1, `h1 refused the liar's claims of GIDs of this host and of h3 (${st.gidConflicts} disputed)`);
  t.match(tb.routerOutput('h1').slice(log0), /claim GIDs of this host or of each other/, 'and said so in its log');
  t.same(faults('h1', log0), [], 'no internal fault in h1');
  t.ok((await tb.status('h1')).peers, 'h1 answers freeflow status');
  for (const h of ['h1', 'h3']) assertFreed(t, h, await resourcesFreed(tb, h));
});
