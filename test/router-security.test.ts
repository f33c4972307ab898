// The router keeps the overlay's isolation: host endpoints serve only router-announced
// connections, a container cannot claim another's overlay address, routers accept only
// routers (the cluster key), and no input takes the router down.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MAX_LISTENERS_PER_CLIENT } from '../src/router/requests.js';
import { ROUTER_SOCKET_MARK } from '../src/router/listener-fence.js';
import { Fallback, Limits, MsgType, PeerAuth, Reply, MSG_SIZE, emptyMsg, encode, ipv4ToWire } from '../src/protocol/codec.js';
import { RDMA_PORT } from '../src/router/rdma/extension.js';
import { fetchStatus } from '../src/cli/status-client.js';
import { native } from '../src/native.js';
import { EDGE, ROOT, Testbed, VNET, hostIp, overlayIp } from './lib/testbed.js';
import { rawRequest, request } from './lib/raw-request.js';

// Routers are started with a cluster key made here by `freeflow keygen`, as an operator makes
// one (the testbed may also put one in the hosts' environment; the flag wins).
const keyDir = mkdtempSync(join(tmpdir(), 'ffsec-key-'));
t.teardown(() => rmSync(keyDir, { recursive: true, force: true }));
function keygen(name: string): string {
  const r = spawnSync('node', [join(ROOT, 'bin/freeflow.js'), 'keygen'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`freeflow keygen failed: ${r.stderr}`);
  const path = join(keyDir, name);
  writeFileSync(path, r.stdout, { mode: 0o600 });
  return path;
}
const KEY = keygen('cluster.key');
const WRONG_KEY = keygen('other-cluster.key');
const keyed = (file = KEY) => ['--cluster-key-file', file];

const tb = await Testbed.up(t, { routers: false });
for (const h of ['h1', 'h2']) await tb.startRouter(h, keyed());
await tb.waitPeers();
const sock = (host: string) => join(tb.socketDir(host), 'ffrouter.sock');

/** What `host`'s router says about inbound connections refused from peer `from`'s address. */
async function refusedFrom(host: string, from: string): Promise<{ refused: number; lastRefusal?: string; lastFrom?: string }> {
  const p = (await tb.status(host)).peers.find((x: any) => x.ip === hostIp(from));
  return { refused: p?.refused ?? 0, lastRefusal: p?.lastRefusal, lastFrom: p?.lastFrom };
}

// The routers' handshake (src/router/peer-auth.ts) written again in Python from the wire
// spec's constants, for forgers and probes: handshake(sock, keyfile, my_ip, peer_ip) proves
// the key as a dialler and returns whether the other end proved it too.
const PY_HANDSHAKE = `
import hashlib, hmac, os, socket, struct
def recvn(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d: raise ConnectionError("closed")
        b += d
    return b
def handshake(s, keyfile, me, peer):
    key = bytes.fromhex(open(keyfile).read().split()[1])
    mine = os.urandom(${PeerAuth.NONCE_SIZE})
    s.sendall(struct.pack("<I", ${PeerAuth.MAGIC}) + mine)
    hello = recvn(s, ${PeerAuth.HELLO_SIZE})
    assert struct.unpack("<I", hello[:4])[0] == ${PeerAuth.MAGIC}
    theirs = hello[4:]
    mapped = lambda ip: bytes(10) + b"\\xff\\xff" + socket.inet_aton(ip)
    proof = lambda role, ip: hmac.new(key, b"${PeerAuth.LABEL}" + bytes([role]) + mine + theirs + mapped(ip), hashlib.sha256).digest()
    s.sendall(proof(${PeerAuth.ROLE_DIALLER}, me))
    return hmac.compare_digest(recvn(s, ${PeerAuth.MAC_SIZE}), proof(${PeerAuth.ROLE_ACCEPTOR}, peer))
`;

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
try:
    c = socket.socket()
    if len(sys.argv) > 3: c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[3], 0))
    c.settimeout(3); c.connect((sys.argv[1], int(sys.argv[2])))
    c.sendall(b"hello"); c.settimeout(6)
    d = c.recv(100); print("GOT", repr(d))
