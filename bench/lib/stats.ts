// Small statistics helpers: medians, percentiles and paired ratios over repetitions.
export function median(xs: number[]): number | null {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!v.length) return null;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/** Per-repetition ratios a[i]/b[i] where both exist (same repetition = same machine phase). */
export function pairedRatios(a: (number | null)[], b: (number | null)[]): number[] {
  const r: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x != null && y != null && Number.isFinite(x) && Number.isFinite(y) && y !== 0) r.push(x / y);
  }
  return r;
}

export function round(x: number | null | undefined, digits = 3): number | null {
  if (x == null || !Number.isFinite(x)) return null;
  const p = 10 ** Math.max(0, digits - Math.max(0, Math.floor(Math.log10(Math.abs(x) || 1)) + 1));
  return Math.round(x * p) / p;
}
