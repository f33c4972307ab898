// Full RDMA mode: unmodified Debian verbs programs (ibv_devinfo, ibv_rc_pingpong, perftest) run
// in testbed containers on FreeFlow's libibverbs (build/verbs), with the data path in the
// router's native engine. test/rdma/rdma_check.c checks payload integrity byte by byte and the
// error semantics (wrong rkey, flush on ERR, killed peer). Same host (c11 <-> c12) and cross-host
// (c11 -> c21, engine to engine over the hosts' network, never through VXLAN).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ROOT, Testbed, hostIp, overlayIp, vxlanBytesDuring } from './lib/testbed.js';
import { RDMA_PORT } from '../src/router/rdma/extension.js';
import { RDMA_CHECK, VERBS_ENV, assertFreed, cmListening, exitedWithin, pair, rdmaStats, resourcesFreed } from './rdma/helpers.js';

const tb = await Testbed.up(t);
const ip12 = overlayIp('c12');
const ip21 = overlayIp('c21');

t.test('export tables match the installed libraries exactly', async (t) => {
  for (const lib of ['libibverbs.so.1', 'librdmacm.so.1']) {
    const table = (path: string) =>
      spawnSync('objdump', ['-T', path], { encoding: 'utf8' })
        .stdout.split('\n')
        .filter((l) => / g /.test(l))
        .map((l) => l.trim().split(/\s+/).slice(-2).join(' '))
        .sort();
    const ours = table(join(ROOT, 'build/verbs', lib));
    t.ok(ours.length > 50, `${lib}: ${ours.length} exported symbols`);
    t.same(ours, table(`/usr/lib/x86_64-linux-gnu/${lib}`), `${lib}: same symbol@version set as the installed one`);
  }
});


t.test('ibv_devices and ibv_devinfo see one active RoCE port with the overlay GID', async (t) => {
  const d = await tb.run('c11', ['ibv_devices'], { env: VERBS_ENV });
  t.equal(d.code, 0, 'ibv_devices exits 0');
  t.match(d.stdout, /ffvnic0/, 'lists ffvnic0');
  const i = await tb.run('c11', ['ibv_devinfo', '-v'], { env: VERBS_ENV });
  t.equal(i.code, 0, 'ibv_devinfo exits 0', { stderr: i.stderr });
  t.match(i.stdout, /hca_id:\s+ffvnic0/);
  t.match(i.stdout, /state:\s+PORT_ACTIVE/);
  t.match(i.stdout, /link_layer:\s+Ethernet/);
  t.match(i.stdout, /GID\[\s*0\]:\s+::ffff:10\.244\.1\.11, RoCE v2/, 'GID 0 is the IPv4-mapped overlay address, RoCE v2');
  const stock = await tb.run('c11', ['ibv_devices']);
  t.not(stock.code, 0, 'without FreeFlow the stock library finds no device (so the device really is ours)');
});

t.test('verbs FreeFlow does not provide fail cleanly (NULL/error + EOPNOTSUPP), no crash', async (t) => {
  const r = await tb.run('c11', [RDMA_CHECK, 'unsupported'], { env: VERBS_ENV });
  t.equal(r.code, 0, 'all checks pass', { out: r.stdout + r.stderr });
  for (const k of ['create_wq', 'create_qp UD', 'alloc_mw', 'create_cq_ex', 'qp_to_qp_ex', 'resize_cq']) t.match(r.stdout, new RegExp(`^ok ${k}`, 'm'), k);
});

t.test('registered memory backed by shared memory stays private across fork()', async (t) => {
  const r = await tb.run('c11', [RDMA_CHECK, 'fork'], { env: VERBS_ENV });
  t.equal(r.code, 0, 'all checks pass', { out: r.stdout + r.stderr });
  for (const k of ['view', 'fork: the child saw', 'fork: the child\'s writes']) t.match(r.stdout, new RegExp(`^ok ${k}`, 'm'), k);
});