except Exception as e: print("ERR", type(e).__name__)
`;

t.test('a host process dialling a host endpoint directly reaches no container', async (t) => {
  const srv = tb.start('c21', ['python3', '-c', SERVER, '7201'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7201);
  const entry = (await tb.status('h2')).directory.find((d: any) => d.overlayIp === overlayIp('c21') && d.port === 7201);
  t.ok(entry, 'listener published with a host endpoint');
  const refused = async () => (await tb.status('h2')).counters['accept:refused-unannounced'] ?? 0;
  const before = await refused();
  // The fence (listener-fence.ts): a host process's SYN to a host listener never leaves its host.
  for (const host of ['h2', 'h1']) {
    const r = await tb.run(host, ['python3', '-c', PROBE, entry.hostIp, String(entry.hostPort)], { timeoutMs: 20_000 });
    t.equal(r.stdout.trim(), 'ERR ConnectionRefusedError', `${host}: the host's netfilter refuses the direct connection`);
  }
  t.equal(await refused(), before, 'so it never reached the router');
  // Behind the fence, the admission table: root on h1 forging the router's mark gets through
  // netfilter, but its connection was never announced, and the router closes it.
  const marked = await tb.run('h1', ['python3', '-c', PROBE, entry.hostIp, String(entry.hostPort), String(ROUTER_SOCKET_MARK)], { timeoutMs: 20_000 });
  t.match(marked.stdout, /GOT b''|ERR ConnectionResetError/, `a marked but unannounced connection got nothing (${marked.stdout.trim()})`);
  t.equal((await refused()) - before, 1, 'the router refused it');
  t.notMatch(srv.output(), /ACCEPTED/, 'the container never saw those connections');
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
  // The test process itself is in the root namespace, which nobody registered.
  const root = await rawRequest(sock('h2'), request('LISTEN', [overlayIp('c21'), 7203], ['0.0.0.0', 0]));
  t.equal(root.reply?.flags, Fallback.UNREGISTERED, 'nor may a process outside the container');
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
  // Garbage on the router-to-router port too: in place of the handshake, and after one that
  // proved the key (so that it reaches the frame parser, as a broken peer router's would).
  const JUNK = `${PY_HANDSHAKE}
import sys
s = socket.create_connection(("${hostIp('h1')}", ${Limits.PEER_PORT}), source_address=("${hostIp('h2')}", 0))
if sys.argv[1] == "keyed": print("proved" if handshake(s, "${KEY}", "${hostIp('h2')}", "${hostIp('h1')}") else "not proved")
s.sendall(os.urandom(5000)); s.close()`;
  const refused0 = await refusedFrom('h1', 'h2');
  const junk = await tb.run('h2', ['python3', '-c', JUNK, 'raw']);
  t.equal(junk.code, 0, `sent junk to the peer port (${junk.stderr.trim()})`);
  const keyedJunk = await tb.run('h2', ['python3', '-c', JUNK, 'keyed']);
  t.match(keyedJunk.stdout, /^proved/, `and junk after proving the key (${keyedJunk.stderr.trim()})`);
  const s = await tb.status('h1');
  t.ok(s.pid, 'router h1 still answers');
  t.equal((await refusedFrom('h1', 'h2')).refused, refused0.refused + 1, 'the junk without the key was refused at the handshake');
  t.match(tb.routerOutput('h1'), /malformed peer message; dropping connection/, 'the junk after the key reached the frame parser, which dropped it');
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

