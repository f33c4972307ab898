// FreeFlow's chained CNI plugin (CNI spec 1.0; `build/cni/freeflow` runs `freeflow cni`). The
// container runtime calls it after the network plugin, like `portmap` or `bandwidth`: on ADD it
// registers the container's network namespace with the addresses the network plugin assigned
// (prevResult) in the local router's registry, on DEL it removes them. Config (docs/security.md):
//   {"type": "freeflow", "routerName": "ffrouter", "socketDir": "/freeflow", "stateDir": "/run/freeflow/ffrouter"}
import { join } from 'node:path';
import { defaultStateDir, readRegistrations, register, RegistryError, unregister } from './store.js';
import { notifyRouter } from './notify.js';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0'];

/** A CNI error: printed as the spec's error object, exit status 1. */
export class CniError extends Error {
  constructor(readonly code: number, msg: string, readonly details = '') {
    super(msg);
  }
}

// Error codes of the CNI spec ("Error" section).
const INCOMPATIBLE_VERSION = 1;
const INVALID_ENV = 4;
const IO_FAILURE = 5;
const DECODING_FAILURE = 6;
const INVALID_CONFIG = 7;

interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  routerName?: string;
  socketDir?: string;
  stateDir?: string;
  prevResult?: { ips?: { address: string; interface?: number }[]; interfaces?: { name: string; sandbox?: string }[] };
}

function parseConf(stdin: string): NetConf {
  let conf: NetConf;
  try {
    conf = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(DECODING_FAILURE, `network configuration is not JSON: ${(err as Error).message}`);
  }
  if (!conf || typeof conf.name !== 'string' || !conf.name) throw new CniError(INVALID_CONFIG, 'network configuration has no "name"');
  if (typeof conf.cniVersion !== 'string' || !SUPPORTED_VERSIONS.includes(conf.cniVersion))
    throw new CniError(INCOMPATIBLE_VERSION, `unsupported cniVersion ${JSON.stringify(conf.cniVersion)}; supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  return conf;
}

/** IPv4 addresses the previous plugin gave the container's own interfaces. */
function containerIps(conf: NetConf): string[] {
  const prev = conf.prevResult;
  if (!prev || !Array.isArray(prev.ips)) throw new CniError(INVALID_CONFIG, 'freeflow is a chained plugin: it needs a prevResult with "ips" (put it after the network plugin in the conflist)');
  const ifs = prev.interfaces ?? [];
  const ips = prev.ips
    .filter((ip) => ip.interface === undefined || ifs[ip.interface]?.sandbox)
    .map((ip) => String(ip.address).split('/')[0])
    .filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a));
  if (!ips.length) throw new CniError(INVALID_CONFIG, 'prevResult assigns no IPv4 address to the container');
  return ips;
}

function need(env: NodeJS.ProcessEnv, name: string): string {
  const v = env[name];
  if (!v) throw new CniError(INVALID_ENV, `${name} is not set`);
  return v;
}

/** Runs one CNI command; returns what to print on stdout ('' for none). */
export async function runCni(env: NodeJS.ProcessEnv, stdin: string): Promise<string> {
  const command = env.CNI_COMMAND;
  if (command === 'VERSION') return JSON.stringify({ cniVersion: '1.0.0', supportedVersions: SUPPORTED_VERSIONS });
  const conf = parseConf(stdin);
  const routerName = conf.routerName ?? 'ffrouter';
  const stateDir = conf.stateDir ?? defaultStateDir(routerName);
  const socket = join(conf.socketDir ?? '/freeflow', `${routerName}.sock`);
  const containerId = need(env, 'CNI_CONTAINERID');
  try {
    switch (command) {
      case 'ADD': {
        const ips = containerIps(conf);
        register(stateDir, need(env, 'CNI_NETNS'), ips, conf.name, containerId);
        await tell(socket);
        return JSON.stringify({ ...conf.prevResult, cniVersion: conf.cniVersion });
      }
      case 'DEL':
        // The spec: DEL succeeds even when the namespace or the registration is already gone.
        unregister(stateDir, { netnsPath: env.CNI_NETNS || undefined, containerId });
        await tell(socket);
        return '';
      case 'CHECK': {
        const ips = containerIps(conf);
        const reg = readRegistrations(stateDir).find((r) => r.containerId === containerId && r.network === conf.name);
        if (!reg) throw new CniError(IO_FAILURE, `container ${containerId} is not registered with the FreeFlow router`);
        const missing = ips.filter((ip) => !reg.ips.includes(ip));
        if (missing.length) throw new CniError(IO_FAILURE, `registration of ${containerId} lacks ${missing.join(', ')}`);
        return '';
      }
      default:
        throw new CniError(INVALID_ENV, `unknown CNI_COMMAND ${JSON.stringify(command)}`);
    }
  } catch (err) {
    if (err instanceof RegistryError) throw new CniError(IO_FAILURE, err.message);
    throw err;
  }
}

async function tell(socket: string): Promise<void> {
  // A router that is down reads the registry when it starts; one that refuses is misconfigured.
  const r = await notifyRouter(socket).catch((err: Error) => `error: ${err.message}`);
  if (r !== 'reloaded' && r !== 'no-router') process.stderr.write(`freeflow cni: router at ${socket} did not reload its registry (${r})\n`);
}

export function cniErrorJson(err: unknown, cniVersion = '1.0.0'): string {
  const e = err instanceof CniError ? err : new CniError(IO_FAILURE, (err as Error).message);
  return JSON.stringify({ cniVersion, code: e.code, msg: e.message, details: e.details });
}
