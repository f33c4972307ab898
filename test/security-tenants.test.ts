// Tenant identity: a container is the network namespace the CNI chain registered, with the
// addresses its network plugin assigned. Each attack below runs as a hostile container would
// (root in it, a fresh user+network namespace, a namespace nobody registered), and each has a
// control run in which the legitimate party makes the same steps and gets the fast path.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchStatus } from '../src/cli/status-client.js';
import { LIB, ROOT, Testbed, VNET, hostIp, overlayIp } from './lib/testbed.js';

const tb = await Testbed.up(t);
const FREEFLOW = join(ROOT, 'bin/freeflow.js');

// A server that greets every connection with its name (so the client knows whom it reached).
const GREETER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("listening", flush=True)
while True:
    c, a = s.accept(); print("ACCEPTED", a[0], flush=True)
    c.sendall(("I am " + sys.argv[3] + "\\n").encode()); c.close()
`;
// Connects and prints what it was told, or the error.
const ASK = `
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    print("GOT", c.recv(100).decode().strip(), flush=True)
except Exception as e: print("ERR", type(e).__name__, flush=True)
`;

const ask = async (node: string, ip: string, port: number) => (await tb.run(node, ['python3', '-c', ASK, ip, String(port)], { preload: true, timeoutMs: 20_000 })).stdout.trim();
const inDirectory = async (host: string, ip: string, port: number) => (await tb.status(host)).directory.some((d: any) => d.overlayIp === ip && d.port === port);
/** True if the directory of `host` lists ip:port at any moment within ms (a refused listener never shows up). */
async function appearsWithin(host: string, ip: string, port: number, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await inDirectory(host, ip, port)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
const listenRefusals = async (host: string, ip: string, port: number) =>
  (await tb.status(host)).connections.filter((c: any) => c.role === 'listen' && c.src === `${ip}:${port}`).map((c: any) => c.reason as string);
/** connect records of `host` towards dst with the path each took. */
const pathsTo = async (host: string, dst: string) => (await tb.status(host)).connections.filter((c: any) => c.role === 'connect' && c.dst === dst).map((c: any) => c.path as string);

t.test("root in a container puts its neighbour's address on lo: it cannot pose as the neighbour", async (t) => {
  const victim = overlayIp('c12');
  const add = await tb.run('c11', ['ip', 'addr', 'add', `${victim}/32`, 'dev', 'lo']);
  t.equal(add.code, 0, `c11 (root) added ${victim} to its lo: ${add.stderr}`);
  t.teardown(() => tb.run('c11', ['ip', 'addr', 'del', `${victim}/32`, 'dev', 'lo']));
  const impostor = tb.start('c11', ['python3', '-c', GREETER, victim, '7301', 'c11-impostor'], { preload: true });
  await impostor.waitFor(/listening/);
  t.notOk(await appearsWithin('h2', victim, 7301, 1500), "the impostor's listener never reaches the other host's directory");
  t.match((await listenRefusals('h1', victim, 7301)).join(), /not registered for the caller/, 'h1 says why it refused the listener');
  t.match(await ask('c21', victim, 7301), /^ERR ConnectionRefusedError/, 'a preloaded client on h2 reaches c12 over the overlay (nothing listens there), never the impostor');

  // Control: the owner makes the same steps and gets the fast path, even with the impostor still up.
  const owner = tb.start('c12', ['python3', '-c', GREETER, victim, '7301', 'c12'], { preload: true });
  await owner.waitFor(/listening/);
  await tb.waitListener('h2', victim, 7301);
  t.equal(await ask('c21', victim, 7301), 'GOT I am c12', "the client reaches c12 itself");
  t.ok((await pathsTo('h2', `${victim}:7301`)).includes('host-network'), 'on the host network (accelerated)');
  t.notMatch(impostor.output(), /ACCEPTED/, 'the impostor accepted nothing');
  await tb.stop(impostor);
  await tb.stop(owner);
});

t.test('a process in a fresh user+network namespace (unshare -Urn) is not any container', async (t) => {
  const victim = overlayIp('c12');
  // Everything a process can do to look like c12: its own namespace, c12's address on lo.
  const cmd = `ip link set lo up && ip addr add ${victim}/32 dev lo && exec env LD_PRELOAD=${LIB} VNET_PREFIX=${VNET} python3 -c '${GREETER.replace(/'/g, `'"'"'`)}' ${victim} 7302 unshared-impostor`;
  const impostor = tb.start('c11', ['unshare', '-Urn', 'sh', '-c', cmd]);
  await impostor.waitFor(/listening/);
  t.notOk(await appearsWithin('h2', victim, 7302, 1500), 'its listener is not published');
  t.match((await listenRefusals('h1', victim, 7302)).join(), /network namespace is not registered/, 'h1 refused it as unregistered');
  t.match(await ask('c21', victim, 7302), /^ERR ConnectionRefusedError/, 'the client never reaches the impostor');
  await tb.stop(impostor);

  // Control: the same listener from the registered container, on its own address, is accelerated.
  const own = tb.start('c11', ['python3', '-c', GREETER, overlayIp('c11'), '7302', 'c11'], { preload: true });
  await own.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c11'), 7302);
  t.equal(await ask('c21', overlayIp('c11'), 7302), 'GOT I am c11', 'c11 on its own address is reached');
  t.ok((await pathsTo('h2', `${overlayIp('c11')}:7302`)).includes('host-network'), 'on the host network');
  await tb.stop(own);
});