t.test('the router checks every handle against the session that owns it', async (t) => {
  const r = await tb.run('c11', ['node', '--import', 'tsx', join(ROOT, 'test/rdma/raw-rdma.ts'), join(tb.socketDir('h1'), 'ffrouter.sock')], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
  });
  t.equal(r.code, 0, 'probe ran', { err: r.stderr });
  const o = JSON.parse(r.stdout.trim() || '{}');
  const ENOENT = -2, EBUSY = -16, EINVAL = -22;
  t.equal(o.regOwn, 0, 'a session registers memory on its own PD');
  t.equal(o.deallocOther, ENOENT, "another session cannot free that PD");
  t.equal(o.regOnOtherPd, ENOENT, 'nor register memory on it');
  t.equal(o.deregOther, ENOENT, 'nor deregister its MR');
  t.equal(o.qpOnOtherPd, ENOENT, "nor create a QP on it");
  t.equal(o.cqWithoutFd, EINVAL, 'a CQ without its shared-memory ring is refused');
  t.equal(o.modifyUnknownQp, ENOENT, 'unknown QP');
  t.equal(o.zeroLengthMr, EINVAL, 'empty MR refused');
  t.equal(o.remoteWriteWithoutLocalWrite, EINVAL, 'remote write without local write refused');
  t.equal(o.shortPayload, ENOENT, 'short payload reads as zero handles (refused)');
  t.equal(o.busyPd, EBUSY, 'a PD with an MR cannot be freed');
  t.equal(o.deregOwn, 0, 'own MR deregistered');
  t.equal(o.deallocOwn, 0, 'then the PD freed');
  // A memory file the router maps must be sealed against shrinking: truncated later, it would
  // fault the router (SIGBUS) on its next access.
  t.equal(o.cqUnsealedFile, EINVAL, 'a CQ ring in an unsealed file is refused');
  t.equal(o.mrUnsealedView, EINVAL, 'an MR view in an unsealed file is refused');
  t.equal(o.afterwards, 0, 'the router still answers');
  t.ok(o.doorbellBytes >= 4096, 'RDMA_OPEN hands out the doorbell page');
  t.equal(o.doorbellShrink, -1 /* EPERM */, 'which an application cannot shrink (sealed)');
});

t.test('a container over its caps (objects, rdma_cm ids and channels, descriptors; across its sessions) gets errors; the router stays up', async (t) => {
  const fds0 = (await rdmaStats(tb, 'h1')).fds;
  const r = await tb.run('c11', ['node', '--import', 'tsx', join(ROOT, 'test/rdma/raw-caps.ts'), join(tb.socketDir('h1'), 'ffrouter.sock')], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
    timeoutMs: 120_000,
  });
  t.equal(r.code, 0, 'probe ran', { err: r.stderr });
  const o = JSON.parse(r.stdout.trim() || '{}');
  t.comment(`caps ${JSON.stringify(o.limits)}; ${o.cmIdsCreated} rdma_cm ids in ${o.idMs} ms`);
  const { objectsPerContainer: maxObjects, fdsPerContainer: maxFds } = o.limits ?? {};
  const ENOMEM = -12, EMFILE = -24;
  t.equal(o.cmChannelsCreated, maxFds, `${maxFds} rdma_cm event channels (one descriptor passed again and again)`);
  t.equal(o.cmChannelOverCap, EMFILE, 'one more fails with EMFILE');
  t.equal(o.compChannelOverCap, EMFILE, 'and so does a completion channel (the same cap: both keep a descriptor)');
  t.ok(o.routerFdsHeld >= maxFds && o.routerFdsHeld < maxFds + 16, `the router held ${o.routerFdsHeld} more descriptors for them`);
  t.equal(o.cmChannelsDestroyed, maxFds, 'all destroyed');
  // The last few destroyed channels keep their socket open (a thread blocked in
  // rdma_get_cm_event must not see EOF); all others are closed.
  const kept = o.limits.destroyedChannelsOpen;
  t.ok(o.routerFdsAfterDestroy >= kept && o.routerFdsAfterDestroy <= kept + 4, `destroying them closed the router's descriptors but the last ${kept} (${o.routerFdsAfterDestroy} more than before)`);
  t.equal(o.cmChannelsAgain, maxFds, 'and the session may create as many again');
  t.equal(o.cmIdsCreated, maxObjects - 1, `${maxObjects - 1} rdma_cm ids besides their channel fill the ${maxObjects}-object cap`);
  t.equal(o.cmIdOverCap, ENOMEM, 'one more id fails with ENOMEM');
  t.equal(o.pdOverCap, ENOMEM, 'rdma_cm objects and verbs objects share the cap: a PD fails too');
  t.equal(o.destroyOneId, 0, 'an id destroyed ...');
  t.equal(o.pdAfterDestroy, 0, '... makes room for a PD');
  t.equal(o.otherSessionPd, ENOMEM, 'another session of the same container shares the cap: ENOMEM too');
  t.equal(o.otherSessionPdAfterClose, 0, 'once the first session is gone it gets its PD');
  t.ok(o.capError === EMFILE && o.capHeld === maxFds && o.sessionsUsed > 1, `${o.sessionsUsed} sessions together got ${o.capHeld} channels, the container's ${maxFds}, then EMFILE`);
  t.ok(o.routerFdsAtCap >= maxFds && o.routerFdsAtCap < maxFds + 64, `the router then held ${o.routerFdsAtCap} more descriptors`);
  t.equal(o.channelAfterCap, 0, 'once those sessions closed, a new one gets a channel again');
  t.equal(o.stillAnswers, 0, 'and a PD: the router kept serving the process');
  t.ok((await tb.status('h1')).peers, 'and answers freeflow status');
  const s = await resourcesFreed(tb, 'h1', 10_000);
  assertFreed(t, 'h1', s, ' once the process is gone');
  t.ok(s.fds - fds0 < 16, `its descriptors are closed (${s.fds} open, ${fds0} before)`);
});

