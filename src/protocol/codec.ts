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

// One writer per field, chosen once from the layout: encoding sits on the connection set-up path.
type FieldWriter = (buf: Buffer, base: number, msg: WireMsg) => void;
const WRITERS: FieldWriter[] = FIELD_LAYOUT.map((f): FieldWriter => {
  const o = f.offset;
  if (f.ctype.includes('[')) return (buf, base, msg) => (msg[f.name] as Buffer).copy(buf, base + o, 0, f.size);
  if (f.ctype === 'uint32_t') return (buf, base, msg) => buf.writeUInt32LE((msg[f.name] as number) >>> 0, base + o);
  if (f.ctype === 'int32_t') return (buf, base, msg) => buf.writeInt32LE((msg[f.name] as number) | 0, base + o);
  return (buf, base, msg) => buf.writeUInt16LE((msg[f.name] as number) & 0xffff, base + o);
});

/** Writes msg's fixed record at buf[offset..offset+MSG_SIZE). */
export function encodeInto(msg: WireMsg, buf: Buffer, offset: number): void {
  for (const w of WRITERS) w(buf, offset, msg);
}

/** Byte offset of each field, by name. */
export const OFFSET = Object.fromEntries(FIELD_LAYOUT.map((f) => [f.name, f.offset])) as Record<keyof WireMsg, number>;

export function encode(msg: WireMsg, payload?: Buffer): Buffer {
  const buf = Buffer.alloc(MSG_SIZE + (payload?.length ?? 0));
  encodeInto(msg, buf, 0);
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
