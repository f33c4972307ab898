// The `freeflow` command: `freeflow router` runs a host's router, `freeflow status` asks it,
// `freeflow keygen` makes the cluster key the routers prove to each other.
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { createLogger } from '../log.js';
import { Limits, PeerAuth } from '../protocol/codec.js';
import { Router, socketPath } from '../router/router.js';
import { createRdmaExtension } from '../router/rdma/extension.js';
import { clusterKeyFor, DEFAULT_KEY_PATH, generateKeyFile } from '../router/cluster-key.js';
import { hostAddressIn, inPrefix, parsePrefix } from './host-address.js';
import { fetchStatus, formatStatus, waitForStatus } from './status-client.js';
import { defaultStateDir, parseIps, register, unregister } from '../registry/store.js';
import { notifyRouter } from '../registry/notify.js';
import { cniErrorJson, runCni } from '../registry/cni.js';

const common = {
  name: { type: 'string', default: process.env.FFR_NAME || 'ffrouter', describe: 'router name; the socket is <socket-dir>/<name>.sock (env FFR_NAME)' },
  'socket-dir': { type: 'string', default: process.env.FFR_SOCKET_DIR || '/freeflow', describe: 'directory shared with containers (env FFR_SOCKET_DIR)' },
} as const;

const stateDirOption = {
  'state-dir': {
    type: 'string',
    default: process.env.FFR_STATE_DIR,
    defaultDescription: '/run/freeflow/<name>',
    describe: 'root-only directory of the router\'s registry of container network namespaces, never shared with containers (env FFR_STATE_DIR)',
  },
} as const;

/** Registration changes are root's on the host: the registry is what makes a container who it is. */
function needRoot(cmd: string): void {
  if (process.getuid?.() !== 0) throw new Error(`${cmd} must run as root on the host`);
}

async function tellRouter(socketDir: string, name: string): Promise<void> {
  const path = socketPath(socketDir, name);
  const r = await notifyRouter(path);
  if (r === 'no-router') console.error(`freeflow: no router at ${path}; it reads the registration when it starts`);
  else if (r === 'refused') throw new Error(`the router at ${path} refused to reload its registry (run this as root in the host network namespace)`);
}

function splitList(v: unknown): string[] {
  const items = Array.isArray(v) ? v : v === undefined ? [] : [v];
  return items.flatMap((x) => String(x).split(/[\s,]+/)).filter(Boolean);
}

