// nginx (Debian's nginx-light: a master and 2 worker processes sharing one listening socket,
// epoll, accept after fork) preloaded in c21, with curl and wrk as clients in c11. Checks the
// bytes (sha256 of a 1 MiB random file), wrk's error counts, and which path each client took:
// accelerated client -> accelerated nginx bypasses VXLAN; a plain client still reaches the
// accelerated nginx over the overlay; an accelerated client still reaches a plain nginx over
// the overlay (router answers "overlay-fallback"). 128 concurrent connections at a time
// (test/apps/peer_check.py) compare nginx's $remote_addr:$remote_port for each with the
// client's own getsockname(), and both workers must have accepted some.
import t, { type Test } from 'tap';
import { createHash, randomFillSync } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, Testbed, overlayIp, vxlanBytesDuring, type Started } from './lib/testbed.js';
import { writeNginxConfig } from './lib/nginx-config.js';

const tb = await Testbed.up(t);
const SERVER = 'c21';
const CLIENT = 'c11';
const ACCEL_PORT = 8080;
const PLAIN_PORT = 8081;
const BIG = 1 << 20;

const dir = mkdtempSync(join(tmpdir(), 'ff-nginx-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
chmodSync(dir, 0o755); // nginx workers run as nobody and must read the files
const www = join(dir, 'www');
mkdirSync(www, { mode: 0o755 });
const big = randomFillSync(Buffer.alloc(BIG));
writeFileSync(join(www, 'big.bin'), big, { mode: 0o644 });
writeFileSync(join(www, 'small.txt'), 'hello from nginx\n', { mode: 0o644 });
const bigSha = sha256(big);

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A private nginx instance: everything it writes stays in its own temp dir. */
function nginxConf(name: string, port: number, serverDirectives?: string[]): string {
  return writeNginxConfig({ dir: join(dir, name), port, root: www, workers: 2, errorLogLevel: 'info', serverDirectives });
}

async function startNginx(name: string, port: number, preload: boolean, server = SERVER, routersUp = preload, serverDirectives?: string[]): Promise<Started> {
  const conf = nginxConf(name, port, serverDirectives);
  const d = join(dir, name);
  const ngx = tb.start(server, ['nginx', '-p', d, '-e', `${d}/error.log`, '-c', conf], { preload });
  // With `daemon off` nginx prints nothing; it is up when both workers run and the port answers.
  const end = Date.now() + 10_000;
  for (;;) {
    const log = (() => {
      try {
        return readFileSync(join(d, 'error.log'), 'utf8');
      } catch {
        return '';
      }
    })();
    if ((log.match(/start worker process \d+/g) ?? []).length >= 2) break;
    if (Date.now() > end || ngx.proc.exitCode !== null) throw new Error(`nginx ${name} did not start:\n${ngx.output()}\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (routersUp) for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp(server), port);
  return ngx;
}

/** Fetches big.bin `times` times in one curl run (one keep-alive connection); returns the hashes. */
async function curlBig(port: number, times: number, preload: boolean, tag: string, server = SERVER) {
  const args: string[] = ['curl', '-sS', '--fail', '--max-time', '20', '-w', '%{http_code} %{size_download} %{num_connects}\\n'];
  const files: string[] = [];
  for (let i = 0; i < times; i++) {
    const f = join(dir, `${tag}-${i}.bin`);
    files.push(f);
    args.push('-o', f, `http://${overlayIp(server)}:${port}/big.bin`);
  }
  const env: Record<string, string> = preload ? {} : { LD_PRELOAD: '' };
  const { result, bytes } = await vxlanBytesDuring(tb, 'h1', () => tb.run(CLIENT, args, { preload, env, timeoutMs: 30_000 }));
  const hashes = files.map((f) => {
    try {
      return sha256(readFileSync(f));
    } catch {
      return 'missing';
    }
  });
  const lines = result.stdout.trim().split('\n').filter(Boolean);
  return { result, bytes, hashes, lines };
}

function checkCurl(t: Test, r: Awaited<ReturnType<typeof curlBig>>, times: number) {
  t.equal(r.result.code, 0, 'curl exited 0', { stderr: r.result.stderr });
  t.equal(r.lines.length, times, `${times} transfers reported`);
  t.ok(r.lines.every((l) => l.startsWith(`200 ${BIG} `)), `every fetch: 200 and ${BIG} bytes`, { lines: r.lines });
  t.same(r.hashes, Array(times).fill(bigSha), `every copy has the sha256 of the original (${bigSha.slice(0, 16)}…)`);
}

interface Wrk {
  code: number | null;
  out: string;
  requests: number;
  readBytes: number;
  rps: number;
  socketErrors: number;
  non2xx: number;
}

function parseWrk(code: number | null, out: string): Wrk {
  const req = /(\d+) requests in [\d.]+\w+, ([\d.]+)(B|KB|MB|GB) read/.exec(out);
  const unit: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 };
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  return {
    code,
    out,
    requests: req ? Number(req[1]) : 0,
    readBytes: req ? Number(req[2]) * unit[req[3]] : 0,
    rps: rps ? Number(rps[1]) : 0,
    socketErrors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
  };
}

async function wrk(extra: string[], server = SERVER, port = ACCEL_PORT) {
  const { result, bytes } = await vxlanBytesDuring(tb, 'h1', () =>
    tb.run(CLIENT, ['wrk', '-t1', '-c50', '-d3s', ...extra, `http://${overlayIp(server)}:${port}/small.txt`], { preload: true, timeoutMs: 20_000 }),
  );
  return { w: parseWrk(result.code, result.stdout + result.stderr), bytes };
}

function checkWrk(t: Test, w: Wrk) {
  t.equal(w.code, 0, 'wrk exited 0', { output: w.out });
  t.match(w.out, /requests in/, 'wrk printed its summary');
  t.ok(w.requests > 0, `${w.requests} requests completed (${w.rps} req/s)`);
  t.equal(w.socketErrors, 0, 'no socket errors (connect/read/write/timeout)', { output: w.out });
  t.equal(w.non2xx, 0, 'no non-2xx responses');
}

const counter = async (host: string, name: string): Promise<number> => (await tb.status(host)).counters[name] ?? 0;

const ngx = await startNginx('accel', ACCEL_PORT, true);

t.test('accelerated curl -> accelerated nginx (2 workers): 1 MiB x5 intact, no VXLAN', async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const r = await curlBig(ACCEL_PORT, 5, true, 'accel');
  checkCurl(t, r, 5);
  t.ok(r.bytes < (5 * BIG) / 100, `VXLAN carried ${r.bytes} bytes for ${5 * BIG} transferred (< 1%)`);
  t.ok((await counter('h1', 'connect:host-network')) - before >= 1, 'router on h1 set up the connection on the host network');
});

t.test('wrk keep-alive, 50 connections, 3 s', async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const { w, bytes } = await wrk([]);
  checkWrk(t, w);
  t.ok(bytes < Math.max(w.readBytes / 100, 1), `VXLAN carried ${bytes} bytes for ${Math.round(w.readBytes)} read (< 1%)`);
  const made = (await counter('h1', 'connect:host-network')) - before;
  t.ok(made >= 50, `router on h1 set up ${made} host-network connections (50 expected)`);
  t.comment(`wrk keep-alive: ${w.rps} req/s`);
});

