// The socket directory is shared with containers: the router must not follow what a container
// planted there, must refuse a directory others can write, and containers (which mount it
// read-only) can still reach the router but cannot replace anything in it.
// Decision (docs/security.md, "The shared directory"): a link or file planted at the socket path
// makes the router refuse to start, with what to do; it is never followed, changed or removed.
import t from 'tap';
import { chmodSync, chownSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fetchStatus } from '../src/cli/status-client.js';
import { ROOT, Testbed, overlayIp, type Started } from './lib/testbed.js';

const tb = await Testbed.up(t);
const FREEFLOW = join(ROOT, 'bin/freeflow.js');
const base = `/tmp/${tb.prefix}/shared-dir-test`;
mkdirSync(base, { recursive: true, mode: 0o755 });
chmodSync(base, 0o755);

/** Starts a second router on h1 named `second`, serving dir; resolves once it said it started
 * (running) or exited (its code), whichever comes first (a loaded machine may take seconds to
 * start node: waiting for either, not a fixed time, is what makes "refused" mean refused). */
async function startSecond(dir: string): Promise<{ r: Started; code: number | null | 'running' }> {
  const r = tb.start('h1', ['node', FREEFLOW, 'router', '--name', 'second', '--socket-dir', dir, '--peers', '']);
  const started = r.waitFor(/"router started"/, 60_000).then(() => 'running' as const, () => 'gone' as const);
  const code = await Promise.race([r.exited, started]);
  return { r, code: code === 'gone' ? await r.exited : code };
}

/** As startSecond, then stops it; for the refusals. */
async function tryRouter(dir: string): Promise<{ code: number | null | 'running'; out: string }> {
  const { r, code } = await startSecond(dir);
  if (code === 'running') await tb.stop(r);
  return { code, out: r.output() };
}

t.test('a link or file planted at the socket path is never followed, changed or removed', async (t) => {
  const dir = join(base, 'planted');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const victim = join(base, 'victim');
  writeFileSync(victim, 'precious\n', { mode: 0o600 });
  chmodSync(victim, 0o600);
  const link = join(dir, 'second.sock');
  symlinkSync(victim, link);
  const r = await tryRouter(dir);
  t.not(r.code, 'running', 'the router refuses to start');
  t.match(r.out, /second\.sock exists and is not a socket .*remove it and start again/, 'and says why and what to do');
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the link target keeps its content');
  t.equal(statSync(victim).mode & 0o7777, 0o600, 'and its mode');
  t.ok(lstatSync(link).isSymbolicLink() && readlinkSync(link) === victim, 'the link itself is left as it was');

  const fileDir = join(base, 'planted-file');
  mkdirSync(fileDir, { recursive: true, mode: 0o755 });
  writeFileSync(join(fileDir, 'second.sock'), 'not a socket\n', { mode: 0o644 });
  const f = await tryRouter(fileDir);
  t.not(f.code, 'running', 'a regular file at the socket path: refused too');
  t.equal(readFileSync(join(fileDir, 'second.sock'), 'utf8'), 'not a socket\n', 'and the file is untouched');
});

t.test('a socket directory that is a link, not root\'s, or that others can write, is refused', async (t) => {
  const real = join(base, 'real');
  mkdirSync(real, { recursive: true, mode: 0o755 });
  symlinkSync(real, join(base, 'linked'));
  const linked = await tryRouter(join(base, 'linked'));
  t.not(linked.code, 'running', 'a symlinked directory is refused');
  t.match(linked.out, /not a directory \(a symlink is refused\)/, 'and the router says so');

  for (const [name, mode] of [['world', 0o777], ['group', 0o775]] as const) {
    const dir = join(base, name);
    mkdirSync(dir, { recursive: true });
    chmodSync(dir, mode);
    const r = await tryRouter(dir);
    t.not(r.code, 'running', `a directory of mode ${mode.toString(8)} is refused`);
    t.match(r.out, /writable by group or others .*chmod go-w/, 'with what to do');
  }

  const foreign = join(base, 'foreign');
  mkdirSync(foreign, { recursive: true, mode: 0o755 });
  chownSync(foreign, 65534, 65534);
  const notRoot = await tryRouter(foreign);
  t.not(notRoot.code, 'running', 'a directory owned by another user is refused');
  t.match(notRoot.out, /owned by uid 65534, not by root/, 'and the router says so');

  // A root-owned 0755 directory inside a directory anyone may write (no sticky bit): whoever
  // writes the parent can swap the whole directory, so it is refused too.
  const openParent = join(base, 'open-parent');
  mkdirSync(join(openParent, 'dir'), { recursive: true, mode: 0o755 });
  chmodSync(openParent, 0o777);
  const swappable = await tryRouter(join(openParent, 'dir'));
  t.not(swappable.code, 'running', 'a directory in a world-writable parent is refused');
  t.match(swappable.out, /parent of socket directory .* without the sticky bit/, 'and the router says so');
});

