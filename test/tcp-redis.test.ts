// redis-server (Debian's, single-threaded epoll) preloaded in c21; redis-cli and
// redis-benchmark in c11. A value round trip, the names redis sees (CLIENT INFO), and a
// benchmark with 50 connections, accelerated and (for contrast, against the same accelerated
// server) plain: the accelerated run must leave VXLAN almost idle.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Testbed, overlayIp, vxlanBytesDuring } from './lib/testbed.js';

const SERVER = 'c21';
const CLIENT = 'c11';
const PORT = 6380;

const tb = await Testbed.up(t);
const dir = mkdtempSync(join(tmpdir(), 'ff-redis-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
chmodSync(dir, 0o755);

const redis = tb.start(
  SERVER,
  ['redis-server', '--port', String(PORT), '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--bind', '0.0.0.0', '--dir', dir, '--logfile', ''],
  { preload: true },
);
await redis.waitFor(/Ready to accept connections/);
for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp(SERVER), PORT);

const cli = (args: string[], preload = true) =>
  tb.run(CLIENT, ['redis-cli', '-h', overlayIp(SERVER), '-p', String(PORT), ...args], { preload, timeoutMs: 15_000 });
const counter = async (host: string, name: string): Promise<number> => (await tb.status(host)).counters[name] ?? 0;

t.test('redis-cli: SET/GET round trip of a 48 KiB value, names as redis sees them', async (t) => {
  const value = randomBytes(24 * 1024).toString('hex');
  const key = `ff:${randomBytes(4).toString('hex')}`;
  const before = await counter('h1', 'connect:host-network');
  const { result: set, bytes } = await vxlanBytesDuring(tb, 'h1', () => cli(['SET', key, value]));
  t.equal(set.code, 0, 'redis-cli SET exited 0', { stderr: set.stderr });
  t.equal(set.stdout.trim(), 'OK', 'SET answered OK');
  const get = await cli(['GET', key]);
  t.equal(get.code, 0, 'redis-cli GET exited 0');
  t.equal(get.stdout.replace(/\n$/, ''), value, 'GET returned exactly the value');
  const len = await cli(['STRLEN', key]);
  t.equal(len.stdout.trim(), String(value.length), 'STRLEN agrees');
  t.ok(bytes < 2_000, `VXLAN carried ${bytes} bytes for a ${value.length}-byte SET`);
  t.ok((await counter('h1', 'connect:host-network')) - before >= 3, 'each redis-cli connection set up on the host network');

  // The names are checked on the host path: over the overlay they would be right anyway.
  const infoBefore = await counter('h1', 'connect:host-network');
  const info = await cli(['CLIENT', 'INFO']);
  t.equal(info.code, 0, 'CLIENT INFO works');
  t.ok((await counter('h1', 'connect:host-network')) - infoBefore >= 1, 'the CLIENT INFO connection was set up on the host network');
  const addr = / addr=([\d.]+):(\d+) /.exec(info.stdout);
  const laddr = / laddr=([\d.:]+) /.exec(info.stdout);
  t.equal(addr?.[1], overlayIp(CLIENT), `redis sees the client at its overlay address (${addr?.[1]}:${addr?.[2]})`);
  t.equal(laddr?.[1], `${overlayIp(SERVER)}:${PORT}`, 'redis sees its own overlay address as the local end');
});

function parseBench(out: string): Record<string, number> {
  const rps: Record<string, number> = {};
  // Progress lines end in \r; the final one per test reads "SET: 12345.67 requests per second, ...".
  for (const line of out.split(/[\r\n]+/)) {
    const m = /^\s*(SET|GET): ([\d.]+) requests per second/.exec(line);
    if (m) rps[m[1]] = Number(m[2]);
  }
  return rps;
}

const bench = (preload: boolean) =>
  vxlanBytesDuring(tb, 'h1', () =>
    tb.run(CLIENT, ['redis-benchmark', '-h', overlayIp(SERVER), '-p', String(PORT), '-q', '-n', '20000', '-t', 'set,get'], { preload, timeoutMs: 40_000 }),
  );

t.test('redis-benchmark -n 20000 -t set,get: accelerated vs plain client', async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const accel = await bench(true);
  const made = (await counter('h1', 'connect:host-network')) - before;
  const a = parseBench(accel.result.stdout);
  t.equal(accel.result.code, 0, 'accelerated redis-benchmark exited 0', { stderr: accel.result.stderr });
  t.ok(a.SET > 0, `SET ${a.SET} requests/s`);
  t.ok(a.GET > 0, `GET ${a.GET} requests/s`);
  t.ok(made >= 100, `router on h1 set up ${made} host-network connections (50 per test)`);

  const plainBefore = await counter('h1', 'connect:host-network');
  const plain = await bench(false);
  const p = parseBench(plain.result.stdout);
  t.equal(plain.result.code, 0, 'plain redis-benchmark (against the same accelerated server) exited 0');
  t.ok(p.SET > 0 && p.GET > 0, `plain: SET ${p.SET}, GET ${p.GET} requests/s`);
  t.equal(await counter('h1', 'connect:host-network'), plainBefore, 'plain run: router not involved');
  // 40000 requests and replies: over the overlay that is megabytes of VXLAN frames.
  t.ok(plain.bytes > 1_000_000, `plain run: VXLAN carried ${plain.bytes} bytes`);
  t.ok(accel.bytes < plain.bytes / 100, `accelerated run: VXLAN carried ${accel.bytes} bytes (< 1% of the plain run's)`);
  t.comment(`accelerated SET ${a.SET}/s GET ${a.GET}/s; plain SET ${p.SET}/s GET ${p.GET}/s`);
});

t.test('redis-server survived and still answers', async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const r = await cli(['PING']);
  t.equal(r.stdout.trim(), 'PONG', 'PING -> PONG');
  t.ok((await counter('h1', 'connect:host-network')) - before >= 1, 'over a connection set up on the host network');
  t.equal(redis.proc.exitCode, null, 'redis-server still running');
  await tb.stop(redis);
});