t.test('a namespace made by hand is served only after root registers it, and not after it is unregistered', async (t) => {
  // c19 on h1: made by hand (no CNI), attached to h1's bridge like a container.
  const ns = `${tb.prefix}-c19`, hns = `${tb.prefix}-h1`, ip = overlayIp('c19');
  const sh = (args: string[]) => spawnSync('ip', args, { encoding: 'utf8' });
  t.teardown(() => sh(['netns', 'del', ns]));
  for (const a of [
    ['netns', 'add', ns],
    ['-n', hns, 'link', 'add', 'vc19', 'mtu', '1450', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns],
    ['-n', hns, 'link', 'set', 'vc19', 'master', 'cni0', 'up'],
    ['-n', ns, 'link', 'set', 'lo', 'up'],
    ['-n', ns, 'link', 'set', 'eth0', 'up'],
    ['-n', ns, 'addr', 'add', `${ip}/24`, 'dev', 'eth0'],
    ['-n', ns, 'route', 'add', '10.244.0.0/16', 'via', '10.244.1.1'],
  ]) {
    const r = sh(a);
    if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr}`);
  }
  const freeflow = (args: string[]) => tb.run('h1', ['node', FREEFLOW, ...args]);

  const before = tb.start('c19', ['python3', '-c', GREETER, '0.0.0.0', '7303', 'c19'], { preload: true });
  await before.waitFor(/listening/);
  t.notOk(await appearsWithin('h2', ip, 7303, 1000), 'unregistered: the listener stays on the overlay');
  t.equal(await ask('c21', ip, 7303), 'GOT I am c19', 'and is reached over the overlay');
  const text = (await freeflow(['status'])).stdout;
  t.match(text, /network namespace is not registered/, '`freeflow status` says why');
  await tb.stop(before);

  const stolen = await freeflow(['register', '--netns', `/run/netns/${ns}`, '--ip', overlayIp('c12')]);
  t.not(stolen.code, 0, 'registering another container\'s address is refused');
  t.match(stolen.stderr, /already registered/, `with a clear error: ${stolen.stderr.trim()}`);
  const notRoot = await tb.run('h1', ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', 'node', FREEFLOW, 'register', '--netns', `/run/netns/${ns}`, '--ip', ip]);
  t.not(notRoot.code, 0, 'a non-root user cannot register');

  const reg = await freeflow(['register', '--netns', `/run/netns/${ns}`, '--ip', ip]);
  t.equal(reg.code, 0, `root registers it: ${reg.stdout.trim()} ${reg.stderr.trim()}`);
  t.ok((await tb.status('h1')).registered.some((r: any) => r.ips.includes(ip)), 'the router lists the registration at once');
  const after = tb.start('c19', ['python3', '-c', GREETER, '0.0.0.0', '7304', 'c19'], { preload: true });
  await after.waitFor(/listening/);
  await tb.waitListener('h2', ip, 7304);
  t.equal(await ask('c21', ip, 7304), 'GOT I am c19', 'registered: reached');
  t.ok((await pathsTo('h2', `${ip}:7304`)).includes('host-network'), 'on the host network');
  await tb.stop(after);

  const unreg = await freeflow(['unregister', '--netns', `/run/netns/${ns}`]);
  t.equal(unreg.code, 0, `root unregisters it: ${unreg.stdout.trim()}`);
  const again = tb.start('c19', ['python3', '-c', GREETER, '0.0.0.0', '7305', 'c19'], { preload: true });
  await again.waitFor(/listening/);
  t.notOk(await appearsWithin('h2', ip, 7305, 1000), 'unregistered again: back on the overlay');
  await tb.stop(again);
});

t.test('the CNI plugin speaks CNI: VERSION, errors, CHECK, DEL and ADD', async (t) => {
  const plugin = join(ROOT, 'build/cni/freeflow');
  const conflist = `/tmp/${tb.prefix}/cni/h1.conflist`;
  const conf = JSON.parse(readFileSync(conflist, 'utf8'));
  const ffConf = { ...conf.plugins[1], cniVersion: conf.cniVersion, name: conf.name };
  const cached = JSON.parse(readFileSync(`${conflist}.${tb.prefix}-c12.result.json`, 'utf8'));
  const call = (command: string, netconf: unknown, env: Record<string, string> = {}) =>
    tb.run('h1', ['env', `CNI_COMMAND=${command}`, `CNI_CONTAINERID=${tb.prefix}-c12`, `CNI_NETNS=/run/netns/${tb.prefix}-c12`, 'CNI_IFNAME=eth0', 'CNI_PATH=/usr/lib/cni', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), 'sh', '-c', `printf '%s' '${JSON.stringify(netconf)}' | ${plugin}`]);

  const v = await call('VERSION', {});
  t.same(JSON.parse(v.stdout).supportedVersions.includes('1.0.0'), true, 'VERSION lists 1.0.0');
  const noPrev = await call('ADD', ffConf);
  t.equal(noPrev.code, 1, 'ADD without prevResult fails');
  t.equal(JSON.parse(noPrev.stdout).code, 7, `with the spec's error object: ${noPrev.stdout.trim()}`);
  const check = await call('CHECK', { ...ffConf, prevResult: cached });
  t.equal(check.code, 0, `CHECK of a registered container passes ${check.stdout}`);

  const del = await call('DEL', ffConf);
  t.equal(del.code, 0, 'DEL succeeds');
  t.notOk((await tb.status('h1')).registered.some((r: any) => r.ips.includes(overlayIp('c12'))), 'the router dropped c12 at once');
  const checkGone = await call('CHECK', { ...ffConf, prevResult: cached });
  t.equal(checkGone.code, 1, 'CHECK now fails');
  const plain = tb.start('c12', ['python3', '-c', GREETER, '0.0.0.0', '7306', 'c12'], { preload: true });
  await plain.waitFor(/listening/);
  t.notOk(await appearsWithin('h2', overlayIp('c12'), 7306, 1000), 'a DEL-ed container gets the plain overlay');
  await tb.stop(plain);
  t.equal((await call('DEL', ffConf)).code, 0, 'a second DEL also succeeds (the spec requires it)');

  const add = await call('ADD', { ...ffConf, prevResult: cached });
  t.equal(add.code, 0, 'ADD registers it again');
  t.same(JSON.parse(add.stdout).ips, cached.ips, 'and passes prevResult on');
  const back = tb.start('c12', ['python3', '-c', GREETER, '0.0.0.0', '7307', 'c12'], { preload: true });
  await back.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c12'), 7307);
  t.equal(await ask('c21', overlayIp('c12'), 7307), 'GOT I am c12', 'and it is accelerated again');
  await tb.stop(back);
});