// A fault inside the router that its last-resort handlers caught (the process lived on, its
// state perhaps half changed): none may show up in its log.
const INTERNAL_FAULT = /unexpected error|request failed|internal error/;
const faults = (host: string, from: number) => tb.routerOutput(host).slice(from).split('\n').filter((l) => INTERNAL_FAULT.test(l));

// The fuzzers' seed: a fixed one by default, so that a run is repeatable and CI is not a
// lottery (174236260 once found a leaked rdma_cm listener); FF_FUZZ_SEED=<n> repeats a run,
// FF_FUZZ_SEED=random explores.
const fuzzSeed = (fixed: number) =>
  process.env.FF_FUZZ_SEED === 'random' ? String(Date.now() % 1e9) : String(Number(process.env.FF_FUZZ_SEED ?? fixed));

t.test('garbage for every RDMA and rdma_cm message type leaves the router up and working', async (t) => {
  const seed = fuzzSeed(174236260);
  t.comment(`seed ${seed} (FF_FUZZ_SEED=${seed} repeats this run)`);
  const log0 = tb.routerOutput('h1').length, log0h2 = tb.routerOutput('h2').length;
  const r = await tb.run('c11', ['node', '--import', 'tsx', join(ROOT, 'test/rdma/raw-fuzz.ts'), join(tb.socketDir('h1'), 'ffrouter.sock'), overlayIp('c11'), seed, '40'], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
    timeoutMs: 120_000,
  });
  t.equal(r.code, 0, 'fuzzer ran to the end (every message got a reply)', { err: r.stderr.slice(-3000) });
  const o = JSON.parse(r.stdout.trim() || '{}');
  t.comment(`${o.sent} messages, ${o.replies} replies, ${o.closedByRouter} sessions closed by the router`);
  t.ok(o.sent >= 40 * 30, `${o.sent} malformed messages of ${Object.keys(o.statuses ?? {}).length} kinds sent`);
  t.equal(o.replies + o.closedByRouter, o.sent, 'each answered (or its session closed)');
  const EINVAL = -22;
  t.equal(o.sequences?.listen, 0, 'a listener for the sequences below');
  t.equal(o.sequences?.['connect without resolve'], EINVAL, 'rdma_connect on an id without a resolved address is refused');
  t.equal(o.sequences?.['connect without resolve, with descriptor'], EINVAL, 'also with a stray descriptor attached');
  for (const k of ['accept without request', 'reject without request', 'connect twice']) t.equal(o.sequences?.[k], EINVAL, `${k}: EINVAL`);
  t.equal(o.sequences?.['listen twice on one address'], -98, 'a second listener on one address: EADDRINUSE');
  t.equal(o.sequences?.['bind a listening id elsewhere'], EINVAL, 'a listening id cannot be bound elsewhere (its listener would be left behind)');
  t.equal(o.sequences?.['listen again on a listening id'], 0, 'rdma_listen on a listening id is a no-op');
  t.equal(o.sequences?.['destroy channel with ids, then events for them'], 0, 'an id outlives its destroyed channel');
  t.equal(o.after, 0, 'a new session of the fuzzing process is served');
  t.same(faults('h1', log0), [], 'no internal fault in h1 (nothing thrown, nothing caught by a last resort)');
  t.same(faults('h2', log0h2), [], 'nor in h2 (cross-host connection requests went there)');
  t.ok((await tb.status('h1')).peers, 'the router answers freeflow status');
  assertFreed(t, 'h1', await resourcesFreed(tb, 'h1'), ' of the fuzzer');
  const { srv, cli } = await pair(tb, 'c12', 'c11', ip12, ['ibv_rc_pingpong', '-g', '0', '-c', '-n', '100', '-p', '18590']);
  t.ok(cli.code === 0 && srv.code === 0, 'and a verbs program runs afterwards', { out: cli.stdout + cli.stderr + srv.stdout });
});

