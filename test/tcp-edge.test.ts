// Socket semantics through libfsocket, with the edge-case program (test/apps/edge.c) in
// containers of the testbed: non-blocking connect with epoll registered before connect,
// accept4 flags, socket options carried over, overlay names, half-close, 200 concurrent
// connections (each client sends its own getsockname() first, and the server compares it with
// what accept() and getpeername() returned for that connection), fork after connect. Each run
// also checks which path the bytes took.
import t, { type Test } from 'tap';
import { EDGE, Testbed, overlayIp, pathBytesDuring, vxlanBytesDuring } from './lib/testbed.js';

const tb = await Testbed.up(t);

async function edgePair(server: string, client: string, opts: { workers?: number; v6?: boolean; epollBeforeListen?: boolean; port: number; env?: Record<string, string> }) {
  const args = ['server', opts.v6 ? '::' : '0.0.0.0', String(opts.port)];
  if (opts.epollBeforeListen) args.push('--epoll-before-listen');
  if (opts.workers) args.push('--workers', String(opts.workers));
  if (opts.v6) args.push('--v6');
  const env = opts.env ?? {};
  const srv = tb.start(server, [EDGE, ...args], { preload: true, env });
  await srv.waitFor(/listening \d+/);
  for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp(server), opts.port);
  const { result, vxlan: bytes, loopback } = await pathBytesDuring(tb, 'h1', () =>
    tb.run(client, [EDGE, 'client', overlayIp(server), String(opts.port), 'all'], { preload: true, env, timeoutMs: 120_000 }),
  );
  await tb.stop(srv);
  return { result, bytes, loopback, srvOut: srv.output() };
}

function checkEdge(t: Test, r: { result: { code: number | null; stdout: string; stderr: string }; bytes: number }, client: string, server: string, port: number) {
  const out = r.result.stdout;
  t.equal(r.result.code, 0, 'edge client: all checks pass', { output: out + r.result.stderr });
  t.notMatch(out, /^FAIL/m, 'no failed check');
  // accept4 also checks the options an accepted socket inherits from its listener; options
  // checks those set before connect() on the connected socket.
  // tcpface: domain, protocol, TCP_INFO state, an option set after connect, EISCONN.
  for (const check of ['nbconnect-inprogress', 'nbconnect-epollout', 'nbconnect-soerror', 'nbconnect-echo', 'accept4', 'options', 'halfclose', 'fork-child-echo', 'tcpface'])
    t.match(out, new RegExp(`^ok ${check}\\b`, 'm'), `check ${check}`);
  t.match(out, /^ok concurrent 200\/200/m, '200 concurrent connections: every payload intact, every connect() EINPROGRESS');
  // Pairing identity: the server's accept() named each connection exactly as its client's
  // getsockname() does (TCP guarantees the checksums above, not this).
  const ident = /^ok concurrent-identity 200\/200 .*processes=(\d+)(?: \(pid:connections([^)]*)\))?/m.exec(out);
  t.ok(ident, "each of the 200 concurrent connections was accepted as exactly its client's getsockname()", {
    lines: out.split('\n').filter((l) => /concurrent/.test(l)),
  });
  // Names are the overlay's, on both sides, whatever path the bytes took.
  const names = /^ok names local=([\d.]+):(\d+) peer=([\d.]+):(\d+)/m.exec(out);
  t.ok(names, 'names reported');
  if (names) {
    t.equal(names[1], overlayIp(client), 'getsockname shows the client overlay address');
    t.equal(`${names[3]}:${names[4]}`, `${overlayIp(server)}:${port}`, 'getpeername shows the server overlay address');
  }
  t.match(out, /^ok names-server-peer/m, "server's accept()/getpeername show the client's overlay address and port");
  t.match(out, /^ok names-server-local/m, "server's getsockname shows its overlay address");
  return { processes: ident ? Number(ident[1]) : 0, split: ident?.[2]?.trim() };
}