t.test("wrk with 'Connection: close': a new connection per request", async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const acceptedBefore = await counter('h2', 'accept:host-network');
  const { w, bytes } = await wrk(['-H', 'Connection: close']);
  checkWrk(t, w);
  t.ok(bytes < Math.max(w.readBytes / 100, 1), `VXLAN carried ${bytes} bytes for ${Math.round(w.readBytes)} read (< 1%)`);
  const made = (await counter('h1', 'connect:host-network')) - before;
  t.ok(made >= w.requests, `router on h1 set up ${made} host-network connections for ${w.requests} requests`);
  const accepted = (await counter('h2', 'accept:host-network')) - acceptedBefore;
  t.ok(accepted >= w.requests, `router on h2 handed ${accepted} connections to nginx`);
  t.comment(`wrk Connection: close: ${w.rps} req/s`);
});

t.test('same host: curl (an AF_UNIX pair) and wrk Connection: close (prefetched TCP) -> nginx in c12', async (t) => {
  const SAME_PORT = 8082;
  const local = await startNginx('same-host', SAME_PORT, true, 'c12');
  const before = await counter('h1', 'connect:same-host-unix');
  const r = await curlBig(SAME_PORT, 5, true, 'same', 'c12');
  checkCurl(t, r, 5); // nginx sends the file with sendfile() and TCP_NOPUSH: both must work on a pair
  t.ok((await counter('h1', 'connect:same-host-unix')) - before >= 1, 'router on h1 paired curl with nginx');
  const tcpBefore = await counter('h1', 'connect:same-host');
  const { w } = await wrk(['-H', 'Connection: close'], 'c12', SAME_PORT);
  checkWrk(t, w);
  // A storm of short-lived connections switches to prefetched loopback TCP sockets
  // (FFR_SAME_HOST=auto); the first ones (wrk opens 50 at once) are pairs.
  const tcp = (await counter('h1', 'connect:same-host')) - tcpBefore;
  const made = (await counter('h1', 'connect:same-host-unix')) - before + tcp;
  t.ok(made >= w.requests, `router on h1 set up ${made} same-host connections for ${w.requests} requests`);
  t.ok(tcp >= w.requests / 2, `${tcp} of them prefetched loopback TCP sockets`);
  t.comment(`same host wrk Connection: close: ${w.rps} req/s`);
  await tb.stop(local);
});

