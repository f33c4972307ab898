// iperf3 (the Debian binary) through libfsocket: a 3-second cubic run cross-host and on one
// host, server and client both preloaded. iperf3 opens a control connection and a data
// connection to the same port, so both go through the accelerated listener. The path is shown
// by the VXLAN counters on h1 and by the routers' connection counters; a plain run is the
// contrast that proves the counters do see overlay traffic.
import t, { type Test } from 'tap';
import { Testbed, overlayIp, pathBytesDuring } from './lib/testbed.js';

const tb = await Testbed.up(t);

interface IperfRun {
  code: number | null;
  json: any;
  raw: string;
  bytes: number; // bytes on VXLAN (h1) during the run
  loopback: number; // bytes on h1's loopback during the run (same-host TCP's path)
  received: number; // bytes the iperf3 receiver counted
  bps: number; // receiver bitrate
  serverCode: number | null | string; // the one-off server's exit status
}

async function iperf(server: string, client: string, port: number, preload: boolean, env: Record<string, string> = {}): Promise<IperfRun> {
  // -1: serve one test then exit, so the server process ends by itself when the run is done.
  const srv = tb.start(server, ['iperf3', '-s', '-1', '--forceflush', '-p', String(port)], { preload, env });
  await srv.waitFor(/Server listening on/);
  if (preload) for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp(server), port);
  const { result, vxlan: bytes, loopback } = await pathBytesDuring(tb, 'h1', () =>
    tb.run(client, ['iperf3', '-c', overlayIp(server), '-p', String(port), '-C', 'cubic', '-t', '3', '-J'], { preload, env, timeoutMs: 20_000 }),
  );
  const srvCode = await Promise.race([srv.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 5_000))]);
  if (srvCode === 'still running') await tb.stop(srv);
  let json: any = null;
  try {
    json = JSON.parse(result.stdout);
  } catch {
    /* reported by the assertions below */
  }
  const sum = json?.end?.sum_received ?? {};
  return { code: result.code, json, raw: result.stdout + result.stderr + '\n--- server:\n' + srv.output(), bytes, loopback, received: Number(sum.bytes ?? 0), bps: Number(sum.bits_per_second ?? 0), serverCode: srvCode };
}

function checkRun(t: Test, r: IperfRun, client: string, server: string, port: number) {
  t.equal(r.code, 0, 'iperf3 client exited 0', { output: r.raw.slice(0, 4000) });
  t.equal(r.serverCode, 0, 'iperf3 server (-1) served the test and exited 0');
  t.ok(r.json, 'iperf3 -J printed JSON');
  t.notOk(r.json?.error, `no iperf3 error (${r.json?.error ?? 'none'})`);
  t.equal(r.json?.start?.test_start?.protocol, 'TCP', 'TCP test');
  // -C is a setsockopt(TCP_CONGESTION) before connect(): it must survive the socket swap.
  t.equal(r.json?.end?.sender_tcp_congestion, 'cubic', 'sender (client) socket uses cubic');
  // iperf3 prints the data connection's getsockname()/getpeername(): the overlay names.
  const conn = r.json?.start?.connected?.[0] ?? {};
  t.equal(conn.local_host, overlayIp(client), `client's local name is its overlay address (${conn.local_host}:${conn.local_port})`);
  t.equal(`${conn.remote_host}:${conn.remote_port}`, `${overlayIp(server)}:${port}`, "client's peer name is the server's overlay address");
  t.ok(r.bps > 0, `receiver bitrate ${(r.bps / 1e9).toFixed(2)} Gbit/s`);
  t.ok(r.received > 1_000_000, `receiver counted ${r.received} bytes`);
}

t.test('cross-host c11 -> c21, both preloaded: host network, VXLAN idle', async (t) => {
  const before = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  const acceptedBefore = (await tb.status('h2')).counters['accept:host-network'] ?? 0;
  const r = await iperf('c21', 'c11', 5201, true);
  checkRun(t, r, 'c11', 'c21', 5201);
  t.ok(r.bytes < r.received / 100, `VXLAN carried ${r.bytes} bytes for ${r.received} transferred (< 1%)`);
  const after = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  t.ok(after - before >= 2, `router on h1 set up ${after - before} host-network connections (control + data)`);
  const accepted = ((await tb.status('h2')).counters['accept:host-network'] ?? 0) - acceptedBefore;
  t.ok(accepted >= 2, `router on h2 handed ${accepted} connections to iperf3's listener`);
  t.comment(`cross-host accelerated: ${(r.bps / 1e9).toFixed(2)} Gbit/s, VXLAN ${r.bytes} B`);
});

t.test('same host c11 -> c12, both preloaded: AF_UNIX pair, neither VXLAN nor loopback TCP', async (t) => {
  const before = (await tb.status('h1')).counters['connect:same-host-unix'] ?? 0;
  const r = await iperf('c12', 'c11', 5202, true);
  checkRun(t, r, 'c11', 'c12', 5202);
  t.ok(r.bytes < r.received / 100, `VXLAN carried ${r.bytes} bytes (< 1% of ${r.received})`);
  t.ok(r.loopback < r.received / 100, `h1's loopback carried ${r.loopback} bytes (< 1% of ${r.received})`);
  // iperf3 reads TCP_INFO and TCP_CONGESTION on both ends: the emulation must answer as TCP.
  t.equal(r.json?.end?.receiver_tcp_congestion, 'cubic', 'receiver (server) socket reports cubic');
  const after = (await tb.status('h1')).counters['connect:same-host-unix'] ?? 0;
  t.ok(after - before >= 2, `router on h1 set up ${after - before} same-host pairs`);
  t.comment(`same-host accelerated (AF_UNIX pair): ${(r.bps / 1e9).toFixed(2)} Gbit/s`);
});

t.test('same host with FFR_SAME_HOST=tcp: loopback TCP in the host namespace', async (t) => {
  const before = (await tb.status('h1')).counters['connect:same-host'] ?? 0;
  const r = await iperf('c12', 'c11', 5204, true, { FFR_SAME_HOST: 'tcp' });
  checkRun(t, r, 'c11', 'c12', 5204);
  t.ok(r.bytes < r.received / 100, `VXLAN carried ${r.bytes} bytes (< 1% of ${r.received})`);
  t.ok(r.loopback >= r.received, `h1's loopback carried ${r.loopback} bytes for ${r.received} transferred`);
  const after = (await tb.status('h1')).counters['connect:same-host'] ?? 0;
  t.ok(after - before >= 2, `router on h1 set up ${after - before} same-host TCP connections`);
  t.comment(`same-host accelerated (loopback TCP): ${(r.bps / 1e9).toFixed(2)} Gbit/s`);
});

t.test('plain cross-host run (no preload) goes over VXLAN', async (t) => {
  const before = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  const r = await iperf('c21', 'c11', 5203, false);
  checkRun(t, r, 'c11', 'c21', 5203);
  t.ok(r.bytes >= r.received, `VXLAN carried ${r.bytes} bytes for ${r.received} transferred`);
  const after = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  t.equal(after, before, 'router not involved');
  t.comment(`cross-host plain overlay: ${(r.bps / 1e9).toFixed(2)} Gbit/s`);
});