t.test('a restarted router knows the registrations from its state directory', async (t) => {
  await tb.stopRouter('h1');
  await tb.startRouter('h1');
  await tb.waitPeers();
  const s = await tb.status('h1');
  t.ok([overlayIp('c11'), overlayIp('c12')].every((ip) => s.registered.some((r: any) => r.ips.includes(ip))), 'both containers are still registered');
  const srv = tb.start('c11', ['python3', '-c', GREETER, '0.0.0.0', '7308', 'c11'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c11'), 7308);
  t.equal(await ask('c21', overlayIp('c11'), 7308), 'GOT I am c11', 'and serves them');
  await tb.stop(srv);
});

// A preloaded client that makes a few connections (so the library holds prefetched, announced
// host sockets), prints the host port of each spare, and holds them until the file argv[3] exists.
const HOLDER = `
import os, socket, sys, time
for i in range(4):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); c.recv(100); c.close()
for fd in map(int, os.listdir("/proc/self/fd")):
    try:
        s = socket.socket(fileno=os.dup(fd)); name = s.getsockname(); s.detach()
    except OSError: continue
    if isinstance(name, tuple) and name[0].startswith("192.168.77."): print("SPARE", name[1], flush=True)
print("HOLDING", flush=True)
while not os.path.exists(sys.argv[3]): time.sleep(0.05)
`;
// A host process that takes a given host port and dials a host endpoint from it.
const TAKER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind((sys.argv[1], int(sys.argv[2])))
except OSError as e: print("BIND", type(e).__name__, flush=True); sys.exit()
print("BOUND", flush=True); s.settimeout(3)
try:
    s.connect((sys.argv[3], int(sys.argv[4]))); print("GOT", s.recv(100).decode().strip(), flush=True)
except Exception as e: print("ERR", type(e).__name__, flush=True)
`;

t.test('an announced host port cannot be taken, and after its socket closed it admits nobody', async (t) => {
  const srv = tb.start('c21', ['python3', '-c', GREETER, '0.0.0.0', '7309', 'c21'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7309);
  const entry = (await tb.status('h1')).directory.find((d: any) => d.overlayIp === overlayIp('c21') && d.port === 7309);
  const go = `/tmp/${tb.prefix}/release-spares`;
  const holder = tb.start('c11', ['python3', '-c', HOLDER, overlayIp('c21'), '7309', go], { preload: true });
  await holder.waitFor(/HOLDING/);
  const spares = [...holder.output().matchAll(/SPARE (\d+)/g)].map((m) => Number(m[1]));
  t.ok(spares.length >= 1, `the client holds announced spare host sockets (ports ${spares.join(', ')})`);
  t.equal((await tb.status('h2')).pairing.announced >= spares.length, true, "h2's admission tables hold their announcements");
  const take = (port: number) => tb.run('h1', ['python3', '-c', TAKER, hostIp('h1'), String(port), entry.hostIp, String(entry.hostPort)]);

  const accepted = () => (srv.output().match(/ACCEPTED/g) ?? []).length;
  const acceptedBefore = accepted();
  const whileHeld = await take(spares[0]);
  t.equal(whileHeld.stdout.trim(), 'BIND OSError', 'while the socket lives, a host process cannot bind its port (even with SO_REUSEADDR)');
  spawnSync('touch', [go]);
  await holder.exited;
  const afterClose = await take(spares[0]);
  t.match(afterClose.stdout, /BOUND/, 'once the socket is gone, the port is free again');
  t.match(afterClose.stdout, /ERR ConnectionRefusedError/, 'but a connection from it to the host listener is refused on its own host (the announcement admits nobody)');
  t.equal(accepted(), acceptedBefore, 'c21 never saw a connection from it');

  // Control: the legitimate client's own connections are admitted as c11.
  t.equal(await ask('c11', overlayIp('c21'), 7309), 'GOT I am c21', 'the legitimate client is served');
  await srv.waitFor(/ACCEPTED 10\.244\.1\.11/);
  t.ok((await pathsTo('h1', `${overlayIp('c21')}:7309`)).includes('host-network'), 'on the host network');
  await tb.stop(srv);
});

t.test('one container cannot hold the router with many connections; another is still served', async (t) => {
  const { MAX_SESSIONS_PER_CONTAINER } = await import('../src/router/router.js');
  const flood = tb.start('c11', ['node', '--import', 'tsx', join(ROOT, 'test/lib/many-sessions.ts'), join(tb.socketDir('h1'), 'ffrouter.sock'), '1000', overlayIp('c11')], { env: { NODE_PATH: join(ROOT, 'node_modules') } });
  const m = await flood.waitFor(/\{"opened".*\}/, 60_000);
  const r = JSON.parse(m[0]);
  t.equal(r.opened, 1000, 'the container opened 1000 router connections');
  t.ok(r.served > 0 && r.served <= MAX_SESSIONS_PER_CONTAINER, `the router served at most ${MAX_SESSIONS_PER_CONTAINER} of them (${r.served})`);
  t.equal(r.closed, 1000 - r.served, `and closed the others (${r.closed}; unanswered ${r.silent})`);
  // With the flood's connections still held: the router answers, and another container is served.
  t.ok((await tb.status('h1')).pid, 'the router still answers');
  const srv = tb.start('c21', ['python3', '-c', GREETER, '0.0.0.0', '7310', 'c21'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7310);
  t.equal(await ask('c12', overlayIp('c21'), 7310), 'GOT I am c21', 'c12 (same host, another container) is served');
  t.ok((await pathsTo('h1', `${overlayIp('c21')}:7310`)).includes('host-network'), 'on the host network');
  await tb.stop(flood);
  await tb.stop(srv);
});

t.test('a router out of descriptors does not spin, and serves again once descriptors are free', async (t) => {
  const dir = `/tmp/${tb.prefix}/lowfd`;
  const lowSock = join(dir, 'lowfd.sock');
  const r = tb.start('h1', ['prlimit', '--nofile=160', 'node', FREEFLOW, 'router', '--name', 'lowfd', '--socket-dir', dir, '--peers', '']);
  await r.waitFor(/router started/, 60_000);
  const pid = (await fetchStatus(lowSock, 5000)).pid; // this router's, whatever else runs on the machine
  const cpu = () => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).reduce((a, b) => a + Number(b), 0) / 100;
  const flood = tb.start('c11', ['node', '--import', 'tsx', join(ROOT, 'test/lib/many-sessions.ts'), lowSock, '250', overlayIp('c11')], { env: { NODE_PATH: join(ROOT, 'node_modules') } });
  const f = JSON.parse((await flood.waitFor(/\{"opened".*\}/, 60_000))[0]);
  t.ok(f.silent > 0, `the router ran out of descriptors: ${f.served} of ${f.opened} connections served, ${f.silent} pending`);
  await new Promise((res) => setTimeout(res, 500));
  const c0 = cpu();
  await new Promise((res) => setTimeout(res, 3000));
  const spent = cpu() - c0;
  t.ok(spent < 0.5, `with connections pending that it cannot accept, the router used ${spent.toFixed(2)} CPU-s in 3 s (a busy loop would use ~3)`);
  t.equal(r.output().split('\n').filter((l) => l.includes('pausing accepts')).length, 1, 'it said once that it paused accepting');
  // The flood ends: its connections close, the router gets its descriptors back and serves again
  // (until 2026-12-02 it exited here: the pause timer was all that kept its event loop alive).
  await tb.stop(flood);
  let answered = false;
  for (let i = 0; i < 50 && !answered; i++) {
    const q = await tb.run('c11', ['node', '--import', 'tsx', join(ROOT, 'test/lib/raw-request.ts'), lowSock, 'CONNECT', overlayIp('c11'), '0', '10.244.9.9', '9']);
    answered = /"type":5/.test(q.stdout);
    if (!answered) await new Promise((res) => setTimeout(res, 200));
  }
  t.ok(answered, 'after the flood, a new client is answered');
  t.equal(r.proc.exitCode, null, 'the router is still running');
  t.match(r.output(), /accepting router connections again/, 'and says it accepts again');
  await tb.stop(r);
});