// Dials a router's peer port as a forger would: proves a key first if given one (else sends
// no handshake at all), sends wire frames (hex), then dials a host endpoint from the source
// address and port those frames announced, and says what it got.
const FORGER = `${PY_HANDSHAKE}
import sys, time
peer, src, src_port, keyfile, frames, ep_ip, ep_port, fwd_src, fwd_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7]), sys.argv[8], int(sys.argv[9])
for port in ([0] if src_port == 0 else range(src_port, src_port + 40)): # skip ports in TIME_WAIT from an earlier run
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((src, port)); s.connect((peer, ${Limits.PEER_PORT})); break
    except OSError:
        s.close()
        if port in (0, src_port + 39): raise
print("FROM", s.getsockname()[0], s.getsockname()[1], flush=True)
try:
    if keyfile: print("HANDSHAKE", "proved" if handshake(s, keyfile, src, peer) else "refused", flush=True)
    s.sendall(bytes.fromhex(frames))
except Exception as e: print("HANDSHAKE", "failed", type(e).__name__, flush=True)
time.sleep(0.5)
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); c.bind((fwd_src, fwd_port)); c.settimeout(3)
# Root forges the router's socket mark too, so the fence (listener-fence.ts) lets it through and
# the admission layer behind it is what is tested; an unprivileged user cannot set it.
try: c.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, ${ROUTER_SOCKET_MARK})
except OSError: pass
try:
    c.connect((ep_ip, ep_port)); c.sendall(b"forged")
    d = c.recv(100); print("GOT", repr(d))
except Exception as e: print("ERR", type(e).__name__)
# Open: the router keeps it (no more bytes come, a keyed peer's connection carries nothing
# back); closed: it ended it (after at most its own handshake bytes).
s.settimeout(0.5)
try:
    while s.recv(4096): pass
    print("PEER closed")
except socket.timeout: print("PEER open")
except OSError: print("PEER closed")
`;

// The forged listener and announcement for the tests below: what a forger sends is an
// announcement that its next connection is c11's, and a listener.
function forgedFrames(entry: { hostPort: number }, to: [string, number], from: string, fwdPort: number, listenerHost: string): string {
  const a = emptyMsg(MsgType.ANNOUNCE);
  a.host_addr = ipv4ToWire(from);
  a.host_port = fwdPort;
  a.aux_port = entry.hostPort;
  a.local_addr = ipv4ToWire(overlayIp('c11'));
  a.local_port = fwdPort;
  a.remote_addr = ipv4ToWire(to[0]);
  a.remote_port = to[1];
  const l = emptyMsg(MsgType.LISTEN_ADD);
  l.local_addr = ipv4ToWire('10.244.2.99');
  l.local_port = 7207;
  l.host_addr = ipv4ToWire(listenerHost);
  l.host_port = 40999;
  return Buffer.concat([encode(a), encode(l)]).toString('hex');
}
const forgedListed = () => (tb.status('h2') as Promise<any>).then((s) => s.directory.some((d: any) => d.overlayIp === '10.244.2.99'));

/** A server in c21 on `port` whose listener h2 has published and h1 knows; its host endpoint. */
async function serverInC21(port: number) {
  const srv = tb.start('c21', ['python3', '-c', SERVER, String(port)], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), port);
  const entry = (await tb.status('h2')).directory.find((d: any) => d.overlayIp === overlayIp('c21') && d.port === port);
  return { srv, entry };
}