t.test('cross-host: edge cases pass and bytes bypass VXLAN', async (t) => {
  const r = await edgePair('c21', 'c11', { port: 7001 });
  checkEdge(t, r, 'c11', 'c21', 7001);
  // ~2.6 MB of payload plus 200 connections went over the link; over VXLAN that would be >2.6 MB.
  t.ok(r.bytes < 200_000, `VXLAN carried ${r.bytes} bytes (expected almost none)`);
  const s = await tb.status('h1');
  t.ok((s.counters['connect:host-network'] ?? 0) >= 200, 'router on h1 set up the connections on the host network');
});

t.test('cross-host: nginx-style server with 2 worker processes and a dual-stack listener', async (t) => {
  const r = await edgePair('c21', 'c12', { port: 7002, workers: 2, v6: true });
  const { processes, split } = checkEdge(t, r, 'c12', 'c21', 7002);
  t.equal(processes, 2, `both worker processes accepted some of the 200 concurrent connections (pid:connections ${split})`);
  t.ok(r.bytes < 200_000, `VXLAN carried ${r.bytes} bytes`);
});

t.test('listener registered with epoll before listen(): router connections still wake it', async (t) => {
  const counters = async () => (await tb.status('h2')).counters;
  const before = await counters();
  const r = await edgePair('c22', 'c11', { port: 7005, epollBeforeListen: true });
  checkEdge(t, r, 'c11', 'c22', 7005);
  const after = await counters();
  const delta = (name: string) => (after[name] ?? 0) - (before[name] ?? 0);
  t.ok(delta('accept:host-network') >= 200, `h2 passed ${delta('accept:host-network')} host connections to the server`);
  // Announcements normally arrive before the SYN (prefetched sockets are announced in advance),
  // so most connections go from the kernel's accept queue to the server with no router hop.
  t.ok(delta('accept:admitted-by-library') >= 100, `the server's library admitted ${delta('accept:admitted-by-library')} of them itself`);
  t.ok(r.bytes < 200_000, `VXLAN carried ${r.bytes} bytes`);
});

// ~2.6 MB of payload cross the connections of one edge run.
// FFR_SAME_HOST=unix: every connection a pair (the default would switch this storm of
// short-lived connections to prefetched loopback TCP sockets after three of them).
t.test('same host, FFR_SAME_HOST=unix: edge cases pass over AF_UNIX pairs with TCP emulated', async (t) => {
  const before = (await tb.status('h1')).counters['connect:same-host-unix'] ?? 0;
  const r = await edgePair('c12', 'c11', { port: 7003, env: { FFR_SAME_HOST: 'unix' } });
  checkEdge(t, r, 'c11', 'c12', 7003);
  const after = (await tb.status('h1')).counters['connect:same-host-unix'] ?? 0;
  t.ok(after - before >= 200, `router on h1 set up ${after - before} same-host pairs`);
  t.ok(r.bytes < 200_000, `VXLAN carried ${r.bytes} bytes`);
  t.ok(r.loopback < 1_000_000, `h1's loopback carried ${r.loopback} bytes (the payload did not)`);
});

t.test('same host, FFR_SAME_HOST=tcp: edge cases pass over loopback TCP', async (t) => {
  const before = (await tb.status('h1')).counters['connect:same-host'] ?? 0;
  const r = await edgePair('c12', 'c11', { port: 7006, env: { FFR_SAME_HOST: 'tcp' } });
  checkEdge(t, r, 'c11', 'c12', 7006);
  const after = (await tb.status('h1')).counters['connect:same-host'] ?? 0;
  t.ok(after - before >= 200, `router on h1 set up ${after - before} same-host TCP connections`);
  t.ok(r.loopback > 2_000_000, `h1's loopback carried ${r.loopback} bytes`);
});

t.test('plain (not preloaded) run of the same program for comparison uses VXLAN', async (t) => {
  const srv = tb.start('c21', [EDGE, 'server', '0.0.0.0', '7004']);
  await srv.waitFor(/listening/);
  const { result, bytes } = await vxlanBytesDuring(tb, 'h1', () => tb.run('c11', [EDGE, 'client', overlayIp('c21'), '7004', 'halfclose']));
  t.equal(result.code, 0, 'plain client works');
  t.ok(bytes > 100_000, `VXLAN carried ${bytes} bytes on the plain path (the counter does see overlay traffic)`);
  await tb.stop(srv);
});
