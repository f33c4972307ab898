// connect() keeps the kernel's timing through libfsocket: a non-blocking connect() returns
// -1/EINPROGRESS at once and completes through POLLOUT and SO_ERROR 0; a blocking one blocks
// until the handshake is done; and no hidden network round trip (to the listener's host or to
// its router) sits inside connect(), so an event loop never stalls on one. edge.c's `timing`
// mode times each connect() call in the client itself (CLOCK_MONOTONIC around the call): 8
// non-blocking connects from a fresh process (the first is the blocking round trip to the
// local router for a destination it has never seen, later ones use or refill its batch), then
// one blocking connect, then every connection echoes 100 kB. The path: routers' counters and
// the VXLAN/loopback byte counters.
import t, { type Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { EDGE, Testbed, overlayIp, pathBytesDuring, type RunResult } from './lib/testbed.js';
import { parseTiming, slowestConnect, type Timing } from './lib/edge-timing.js';

const tb = await Testbed.up(t);
const N = 8;
// A connect() answered by the local router costs one Unix-socket round trip (~0.1 ms; a few
// ms on a busy 2-core VM). Anything that waits on the network or the remote router takes at
// least a SYN retransmission (1 s) or the library's router timeout (2 s) in the stalled test.
const BOUND_US = 50_000;
const ECHO = 100_000; // bytes each way per connection (edge.c TIMING_ECHO)

const cross = tb.start('c21', [EDGE, 'server', '0.0.0.0', '7301'], { preload: true });
const same = tb.start('c12', [EDGE, 'server', '0.0.0.0', '7302'], { preload: true });
await cross.waitFor(/listening \d+/);
await same.waitFor(/listening \d+/);
for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp('c21'), 7301);
await tb.waitListener('h1', overlayIp('c12'), 7302);
t.teardown(async () => {
  await tb.stop(cross);
  await tb.stop(same);
});

const counters = async (host: string) => (await tb.status(host)).counters as Record<string, number>;
const delta = (a: Record<string, number>, b: Record<string, number>, k: string) => (b[k] ?? 0) - (a[k] ?? 0);

/** Every non-blocking connect() returned -1/EINPROGRESS within BOUND_US, the blocking one 0,
 * and afterwards every connection completed and echoed. */
function checkTiming(t: Test, r: RunResult, tm: Timing) {
  t.equal(r.code, 0, 'edge timing: all checks pass', { output: tm.out + r.stderr });
  t.notMatch(tm.out, /^FAIL/m, 'no failed check');
  t.equal(tm.nonblock.length, N, `${N} non-blocking connects timed`);
  t.ok(tm.nonblock.length > 0 && tm.nonblock.every((c) => c.rc === -1 && c.errno === 'EINPROGRESS'), 'every non-blocking connect() returned -1/EINPROGRESS', { connects: tm.nonblock });
  const us = tm.nonblock.map((c) => c.us);
  t.ok(us.length > 0 && us[0] < BOUND_US, `the first (a round trip to the local router) took ${us[0]} us (< ${BOUND_US})`);
  t.ok(slowestConnect(tm) < BOUND_US, `the slowest took ${slowestConnect(tm)} us (< ${BOUND_US}); all: ${us.join(' ')}`);
  t.equal(tm.blocking?.rc, 0, `the blocking connect() returned 0 after ${tm.blocking?.us} us`);
  t.match(tm.out, new RegExp(`^ok timing-complete ${N}/${N}`, 'm'), 'every non-blocking connect completed: POLLOUT, SO_ERROR 0');
  t.equal((tm.out.match(/^ok timing-echo-\S+ bytes=100000 echoed/gm) ?? []).length, N + 1, `all ${N + 1} connections echoed ${ECHO} bytes`);
}

async function timing(client: string, server: string, port: number, env: Record<string, string> = {}) {
  const c0 = await counters('h1');
  const { result, vxlan, loopback } = await pathBytesDuring(tb, 'h1', () =>
    tb.run(client, [EDGE, 'client', overlayIp(server), String(port), 'timing', String(N)], { preload: true, env, timeoutMs: 60_000 }),
  );
  const c1 = await counters('h1');
  return { result, tm: parseTiming(result.stdout), vxlan, loopback, d: (k: string) => delta(c0, c1, k) };
}

t.test('cross-host, routers live: non-blocking connects return EINPROGRESS at once, on the host network', async (t) => {
  const r = await timing('c11', 'c21', 7301);
  checkTiming(t, r.result, r.tm);
  t.ok(r.d('connect:host-network') >= N + 1, `router on h1 set up ${r.d('connect:host-network')} host-network connections for ${N + 1} connects`);
  // Over the overlay the echoes alone would be 2 x 9 x 100 kB on VXLAN.
  t.ok(r.vxlan < 100_000, `VXLAN carried ${r.vxlan} bytes`);
});

t.test('same host, FFR_SAME_HOST=unix: every connect a router round trip for a pair, still EINPROGRESS at once', async (t) => {
  const r = await timing('c11', 'c12', 7302, { FFR_SAME_HOST: 'unix' });
  checkTiming(t, r.result, r.tm);
  t.ok(r.d('connect:same-host-unix') >= N + 1, `router on h1 made ${r.d('connect:same-host-unix')} AF_UNIX pairs for ${N + 1} connects`);
  t.ok(r.loopback < 500_000, `h1's loopback carried ${r.loopback} bytes (the 1.8 MB of echoes did not)`);
  t.ok(r.vxlan < 100_000, `VXLAN carried ${r.vxlan} bytes`);
});

// The listener's router is frozen (SIGSTOP) and h1's packets to h2 are dropped (VXLAN too):
// any connect() that waited on the network, on the remote router or on an answer from it
// would take at least a SYN retransmission (1 s) or the library's router timeout (2 s).
t.test("remote router frozen and the network to it black-holed: connect() does not wait on either", async (t) => {
  const c0 = await counters('h1');
  const v0 = tb.counters('h1');
  const restore = await tb.stallUnderlay('h1', 'h2');
  let client;
  try {
    tb.pauseRouter('h2');
    client = tb.start('c11', [EDGE, 'client', overlayIp('c21'), '7301', 'timing', String(N)], { preload: true });
    // The blocking connect() starts right after this line and cannot finish while h2 is cut off.
    await client.waitFor(/^(ok|FAIL) timing-nonblock .*$/m, 20_000);
    await sleep(1500);
  } finally {
    await restore();
    tb.resumeRouter('h2');
  }
  const code = await client.exited;
  const c1 = await counters('h1');
  const v1 = tb.counters('h1');
  const tm = parseTiming(client.output());
  checkTiming(t, { code, stdout: client.output(), stderr: '' }, tm);
  t.equal(tm.summary?.writable_at_once, 0, 'no connection was writable right after connect(): the handshakes really were cut off');
  t.ok((tm.blocking?.us ?? 0) >= 1_000_000, `the blocking connect() blocked for ${tm.blocking?.us} us, until h2 was reachable again`);
  t.ok(delta(c0, c1, 'connect:host-network') >= N + 1, `router on h1 set up ${delta(c0, c1, 'connect:host-network')} host-network connections (not an overlay fallback)`);
  const vxlan = v1.tx + v1.rx - v0.tx - v0.rx;
  t.ok(vxlan < 100_000, `VXLAN carried ${vxlan} bytes`);
});
