// Build JavaScript plugins into WASM components with componentize-js.
//
//   node build.mjs [DIR...]      (npm run build: every plugin under plugins/js)
//
// A plugin directory holds one manifest (<name>.toml: kind, entry) and one .js module; the
// component is written to the manifest's `entry`, through a temporary file, so a failed build
// never leaves half a component behind. The world is the manifest's kind (`rule` or `flow`) of
// the WIT package in ../../wit, or in the plugin's own wit/ when it has one (skeletons made by
// `gatehost plugin new` carry theirs). Works offline once `npm ci` has run.

import { componentize } from '@bytecodealliance/componentize-js';
import { existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

function field(manifest, name, file) {
  const m = manifest.match(new RegExp(`^${name}\\s*=\\s*"([^"]*)"`, 'm'));
  if (!m) throw new Error(`${file} has no ${name} = "..." line`);
  return m[1];
}

// Directories under `root` that hold a manifest and a .js module.
function pluginDirs(root) {
  const found = [];
  for (const entry of readdirSync(root)) {
    const dir = join(root, entry);
    if (entry === 'node_modules' || !statSync(dir).isDirectory()) continue;
    const files = readdirSync(dir);
    if (files.some((f) => f.endsWith('.toml')) && files.some((f) => f.endsWith('.js'))) found.push(dir);
    else found.push(...pluginDirs(dir));
  }
  return found;
}

async function build(dir) {
  const tomls = readdirSync(dir).filter((f) => f.endsWith('.toml'));
  const sources = readdirSync(dir).filter((f) => f.endsWith('.js'));
  if (tomls.length !== 1) throw new Error(`${dir}: expected one manifest (.toml), found ${tomls.length}`);
  if (sources.length !== 1) throw new Error(`${dir}: expected one JavaScript module (.js), found ${sources.length}`);
  const manifestFile = join(dir, tomls[0]);
  const manifest = readFileSync(manifestFile, 'utf8');
  const kind = field(manifest, 'kind', manifestFile);
  const entry = field(manifest, 'entry', manifestFile);
  if (kind !== 'rule' && kind !== 'flow') throw new Error(`${manifestFile}: kind must be rule or flow, got '${kind}'`);
  const own = join(dir, 'wit');
  const witPath = existsSync(own) ? own : resolve(here, '../../wit');
  const source = join(dir, sources[0]);
  const { component } = await componentize({
    sourcePath: source,
    witPath,
    worldName: kind,
    // gatehost offers plugins its own http and log interfaces, not wasi:http.
    disableFeatures: ['http', 'fetch-event'],
  });
  const out = resolve(dir, entry);
  const tmp = `${out}.partial`;
  writeFileSync(tmp, component);
  renameSync(tmp, out);
  console.log(`built ${out} (${(component.length / 1048576).toFixed(1)} MiB) from ${basename(source)}`);
}

const dirs = process.argv.length > 2 ? process.argv.slice(2).map((d) => resolve(d)) : pluginDirs(here);
let failed = 0;
for (const dir of dirs) {
  try {
    await build(dir);
  } catch (e) {
    failed += 1;
    console.error(`build of ${dir} failed: ${e && e.message ? e.message : e}`);
  }
}
process.exit(failed ? 1 : 0);
