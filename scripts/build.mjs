#!/usr/bin/env node
// `npm run build`: wire protocol headers, the native addon, libfsocket.so, the test programs.
// The addon is built against this machine's Node headers (--nodedir), never downloaded ones.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, cwd = root) => {
  console.log(`> ${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { cwd, stdio: 'inherit' });
};

function nodeDir() {
  // Debian/NodeSource packages put the headers in /usr/include/node; a tarball install in
  // <prefix>/include/node. node-gyp wants the prefix.
  const prefix = join(dirname(process.execPath), '..');
  for (const dir of [prefix, '/usr', '/usr/local'])
    if (existsSync(join(dir, 'include/node/node_api.h'))) return dir;
  throw new Error('Node headers not found (include/node/node_api.h); install the nodejs headers package');
}

run('node', ['scripts/gen-wire.mjs']);
const gyp = join(root, 'node_modules/node-gyp/bin/node-gyp.js');
const nativeDir = join(root, 'native');
const mk = join(nativeDir, 'build/Makefile');
if (!existsSync(mk) || statSync(join(nativeDir, 'binding.gyp')).mtimeMs > statSync(mk).mtimeMs) run('node', [gyp, 'configure', `--nodedir=${nodeDir()}`], nativeDir);
run('node', [gyp, 'build', '-j', '2'], nativeDir);
run('make', ['-s', '-C', 'libfsocket']);
run('make', ['-s', '-C', 'libfsocket/verbs']);
run('make', ['-s', '-C', 'test/rdma']);
run('make', ['-s', '-C', 'test/apps']);