t.test('plain curl (no preload) -> accelerated nginx: served over the overlay', async (t) => {
  const before = await counter('h1', 'connect:host-network');
  const r = await curlBig(ACCEL_PORT, 2, false, 'plain');
  checkCurl(t, r, 2);
  t.ok(r.bytes >= 2 * BIG, `VXLAN carried ${r.bytes} bytes for ${2 * BIG} transferred`);
  t.equal(await counter('h1', 'connect:host-network'), before, 'router on h1 not involved');
});

t.test('accelerated curl -> plain nginx (no preload): overlay fallback', async (t) => {
  const plain = await startNginx('plain', PLAIN_PORT, false);
  const before = await counter('h1', 'connect:overlay-fallback');
  const hostBefore = await counter('h1', 'connect:host-network');
  const r = await curlBig(PLAIN_PORT, 2, true, 'fallback');
  checkCurl(t, r, 2);
  t.ok(r.bytes >= 2 * BIG, `VXLAN carried ${r.bytes} bytes for ${2 * BIG} transferred`);
  const fell = (await counter('h1', 'connect:overlay-fallback')) - before;
  t.ok(fell >= 1, `router on h1 answered overlay-fallback ${fell} time(s)`);
  t.equal(await counter('h1', 'connect:host-network'), hostBefore, 'no host-network connection set up');
  const rec = (await tb.status('h1')).connections.filter((c: any) => c.path === 'overlay-fallback').pop();
  t.equal(rec?.dst, `${overlayIp(SERVER)}:${PLAIN_PORT}`, `fallback recorded for the plain nginx (reason: ${rec?.reason})`);
  await tb.stop(plain);
});