/** yargs coerce for numeric options: a clear error instead of NaN reaching the router. */
function integerIn(name: string, min: number, max: number) {
  return (v: unknown): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer from ${min} to ${max}${Number.isNaN(n) ? '' : `, not ${n}`}`);
    return n;
  };
}

await yargs(hideBin(process.argv))
  .scriptName('freeflow')
  .usage('$0 <command> [options]')
  .command(
    'router',
    'run the FreeFlow router of this host (in the host network namespace)',
    (y) =>
      y.options({
        ...common,
        ...stateDirOption,
        'host-ip-prefix': { type: 'string', default: process.env.HOST_IP_PREFIX, describe: 'host network prefix; picks this host\'s address (env HOST_IP_PREFIX)', demandOption: !process.env.HOST_IP_PREFIX },
        peers: { type: 'string', array: true, default: splitList(process.env.FFR_PEERS), describe: 'host addresses of the other routers, comma or space separated (env FFR_PEERS); only these may connect as peers, and only by proving the cluster key. Without peers the router serves its own host alone' },
        'cluster-key-file': {
          type: 'string',
          default: process.env.FFR_CLUSTER_KEY_FILE || undefined,
          defaultDescription: 'none',
          describe: `the cluster's shared key, the same file on every host (env FFR_CLUSTER_KEY_FILE); required with --peers; mode 600, root only. Make one with: freeflow keygen > ${DEFAULT_KEY_PATH} && chmod 600 ${DEFAULT_KEY_PATH}`,
        },
        'peer-port': { type: 'number', default: Limits.PEER_PORT, coerce: integerIn('peer-port', 1, 65534), describe: 'TCP port for router-to-router messages (RDMA engines use the next port); every connection on either starts with the cluster-key handshake' },
        'log-level': { type: 'string', default: process.env.FFR_LOG_LEVEL || 'info', choices: ['debug', 'info', 'warn', 'error'], describe: 'JSON log verbosity on stderr (env FFR_LOG_LEVEL)' },
        'rdma-rate-limit': { type: 'number', default: process.env.FFR_RDMA_RATE_LIMIT || 0, coerce: integerIn('rdma-rate-limit', 0, Number.MAX_SAFE_INTEGER), describe: 'RDMA mode: bytes per second each container may send (0 = unlimited; env FFR_RDMA_RATE_LIMIT)' },
      })
        .epilog(
          'RDMA engine tuning (environment, see docs/rdma.md): FFR_RDMA_SPIN_NS spin after work (default 0 below 4 CPUs, else 20000), ' +
            'FFR_RDMA_CATCH_NS wait for an answer after one request (3000), FFR_RDMA_HANDOVER_NS busy time before handing a stream ' +
            'to another CPU (30000, 0 = never), FFR_RDMA_SEND_BATCH requests per write to a peer host (8, 1 = one each), ' +
            'FFR_RDMA_RT=0 no real-time scheduling.',
        ),
    async (argv) => {
      const log = createLogger(`freeflow-router:${argv.name}`, argv['log-level']);
      const prefixText = argv['host-ip-prefix']!;
      const prefix = parsePrefix(prefixText);
      const hostIp = hostAddressIn(prefixText);
      const listed = splitList(argv.peers);
      for (const p of listed) if (!inPrefix(p, prefix)) throw new Error(`peer ${p} is outside HOST_IP_PREFIX ${prefixText}`);
      const peers = listed.filter((p) => p !== hostIp); // one peer list for all hosts may name this one
      const clusterKey = clusterKeyFor(peers, argv['cluster-key-file']);
      const router = new Router({
        name: argv.name,
        socketDir: argv['socket-dir'],
        stateDir: argv['state-dir'] || defaultStateDir(argv.name),
        hostIp,
        peers,
        peerPort: argv['peer-port'],
        clusterKey,
        log,
      });
      router.addExtension(createRdmaExtension({ log, rateLimit: argv['rdma-rate-limit'], hostIp, peers, port: argv['peer-port'] + 1, clusterKey }));
      await router.start();
      const stop = () => {
        log.info('stopping');
        router.stop();
        process.exit(0);
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      process.on('uncaughtException', (err) => log.error({ err }, 'unexpected error; router keeps running'));
    },
  )
  .command(
    'keygen',
    `print a new random cluster key (${8 * PeerAuth.KEY_SIZE} bits) for the routers' handshake; put the same file on every host: freeflow keygen > ${DEFAULT_KEY_PATH} && chmod 600 ${DEFAULT_KEY_PATH}`,
    (y) => y,
    () => {
      process.stdout.write(generateKeyFile());
    },
  )
  .command(
    'status',
    "show the router's listeners, directory and recent connections with the path each took",
    (y) =>
      y.options({
        ...common,
        json: { type: 'boolean', default: false, describe: 'print raw JSON' },
        wait: { type: 'number', default: 0, describe: 'wait up to this many seconds for the router to answer with all peers connected' },
        'wait-listener': { type: 'string', describe: 'with --wait: also wait until the directory has this overlay ip:port' },
      }),
    async (argv) => {
      const path = socketPath(argv['socket-dir'], argv.name);
      const s = argv.wait > 0 ? await waitForStatus(path, argv.wait * 1000, argv['wait-listener']) : await fetchStatus(path);
      console.log(argv.json ? JSON.stringify(s, null, 2) : formatStatus(s));
    },
  )
  .command(
    'register',
    'register a container network namespace and the overlay addresses it was given (root on the host; the CNI plugin does this for runtime-made containers)',
    (y) =>
      y.options({
        ...common,
        ...stateDirOption,
        netns: { type: 'string', demandOption: true, describe: 'network namespace file, e.g. /run/netns/NAME or /proc/PID/ns/net' },
        ip: { type: 'string', array: true, demandOption: true, describe: 'overlay IPv4 address(es) of that namespace, comma separated or repeated' },
        network: { type: 'string', default: 'default', describe: 'overlay network name (addresses are unique within a network)' },
      }),
    async (argv) => {
      needRoot('freeflow register');
      const reg = register(argv['state-dir'] || defaultStateDir(argv.name), argv.netns, parseIps(argv.ip), argv.network);
      await tellRouter(argv['socket-dir'], argv.name);
      console.log(`registered ${argv.netns} (netns inode ${reg.ino}): ${reg.ips.join(', ')} in network ${reg.network}`);
    },
  )
  .command(
    'unregister',
    'remove a network namespace from the registry (root on the host); its processes fall back to the plain overlay',
    (y) =>
      y.options({
        ...common,
        ...stateDirOption,
        netns: { type: 'string', demandOption: true, describe: 'network namespace file given at registration' },
      }),
    async (argv) => {
      needRoot('freeflow unregister');
      const gone = unregister(argv['state-dir'] || defaultStateDir(argv.name), { netnsPath: argv.netns });
      await tellRouter(argv['socket-dir'], argv.name);
      console.log(gone.length ? `unregistered ${argv.netns}: ${gone.flatMap((r) => r.ips).join(', ')}` : `${argv.netns} was not registered`);
    },
  )
  .command(
    'cni',
    false, // the CNI plugin's entry point (build/cni/freeflow); not for people
    (y) => y,
    async () => {
      let stdin = '';
      for await (const chunk of process.stdin) stdin += chunk;
      let version = '1.0.0';
      try {
        version = JSON.parse(stdin || '{}').cniVersion ?? version;
      } catch {
        /* reported by runCni */
      }
      try {
        const out = await runCni(process.env, stdin);
        if (out) process.stdout.write(out + '\n');
      } catch (err) {
        process.stdout.write(cniErrorJson(err, version) + '\n');
        process.exit(1);
      }
    },
  )
  .demandCommand(1, 'name a command: router, status, keygen, register or unregister')
  .strict()
  .fail((msg, err, y) => {
    console.error(`freeflow: ${err ? err.message : msg}`);
    if (!err) console.error(`\n${y.help()}`);
    process.exit(2);
  })
  .help()
  .parseAsync();
