// A host socket the router hands to a container reaches only the endpoint it was made for
// (native/bpf/host_socket_guard.bpf.c). The hostile application below finds the host sockets the
// library holds among its own descriptors (prefetched spares, its accelerated listener's host
// listener, an accepted host connection) and tries to use them to reach a host-only service on
// another host, which its own namespace has no route to, or to listen on the host's address.
// The control runs the same code on a plain host socket (it works there) and the application's
// own accelerated connections (they still work).
import t from 'tap';
import { Testbed, hostIp, overlayIp } from './lib/testbed.js';

const tb = await Testbed.up(t);

const GREETER = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("listening", flush=True)
while True:
    c, a = s.accept(); print("ACCEPTED", a[0], flush=True)
    try: c.sendall(("I am " + sys.argv[3] + "\\n").encode())
    except OSError: pass
    c.close()
`;

// The attacks, as functions of a socket; each prints one line "<name> <outcome>".
const ATTACKS = `
import ctypes, os, socket, struct, sys, time
SERVICE = (sys.argv[1], int(sys.argv[2]))
libc = ctypes.CDLL(None, use_errno=True)
def outcome(f):
    try: return "OK " + str(f())
    except socket.timeout: return "ERR timeout"
    except OSError as e: return "ERR " + type(e).__name__
def reach(s):
    s.settimeout(3); s.connect(SERVICE); return s.recv(100).decode().strip()
def fastopen(s):
    s.settimeout(3); s.sendto(b"x", socket.MSG_FASTOPEN, SERVICE); return s.recv(100).decode().strip()
def disconnect(s):  # connect(AF_UNSPEC): a connected TCP socket becomes unconnected again
    sa = struct.pack("H14x", socket.AF_UNSPEC)
    if libc.connect(s.fileno(), sa, len(sa)) < 0: raise OSError(ctypes.get_errno(), "disconnect")
def host_sockets():
    out = []
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            s = socket.socket(fileno=os.dup(fd)); name = s.getsockname()
        except OSError: continue
        if isinstance(name, tuple) and name[0].startswith("192.168.77."):
            out.append((s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))
        else: s.detach()
    return out
`;

// A preloaded client that makes accelerated connections (so the library holds spare host
// sockets), then attacks with them; then checks that its own connections still work.
const HOSTILE_CLIENT = `${ATTACKS}
PEER = (sys.argv[3], int(sys.argv[4]))
def greet():
    c = socket.create_connection(PEER, timeout=3); d = c.recv(100).decode().strip(); c.close(); return d
spares = []
for i in range(60):  # connects in quick succession make the library prefetch bigger batches
    greet()
    spares = [s for s, listening in host_sockets() if not listening]
    if len(spares) >= 4: break
print("SPARES", len(spares), flush=True)
print("connect", outcome(lambda: reach(spares[0])), flush=True)
print("fastopen", outcome(lambda: fastopen(spares[1])), flush=True)
s = spares[2]
print("listen", outcome(lambda: s.listen(4) or s.getsockname()[1]), flush=True)
time.sleep(4)  # the test dials the listening spare meanwhile
s.settimeout(0.5)
print("accepted", outcome(lambda: s.accept()[1][0]), flush=True)
print("bind", outcome(lambda: socket.socket(fileno=os.dup(spares[3].fileno())).bind(("192.168.77.1", 0))), flush=True)
print("control", outcome(greet), flush=True)
`;

// A preloaded server: its host listener and an accepted host connection, turned against the service.
const HOSTILE_SERVER = `${ATTACKS}
s = socket.socket(); s.bind(("0.0.0.0", int(sys.argv[3]))); s.listen(8); print("listening", flush=True)
c, a = s.accept(); print("ACCEPTED", a[0], flush=True)
print("accepted-reconnect", outcome(lambda: disconnect(c) or reach(c)), flush=True)
for l, listening in host_sockets():
    if listening:
        print("listener-reconnect", outcome(lambda: l.shutdown(socket.SHUT_RD) or reach(l)), flush=True)
        break