t.test('only routers speak as routers: --peers addresses, the cluster key, records for their own host', async (t) => {
  const { srv, entry } = await serverInC21(7206);
  // A second address on h1's host link: a host that is not in the routers' --peers.
  const stranger = '192.168.77.50';
  t.equal((await tb.run('h1', ['ip', 'addr', 'add', `${stranger}/24`, 'dev', 'phy0'])).code, 0, 'stranger address added');
  t.teardown(() => tb.run('h1', ['ip', 'addr', 'del', `${stranger}/24`, 'dev', 'phy0']));
  const forge = (o: { user?: boolean; src: string; srcPort: number; key: string; announcedFrom: string; fwdFrom: string; fwdPort: number; listenerHost: string }) =>
    tb.run('h1', [...(o.user ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3'] : ['python3']), '-c', FORGER, hostIp('h2'), o.src, String(o.srcPort), o.key,
      forgedFrames(entry, [overlayIp('c21'), 7206], o.announcedFrom, o.fwdPort, o.listenerHost), hostIp('h2'), String(entry.hostPort), o.fwdFrom, String(o.fwdPort)], { timeoutMs: 20_000 });
  const h1 = hostIp('h1');
  const log0 = tb.routerOutput('h2').length;
  const r0 = await refusedFrom('h2', 'h1');

  const user = await forge({ user: true, src: h1, srcPort: 0, key: '', announcedFrom: h1, fwdFrom: h1, fwdPort: 40001, listenerHost: h1 });
  t.match(user.stdout, /GOT b''|ERR/, `an unprivileged process on a peer host is not admitted (${user.stdout.trim()}${user.stderr.trim()})`);
  t.match(user.stdout, /PEER closed/, 'and its peer connection is dropped');
  const r1 = await refusedFrom('h2', 'h1');
  t.equal(r1.refused, r0.refused + 1, 'refused at the handshake');
  t.match(r1.lastRefusal, /without the cluster key: bad greeting/, `status says why (${r1.lastRefusal})`);
  t.match(tb.routerOutput('h2').slice(log0), /refused peer connection without the cluster key/, 'and the log');

  // Root on a peer host, from a privileged port as routers used to dial: no longer a proof.
  const privileged = await forge({ src: h1, srcPort: 700, key: '', announcedFrom: h1, fwdFrom: h1, fwdPort: 40005, listenerHost: h1 });
  t.match(privileged.stdout, /FROM \S+ 7\d\d\b/, `dialled from a privileged port (${privileged.stdout.trim().split('\n')[0]})`);
  t.match(privileged.stdout, /GOT b''|ERR/, `a host process on a --peers address with a privileged port but no key is not admitted (${privileged.stdout.trim()})`);
  t.match(privileged.stdout, /PEER closed/, 'and its peer connection is dropped');
  t.equal((await refusedFrom('h2', 'h1')).refused, r0.refused + 2, 'refused at the handshake');

  const wrong = await forge({ src: h1, srcPort: 0, key: WRONG_KEY, announcedFrom: h1, fwdFrom: h1, fwdPort: 40006, listenerHost: h1 });
  t.match(wrong.stdout, /HANDSHAKE (refused|failed)/, `a process proving another key gets no proof back (${wrong.stdout.trim()})`);
  t.match(wrong.stdout, /GOT b''|ERR/, 'and is not admitted');
  const r3 = await refusedFrom('h2', 'h1');
  t.equal(r3.refused, r0.refused + 3, 'refused at the handshake');
  t.match(r3.lastRefusal, /wrong proof/, `status says why (${r3.lastRefusal})`);
  t.equal(tb.routerOutput('h2').slice(log0).match(/refused peer connection/g)?.length, 1, 'three refusals from one address, one log line (no floods)');

  const outsider = await forge({ src: stranger, srcPort: 600, key: KEY, announcedFrom: stranger, fwdFrom: stranger, fwdPort: 40002, listenerHost: stranger });
  t.match(outsider.stdout, /GOT b''|ERR/, `root on an address outside --peers is not admitted, key or not (${outsider.stdout.trim()})`);
  t.match(tb.routerOutput('h2'), /refused peer connection from an address not in --peers/, 'router says why');

  // A keyed peer announcing a connection from another host, and a listener there.
  const foreign = await forge({ src: h1, srcPort: 0, key: KEY, announcedFrom: stranger, fwdFrom: stranger, fwdPort: 40003, listenerHost: stranger });
  t.match(foreign.stdout, /HANDSHAKE proved/, 'the key is proved');
  t.match(foreign.stdout, /GOT b''|ERR/, `a peer cannot get another host's connection admitted (${foreign.stdout.trim()})`);
  t.match(foreign.stdout, /PEER closed/, 'a listener record for another host drops the peer connection');
  t.notOk(await forgedListed(), 'no forged listener in the directory');
  t.notMatch(srv.output(), /ACCEPTED/, 'the container saw none of those connections');

  // Control: the same frames from a process that proves the key, for its own host, are
  // honoured (whoever holds the key is a router, docs/security.md ("Routers prove a cluster key")), so the refusals
  // above are the checks' doing, not a broken forger.
  const peer = await forge({ src: h1, srcPort: 0, key: KEY, announcedFrom: h1, fwdFrom: h1, fwdPort: 40004, listenerHost: h1 });
  t.match(peer.stdout, /HANDSHAKE proved/, 'the key is proved');
  t.match(peer.stdout, /GOT b'forged'/, 'a keyed peer\'s announcement admits its connection');
  await srv.waitFor(new RegExp(`ACCEPTED ${overlayIp('c11').replace(/\./g, '\\.')} 40004`));
  t.match(peer.stdout, /PEER open/, 'and its connection stays up');
  await tb.stop(srv);
  await tb.waitPeers();
});

t.test("a container behind its host's masquerading NAT, root, from a privileged port, cannot speak as its host's router", async (t) => {
  const { srv, entry } = await serverInC21(7208);
  // The container's traffic to the underlay leaves h1 masqueraded to h1's address, as a
  // Docker or Kubernetes host does it: every namespace here is the test's own.
  const nat = `table ip ffsec_nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  ip saddr ${VNET} oifname "phy0" masquerade\n }\n}\n`;
  const natSet = await tb.run('h1', ['sh', '-c', 'printf "%s" "$1" | nft -f -', 'sh', nat]);
  t.equal(natSet.code, 0, `masquerade rule in h1 ${natSet.stderr}`);
  t.teardown(() => tb.run('h1', ['nft', 'delete', 'table', 'ip', 'ffsec_nat']));
  const gw = /via (\S+)/.exec((await tb.run('c11', ['ip', '-4', 'route', 'show', VNET])).stdout)?.[1];
  t.ok(gw, `c11's gateway on its host: ${gw}`);
  t.equal((await tb.run('c11', ['ip', 'route', 'add', '192.168.77.0/24', 'via', gw!])).code, 0, 'c11 routes the underlay via its host');
  t.teardown(() => tb.run('c11', ['ip', 'route', 'del', '192.168.77.0/24']));
  const r0 = await refusedFrom('h2', 'h1');

  const c11 = overlayIp('c11');
  const attack = await tb.run('c11', ['python3', '-c', FORGER, hostIp('h2'), c11, '700', '',
    forgedFrames(entry, [overlayIp('c21'), 7208], hostIp('h1'), 40011, hostIp('h1')), hostIp('h2'), String(entry.hostPort), c11, '40011'], { timeoutMs: 20_000 });
  t.match(attack.stdout, /FROM \S+ 70\d\b/, `c11 dialled h2's peer port from a privileged port (${attack.stdout.trim().split('\n')[0]} ${attack.stderr.trim()})`);
  const r1 = await refusedFrom('h2', 'h1');
  t.equal(r1.refused, r0.refused + 1, 'h2 refused one connection from a --peers address');
  const [, seenIp, seenPort] = /^(.*):(\d+)$/.exec(r1.lastFrom ?? '') ?? [];
  t.equal(seenIp, hostIp('h1'), `it arrived as h1's router would: from h1's address (${r1.lastFrom})`);
  t.ok(Number(seenPort) < 1024, 'and a privileged port, which the old rule took as proof');
  t.match(r1.lastRefusal, /without the cluster key/, `refused for want of the key (${r1.lastRefusal})`);
  t.match(attack.stdout, /PEER closed/, 'the forged peer connection was dropped');
  t.match(attack.stdout, /GOT b''|ERR/, `the announced connection admitted nothing (${attack.stdout.trim()})`);
  t.notOk(await forgedListed(), "h2's directory never showed the forged listener");
  t.notMatch(srv.output(), /ACCEPTED/, 'the server saw no forged connection');
  t.ok((await tb.status('h2')).pid, "h2's router is still up");
  await tb.stop(srv);
  await tb.waitPeers();
});

t.test('a router with another cluster key is refused both ways; with the same key routers peer up', async (t) => {
  await tb.stopRouter('h1');
  await tb.startRouter('h1', keyed(WRONG_KEY));
  const srv = tb.start('c11', [EDGE, 'server', '0.0.0.0', '7210'], { preload: true });
  await srv.waitFor(/listening/);
  const r0 = await refusedFrom('h2', 'h1');
  // Its connections are refused as they are retried (every 500 ms), each at once.
  const end = Date.now() + 10_000;
  while ((await refusedFrom('h2', 'h1')).refused < r0.refused + 3 && Date.now() < end) await sleep(200);
  const r1 = await refusedFrom('h2', 'h1');
  t.ok(r1.refused >= r0.refused + 3, `h2 refused h1's router again and again (${r1.refused - r0.refused} times)`);
  t.match(r1.lastRefusal, /wrong proof/, `because its proof is wrong (${r1.lastRefusal})`);
  const [s1, s2] = [await tb.status('h1'), await tb.status('h2')];
  t.ok(s1.directory.some((d: any) => d.overlayIp === overlayIp('c11') && d.port === 7210), 'h1 has its own listener');
  t.notOk(s2.directory.some((d: any) => d.overlayIp === overlayIp('c11') && d.port === 7210), 'h2 never lists it');
  t.same([s1.peers.map((p: any) => p.connected), s2.peers.map((p: any) => p.connected)], [[false], [false]], 'neither router counts the other as connected');
  t.match(tb.routerOutput('h1'), /peer router did not prove the cluster key/, 'h1 says its peer did not prove its key');
  await tb.stop(srv);

  // Control: the same router with the cluster's key.
  await tb.stopRouter('h1');
  await tb.startRouter('h1', keyed());
  await tb.waitPeers();
  t.pass('routers with the same key peer up');
  const srv2 = tb.start('c11', [EDGE, 'server', '0.0.0.0', '7211'], { preload: true });
  await srv2.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c11'), 7211);
  t.pass("and h2 lists h1's listeners");
  await tb.stop(srv2);
});

t.test('router start: peers need a key; key file errors say what to do; alone, no key is needed', async (t) => {
  // A separate router name, socket directory and ports, so nothing can touch the running one.
  const dir = join('/tmp', tb.prefix, 'keytest');
  const router = (args: string[]) => ['node', join(ROOT, 'bin/freeflow.js'), 'router', '--name', 'ffkeytest', '--socket-dir', dir, '--state-dir', join(dir, 'state'), '--peer-port', '17471', ...args];
  const noEnvKey = { env: { FFR_CLUSTER_KEY_FILE: '' } };
  const open = join(keyDir, 'open.key');
  writeFileSync(open, spawnSync('node', [join(ROOT, 'bin/freeflow.js'), 'keygen'], { encoding: 'utf8' }).stdout, { mode: 0o644 });
  const bad = join(keyDir, 'bad.key');
  writeFileSync(bad, 'not a key\n', { mode: 0o600 });
  const cases: [string, string[], RegExp][] = [
    ['peers without a key', ['--peers', hostIp('h2')], /--peers given but no cluster key.*freeflow keygen > \/etc\/freeflow\/cluster\.key && chmod 600 \/etc\/freeflow\/cluster\.key/],
    ['a missing key file', ['--peers', hostIp('h2'), ...keyed(join(keyDir, 'missing.key'))], /missing\.key does not exist; make one .*freeflow keygen > .*missing\.key && chmod 600/],
    ['a key file of mode 0644', ['--peers', hostIp('h2'), ...keyed(open)], /open\.key is accessible by group or others \(mode 0644\).*chmod 600 .*open\.key/],
    ['a malformed key file', ['--peers', hostIp('h2'), ...keyed(bad)], /bad\.key is not a FreeFlow cluster key: expected one line "freeflow-cluster-key-v1 <64 hex digits>"/],
  ];
  for (const [name, args, message] of cases) {
    const r = await tb.run('h1', router(args), { ...noEnvKey, timeoutMs: 20_000 });
    t.not(r.code, 0, `${name}: the router does not start (exit ${r.code})`);
    t.match(r.stderr, message, `${name}: it says what to do (${r.stderr.trim().split('\n')[0]})`);
  }
  const help = await tb.run('h1', ['node', join(ROOT, 'bin/freeflow.js'), 'router', '--help']);
  t.match(help.stdout.replace(/\s+/g, ' '), /--cluster-key-file .*required with --peers/, '--help documents the key');
  t.notMatch(help.stdout, /privileged/, 'and no longer claims a privileged source port');
  // Alone (no peers), a router needs no key, and opens no peer port.
  const alone = tb.start('h1', router([]), noEnvKey);
  const end = Date.now() + 20_000;
  let s: any;
  while (!(s = await fetchStatus(join(dir, 'ffkeytest.sock'), 1000).catch(() => undefined)) && Date.now() < end && alone.proc.exitCode === null) await sleep(100);
  t.ok(s, `a router with no peers and no key runs (${alone.output().slice(-300)})`);
  t.same(s?.peers, [], 'with no peers');
  const listening = await tb.run('h1', ['ss', '-Htln', 'sport', '= :17471']);
  t.equal(listening.stdout.trim(), '', 'and no peer port');
  await tb.stop(alone);
});

t.test('one client cannot make the router hold unlimited listeners', async (t) => {
  const script = join(ROOT, 'test/lib/listen-many.ts');
  const extra = 8;
  const r = await tb.run('c11', ['node', '--import', 'tsx', script, sock('h1'), overlayIp('c11'), '20000', String(MAX_LISTENERS_PER_CLIENT + extra)], {
    env: { NODE_PATH: join(ROOT, 'node_modules') },
    timeoutMs: 120_000,
  });
  const out = JSON.parse(r.stdout.trim() || '{}');
  t.same(out.tally, { [`status${Reply.ACCEL}/flags0`]: MAX_LISTENERS_PER_CLIENT, [`status${Reply.FALLBACK}/flags${Fallback.LIMIT}`]: extra }, `${MAX_LISTENERS_PER_CLIENT} accelerated, the rest refused with LIMIT (${r.stderr.trim().slice(-200)})`);
  t.match(tb.routerOutput('h1'), /too many accelerated listeners for one container/, 'router says why');
  // Its listeners go when its channels close.
  const deadline = Date.now() + 10_000;
  let s = await tb.status('h1');
  while (s.listenersTotal > 0 && Date.now() < deadline) {
    await new Promise((res) => setTimeout(res, 200));
    s = await tb.status('h1');
  }
  t.equal(s.listenersTotal, 0, 'all released when the client exits');
});

// Dials a router's engine port (src_ip:src_port, 0: any port) and sends one engine frame, a
// WHO_HAS that an engine always answers with a HAVE (native/rdma/engine.cc): right away
// ("frame"), after proving a key ("keyed"), or sends nothing ("silent"). Says whether the
// frame was answered and when the engine closed the connection.
const ENGINE_PROBE = `${PY_HANDSHAKE}
import sys, time
src, src_port, dst, dst_port, mode, keyfile = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, src_port)); s.connect((dst, dst_port))
print("FROM", s.getsockname()[1], flush=True)
t0 = time.time()
if mode == "keyed": print("HANDSHAKE", "proved" if handshake(s, keyfile, src, dst) else "refused", flush=True)
# struct NetHdr (native/rdma/transport.h): magic "FFDM", type WHO_HAS, ..., dst_qpn; 104 bytes
if mode != "silent": s.sendall(struct.pack("<10I4Q16s16s", 0x4d444646, 1, 0, 0, 0, 0x123456, 0, 0, 0, 0, 0, 0, 0, 0, bytes(16), bytes(16)))
s.settimeout(${PeerAuth.TIMEOUT_MS / 1000 + 3})
got = b""
try:
    while True:
        d = s.recv(4096)
        if not d: break
        got += d
        if mode == "keyed" and len(got) >= 104: break
except socket.timeout: print("OPEN after", int((time.time() - t0) * 1000), "ms"); sys.exit(0)
except OSError: pass
if mode == "keyed": print("ANSWERED" if len(got) >= 104 and struct.unpack("<2I", got[:8]) == (0x4d444646, 2) else "UNANSWERED", len(got)); sys.exit(0)
# Unkeyed: all the engine sends is its own hello; then it closes.
print("HELLO" if got[:4] == struct.pack("<I", ${PeerAuth.MAGIC}) else "NOHELLO", len(got) - ${PeerAuth.HELLO_SIZE}, "more bytes")
print("CLOSED after", int((time.time() - t0) * 1000), "ms")
`;

t.test("the RDMA engines' port honours frames only from routers that prove the key", async (t) => {
  const probe = (o: { user?: boolean; srcPort?: number; mode: 'frame' | 'keyed' | 'silent'; key?: string }) =>
    tb.run('h2', [...(o.user ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '/usr/bin/python3'] : ['python3']), '-c', ENGINE_PROBE,
      hostIp('h2'), String(o.srcPort ?? 0), hostIp('h1'), String(RDMA_PORT), o.mode, o.key ?? ''], { timeoutMs: 20_000 });
  const unanswered = (r: { stdout: string }) => /HELLO 0 more bytes/.test(r.stdout) && /CLOSED after \d+ ms/.test(r.stdout);
  const user = await probe({ user: true, mode: 'frame' });
  t.ok(unanswered(user), `an unprivileged process on a peer host gets no answer and is cut off (${user.stdout.trim()}${user.stderr.trim()})`);
  const root = await probe({ srcPort: 701, mode: 'frame' });
  t.ok(unanswered(root), `root on a peer host from a privileged port, no key: the same (${root.stdout.trim()}${root.stderr.trim()})`);
  const ms = (r: { stdout: string }) => Number(/CLOSED after (\d+) ms/.exec(r.stdout)?.[1] ?? NaN);
  t.ok(ms(root) < 1000, `a frame in place of the handshake is refused at once (${ms(root)} ms)`);
  const silent = await probe({ mode: 'silent' });
  t.ok(/CLOSED after/.test(silent.stdout), `a connection that proves nothing is closed (${silent.stdout.trim()})`);
  t.ok(ms(silent) >= PeerAuth.TIMEOUT_MS - 100 && ms(silent) < PeerAuth.TIMEOUT_MS + 1500, `at the handshake timeout (${ms(silent)} ms, timeout ${PeerAuth.TIMEOUT_MS})`);
  const wrong = await probe({ mode: 'keyed', key: WRONG_KEY });
  t.match(wrong.stdout, /HANDSHAKE refused|UNANSWERED/, `another key: no answer (${wrong.stdout.trim()}${wrong.stderr.trim()})`);
  t.notMatch(wrong.stdout, /^ANSWERED/m, 'the frame was not honoured');
  // Control: the same frame after proving the cluster's key is answered, so the refusals above
  // are the handshake's doing.
  const ok = await probe({ mode: 'keyed', key: KEY });
  t.match(ok.stdout, /HANDSHAKE proved/, `the engine proves the key back (${ok.stdout.trim()}${ok.stderr.trim()})`);
  t.match(ok.stdout, /^ANSWERED/m, 'and answers the frame');
  t.ok((await tb.status('h1')).pid, 'router h1 is still up');
});