t.test('garbage from a peer router (rdma_cm JSON, engine messages, broken framing) leaves the router up and working', async (t) => {
  const seed = fuzzSeed(174244587);
  t.comment(`seed ${seed}`);
  const ip11 = overlayIp('c11');
  const [lport, late] = [9480, 9481];
  const log0 = tb.routerOutput('h1').length;
  // A real listener the broken connection requests reach.
  const l = tb.start('c11', ['rping', '-s', '-a', ip11, '-p', String(lport)], { env: VERBS_ENV });
  await cmListening(tb, 'c11', lport, l);
  const f = tb.start('h2', ['node', '--import', 'tsx', join(ROOT, 'test/rdma/raw-fuzz-net.ts'), hostIp('h1'), String(RDMA_PORT), ip11, String(lport), String(late), seed], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
  });
  await f.waitFor(/late requests sent/, 60_000);
  // A listener appears while those requests are retried: they reach it from a timer.
  const l2 = tb.start('c11', ['rping', '-s', '-a', ip11, '-p', String(late)], { env: VERBS_ENV });
  const code = await exitedWithin(f, 60_000);
  await sleep(2500); // the retries run out
  t.equal(code, 0, 'fuzzer ran to the end', { out: f.output().slice(-3000) });
  const o = JSON.parse(f.output().split('\n').find((x) => x.startsWith('{')) ?? '{}');
  t.comment(`${o.messages} messages on ${o.connections} connections`);
  await tb.stop(l);
  await tb.stop(l2);
  t.same(faults('h1', log0), [], 'no internal fault in h1 (nothing thrown, nothing caught by a last resort)');
  t.ok((await tb.status('h1')).peers, 'the router answers freeflow status');
  assertFreed(t, 'h1', await resourcesFreed(tb, 'h1'), ' of the listeners the garbage reached');
  // The real peer connection still carries work requests and connection management.
  const port = '9482';
  const s = tb.start('c21', ['rping', '-s', '-v', '-C', '3', '-a', ip21, '-p', port], { env: VERBS_ENV });
  await cmListening(tb, 'c21', Number(port), s);
  const cli = await tb.run('c11', ['rping', '-c', '-v', '-C', '3', '-a', ip21, '-p', port], { env: VERBS_ENV, timeoutMs: 30_000 });
  await exitedWithin(s, 10_000);
  await tb.stop(s);
  t.equal(cli.code, 0, 'rping c11 -> c21 works afterwards', { out: cli.stdout + cli.stderr });
});

let ppPort = 18600;
for (const [server, sip] of [['c12', ip12], ['c21', ip21]])
for (const events of [false, true]) {
  t.test(`ibv_rc_pingpong -g 0 -c${events ? ' -e' : ''} between c11 and ${server} validates every buffer`, async (t) => {
    const args = ['ibv_rc_pingpong', '-g', '0', '-c', '-n', '200', '-s', '8192', '-p', String(ppPort++), ...(events ? ['-e'] : [])];
    const { srv, cli } = await pair(tb, server, 'c11', sip, args);
    t.equal(cli.code, 0, 'client exits 0', { out: cli.stdout + cli.stderr });
    t.equal(srv.code, 0, 'server exits 0', { out: srv.stdout });
    t.match(cli.stdout, /GID ::ffff:10\.244\.1\.11/, 'local GID is the IPv4-mapped overlay address');
    t.match(cli.stdout, /200 iters in/, 'all iterations done');
    t.match(srv.stdout, /200 iters in/, 'server done too');
  });
}

