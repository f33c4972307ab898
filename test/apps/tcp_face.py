"""tcp_face.py - what an application sees of a TCP connection, reported as JSON.

Run unmodified (stdlib only) with and without libfsocket.so. `server PORT` serves the commands
below; `face HOST PORT` makes seven connections and reports socket identity, options read back
after setting them, sendto()/recvfrom() with addresses, urgent data, half-close, FIONREAD,
close with unread data, SO_PEERCRED, an option a same-host AF_UNIX pair cannot honour after
connect(), and a descriptor sent as ancillary data;
`paced HOST PORT` connects with SO_MAX_PACING_RATE set before connect().
The same report on every path (plain overlay, host network, loopback TCP, AF_UNIX pair) is
the point; only TCP_MD5SIG after connect() is allowed to differ (EOPNOTSUPP on a pair).
"""
import errno, fcntl, json, socket, struct, sys, termios, threading, time

TCP_MD5SIG = 14
SO_MAX_PACING_RATE = 47

def serve(port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(16)
    print("listening", port, flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()

def readline(c):
    b = b""
    while not b.endswith(b"\n"):
        x = c.recv(1)
        if not x:
            break
        b += x
    return b.decode().strip()

def handle(c):
    cmd = readline(c)
    if cmd == "ECHO":
        nd = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        data = readline(c)
        c.sendall(("%s nodelay=%d\n" % (data, nd)).encode())
        c.close()
    elif cmd == "OOB":
        for _ in range(500):
            try:
                u = c.recv(1, socket.MSG_OOB)
                break
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EAGAIN):
                    u = ("err%d" % e.errno).encode()
                    break
                time.sleep(0.01)
        rest = readline(c)
        c.sendall(b"oob=" + u + b" rest=" + rest.encode() + b"\n")
        c.close()
    elif cmd == "HALF":
        n = 0
        while True:
            x = c.recv(65536)
            if not x:
                break
            n += len(x)
        c.sendall(("got=%d\n" % n).encode())
        c.close()
    elif cmd == "INQ":
        c.sendall(b"12345")
        readline(c)
        c.close()
    elif cmd == "RST":
        time.sleep(0.3)  # let the client's extra bytes arrive unread
        c.close()
    elif cmd == "SCM":
        # Whatever ancillary data arrives with the next bytes: TCP delivers none.
        data, anc, _, _ = c.recvmsg(100, socket.CMSG_SPACE(16))
        fds = sum((len(d) // 4 for lvl, typ, d in anc if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS), 0)
        c.sendall(("fds=%d data=%s\n" % (fds, data.decode().strip())).encode())
        c.close()
    else:
        c.close()

def conn(host, port, pre=None):
    s = socket.socket()
    if pre:
        pre(s)
    s.connect((host, port))
    return s

def face(host, port):
    r = {}
    s = conn(host, port)
    r["domain"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
    r["protocol"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
    r["type"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    r["tcpi_state"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[0]
    r["nodelay_default"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r["nodelay_set"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
    r["congestion"] = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    r["tos"] = s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS)
    # TCP ignores a destination on a connected socket, and reports no source address.
    s.sendto(b"ECHO\nhello\n", (host, port))
    data, addr = s.recvfrom(100)
    r["echo"] = data.decode().strip()
    r["recvfrom_addr"] = addr
    try:
        s.connect((host, port))
        r["reconnect"] = "ok"
    except OSError as e:
        r["reconnect"] = errno.errorcode.get(e.errno, e.errno)
    s.close()
    # The server's accepted socket inherited TCP_NODELAY from its listener ("nodelay=1").

    s = conn(host, port)
    s.sendall(b"OOB\nab")
    time.sleep(0.05)
    s.send(b"!", socket.MSG_OOB)
    s.sendall(b"cd\n")
    r["oob"] = s.recv(100).decode().strip()
    s.close()

    s = conn(host, port)
    s.sendall(b"HALF\n" + b"x" * 300000)
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        x = s.recv(100)
        if not x:
            break
        buf += x
    r["halfclose"] = buf.decode().strip()
    s.close()

    s = conn(host, port)
    s.sendall(b"INQ\n")
    time.sleep(0.2)
    r["inq"] = struct.unpack("i", fcntl.ioctl(s, termios.FIONREAD, b"\0\0\0\0"))[0]
    s.sendall(b"\n")
    s.close()

    s = conn(host, port)
    s.sendall(b"RST\n" + b"y" * 1000)
    time.sleep(0.6)
    try:
        x = s.recv(100)
        r["close_unread"] = "eof" if not x else "data"
    except OSError as e:
        r["close_unread"] = errno.errorcode.get(e.errno, e.errno)
    s.close()

    s = conn(host, port)
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, bytes(216))
        r["md5sig_after_connect"] = "ok"
    except OSError as e:
        r["md5sig_after_connect"] = errno.errorcode.get(e.errno, e.errno)
    # TCP has no peer process.
    r["peercred"] = list(struct.unpack("iII", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)))
    s.sendall(b"ECHO\nbye\n")
    r["last_echo"] = s.recv(100).decode().strip()
    s.close()

    # TCP sends the bytes of a sendmsg() with SCM_RIGHTS and drops the descriptor.
    s = conn(host, port)
    s.sendall(b"SCM\n")
    time.sleep(0.05)
    r["scm_sent"] = s.sendmsg([b"hello\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))])
    r["scm_received"] = s.recv(100).decode().strip()
    s.close()
    return r

def paced(host, port):
    s = conn(host, port, lambda s: s.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, 10**9))
    s.sendall(b"ECHO\npaced\n")
    out = {"echo": s.recv(100).decode().strip(), "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)}
    s.close()
    return out

if sys.argv[1] == "server":
    serve(int(sys.argv[2]))
elif sys.argv[1] == "face":
    print(json.dumps(face(sys.argv[2], int(sys.argv[3]))))
elif sys.argv[1] == "paced":
    print(json.dumps(paced(sys.argv[2], int(sys.argv[3]))))
