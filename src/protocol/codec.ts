// Encodes and decodes the fixed wire record defined in protocol/wire-spec.mjs.
import { FIELD_LAYOUT, MAGIC, MSG_SIZE, VERSION, type WireMsg } from './wire.generated.js';

export * from './wire.generated.js';

export function emptyMsg(type: number): WireMsg {
  const m: Record<string, number | Buffer> = {};
  for (const f of FIELD_LAYOUT) m[f.name] = f.ctype.includes('[') ? Buffer.alloc(f.size) : 0;
  const msg = m as unknown as WireMsg;
  msg.magic = MAGIC;
  msg.version = VERSION;
  msg.type = type;
  return msg;
}

export function encode(msg: WireMsg, payload?: Buffer): Buffer {
  const buf = Buffer.alloc(MSG_SIZE + (payload?.length ?? 0));
  for (const f of FIELD_LAYOUT) {
    const v = msg[f.name];
    if (Buffer.isBuffer(v)) v.copy(buf, f.offset, 0, f.size);
    else if (f.ctype === 'uint32_t') buf.writeUInt32LE(v >>> 0, f.offset);
    else if (f.ctype === 'int32_t') buf.writeInt32LE(v | 0, f.offset);
    else if (f.ctype === 'uint16_t') buf.writeUInt16LE(v & 0xffff, f.offset);
  }
  if (payload) {
    buf.writeUInt32LE(payload.length, FIELD_LAYOUT.find((f) => f.name === 'payload_len')!.offset);
    payload.copy(buf, MSG_SIZE);
  }
  return buf;
}

export class WireError extends Error {}

/** Decodes one record; throws WireError on short input, bad magic or version. */
export function decode(buf: Buffer): WireMsg {
  if (buf.length < MSG_SIZE) throw new WireError(`short message: ${buf.length} < ${MSG_SIZE} bytes`);
  const m: Record<string, number | Buffer> = {};
  for (const f of FIELD_LAYOUT) {
    if (f.ctype.includes('[')) m[f.name] = Buffer.from(buf.subarray(f.offset, f.offset + f.size));
    else if (f.ctype === 'uint32_t') m[f.name] = buf.readUInt32LE(f.offset);
    else if (f.ctype === 'int32_t') m[f.name] = buf.readInt32LE(f.offset);
    else m[f.name] = buf.readUInt16LE(f.offset);
  }
  const msg = m as unknown as WireMsg;
  if (msg.magic !== MAGIC) throw new WireError(`bad magic 0x${msg.magic.toString(16)}`);
  if (msg.version !== VERSION) throw new WireError(`unsupported protocol version ${msg.version}`);
  return msg;
}

/** "a.b.c.d" -> 16-byte IPv4-mapped form. */
export function ipv4ToWire(ip: string): Buffer {
  const b = Buffer.alloc(16);
  b[10] = 0xff;
  b[11] = 0xff;
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new WireError(`bad IPv4 address ${ip}`);
  parts.forEach((p, i) => (b[12 + i] = p));
  return b;
}

/** 16-byte IPv4-mapped form -> "a.b.c.d", or undefined if it is not IPv4-mapped. */
export function wireToIpv4(b: Buffer): string | undefined {
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return undefined;
  if (b[10] !== 0xff || b[11] !== 0xff) return undefined;
  return `${b[12]}.${b[13]}.${b[14]}.${b[15]}`;
}