for (const [server, sip] of [['c12', ip12], ['c21', ip21]])
  t.test(`shared receive queues: ibv_srq_pingpong -c (16 QPs on one SRQ) and ib_send_bw --use-srq, c11 -> ${server}`, async (t) => {
    let { srv, cli } = await pair(tb, server, 'c11', sip, ['ibv_srq_pingpong', '-g', '0', '-c', '-n', '200', '-p', String(ppPort++)]);
    const raced = (r: { code: number | null; stdout: string; stderr?: string }) => r.code !== 0 && /retry counter exceeded/.test(r.stdout + (r.stderr ?? ''));
    if (raced(srv) || raced(cli)) {
      // Known race (docs/rdma.md, known issues): the program can post sends beyond its count
      // while the peer, done, already destroys its QPs; either side's last sends may then find
      // no QP. Seen about once in five runs across hosts, rarely on one host; a second failure
      // in a row is a real fault and fails the test.
      t.comment(`srq_pingpong hit the teardown race; running once more: ${(raced(srv) ? srv.stdout : cli.stdout + cli.stderr).split('\n').find((l) => /retry counter/.test(l))}`);
      ({ srv, cli } = await pair(tb, server, 'c11', sip, ['ibv_srq_pingpong', '-g', '0', '-c', '-n', '200', '-p', String(ppPort++)]));
    }
    t.equal(cli.code, 0, 'srq_pingpong client exits 0', { out: cli.stdout + cli.stderr });
    t.equal(srv.code, 0, 'srq_pingpong server exits 0', { out: srv.stdout });
    t.match(cli.stdout, /200 iters in/, 'all iterations done, buffers validated');
    const bw = await pair(tb, server, 'c11', sip, ['ib_send_bw', '-d', 'ffvnic0', '-x', '0', '--use-srq', '-q', '2', '-n', '500', '-p', String(ppPort++)]);
    t.equal(bw.cli.code, 0, 'ib_send_bw --use-srq client exits 0', { out: bw.cli.stdout + bw.cli.stderr });
    t.equal(bw.srv.code, 0, 'server exits 0', { out: bw.srv.stdout });
    t.match(bw.cli.stdout, /^\s*65536\s+1000\s/m, 'result line (2 QPs x 500)');
  });

let ckPort = 9200;
for (const [server, sip] of [['c12', ip12], ['c21', ip21]])
t.test(`payload integrity and RDMA semantics (rdma_check) c11 -> ${server}`, async (t) => {
  const check = async (mode: string, env: Record<string, string> = VERBS_ENV) => {
    const port = ++ckPort;
    const s = tb.start(server, [RDMA_CHECK, 'server', String(port)], { env });
    await s.waitFor(/listening/);
    const r = await tb.run('c11', [RDMA_CHECK, 'client', sip, String(port), mode], { env, timeoutMs: 60_000 });
    await exitedWithin(s, 5000);
    await tb.stop(s);
    t.equal(r.code, 0, `${mode}: no failed check`, { out: r.stdout + r.stderr });
    t.notMatch(r.stdout, /^FAIL/m);
    return r.stdout;
  };
  // Registered buffers in shared memory (the engine copies with memcpy) and, with
  // FF_VERBS_SHARE_MR=0, in private memory (process_vm_readv/writev): both must be exact.
  const mapped0 = (await rdmaStats(tb, 'h1')).mapped;
  const placed0 = (await rdmaStats(tb, 'h2')).placed;
  const integ = await check('integrity');
  for (const k of ['send', 'write', 'read', 'atomics', 'write with immediate']) t.match(integ, new RegExp(`^ok ${k}`, 'm'), `integrity: ${k}`);
  const mapped1 = (await rdmaStats(tb, 'h1')).mapped;
  t.ok(mapped1 - mapped0 >= 8 << 20, `the engine on h1 copied through shared views (${mapped1 - mapped0} bytes)`);
  if (server === 'c21') {
    // Across hosts, the 4 MiB WRITE's payload goes from h2's socket straight into c21's
    // registered memory (the byte-exact check above covers it).
    const placed = (await rdmaStats(tb, 'h2')).placed - placed0;
    t.ok(placed >= 4 << 20, `h2 read the WRITE payload straight into the receiver's view (${placed} bytes)`);
  }
  const priv = await check('integrity', { ...VERBS_ENV, FF_VERBS_SHARE_MR: '0' });
  for (const k of ['send', 'write', 'read', 'atomics', 'write with immediate']) t.match(priv, new RegExp(`^ok ${k}`, 'm'), `integrity without views: ${k}`);
  t.equal((await rdmaStats(tb, 'h1')).mapped, mapped1, 'without views nothing went through them');
  const bad = await check('badrkey');
  t.match(bad, /^ok badrkey status=remote access error/m, 'wrong rkey completes with IBV_WC_REM_ACCESS_ERR');
  t.match(bad, /^ok after-error: next request flushed/m, 'the QP goes to ERR and flushes the next request');
  t.match(bad, /^ok qp-state-err/m);
  t.match(await check('range'), /^ok range/m, 'write past the remote MR is refused');
  t.match(await check('flush'), /^ok flush: 4 posted receives/m, 'modify to ERR flushes posted receives with IBV_WC_WR_FLUSH_ERR');
  t.match(await check('killpeer'), /^ok killpeer/m, 'peer killed mid-connection: error completion, not a hang');
});

