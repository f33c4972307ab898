// A private nginx configuration (tests and the benchmark): everything nginx writes stays in dir,
// it stays in the foreground (so the harness can stop it), and it serves root on port.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NginxOptions {
  dir: string; // created if missing; holds the config, pid, logs and temp paths
  port: number;
  root: string;
  workers: number;
  workerConnections?: number;
  keepaliveRequests?: number;
  backlog?: number;
  errorLogLevel?: string;
  /** Extra directives for the server block, one per entry (e.g. an add_header line). */
  serverDirectives?: string[];
}

/** Writes dir/nginx.conf and returns its path. */
export function writeNginxConfig(o: NginxOptions): string {
  mkdirSync(o.dir, { recursive: true, mode: 0o755 });
  const d = o.dir;
  const conf = join(d, 'nginx.conf');
  writeFileSync(
    conf,
    `worker_processes ${o.workers};
daemon off;
master_process on;
pid ${d}/nginx.pid;
error_log ${d}/error.log ${o.errorLogLevel ?? 'notice'};
events { worker_connections ${o.workerConnections ?? 1024}; }
http {
  access_log off;
  client_body_temp_path ${d}/client_body;
  proxy_temp_path ${d}/proxy;
  fastcgi_temp_path ${d}/fastcgi;
  uwsgi_temp_path ${d}/uwsgi;
  scgi_temp_path ${d}/scgi;
  keepalive_requests ${o.keepaliveRequests ?? 100000};
  server {
    listen ${o.port}${o.backlog ? ` backlog=${o.backlog}` : ''};
    root ${o.root};
${(o.serverDirectives ?? []).map((d) => `    ${d}\n`).join('')}  }
}
`,
  );
  return conf;
}
