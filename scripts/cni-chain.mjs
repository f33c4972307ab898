#!/usr/bin/env node
// What a container runtime (containerd, CRI-O, Podman) does with a CNI network configuration
// list, for the testbed, which has no runtime: ADD runs every plugin in order, each getting the
// previous one's result as prevResult; DEL runs them in reverse order; CHECK in order with the
// cached result. (CNI spec 1.0, "Network configuration lists".) Run it in the namespace the
// plugins must run in (the simulated host's).
//
//   cni-chain.mjs ADD|DEL|CHECK CONFLIST CONTAINER_ID NETNS_PATH IFNAME
// Prints the final result of ADD; the result is also kept next to the conflist for CHECK/DEL.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const CNI_PATH = ['/usr/lib/cni', '/opt/cni/bin', join(root, 'build/cni')];

const [command, conflistPath, containerId, netns, ifname] = process.argv.slice(2);
if (!['ADD', 'DEL', 'CHECK'].includes(command) || !conflistPath || !containerId || !netns || !ifname) {
  console.error('usage: cni-chain.mjs ADD|DEL|CHECK CONFLIST CONTAINER_ID NETNS_PATH IFNAME');
  process.exit(2);
}
const list = JSON.parse(readFileSync(conflistPath, 'utf8'));
const cachePath = `${conflistPath}.${containerId}.result.json`;

function findPlugin(type) {
  for (const dir of CNI_PATH) if (existsSync(join(dir, type))) return join(dir, type);
  throw new Error(`CNI plugin ${type} not found in ${CNI_PATH.join(':')}`);
}

function invoke(cmd, plugin, prevResult) {
  const conf = { ...plugin, cniVersion: list.cniVersion, name: list.name, ...(prevResult ? { prevResult } : {}) };
  try {
    const out = execFileSync(findPlugin(plugin.type), [], {
      input: JSON.stringify(conf),
      env: { PATH: process.env.PATH, CNI_COMMAND: cmd, CNI_CONTAINERID: containerId, CNI_NETNS: netns, CNI_IFNAME: ifname, CNI_PATH: CNI_PATH.join(':') },
      encoding: 'utf8',
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    return out.trim() ? JSON.parse(out) : undefined;
  } catch (err) {
    const msg = err.stdout ? String(err.stdout).trim() : err.message;
    throw new Error(`${plugin.type} ${cmd} failed: ${msg}`);
  }
}

try {
  if (command === 'ADD') {
    let result;
    for (const p of list.plugins) result = invoke('ADD', p, result) ?? result;
    writeFileSync(cachePath, JSON.stringify(result));
    console.log(JSON.stringify(result));
  } else {
    const cached = existsSync(cachePath) ? JSON.parse(readFileSync(cachePath, 'utf8')) : undefined;
    const order = command === 'DEL' ? [...list.plugins].reverse() : list.plugins;
    for (const p of order) invoke(command, p, cached);
    if (command === 'DEL') rmSync(cachePath, { force: true });
  }
} catch (err) {
  console.error(`cni-chain: ${err.message}`);
  process.exit(1);
}