print("done", flush=True)
`;

const SERVICE_PORT = 7400;

t.test('a container cannot use the host sockets it holds to reach anything else', async (t) => {
  const service = tb.start('h2', ['python3', '-c', GREETER, hostIp('h2'), String(SERVICE_PORT), 'host-only'], {});
  await service.waitFor(/listening/);
  const c21 = tb.start('c21', ['python3', '-c', GREETER, '0.0.0.0', '7401', 'c21'], { preload: true });
  await c21.waitFor(/listening/);
  await tb.waitListener('h1', overlayIp('c21'), 7401);

  // Control: the attack code works on a plain host socket, and the container has no route there.
  const plain = await tb.run('h1', ['python3', '-c', `${ATTACKS}\nprint("connect", outcome(lambda: reach(socket.socket())))`, hostIp('h2'), String(SERVICE_PORT)]);
  t.equal(plain.stdout.trim(), 'connect OK I am host-only', 'a host process on h1 reaches the host-only service with the same code');
  const direct = await tb.run('c11', ['python3', '-c', `${ATTACKS}\nprint("connect", outcome(lambda: reach(socket.socket())))`, hostIp('h2'), String(SERVICE_PORT)]);
  t.match(direct.stdout, /^connect ERR/, `the container itself has no route to it (${direct.stdout.trim()})`);

  const seen = () => (service.output().match(/ACCEPTED/g) ?? []).length;
  const seenBefore = seen();
  const hostile = tb.start('c11', ['python3', '-c', HOSTILE_CLIENT, hostIp('h2'), String(SERVICE_PORT), overlayIp('c21'), '7401'], { preload: true });
  const listenLine = await hostile.waitFor(/listen (OK|ERR) ?(\d*)/, 30_000);
  t.match(hostile.output(), /SPARES [4-9]|SPARES \d\d/, `the library holds spare host sockets (${/SPARES \d+/.exec(hostile.output())?.[0]})`);
  t.match(hostile.output(), /connect ERR PermissionError/, 'connect() of a spare to the host-only service is refused (EPERM)');
  t.match(hostile.output(), /fastopen ERR/, 'sendto(MSG_FASTOPEN) of a spare to the service fails');
  if (listenLine[1] === 'OK') {
    const dial = await tb.run('h1', ['python3', '-c', `${ATTACKS}\nSERVICE=(sys.argv[1], int(sys.argv[2]))\nprint("dial", outcome(lambda: reach(socket.socket())))`, hostIp('h1'), listenLine[2]]);
    t.match(dial.stdout, /dial ERR/, `a host process cannot connect to a spare the container made listen (${dial.stdout.trim()})`);
  } else t.pass('listen() on a spare was refused outright');
  await hostile.waitFor(/control/, 30_000);
  t.match(hostile.output(), /accepted ERR (timeout|OSError|BlockingIOError)/, 'the listening spare accepted nothing');
  t.match(hostile.output(), /bind ERR/, 'a spare cannot be bound again');
  t.match(hostile.output(), /control OK I am c21/, "the application's own accelerated connections still work");
  t.equal(seen(), seenBefore, 'the service saw no connection from the container');
  t.comment(hostile.output());

  await tb.stop(hostile);
  await tb.stop(c21);
  await tb.stop(service);
});

t.test("a container cannot turn its host listener or an accepted host connection against the host", async (t) => {
  const service = tb.start('h2', ['python3', '-c', GREETER, hostIp('h2'), String(SERVICE_PORT + 10), 'host-only'], {});
  await service.waitFor(/listening/);
  const server = tb.start('c11', ['python3', '-c', HOSTILE_SERVER, hostIp('h2'), String(SERVICE_PORT + 10), '7402'], { preload: true });
  await server.waitFor(/listening/);
  await tb.waitListener('h2', overlayIp('c11'), 7402);
  // Control: a real accelerated client connects (it is what hands the server an accepted host socket).
  const client = await tb.run('c21', ['python3', '-c', 'import socket,sys; c=socket.create_connection((sys.argv[1], 7402), timeout=3); print("connected")', overlayIp('c11')], { preload: true });
  t.match(client.stdout, /connected/, 'an accelerated client connects to the hostile server');
  await server.waitFor(/done/, 30_000);
  t.match(server.output(), /ACCEPTED 10\.244\.2\.11/, 'the server accepted it with the overlay identity');
  t.match(server.output(), /accepted-reconnect ERR PermissionError/, 'an accepted host connection, disconnected, cannot connect to the service');
  t.match(server.output(), /listener-reconnect ERR PermissionError/, 'nor can the host listener after shutdown()');
  t.notMatch(service.output(), /ACCEPTED/, 'the service saw nothing');
  await tb.stop(server);
  await tb.stop(service);
});
