// The router keeps the overlay's isolation: host endpoints serve only router-announced
// connections, a container cannot claim another's overlay address, and no input takes the
// router down.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Fallback, MsgType, Reply, MSG_SIZE, emptyMsg, encode } from '../src/protocol/codec.js';
import { native } from '../src/native.js';
import { EDGE, ROOT, Testbed, overlayIp } from './lib/testbed.js';
import { rawRequest, request } from './lib/raw-request.js';

const tb = await Testbed.up(t);
const sock = (host: string) => join(tb.socketDir(host), 'ffrouter.sock');

// A server that reports every connection it accepts, and echoes.
const SERVER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16); print("listening", flush=True)
while True:
    c, a = s.accept(); print("ACCEPTED", a[0], a[1], flush=True)
    c.settimeout(2)
    try:
        d = c.recv(100); c.sendall(d)
    except Exception: pass
    c.close()
`;
const PROBE = `
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
c.sendall(b"hello"); c.settimeout(6)
try:
    d = c.recv(100); print("GOT", repr(d))
except Exception as e: print("ERR", type(e).__name__)
`;

t.test('a host process dialling a host endpoint directly reaches no container', async (t) => {
  const srv = tb.start('c21', ['python3', '-c', SERVER, '7201'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7201);
  const entry = (await tb.status('h2')).directory.find((d: any) => d.overlayIp === overlayIp('c21') && d.port === 7201);
  t.ok(entry, 'listener published with a host endpoint');
  const before = (await tb.status('h2')).counters['accept:refused-unannounced'] ?? 0;
  for (const host of ['h2', 'h1']) {
    const r = await tb.run(host, ['python3', '-c', PROBE, entry.hostIp, String(entry.hostPort)], { timeoutMs: 20_000 });
    t.match(r.stdout, /GOT b''|ERR/, `${host}: the direct connection got nothing and was closed (${r.stdout.trim()})`);
  }
  t.notMatch(srv.output(), /ACCEPTED/, 'the container never saw those connections');
  const after = (await tb.status('h2')).counters['accept:refused-unannounced'] ?? 0;
  t.equal(after - before, 2, 'router refused both unannounced connections');
  // A connection the routers set up does get through, with the client's overlay address.
  const ok = await tb.run('c11', ['python3', '-c', PROBE, overlayIp('c21'), '7201'], { preload: true });
  t.match(ok.stdout, /GOT b'hello'/, 'accelerated client is served');
  await srv.waitFor(/ACCEPTED 10\.244\.1\.11 \d+/);
  await tb.stop(srv);
});

t.test('a container cannot listen or connect as another container', async (t) => {
  const script = join(ROOT, 'test/lib/raw-request.ts');
  const asC11 = async (type: string, local: [string, number], remote: [string, number]) => {
    const r = await tb.run('c11', ['node', '--import', 'tsx', script, sock('h1'), type, ...local.map(String), ...remote.map(String)], { env: { NODE_PATH: join(ROOT, 'node_modules') } });
    return JSON.parse(r.stdout.trim() || '{}');
  };
  const stolen = await asC11('LISTEN', [overlayIp('c12'), 7202], ['0.0.0.0', 0]);
  t.same([stolen.status, stolen.flags, stolen.gotFd], [Reply.FALLBACK, Fallback.NOT_OWNER, false], "c11 may not listen on c12's address");
  const own = await asC11('LISTEN', [overlayIp('c11'), 7202], ['0.0.0.0', 0]);
  t.same([own.status, own.gotFd], [Reply.ACCEL, true], 'but may on its own');
  const spoof = await asC11('CONNECT', [overlayIp('c12'), 0], [overlayIp('c11'), 7202]);
  t.same([spoof.status, spoof.flags], [Reply.FALLBACK, Fallback.NOT_OWNER], "c11 may not connect with c12's source address");
  // The test process itself is in the root namespace, which owns no overlay address.
  const root = await rawRequest(sock('h2'), request('LISTEN', [overlayIp('c21'), 7203], ['0.0.0.0', 0]));
  t.equal(root.reply?.flags, Fallback.NOT_OWNER, 'nor may a process outside the container');
  t.notOk((await tb.status('h1')).directory.some((d: any) => d.port === 7203 || (d.overlayIp === overlayIp('c12') && d.port === 7202)), 'no stolen entry in the directory');
});

t.test("junk on a listener's accept channel and a scribbled admission table leave the router up", async (t) => {
  const script = join(ROOT, 'test/lib/abuse-accept-channel.ts');
  const r = await tb.run('c11', ['node', '--import', 'tsx', script, sock('h1'), overlayIp('c11'), '7205'], { env: { NODE_PATH: join(ROOT, 'node_modules') } });
  const out = JSON.parse(r.stdout.trim() || '{}');
  t.equal(r.code, 0, `abuse script ran (${r.stderr.trim().slice(-200)})`);
  t.ok(out.sent?.every((n: number) => n > 0), 'all the junk was sent over the channel');
  t.ok(out.tableBytes >= 65536, `admission table overwritten (${out.tableBytes} bytes)`);
  const s = await tb.status('h1');
  t.ok(s.pid, 'router h1 still answers');
  // The listener went away with its channel, and the router still pairs real connections.
  const listed = async () => (await tb.status('h1')).listeners.some((l: any) => l.overlay.includes(`${overlayIp('c11')}:7205`));
  for (let i = 0; i < 50 && (await listed()); i++) await new Promise((res) => setTimeout(res, 100));
  t.notOk(await listed(), 'the abused listener was withdrawn when its channel closed');
  const srv = tb.start('c11', [EDGE, 'server', '0.0.0.0', '7205'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c11'), 7205);
  const e = await tb.run('c21', [EDGE, 'client', overlayIp('c11'), '7205', 'names'], { preload: true });
  t.equal(e.code, 0, 'an accelerated connection to the same port works afterwards');
  await tb.stop(srv);
});

t.test('malformed requests get a clear refusal and never take the router down', async (t) => {
  const good = emptyMsg(MsgType.CONNECT);
  const cases: [string, Buffer][] = [
    ['3 bytes', Buffer.from([1, 2, 3])],
    ['bad magic', Buffer.alloc(MSG_SIZE, 0x41)],
    ['unknown type', encode({ ...good, type: 999 })],
    ['payload length lies', (() => { const b = encode(good); b.writeUInt32LE(5000, 32); return b; })()],
    ['CONNECT to a non-IPv4 address', encode({ ...good, remote_addr: Buffer.alloc(16, 0xfe), remote_port: 80 })],
    ['oversized', Buffer.alloc(MSG_SIZE + 70000, 7)],
  ];
  for (const [name, bytes] of cases) {
    const r = await rawRequest(sock('h1'), bytes).catch((e) => ({ error: String(e) }) as any);
    if (name === 'oversized') {
      t.ok(r.error || r.reply?.status === Reply.FALLBACK || r.closed, `${name}: refused or dropped (${JSON.stringify(r.reply?.status ?? r.error ?? r)})`);
    } else {
      t.equal(r.reply?.status, Reply.FALLBACK, `${name}: FALLBACK reply`);
      t.equal(r.reply?.flags, Fallback.BAD_REQUEST, `${name}: reason BAD_REQUEST`);
    }
  }
  // Descriptors sent to the router are closed, not leaked or used.
  const devnull = native.seqpacketConnect(sock('h1'));
  const r = await rawRequest(sock('h1'), request('CONNECT', ['1.2.3.4', 1], [overlayIp('c21'), 1]), [devnull]);
  t.equal(r.reply?.status, Reply.FALLBACK, 'request with stray fds answered');
  native.close(devnull);
  // A storm of random garbage on many connections.
  for (let i = 0; i < 300; i++) await rawRequest(sock('h1'), randomBytes(1 + Math.floor(Math.random() * 300)), [], 1000).catch(() => {});
  // Garbage on the router-to-router port too.
  const junk = await tb.run('h2', ['python3', '-c', 'import socket,os; s=socket.create_connection(("192.168.77.1",7471)); s.sendall(os.urandom(5000)); s.close()']);
  t.equal(junk.code, 0, 'sent junk to the peer port');
  const s = await tb.status('h1');
  t.ok(s.pid, 'router h1 still answers');
  await tb.waitPeers();
  // And still does its job.
  const srv = tb.start('c21', [EDGE, 'server', '0.0.0.0', '7204'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7204);
  const e = await tb.run('c11', [EDGE, 'client', overlayIp('c21'), '7204', 'names'], { preload: true });
  t.equal(e.code, 0, 'an accelerated connection still works after the abuse');
  t.ok(((await tb.status('h1')).counters['connect:host-network'] ?? 0) >= 1, 'and took the host path');
  await tb.stop(srv);
});
