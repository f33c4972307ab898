// Same-host connections as AF_UNIX stream pairs (docs/design.md): an unmodified Python program
// (test/apps/tcp_face.py) reports what it sees of its TCP connections (identity, options,
// addresses on sendto/recvfrom, urgent data, half-close, FIONREAD, reset on close with unread
// data, no peer process in SO_PEERCRED, no descriptor through SCM_RIGHTS), and the report must be the plain
// overlay's, byte for byte, on the pair path and on loopback TCP (FFR_SAME_HOST=tcp), and with
// the default, which switches a storm of short-lived connections to prefetched TCP. Which path
// carried the bytes: the router's counters and h1's loopback byte counters. An option a pair
// cannot honour keeps the connection on TCP.
import t from 'tap';
import { join } from 'node:path';
import { ROOT, Testbed, overlayIp, pathBytesDuring } from './lib/testbed.js';

const PY = '/usr/bin/python3';
const FACE = join(ROOT, 'test/apps/tcp_face.py');
const PORT = 9100;
const tb = await Testbed.up(t);

const srv = tb.start('c12', [PY, '-u', FACE, 'server', String(PORT)], { preload: true });
await srv.waitFor(/listening \d+/);
await tb.waitListener('h1', overlayIp('c12'), PORT);

const counters = async () => (await tb.status('h1')).counters as Record<string, number>;

async function face(mode: 'face' | 'paced', preload: boolean, env: Record<string, string> = {}) {
  const c0 = await counters();
  const { result, vxlan, loopback } = await pathBytesDuring(tb, 'h1', () =>
    tb.run('c11', [PY, FACE, mode, overlayIp('c12'), String(PORT)], { preload, env, timeoutMs: 30_000 }),
  );
  const c1 = await counters();
  const delta = (k: string) => (c1[k] ?? 0) - (c0[k] ?? 0);
  let report: Record<string, unknown> = {};
  try {
    report = JSON.parse(result.stdout);
  } catch {
    /* asserted by the callers */
  }
  return { result, report, loopback, vxlan, pairs: delta('connect:same-host-unix'), tcp: delta('connect:same-host') };
}

const plain = await face('face', false);
t.equal(plain.result.code, 0, 'plain overlay run (reference) exits 0', { stderr: plain.result.stderr });
t.ok(plain.pairs === 0 && plain.tcp === 0 && plain.loopback < 300_000, 'reference taken on the plain overlay (the bridge): no router, no loopback');
// The kernel's TCP, as the reference shows it.
t.match(plain.report, { domain: 2, protocol: 6, type: 1, tcpi_state: 1, nodelay_set: 1, congestion: 'cubic', tos: 16, echo: 'hello nodelay=1', recvfrom_addr: null, reconnect: 'EISCONN', oob: 'oob=! rest=abcd', halfclose: 'got=300000', inq: 5, close_unread: 'ECONNRESET', peercred: [0, 4294967295, 4294967295], last_echo: 'bye nodelay=1', scm_sent: 6, scm_received: 'fds=0 data=hello' });

const withoutMd5 = (r: Record<string, unknown>) => Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'md5sig_after_connect'));

// FFR_SAME_HOST=unix: all six connections are pairs (by default, after three short-lived ones
// the rest would be prefetched loopback TCP sockets; see the test after the next).
t.test('AF_UNIX pair: the application sees TCP', async (t) => {
  const r = await face('face', true, { FFR_SAME_HOST: 'unix' });
  t.equal(r.result.code, 0, 'client exits 0', { stderr: r.result.stderr });
  t.same(withoutMd5(r.report), withoutMd5(plain.report), 'same report as on the plain overlay');
  t.ok(['EOPNOTSUPP', 'ENOTSUP'].includes(String(r.report.md5sig_after_connect)), `TCP_MD5SIG after connect: ${r.report.md5sig_after_connect}`);
  t.ok(r.pairs >= 7, `router on h1 made ${r.pairs} pairs for the 7 connections`);
  t.equal(r.tcp, 0, 'no loopback TCP connection');
  t.ok(r.loopback < 300_000, `h1's loopback carried ${r.loopback} bytes (the 300 kB half-close payload did not)`);
  t.ok(r.vxlan < 64_000, `VXLAN carried ${r.vxlan} bytes`);
});

t.test('FFR_SAME_HOST=tcp: loopback TCP, same report', async (t) => {
  const r = await face('face', true, { FFR_SAME_HOST: 'tcp' });
  t.equal(r.result.code, 0, 'client exits 0', { stderr: r.result.stderr });
  t.same(r.report, plain.report, 'same report as on the plain overlay, TCP_MD5SIG included');
  t.equal(r.pairs, 0, 'no pair');
  t.ok(r.tcp >= 7, `router on h1 handed out ${r.tcp} loopback TCP sockets`);
  t.ok(r.loopback > 600_000, `h1's loopback carried ${r.loopback} bytes`);
});

t.test('default (auto): pairs until connections turn out short-lived, then prefetched TCP', async (t) => {
  const r = await face('face', true);
  t.equal(r.result.code, 0, 'client exits 0', { stderr: r.result.stderr });
  t.same(withoutMd5(r.report), withoutMd5(plain.report), 'same report as on the plain overlay');
  // face() closes each connection well within a second: after three of those the process is
  // in a connection storm towards the server and gets prefetched loopback TCP sockets.
  t.equal(r.pairs, 3, 'the first three connections were pairs');
  t.ok(r.tcp >= 3, `then the router handed out ${r.tcp} loopback TCP sockets in a batch`);
});

t.test('an option a pair cannot honour, set before connect(), keeps the connection on TCP', async (t) => {
  const r = await face('paced', true, { FFR_SAME_HOST: 'unix' });
  t.equal(r.result.code, 0, 'client exits 0', { stderr: r.result.stderr });
  t.same(r.report, { echo: 'paced nodelay=1', protocol: 6 }, 'echo through the connection');
  t.equal(r.pairs, 0, 'no pair (SO_MAX_PACING_RATE needs a real TCP socket)');
  t.ok(r.tcp >= 1, `router on h1 handed out ${r.tcp} loopback TCP socket(s)`);
});

t.test('a malformed FFR_SAME_HOST warns once and keeps the default', async (t) => {
  const r = await face('face', true, { FFR_SAME_HOST: 'bogus' });
  t.equal(r.result.code, 0, 'client exits 0');
  t.match(r.result.stderr, /FFR_SAME_HOST="bogus" is not "auto", "unix" or "tcp"/, 'one clear warning');
  t.equal(r.result.stderr.split('FFR_SAME_HOST').length - 1, 1, 'exactly once');
  t.same(withoutMd5(r.report), withoutMd5(plain.report), 'same report as on the plain overlay');
  // The default's paths, as in the auto test above: neither unix (all pairs) nor tcp (none),
  // nor the overlay (no router involved).
  t.equal(r.pairs, 3, 'the first three connections were pairs, as with the default');
  t.ok(r.tcp >= 3, `then the router handed out ${r.tcp} loopback TCP sockets, as with the default`);
  t.ok(r.vxlan < 64_000, `VXLAN carried ${r.vxlan} bytes`);
});

t.teardown(() => tb.stop(srv));