const perftests: [string, RegExp][] = [
  ['ib_write_bw', /^\s*65536\s+\d+\s+[\d.]+\s+([\d.]+)/m],
  ['ib_send_bw', /^\s*65536\s+\d+\s+[\d.]+\s+([\d.]+)/m],
  ['ib_read_bw', /^\s*65536\s+\d+\s+[\d.]+\s+([\d.]+)/m],
  ['ib_atomic_bw', /^\s*8\s+\d+\s+[\d.]+\s+([\d.]+)/m],
  ['ib_write_lat', /^\s*2\s+\d+\s+([\d.]+)/m],
  ['ib_send_lat', /^\s*2\s+\d+\s+([\d.]+)/m],
  ['ib_read_lat', /^\s*2\s+\d+\s+([\d.]+)/m],
];
let pport = 18700;
for (const [server, sip] of [['c12', ip12], ['c21', ip21]])
for (const [prog, re] of perftests) {
  t.test(`${prog} c11 -> ${server} (unmodified perftest)`, async (t) => {
    const args = [prog, '-d', 'ffvnic0', '-x', '0', '-n', prog.includes('lat') ? '300' : '500', '-p', String(++pport)];
    const { result: { srv, cli }, bytes } = await vxlanBytesDuring(tb, 'h1', () => pair(tb, server, 'c11', sip, args));
    t.equal(cli.code, 0, 'client exits 0', { out: cli.stdout + cli.stderr });
    t.equal(srv.code, 0, 'server exits 0', { out: srv.stdout });
    const m = re.exec(cli.stdout);
    t.ok(m, 'result line printed');
    if (m) t.comment(`${prog} c11 -> ${server}: ${prog.includes('lat') ? 't_min ' + m[1] + ' usec' : 'BW average ' + m[1] + ' MB/s'}`);
    // Only perftest's own out-of-band TCP exchange uses the overlay; RDMA traffic never does.
    if (prog.endsWith('_bw') && prog !== 'ib_atomic_bw') t.ok(bytes < 2_000_000, `VXLAN carried ${bytes} bytes for ~32 MB of RDMA payload`);
  });
}

// Both directions saturated at once across hosts, with large messages that fill the socket
// buffers. (Transport readers also answer requests and must never block on a send, or two of
// them could deadlock the routers; that interleaving is rare, so this test shows bidirectional
// transfers work rather than reliably provoking it. Verified: it passed with readers blocking.)
for (const prog of ['ib_write_bw', 'ib_read_bw'])
  t.test(`${prog} -b (bidirectional, 1 MiB) c11 <-> c21 completes`, async (t) => {
    const args = [prog, '-d', 'ffvnic0', '-x', '0', '-b', '-s', '1048576', '-n', '300', '-p', String(++pport)];
    const { srv, cli } = await pair(tb, 'c21', 'c11', ip21, args, { timeoutMs: 90_000 });
    t.equal(cli.code, 0, 'client exits 0', { out: cli.stdout + cli.stderr });
    t.equal(srv.code, 0, 'server exits 0', { out: srv.stdout });
    t.match(cli.stdout, /^\s*1048576\s+300\s/m, 'result line');
  });

