// The socket directory is shared with containers: the router must not follow what a container
// planted there, must refuse a directory others can write, and containers (which mount it
// read-only) can still reach the router but cannot replace anything in it.
import t from 'tap';
import { chmodSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, Testbed, overlayIp } from './lib/testbed.js';

const tb = await Testbed.up(t);
const FREEFLOW = join(ROOT, 'bin/freeflow.js');
const base = `/tmp/${tb.prefix}/shared-dir-test`;
mkdirSync(base, { recursive: true });

/** Starts a second router on h1 with its own name and socket dir; resolves with its exit code
 * and output once it exits or says it started (then it is stopped: 'running'). */
async function tryRouter(dir: string): Promise<{ code: number | null | 'running'; out: string }> {
  const r = tb.start('h1', ['node', FREEFLOW, 'router', '--name', 'second', '--socket-dir', dir, '--peers', '']);
  const started = r.waitFor(/router started/, 60_000).then(() => true, () => false);
  await Promise.race([r.exited, started]);
  if (r.output().includes('router started')) {
    await tb.stop(r);
    return { code: 'running', out: r.output() };
  }
  return { code: await r.exited, out: r.output() };
}

t.test('a link planted at the socket path is never followed', async (t) => {
  const dir = join(base, 'planted');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const victim = join(base, 'victim');
  writeFileSync(victim, 'precious\n', { mode: 0o600 });
  symlinkSync(victim, join(dir, 'second.sock'));
  const r = await tryRouter(dir);
  t.not(r.code, 'running', 'the router refuses to start');
  t.match(r.out, /exists and is not a socket/, 'and says why');
  t.equal(readFileSync(victim, 'utf8'), 'precious\n', 'the link target keeps its content');
  t.equal(statSync(victim).mode & 0o777, 0o600, 'and its mode');
});

t.test('a socket directory that is a link, or that others can write, is refused', async (t) => {
  const real = join(base, 'real');
  mkdirSync(real, { recursive: true, mode: 0o755 });
  symlinkSync(real, join(base, 'linked'));
  const linked = await tryRouter(join(base, 'linked'));
  t.match(linked.out, /not a directory \(a symlink is refused\)/, 'a symlinked directory is refused');
  const open = join(base, 'open');
  mkdirSync(open, { recursive: true });
  chmodSync(open, 0o777);
  const world = await tryRouter(open);
  t.match(world.out, /writable by group or others/, 'a world-writable directory is refused');
  // Control: a fresh root-owned 0755 directory is served.
  const ok = await tryRouter(join(base, 'fresh'));
  t.equal(ok.code, 'running', `a fresh root-owned directory is served (${ok.out.slice(-300)})`);
});

t.test('a container with the directory mounted read-only reaches the router but cannot replace anything', async (t) => {
  const dir = tb.socketDir('h1');
  const srv = tb.start('c21', ['python3', '-c', 'import socket; s=socket.socket(); s.bind(("0.0.0.0", 7501)); s.listen(); print("listening", flush=True)\nwhile True: c,a=s.accept(); c.sendall(b"hi"); c.close()'], { preload: true });
  await srv.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7501);
  const before = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  const inner = [
    `mount --bind -o ro ${dir} ${dir}`,
    `(touch ${dir}/planted 2>&1 && echo WROTE) || echo REFUSED-WRITE`,
    `(cp /bin/true ${dir}/libfsocket.so 2>&1 && echo REPLACED) || echo REFUSED-REPLACE`,
    `python3 -c 'import socket; c=socket.create_connection(("${overlayIp('c21')}", 7501), timeout=3); print("GOT", c.recv(10))'`,
  ].join('; ');
  const r = await tb.run('c11', ['unshare', '-m', '--propagation', 'private', 'sh', '-c', inner], { preload: true });
  t.match(r.stdout, /REFUSED-WRITE/, 'it cannot create a file there');
  t.match(r.stdout, /REFUSED-REPLACE/, 'nor replace a library');
  t.match(r.stdout, /GOT b'hi'/, `but connects through the router (${r.stdout.trim()} ${r.stderr.trim()})`);
  t.ok(((await tb.status('h1')).counters['connect:host-network'] ?? 0) > before, 'on the host network');
  await tb.stop(srv);
});
