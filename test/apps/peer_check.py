"""peer_check.py HOST PORT N PATH: N concurrent HTTP/1.1 requests, each on its own connection,
checking who the server thinks each connection is (stdlib only, run unmodified).

All N connects are issued at once (asyncio: non-blocking connect()s in one event loop) and a
request is sent on each only when all of them are open, so the server accepts N connections
that coexist. The server must answer with the headers X-Peer: $remote_addr:$remote_port (what
its accept() returned for that connection) and X-Worker: $pid (the process that accepted).
Prints one JSON list, an entry per connection: {"self": getsockname() as IP:PORT, "peer":
X-Peer, "worker": X-Worker, "status": HTTP status, "bytes": body length}.
"""
import asyncio
import json
import sys


async def fetch(reader, writer, path):
    me = "%s:%d" % writer.get_extra_info("socket").getsockname()[:2]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: peer-check\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    return {"self": me, "peer": headers.get("x-peer"), "worker": headers.get("x-worker"),
            "status": status, "bytes": len(body)}


async def main(host, port, n, path):
    conns = await asyncio.wait_for(
        asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n))), 30)
    print(json.dumps(await asyncio.gather(*(fetch(r, w, path) for r, w in conns))))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
