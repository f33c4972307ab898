// The cluster key and the routers' handshake, without a network: the key file's format and the
// checks on it (src/router/cluster-key.ts), `freeflow keygen`, and the handshake's logic
// (src/router/peer-auth.ts): both ends with one key agree, anything else is refused.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PeerAuth } from '../src/protocol/codec.js';
import { ClusterKeyError, clusterKeyFor, generateKeyFile, KEY_FILE_TAG, loadKeyFile, parseKeyFile } from '../src/router/cluster-key.js';
import { PeerHandshake, peerProof, type HandshakeOptions } from '../src/router/peer-auth.js';
import { ROOT } from './lib/testbed.js';

const dir = mkdtempSync(join(tmpdir(), 'ffkey-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, text: string, mode = 0o600) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
};

t.test('freeflow keygen prints one fresh key line that loads', async (t) => {
  const run = () => spawnSync('node', [join(ROOT, 'bin/freeflow.js'), 'keygen'], { encoding: 'utf8' });
  const [a, b] = [run(), run()];
  t.equal(a.status, 0, `exit 0 (${a.stderr})`);
  t.match(a.stdout, new RegExp(`^${KEY_FILE_TAG} [0-9a-f]{${2 * PeerAuth.KEY_SIZE}}\\n$`), 'one line: tag and 64 hex digits');
  t.not(a.stdout, b.stdout, 'a new key every time');
  t.equal(loadKeyFile(file('keygen.key', a.stdout)).length, PeerAuth.KEY_SIZE, 'loads as a 32-byte key');
  t.equal(a.stderr, '', 'nothing on stderr');
});

t.test('key file checks say what is wrong and what to do', async (t) => {
  const good = generateKeyFile();
  t.throws(() => loadKeyFile(join(dir, 'missing.key')), { message: /does not exist; make one .*freeflow keygen > .*missing\.key && chmod 600/ }, 'missing');
  t.throws(() => loadKeyFile(file('open.key', good, 0o644)), { message: /accessible by group or others \(mode 0644\).*chmod 600 .*open\.key/ }, 'mode 0644');
  t.throws(() => loadKeyFile(file('group.key', good, 0o640)), { message: /mode 0640/ }, 'mode 0640');
  for (const [name, text] of [
    ['empty', ''],
    ['no tag', good.split(' ')[1]],
    ['short', good.slice(0, 40) + '\n'],
    ['not hex', `${KEY_FILE_TAG} ${'g'.repeat(64)}\n`],
    ['two keys', good + good],
    ['other tag', good.replace(KEY_FILE_TAG, 'freeflow-cluster-key-v2')],
  ])
    t.throws(() => loadKeyFile(file(`${name.replace(/ /g, '-')}.key`, text)), { message: /is not a FreeFlow cluster key: expected one line "freeflow-cluster-key-v1 <64 hex digits>"/ }, `malformed: ${name}`);
  mkdirSync(join(dir, 'adir'), { mode: 0o700 });
  t.throws(() => loadKeyFile(join(dir, 'adir')), ClusterKeyError, 'a directory');
  t.same(loadKeyFile(file('good.key', good)), parseKeyFile(good, 'x'), 'mode 0600 loads');
  t.same(loadKeyFile(file('ro.key', good.trimEnd(), 0o400)), parseKeyFile(good, 'x'), 'mode 0400, no final newline, loads');
});

t.test('a router with peers needs a key; alone it needs none', async (t) => {
  t.throws(() => clusterKeyFor(['192.168.77.2'], undefined), { message: /--peers given but no cluster key.*freeflow keygen > \/etc\/freeflow\/cluster\.key && chmod 600 \/etc\/freeflow\/cluster\.key.*--cluster-key-file/ });
  t.equal(clusterKeyFor([], undefined), undefined, 'no peers, no key: runs alone');
  t.throws(() => clusterKeyFor([], join(dir, 'missing.key')), ClusterKeyError, 'a key file given is checked even alone');
});

// Runs two handshake ends against each other, byte streams crossed; returns what each saw.
function converse(a: PeerHandshake, b: PeerHandshake, afterA = Buffer.alloc(0)) {
  const result = { a: undefined as Buffer | undefined, b: undefined as Buffer | undefined, errA: '', errB: '' };
  const feed = (hs: PeerHandshake, bytes: Buffer, side: 'a' | 'b'): Buffer | undefined => {
    const r = hs.push(bytes);
    if (r.rest) result[side] = r.rest;
    if (r.error && side === 'a') result.errA = r.error;
    if (r.error && side === 'b') result.errB = r.error;
    return r.send;
  };
  const proofB = feed(b, a.hello, 'b');
  const proofA = feed(a, b.hello, 'a');
  if (proofA) feed(b, Buffer.concat([proofA, afterA]), 'b');
  if (proofB) feed(a, proofB, 'a');
  return result;
}

t.test('the handshake: one key agrees; another key, a reflected proof, a wrong address or garbage do not', async (t) => {
  const key = randomBytes(PeerAuth.KEY_SIZE);
  const dialler = (o: Partial<HandshakeOptions> = {}) => new PeerHandshake({ key, role: 'dialler', ownIp: '192.168.77.1', peerIp: '192.168.77.2', ...o });
  const acceptor = (o: Partial<HandshakeOptions> = {}) => new PeerHandshake({ key, role: 'acceptor', ownIp: '192.168.77.2', peerIp: '192.168.77.1', ...o });

  const frames = Buffer.from('frames follow');
  const ok = converse(dialler(), acceptor(), frames);
  t.same([ok.errA, ok.errB], ['', ''], 'no error');
  t.same(ok.a, Buffer.alloc(0), 'the dialler has the acceptor\'s proof');
  t.same(ok.b, frames, 'the acceptor has the dialler\'s proof and gets the bytes after it as frames');

  const other = converse(dialler({ key: randomBytes(PeerAuth.KEY_SIZE) }), acceptor());
  t.match(other.errB, /wrong proof/, 'another key: the acceptor refuses');
  t.match(other.errA, /wrong proof/, 'and the dialler refuses the acceptor');
  t.equal(other.b, undefined, 'no frame reaches the acceptor');

  const nat = converse(dialler({ ownIp: '192.168.77.3' }), acceptor());
  t.match(nat.errB, /wrong proof/, 'a proof made for another host address is refused');

  // Reflection: an acceptor's proof sent back to it as a dialler's.
  const b = acceptor();
  const theirNonce = b.push(dialler().hello);
  t.ok(theirNonce.send, 'the acceptor proves itself once it has a hello');
  t.match(b.push(theirNonce.send!), { error: /wrong proof/, rest: undefined }, 'its own proof replayed to it is refused');

  // A proof computed by hand from the spec's definition is accepted: the definition is the one
  // the C++ side implements (native/rdma/peer_auth.cc).
  const d = dialler();
  const acc = acceptor();
  const accHello = acc.hello;
  d.push(accHello);
  const dn = d.hello.subarray(4), an = accHello.subarray(4);
  t.same(d.push(peerProof(key, 'acceptor', dn, an, '192.168.77.2')).rest, Buffer.alloc(0), 'HMAC(key, label|role|nonces|address) is the proof');

  t.match(acceptor().push(Buffer.from('GET / HTTP/1.1\r\n')), { error: /bad greeting/, send: undefined }, 'garbage is refused at its first four bytes');
  // Hello and a wrong proof in one read: the proof of this end still goes out before the refusal,
  // so that the other end can say "wrong key" rather than "closed".
  const stranger = acceptor({ key: randomBytes(PeerAuth.KEY_SIZE) });
  const dd = dialler();
  const strangerProof = stranger.push(dd.hello).send!;
  const both = dd.push(Buffer.concat([stranger.hello, strangerProof]));
  t.ok(both.send && /wrong proof/.test(both.error ?? ''), 'a wrong proof in the same read as the hello: our proof is sent, then the refusal');
  t.match(dd.push(Buffer.from('more')), { error: /wrong proof/ }, 'and it stays refused');
  const half = acceptor();
  t.same(half.push(dialler().hello.subarray(0, 10)), {}, 'a partial hello waits for more');
  t.throws(() => new PeerHandshake({ key: Buffer.alloc(16), role: 'dialler', ownIp: '1.1.1.1', peerIp: '1.1.1.2' }), /32 bytes/, 'a short key is refused');
});
