// Python 3 (Debian's /usr/bin/python3, stdlib only) through libfsocket, cross-host: a
// socketserver.ThreadingTCPServer and an asyncio server in c21, blocking-socket and asyncio
// clients in c11. The client sends 5 MB in chunks; the server answers with the sha256 and the
// names it sees (client_address, getsockname); the client reports its own names. Bytes, names
// (the overlay's, on both sides) and the path (VXLAN idle, router counters) are all checked.
import t, { type Test } from 'tap';
import { createHash, randomFillSync } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Testbed, overlayIp, vxlanBytesDuring } from './lib/testbed.js';

const PY = '/usr/bin/python3';
const SERVER = 'c21';
const CLIENT = 'c11';
const SIZE = 5_000_000;

const tb = await Testbed.up(t);
const dir = mkdtempSync(join(tmpdir(), 'ff-python-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
chmodSync(dir, 0o755);

const payload = randomFillSync(Buffer.alloc(SIZE));
const payloadSha = createHash('sha256').update(payload).digest('hex');
const dataFile = join(dir, 'payload.bin');
writeFileSync(dataFile, payload);

// Protocol: 8-byte big-endian length, then that many bytes; the server answers one JSON line.
const script = join(dir, 'sha_tcp.py');
writeFileSync(
  script,
  String.raw`import asyncio, hashlib, json, socket, socketserver, struct, sys

CHUNK = 65536

def server_reply(digest, n, peer, local):
    return (json.dumps({"sha256": digest, "bytes": n, "client_address": list(peer[:2]),
                        "server_sockname": list(local[:2])}) + "\n").encode()

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        hdr = b""
        while len(hdr) < 8:
            b = sock.recv(8 - len(hdr))
            if not b:
                return
            hdr += b
        (n,) = struct.unpack("!Q", hdr)
        h, got = hashlib.sha256(), 0
        while got < n:
            b = sock.recv(min(CHUNK, n - got))
            if not b:
                break
            h.update(b)
            got += len(b)
        local = sock.getsockname()
        sock.sendall(server_reply(h.hexdigest(), got, self.client_address, local))
        print(json.dumps({"event": "served", "client_address": list(self.client_address[:2]),
                          "bytes": got}), flush=True)

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

async def aio_handle(reader, writer):
    (n,) = struct.unpack("!Q", await reader.readexactly(8))
    h, got = hashlib.sha256(), 0
    while got < n:
        b = await reader.read(min(CHUNK, n - got))
        if not b:
            break
        h.update(b)
        got += len(b)
    peer = writer.get_extra_info("peername")
    writer.write(server_reply(h.hexdigest(), got, peer, writer.get_extra_info("sockname")))
    await writer.drain()
    writer.close()
    print(json.dumps({"event": "served", "client_address": list(peer[:2]), "bytes": got}), flush=True)

async def aio_server(port):
    srv = await asyncio.start_server(aio_handle, "0.0.0.0", port)
    print("listening", port, flush=True)
    async with srv:
        await srv.serve_forever()

def client(host, port, path, source_port=0):
    data = open(path, "rb").read()
    s = socket.create_connection((host, port), timeout=20,
                                 source_address=("0.0.0.0", source_port) if source_port else None)
    s.sendall(struct.pack("!Q", len(data)))
    for i in range(0, len(data), CHUNK):
        s.sendall(data[i:i + CHUNK])
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(4096)
        if not b:
            break
        buf += b
    rep = json.loads(buf)
    out = {"reply": rep, "sockname": list(s.getsockname()[:2]), "peername": list(s.getpeername()[:2]),
           "ok": rep["sha256"] == hashlib.sha256(data).hexdigest()}
    s.close()
    return out

async def aio_client(host, port, path):
    data = open(path, "rb").read()
    # open_connection: non-blocking connect() in the event loop (EINPROGRESS, then epoll for
    # writability, then SO_ERROR), exactly what libfsocket has to get right.
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(struct.pack("!Q", len(data)))
    for i in range(0, len(data), CHUNK):
        writer.write(data[i:i + CHUNK])
        await writer.drain()
    rep = json.loads(await asyncio.wait_for(reader.readline(), 20))
    sock = writer.get_extra_info("socket")
    out = {"reply": rep, "sockname": list(writer.get_extra_info("sockname")[:2]),
           "peername": list(writer.get_extra_info("peername")[:2]),
           "live_sockname": list(sock.getsockname()[:2]),
           "ok": rep["sha256"] == hashlib.sha256(data).hexdigest()}
    writer.close()
    await writer.wait_closed()
    return out

async def aio_clients(host, port, path, n):
    return await asyncio.gather(*(aio_client(host, port, path) for _ in range(n)))

mode = sys.argv[1]
if mode == "server":
    port = int(sys.argv[2])
    with Server(("0.0.0.0", port), Handler) as srv:
        print("listening", port, flush=True)
        srv.serve_forever()
elif mode == "aio-server":
    asyncio.run(aio_server(int(sys.argv[2])))
elif mode == "client":
    print(json.dumps([client(sys.argv[2], int(sys.argv[3]), sys.argv[4])]))
elif mode == "bound-client":
    print(json.dumps([client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))]))
elif mode == "aio-client":
    print(json.dumps(asyncio.run(aio_clients(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))))
`,
);

async function pyPair(serverMode: string, clientArgs: string[], port: number) {
  const srv = tb.start(SERVER, [PY, '-u', script, serverMode, String(port)], { preload: true });
  await srv.waitFor(/listening \d+/);
  for (let h = 1; h <= 2; h++) await tb.waitListener(`h${h}`, overlayIp(SERVER), port);
  const before = (await tb.status('h1')).counters['connect:host-network'] ?? 0;
  const { result, bytes } = await vxlanBytesDuring(tb, 'h1', () =>
    tb.run(CLIENT, [PY, script, clientArgs[0], overlayIp(SERVER), String(port), dataFile, ...clientArgs.slice(1)], { preload: true, timeoutMs: 30_000 }),
  );
  const made = ((await tb.status('h1')).counters['connect:host-network'] ?? 0) - before;
  let reports: any[] = [];
  try {
    reports = JSON.parse(result.stdout);
  } catch {
    /* asserted below */
  }
  // The server logs after replying; give its last line a moment.
  const served = async (n: number) => {
    try {
      await srv.waitFor(new RegExp(`("event": "served"[^\\n]*\\n[^]*){${n}}`), 5_000);
    } catch {
      /* asserted below */
    }
    return srv
      .output()
      .split('\n')
      .filter((l) => l.includes('"served"'))
      .map((l) => JSON.parse(l));
  };
  return { result, bytes, made, reports, served, srv };
}

async function check(t: Test, r: Awaited<ReturnType<typeof pyPair>>, n: number, port: number) {
  t.equal(r.result.code, 0, 'python client exited 0', { stderr: r.result.stderr, stdout: r.result.stdout });
  t.equal(r.reports.length, n, `${n} client report(s)`);
  const srvLog = await r.served(n);
  t.equal(srvLog.length, n, `server served ${n} connection(s)`, { output: r.srv.output() });
  for (const [i, rep] of r.reports.entries()) {
    t.equal(rep.reply.bytes, SIZE, `[${i}] server received all ${SIZE} bytes`);
    t.equal(rep.reply.sha256, payloadSha, `[${i}] server's sha256 is the payload's`);
    t.ok(rep.ok, `[${i}] client verified the digest`);
    t.equal(rep.sockname[0], overlayIp(CLIENT), `[${i}] client getsockname() is its overlay address`);
    t.same(rep.reply.client_address, rep.sockname, `[${i}] server's client_address ${rep.reply.client_address.join(':')} = client's getsockname()`);
    t.same(rep.peername, [overlayIp(SERVER), port], `[${i}] client getpeername() is the server's overlay address`);
    t.same(rep.reply.server_sockname, [overlayIp(SERVER), port], `[${i}] server getsockname() is its overlay address`);
    if (rep.live_sockname) t.same(rep.live_sockname, rep.sockname, `[${i}] sock.getsockname() after the transfer still the same`);
  }
  const addrs = srvLog.map((s) => s.client_address.join(':')).sort();
  t.same(addrs, r.reports.map((rep) => rep.sockname.join(':')).sort(), 'server log pairs each connection with exactly its client');
  t.ok(r.bytes < (n * SIZE) / 100, `VXLAN carried ${r.bytes} bytes for ${n * SIZE} sent (< 1%)`);
  t.ok(r.made >= n, `router on h1 set up ${r.made} host-network connection(s)`);
  await tb.stop(r.srv);
}

t.test('ThreadingTCPServer + blocking client: 5 MB, sha256, names', async (t) => {
  await check(t, await pyPair('server', ['client'], 9001), 1, 9001);
});

t.test('client bound to a port of its choosing before connect(): the server sees exactly that port', async (t) => {
  const r = await pyPair('server', ['bound-client', '40123'], 9004);
  t.equal(r.reports[0]?.sockname?.[1], 40123, "client's getsockname() keeps the port it bound");
  await check(t, r, 1, 9004);
});

t.test('ThreadingTCPServer + asyncio client (non-blocking connect in the event loop)', async (t) => {
  await check(t, await pyPair('server', ['aio-client', '1'], 9002), 1, 9002);
});

t.test('asyncio server + 4 concurrent asyncio clients', async (t) => {
  await check(t, await pyPair('aio-server', ['aio-client', '4'], 9003), 4, 9003);
});