t.test('control: a fresh root-owned directory is served, a stale socket replaced, clients accelerated', async (t) => {
  const dir = join(base, 'fresh');
  const sock = join(dir, 'second.sock');
  const first = await startSecond(dir);
  t.equal(first.code, 'running', `a fresh directory is served (${first.r.output().slice(-300)})`);
  t.equal(statSync(dir).mode & 0o7777, 0o755, 'the router made it 0755');
  t.ok(lstatSync(sock).isSocket(), 'its socket is there');
  t.equal(lstatSync(sock).mode & 0o777, 0o777, 'with mode 0777, set before the socket got its name');
  // A router killed outright leaves its socket behind: the next one replaces that stale socket.
  await tb.stop(first.r);
  t.ok(lstatSync(sock).isSocket(), 'the killed router left a stale socket');
  const { r, code } = await startSecond(dir);
  t.equal(code, 'running', 'the next router starts over the stale socket');
  t.ok(lstatSync(sock).isSocket() && (lstatSync(sock).mode & 0o777) === 0o777, 'and serves a fresh one');

  // Preloaded programs using this router (same host: c12 listens, c11 connects) are accelerated.
  const env = { FFR_SOCKET_DIR: dir, FFR_NAME: 'second' };
  const srv = tb.start('c12', ['python3', '-c', 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 7502)); s.listen(); print("listening", flush=True)\nwhile True: c,a=s.accept(); c.sendall(b"hi"); c.close()'], { preload: true, env });
  await srv.waitFor(/listening/);
  for (let i = 0; i < 100 && !(await fetchStatus(sock, 2000)).directory.some((d: any) => d.port === 7502); i++) await sleep(50);
  const c = await tb.run('c11', ['python3', '-c', `import socket; c=socket.create_connection(("${overlayIp('c12')}", 7502), timeout=3); print("GOT", c.recv(10))`], { preload: true, env });
  t.match(c.stdout, /GOT b'hi'/, `the client reaches the server (${c.stderr.trim()})`);
  const s = await fetchStatus(sock, 2000);
  t.ok((s.counters['connect:same-host-unix'] ?? 0) + (s.counters['connect:same-host'] ?? 0) >= 1, `through the router in the fresh directory (${JSON.stringify(s.counters)})`);
  await tb.stop(srv);
  await tb.stop(r);
});

t.test('a container with the directory mounted read-only reaches the router but cannot replace anything', async (t) => {
  const dir = tb.socketDir('h1');
  const srv = tb.start('c21', ['python3', '-c', 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 7501)); s.listen(); print("listening", flush=True)\nwhile True: c,a=s.accept(); c.sendall(b"hi"); c.close()'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7501);
  const before = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  const sockBefore = lstatSync(join(dir, 'ffrouter.sock'));
  // In a private mount namespace (nothing leaks to the host's mounts), as `docker run -v
  // dir:dir:ro` gives it: the directory read-only, then write attempts, then a real connection.
  const inner = [
    `mount --bind -o ro ${dir} ${dir}`,
    `grep -q " ${dir} ro," /proc/self/mountinfo && echo MOUNTED-RO`,
    `(touch ${dir}/planted 2>&1 && echo WROTE) || echo REFUSED-WRITE`,
    `(cp /bin/true ${dir}/libfsocket.so 2>&1 && echo REPLACED) || echo REFUSED-REPLACE`,
    `(rm -f ${dir}/ffrouter.sock 2>&1 && echo REMOVED) || echo REFUSED-REMOVE`,
    `(ln -sf /etc/passwd ${dir}/ffrouter.sock 2>&1 && echo LINKED) || echo REFUSED-LINK`,
    `python3 -c 'import socket; c=socket.create_connection(("${overlayIp('c21')}", 7501), timeout=3); print("GOT", c.recv(10))'`,
  ].join('; ');
  const r = await tb.run('c11', ['unshare', '-m', '--propagation', 'private', 'sh', '-c', inner], { preload: true });
  t.match(r.stdout, /MOUNTED-RO/, 'the directory is a read-only mount in that container');
  t.match(r.stdout, /REFUSED-WRITE/, 'it cannot create a file there');
  t.match(r.stdout, /REFUSED-REPLACE/, 'nor replace a library');
  t.match(r.stdout, /REFUSED-REMOVE/, 'nor remove the router\'s socket');
  t.match(r.stdout, /REFUSED-LINK/, 'nor plant a link in its place');
  t.notMatch(r.stdout, /WROTE|REPLACED|REMOVED|LINKED/, 'nothing was written');
  t.match(r.stdout, /GOT b'hi'/, `but connects through the router (${r.stdout.trim()} ${r.stderr.trim()})`);
  t.ok(((await tb.status('h1')).counters['connect:host-network'] ?? 0) > before, 'on the host network');
  t.equal(lstatSync(join(dir, 'ffrouter.sock')).ino, sockBefore.ino, 'the router\'s socket is the same one');
  await tb.stop(srv);
});