// librdmacm replacement: the connection manager runs in the routers (across hosts too).
let rpPort = 9500;
for (const [server, sip] of [['c12', ip12], ['c21', ip21]]) {
  t.test(`rping -v -C 10 c11 -> ${server} (RDMA CM through the routers)`, async (t) => {
    const port = String(++rpPort);
    const s = tb.start(server, ['rping', '-s', '-v', '-C', '10', '-a', sip, '-p', port], { env: VERBS_ENV });
    await cmListening(tb, server, Number(port), s);
    const c = await tb.run('c11', ['rping', '-c', '-v', '-C', '10', '-a', sip, '-p', port], { env: VERBS_ENV, timeoutMs: 30_000 });
    const code = await exitedWithin(s, 10_000);
    await tb.stop(s);
    t.equal(c.code, 0, 'client exits 0', { out: c.stdout + c.stderr });
    t.equal(code, 0, 'server exits 0 after the client disconnects (its completion thread saw the flush)', { out: s.output() });
    // rping's payload is a rotating alphabet: each line must be exactly what the client sent.
    for (let i = 0; i < 10; i++) {
      const line = new RegExp(`^ping data: rdma-ping-${i}: ([^\n]+)$`, 'm').exec(c.stdout);
      t.ok(line, `client line ${i}`);
      if (line) t.ok(s.output().includes(`server ping data: rdma-ping-${i}: ${line[1]}`), `server received ping ${i} intact`);
    }
  });
  for (const prog of ['ib_send_bw', 'ib_write_bw']) {
    t.test(`${prog} -R c11 -> ${server} (perftest over rdma_cm)`, async (t) => {
      const { srv, cli } = await pair(tb, server, 'c11', sip, [prog, '-d', 'ffvnic0', '-x', '0', '-R', '-n', '300', '-p', String(++rpPort)]);
      t.equal(cli.code, 0, 'client exits 0', { out: cli.stdout + cli.stderr, routers: (tb.routerOutput('h1') + tb.routerOutput('h2')).split('\n').filter((l) => /rdma|"level":[45]0/.test(l)).slice(-8), srvOut: srv.stdout });
      t.equal(srv.code, 0, 'server exits 0', { out: srv.stdout });
      t.match(cli.stdout, /Data ex\. method : rdma_cm/, 'exchange through rdma_cm');
      const m = /^\s*65536\s+300\s+[\d.]+\s+([\d.]+)/m.exec(cli.stdout);
      t.ok(m, 'result line');
      if (m) t.comment(`${prog} -R c11 -> ${server}: BW average ${m[1]} MB/s`);
    });
  }
}

for (const [server, sip] of [['c12', ip12], ['c21', ip21]])
  t.test(`client SIGKILLed in the middle of ib_send_bw -R c11 -> ${server}: the server gets flushed completions, not a hang`, async (t) => {
    const port = String(++rpPort);
    const args = ['ib_send_bw', '-d', 'ffvnic0', '-x', '0', '-R', '-n', '50000000', '-p', port];
    const s = tb.start(server, args, { env: VERBS_ENV });
    await cmListening(tb, server, Number(port), s);
    const ops0 = (await rdmaStats(tb, 'h1')).ops;
    const c = tb.start('c11', [...args, sip], { env: VERBS_ENV });
    // Kill only once data is really moving (the engine on h1 has executed the client's sends).
    let moved = 0;
    for (let i = 0; i < 300 && moved < 2000 && c.proc.exitCode === null; i++) {
      await sleep(100);
      moved = (await rdmaStats(tb, 'h1')).ops - ops0;
    }
    t.ok(moved >= 2000, `transfer under way (${moved} sends done) when the client is killed`);
    t.equal(c.proc.exitCode, null, 'client still transferring when killed');
    await tb.stop(c);
    const code = await exitedWithin(s, 20_000);
    await tb.stop(s);
    t.not(code, 'timeout', 'server ended by itself');
    t.not(code, 0, 'with an error exit');
    t.match(s.output(), /Failed status 5/, 'its receives completed with IBV_WC_WR_FLUSH_ERR');
    // The killed client's session ended with it: the routers hold nothing of either program
    // (every kind RDMA_STATS reports: PDs, MRs, CQs, QPs, SRQs, channels, rdma_cm ids,
    // channels and listeners, the engine's own tables, ...).
    for (const host of server === 'c12' ? ['h1'] : ['h1', 'h2']) assertFreed(t, host, await resourcesFreed(tb, host), ' of the killed client and its server');
  });

