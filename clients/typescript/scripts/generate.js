#!/usr/bin/env node
// Regenerate the TypeScript code for the protos into src/gen/ (buf.gen.yaml).
//
//   node scripts/generate.js           # rewrite src/gen/      (npm run generate)
//   node scripts/generate.js --check   # exit 1 if src/gen/ is stale (npm run generate:check)
//
// buf and protoc-gen-es come from node_modules (devDependencies), so this
// works offline after `npm ci`. The check generates into a temporary
// directory and compares it, file by file, with the committed src/gen/.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const ROOT = path.resolve(__dirname, "..");
const BIN = path.join(ROOT, "node_modules", ".bin");
const GEN = path.join("src", "gen");

function generate(outputBase) {
  const buf = path.join(BIN, process.platform === "win32" ? "buf.cmd" : "buf");
  if (!fs.existsSync(buf)) {
    throw new Error(`${buf} not found: run \`npm ci\` in ${ROOT} first`);
  }
  const args = ["generate", "--template", "buf.gen.yaml"];
  if (outputBase) args.push("--output", outputBase);
  execFileSync(buf, args, {
    cwd: ROOT,
    stdio: ["ignore", "inherit", "inherit"],
    // protoc-gen-es is found on PATH, from node_modules/.bin.
    env: { ...process.env, PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ""}` },
  });
}

/** Relative paths of every file under dir, sorted. */
function listFiles(dir, prefix = "") {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => {
      const rel = path.join(prefix, entry.name);
      return entry.isDirectory() ? listFiles(path.join(dir, entry.name), rel) : [rel];
    })
    .sort();
}

/** The files that differ between two trees (added, removed or changed). */
function compareTrees(expectedDir, actualDir) {
  const expected = listFiles(expectedDir);
  const actual = listFiles(actualDir);
  const all = [...new Set([...expected, ...actual])].sort();
  return all.filter((rel) => {
    const a = path.join(expectedDir, rel);
    const b = path.join(actualDir, rel);
    return !fs.existsSync(a) || !fs.existsSync(b) || !fs.readFileSync(a).equals(fs.readFileSync(b));
  });
}

function main() {
  const check = process.argv.includes("--check");
  if (!check) {
    generate();
    console.log(`generated ${path.join(ROOT, GEN)}`);
    return 0;
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "resolver-ts-gen-"));
  try {
    generate(tmp);
    const stale = compareTrees(path.join(tmp, GEN), path.join(ROOT, GEN));
    if (stale.length === 0) {
      console.log("generated code is up to date");
      return 0;
    }
    console.error(
      `generated code is stale (${stale.join(", ")}): run \`npm run generate\` in clients/typescript`,
    );
    return 1;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

process.exitCode = main();
