// Re-renders bench/results/latest.md and latest.svg from latest.json (or the JSON given):
//   node --import tsx bench/render.ts [results.json]
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { chartSvg } from './chart.js';
import { markdown, type Output } from './report.js';
import { ROOT } from './lib/paths.js';

const src = process.argv[2] ?? join(ROOT, 'bench/results/latest.json');
const o = JSON.parse(readFileSync(src, 'utf8')) as Output;
const base = src.replace(/\.json$/, '');
writeFileSync(`${base}.md`, markdown(o));
writeFileSync(`${base}.svg`, await chartSvg(o));
console.log(`rendered ${base}.md and ${base}.svg (in ${dirname(src)})`);