t.test('rping to an address nobody listens on is rejected, not hung', async (t) => {
  const c = await tb.run('c11', ['rping', '-c', '-C', '1', '-a', ip21, '-p', '9999'], { env: VERBS_ENV, timeoutMs: 30_000 });
  t.not(c.code, 0, 'rping fails');
  t.match(c.stdout + c.stderr, /RDMA_CM_EVENT_REJECTED/, 'with RDMA_CM_EVENT_REJECTED');
});

t.test('the router freed every resource of finished and killed programs', async (t) => {
  for (const host of ['h1', 'h2']) {
    const s = await resourcesFreed(tb, host);
    assertFreed(t, host, s);
    t.ok(s.ops + s.served > 1000, `${host}: engine executed ${s.ops} local work requests (${s.bytes} bytes) and served ${s.served} from the other host`);
  }
});

// The limit is on the sending container's router (h1, c11 sends). Two measures of the rate,
// each within 10% of the limit: perftest's own "BW average" (its MB/sec is 2^20 bytes/s:
// perftest_resources.c divides by 0x100000 in MB/s mode), and the slope of the bytes h1's
// engine moved for c11, sampled every 100 ms while the transfer runs (the router's clock, not
// perftest's cycle counter).
const RATE = 20_000_000;
let limited = false;
for (const [server, sip, port] of [['c12', ip12, 18800], ['c21', ip21, 18801]] as const)
  t.test(`per-container rate limit (--rdma-rate-limit ${RATE}): ib_write_bw c11 -> ${server} within 10%`, async (t) => {
    if (!limited) {
      await tb.stopRouter('h1');
      await tb.startRouter('h1', ['--rdma-rate-limit', String(RATE)]);
      await tb.waitPeers();
      limited = true;
    }
    const samples: [number, number][] = [];
    let running = true;
    const sampler = (async () => {
      while (running) {
        samples.push([performance.now(), (await rdmaStats(tb, 'h1')).bytes]);
        await sleep(100);
      }
    })();
    const { cli } = await pair(tb, server, 'c11', sip, ['ib_write_bw', '-d', 'ffvnic0', '-x', '0', '-n', '600', '-p', String(port)]);
    running = false;
    await sampler;
    t.equal(cli.code, 0, 'ib_write_bw completes under the limit', { out: cli.stdout + cli.stderr });
    const m = /^\s*65536\s+\d+\s+([\d.]+)\s+([\d.]+)/m.exec(cli.stdout);
    t.ok(m, 'result line');
    const perftest = Number(m?.[2] ?? 0) * 2 ** 20;
    // Between the first and the last sample taken while bytes were moving.
    const end = samples[samples.length - 1][1];
    const a = samples.findIndex(([, b]) => b > samples[0][1]);
    const z = samples.findIndex(([, b]) => b === end) - 1;
    const engine = a >= 0 && z > a + 5 ? ((samples[z][1] - samples[a][1]) / (samples[z][0] - samples[a][0])) * 1000 : 0;
    t.comment(`c11 -> ${server}: perftest ${(perftest / 1e6).toFixed(2)} MB/s (${m?.[2]} MiB/s), engine ${(engine / 1e6).toFixed(2)} MB/s over ${((samples[z]?.[0] - samples[a]?.[0]) / 1000).toFixed(2)} s; limit ${RATE / 1e6} MB/s`);
    t.ok(Math.abs(perftest / RATE - 1) <= 0.1, `perftest: ${(perftest / 1e6).toFixed(2)} MB/s is within 10% of ${RATE / 1e6} MB/s`);
    t.ok(Math.abs(engine / RATE - 1) <= 0.1, `engine: ${(engine / 1e6).toFixed(2)} MB/s is within 10% of ${RATE / 1e6} MB/s`);
  });