/** Pids of the worker processes of the nginx started as `name`. */
function workerPids(name: string): string[] {
  const master = readFileSync(join(dir, name, 'nginx.pid'), 'utf8').trim();
  return readFileSync(`/proc/${master}/task/${master}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
}

const PEER_CHECK = join(ROOT, 'test/apps/peer_check.py');
const MID = 64 * 1024;
writeFileSync(join(www, 'mid.bin'), randomFillSync(Buffer.alloc(MID)), { mode: 0o644 });

// Every accepted connection carries exactly the identity of the client that made it, with many
// concurrent connects and two accepting processes. TCP's checksums cannot show this; nginx's
// own view of each connection ($remote_addr:$remote_port, from its accept()) can.
t.test('128 concurrent connections to nginx with 2 workers: each accepted as exactly its client, by both workers, on the host network', async (t) => {
  const PEER_PORT = 8084;
  const peers = await startNginx('peers', PEER_PORT, true, SERVER, true, ['add_header X-Peer "$remote_addr:$remote_port" always;', 'add_header X-Worker $pid always;']);
  const workers = workerPids('peers');
  t.equal(workers.length, 2, `nginx runs 2 workers (${workers.join(', ')})`);
  const hostBefore = await counter('h1', 'connect:host-network');
  const acceptedBefore = await counter('h2', 'accept:host-network');
  const seen = new Map<string, number>();
  let rounds = 0, total = 0, vxlan = 0;
  // Which worker accepts is the kernel's choice: a burst of 128 nearly always reaches both; a
  // few more rounds make a one-sided burst harmless.
  while (rounds < 5 && seen.size < 2) {
    rounds++;
    const { result, bytes } = await vxlanBytesDuring(tb, 'h1', () =>
      tb.run(CLIENT, ['python3', PEER_CHECK, overlayIp(SERVER), String(PEER_PORT), '128', '/mid.bin'], { preload: true, timeoutMs: 60_000 }),
    );
    vxlan += bytes;
    let res: { self: string; peer: string | null; worker: string | null; status: number; bytes: number }[] = [];
    try {
      res = JSON.parse(result.stdout);
    } catch {
      /* asserted below */
    }
    t.equal(result.code, 0, `round ${rounds}: peer_check exited 0`, { stderr: result.stderr.slice(-2000) });
    t.equal(res.length, 128, `round ${rounds}: 128 responses`);
    const bad = res.filter((r) => r.status !== 200 || r.bytes !== MID || r.peer !== r.self);
    t.same(bad.slice(0, 5), [], `round ${rounds}: every response 200 with ${MID} bytes, and nginx's $remote_addr:$remote_port is that connection's own getsockname() (${bad.length} not)`);
    t.equal(new Set(res.map((r) => r.self)).size, res.length, `round ${rounds}: ${res.length} distinct client endpoints`);
    t.ok(res.length > 0 && res.every((r) => r.self.startsWith(`${overlayIp(CLIENT)}:`)), `round ${rounds}: clients see their overlay address`);
    for (const r of res) seen.set(String(r.worker), (seen.get(String(r.worker)) ?? 0) + 1);
    total += res.length;
  }
  t.same([...seen.keys()].sort(), [...workers].sort(), `both workers accepted connections (${JSON.stringify(Object.fromEntries(seen))}, ${rounds} round(s) of 128)`);
  const made = (await counter('h1', 'connect:host-network')) - hostBefore;
  const accepted = (await counter('h2', 'accept:host-network')) - acceptedBefore;
  t.ok(made >= total, `router on h1 set up ${made} host-network connections for ${total}`);
  t.ok(accepted >= total, `h2 passed ${accepted} host-network connections to nginx for ${total}`);
  t.ok(vxlan < (total * MID) / 100, `VXLAN carried ${vxlan} bytes for ${total * MID} served (< 1%)`);
  await tb.stop(peers);
});

/** CPU ticks (utime + stime) of the worker processes of the nginx started as `name`. */
function workerTicks(name: string): number {
  return workerPids(name).reduce((sum, pid) => {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return sum + Number(f[11]) + Number(f[12]); // fields 14 and 15 of stat(5)
  }, 0);
}

/** Fetches small.txt with a fresh preloaded curl until `host`'s directory lists the listener
 * again: the library re-registers a listener at the accept() after its router came back. */
async function untilReaccelerated(t: Test, port: number): Promise<void> {
  const listed = async () => (await tb.status('h1')).directory.some((d: any) => d.overlayIp === overlayIp(SERVER) && d.port === port);
  for (let i = 0; i < 20 && !(await listed()); i++) {
    const r = await tb.run(CLIENT, ['curl', '-sS', '--fail', '--max-time', '5', '-o', '/dev/null', `http://${overlayIp(SERVER)}:${port}/small.txt`], { preload: true });
    t.equal(r.code, 0, `served while the listener is not accelerated (${r.stderr.trim()})`);
    await new Promise((r) => setTimeout(r, 300));
  }
  t.ok(await listed(), `listener on port ${port} is in h1's directory again`);
}

