#!/usr/bin/env node
// Passes TAP through and ends with one line "N passed, N failed", counting leaf assertions
// only (a parent's summary point, which follows its children's plan line, is not counted).
import { createInterface } from 'node:readline';

let passed = 0;
let failed = 0;
let prev = '';
const indent = (s) => s.length - s.trimStart().length;
for await (const line of createInterface({ input: process.stdin })) {
  console.log(line);
  const m = /^(\s*)(not )?ok \d+/.exec(line);
  if (m) {
    const isParent = /^\s*1\.\.\d+/.test(prev) && indent(prev) > indent(line);
    const skipped = /# (SKIP|TODO)/i.test(line);
    if (!isParent && !skipped) m[2] ? failed++ : passed++;
  }
  if (line.trim()) prev = line;
}
console.log(`${passed} passed, ${failed} failed`);
