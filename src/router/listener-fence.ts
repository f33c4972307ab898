// Host listeners answer only sockets the router made. An admission entry is keyed by the client's
// host address and port, so whoever else could open a connection from that address and port
// (a host process that binds the port once the router's socket is gone, a container whose
// traffic is masqueraded to the host's address) would be admitted as the container that was
// announced. The router therefore fences every host listener in the directory (this host's and
// its peers'), in the host's netfilter: a SYN to one of them leaves this host only from a socket
// carrying the router's mark (SO_MARK, which needs CAP_NET_ADMIN in the host namespace; matched
// on the socket, not the packet, whose mark other rules such as kube-proxy's may rewrite), and
// is never forwarded for a container. A connect() takes the host path only once its listener is fenced.
import { spawn, spawnSync } from 'node:child_process';
import type { Logger } from '../log.js';
import type { Directory, ListenerRecord } from './directory.js';

/** The mark on every host socket the router hands out ("FF"); shared with native tcpSockets. */
export const ROUTER_SOCKET_MARK = 0x4646;
const SYNC_MS = 100;

export class ListenerFence {
  private readonly table: string;
  private fenced = new Set<string>();
  private syncing = false;
  private again = false;
  private timer?: NodeJS.Timeout;
  private saidFailure = false;
  /** After a failed update: rebuild the whole set in the next one (one atomic nft batch). */
  private rebuild = false;

  constructor(name: string, private readonly directory: Directory, private readonly log: Logger) {
    this.table = `freeflow_${name.replace(/[^A-Za-z0-9_]/g, '_')}`;
  }

  /** Installs the table (replacing one a dead router left); throws with what to do if it cannot. */
  start(): void {
    const rules = `
table inet ${this.table}
delete table inet ${this.table}
table inet ${this.table} {
  set listeners { type ipv4_addr . inet_service; }
  chain output {
    type filter hook output priority filter; policy accept;
    tcp flags & (syn | ack) == syn ip daddr . tcp dport @listeners socket mark != ${ROUTER_SOCKET_MARK} counter reject with tcp reset
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    tcp flags & (syn | ack) == syn ip daddr . tcp dport @listeners counter reject with tcp reset
  }
}
`;
    const r = spawnSync('nft', ['-f', '-'], { input: rules, encoding: 'utf8' });
    if (r.error || r.status !== 0)
      throw new Error(`cannot install the netfilter fence of host listeners (nft: ${r.error?.message ?? r.stderr.trim()}); the router needs nftables (apt-get install nftables) and CAP_NET_ADMIN in the host network namespace`);
    this.timer = setInterval(() => this.sync(), SYNC_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    spawnSync('nft', ['delete', 'table', 'inet', this.table], { stdio: 'ignore' });
  }

  has(rec: ListenerRecord): boolean {
    return this.fenced.has(endpoint(rec));
  }

  /** Whether connections to this host listener are fenced yet; if not, fences it soon. */
  isFenced(rec: ListenerRecord): boolean {
    if (this.has(rec)) return true;
    setImmediate(() => this.sync());
    return false;
  }

  /** Brings the netfilter set in line with the directory (one nft call for all changes). */
  sync(): void {
    if (this.syncing) {
      this.again = true;
      return;
    }
    const want = new Set(this.directory.entries().map(endpoint));
    const rebuild = this.rebuild;
    const have = rebuild ? new Set<string>() : this.fenced;
    const add = [...want].filter((e) => !have.has(e));
    const del = [...have].filter((e) => !want.has(e));
    if (!add.length && !del.length && !rebuild) return;
    const elems = (l: string[]) => l.map((e) => e.replace(':', ' . ')).join(', ');
    let cmds = rebuild ? `flush set inet ${this.table} listeners\n` : '';
    if (add.length) cmds += `add element inet ${this.table} listeners { ${elems(add)} }\n`;
    if (del.length) cmds += `delete element inet ${this.table} listeners { ${elems(del)} }\n`;
    this.syncing = true;
    const p = spawn('nft', ['-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', (e) => (err += e.message));
    p.on('close', (code) => {
      this.syncing = false;
      if (code === 0) {
        const gone = new Set(del);
        this.fenced = new Set([...[...have].filter((e) => !gone.has(e)), ...add]);
        this.rebuild = false;
        this.saidFailure = false;
      } else {
        // Not knowing what the set holds now, trust none of it until it is rebuilt.
        this.fenced = new Set();
        this.rebuild = true;
        if (!this.saidFailure) this.log.error({ error: err.trim() }, 'cannot update the netfilter fence of host listeners; new listeners stay on the overlay');
        this.saidFailure = true;
      }
      if (this.again) {
        this.again = false;
        this.sync();
      }
    });
    p.stdin.end(cmds);
  }
}

function endpoint(rec: ListenerRecord): string {
  return `${rec.hostIp}:${rec.hostPort}`;
}