// A client that lives through the routers' restart: its second fetch must find the new router
// at once, not fall back because its connection to the old one is dead.
const LONG_LIVED = (url: string, flag: string, sha: string) => `
import hashlib, os, time, urllib.request
def fetch():
    assert hashlib.sha256(urllib.request.urlopen('${url}').read()).hexdigest() == '${sha}'
fetch(); print('first', flush=True)
while not os.path.exists('${flag}'): time.sleep(0.05)
fetch(); print('second', flush=True)`;

t.test('routers die and come back: nginx workers do not spin, and listeners are accelerated again', async (t) => {
  const LATE_PORT = 8083;
  const flag = join(dir, 'routers-back');
  const client = tb.start(CLIENT, ['python3', '-c', LONG_LIVED(`http://${overlayIp(SERVER)}:${ACCEL_PORT}/big.bin`, flag, bigSha)], { preload: true });
  await client.waitFor(/first/);
  await tb.stopRouter('h1');
  await tb.stopRouter('h2');
  const late = await startNginx('late', LATE_PORT, true, SERVER, false); // listen() with no router
  // A dead router's channel left in the workers' epoll sets would report EPOLLHUP on every wait.
  await new Promise((r) => setTimeout(r, 500));
  const ticks0 = workerTicks('accel');
  await new Promise((r) => setTimeout(r, 2000));
  const spent = workerTicks('accel') - ticks0;
  t.ok(spent < 40, `nginx's 2 workers used ${spent} CPU ticks in 2 s with the router dead (< 40, i.e. idle)`);
  const dead = await curlBig(ACCEL_PORT, 1, true, 'router-dead');
  checkCurl(t, dead, 1);
  t.ok(dead.bytes >= BIG, `without routers it is served over the overlay (VXLAN ${dead.bytes} bytes)`);

  await tb.startRouter('h1');
  await tb.startRouter('h2');
  await tb.waitPeers();
  for (const port of [ACCEL_PORT, LATE_PORT]) {
    await untilReaccelerated(t, port);
    const before = await counter('h1', 'connect:host-network');
    const r = await curlBig(port, 2, true, `back-${port}`);
    checkCurl(t, r, 2);
    t.ok(r.bytes < (2 * BIG) / 100, `port ${port}: VXLAN carried ${r.bytes} bytes for ${2 * BIG} (< 1%)`);
    t.ok((await counter('h1', 'connect:host-network')) - before >= 1, `port ${port}: on the host network again`);
  }
  const { result: code, bytes } = await vxlanBytesDuring(tb, 'h1', async () => {
    writeFileSync(flag, '');
    return client.exited;
  });
  t.equal(code, 0, `the long-lived client's fetch after the restart is intact: ${client.output()}`);
  t.ok(bytes < BIG / 100, `and went over the host network at once (VXLAN ${bytes} bytes for ${BIG})`);
  await tb.stop(late);
});

t.test('nginx survived everything and logged no errors', async (t) => {
  t.equal(ngx.proc.exitCode, null, 'accelerated nginx still running');
  const log = readFileSync(join(dir, 'accel', 'error.log'), 'utf8');
  t.notMatch(log, /\[(alert|emerg|crit)\]/, 'no alert/emerg/crit in the error log', { log: log.slice(-2000) });
  await tb.stop(ngx);
});
