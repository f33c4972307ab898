// A small seeded generator for the fuzz tests (raw-fuzz.ts, raw-fuzz-net.ts): a failing run is
// repeated exactly by passing the seed it printed.
export class Rng {
  private s: number;
  constructor(readonly seed: number) {
    this.s = seed >>> 0 || 1;
  }
  /** mulberry32: uniform in [0, 2^32). */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (z ^ (z >>> 14)) >>> 0;
  }
  int(n: number): number {
    return this.u32() % n;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
  /** A 32-bit value of the kinds that break parsers: 0, small, all ones, sign bits, random. */
  edgeU32(known: number[] = []): number {
    return this.pick([0, 1, 2, 7, 0x7fffffff, 0x80000000, 0xffffffff, this.u32(), this.u32() & 0xffff, ...known]) >>> 0;
  }
  edgeU64(): bigint {
    return this.pick([0n, 1n, 4096n, 1n << 30n, 1n << 40n, (1n << 53n) + 1n, (1n << 63n) - 1n, (1n << 64n) - 1n, (BigInt(this.u32()) << 32n) | BigInt(this.u32())]);
  }
}
