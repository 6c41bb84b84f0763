// The READMEs against the sources they describe: each test reads both, so a change on one side
// that the other does not follow fails here. No server, no build.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..');
const read = (rel) => fs.readFileSync(path.join(REPO, rel), 'utf8');

/** The field names of `struct <name> { ... }` in Rust source `src`. */
function structFields(src, name) {
  const m = new RegExp(`struct ${name} \\{([\\s\\S]*?)\\n\\}`).exec(src);
  assert.ok(m, `struct ${name} not found`);
  return [...m[1].matchAll(/^\s*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:/gm)].map((f) => f[1]);
}

test('the root README\'s unifiedOrder row names every field the handler accepts, address included', () => {
  const handler = read('shared/src/handlers/unified_order.rs');
  const fields = structFields(handler, 'UnifiedOrderRequest');
  assert.ok(fields.includes('address'), `UnifiedOrderRequest fields: ${fields}`);
  const addressFields = structFields(read('shared/src/domain/order.rs'), 'Address');
  const row = read('README.md').split('\n').find((l) => l.startsWith('| `POST /fn/unifiedOrder`'));
  assert.ok(row, 'no unifiedOrder row in README.md');
  for (const f of fields.concat(addressFields)) {
    assert.match(row, new RegExp(`\\b${f}\\b`), `README's unifiedOrder row does not mention \`${f}\``);
  }
  assert.match(row, /ADDRESS_REQUIRED/, 'the row says what a missing address gets');
});

test('the miniprogram README tells phone users how to make wxlocal listen beyond loopback', () => {
  const main = read('local/src/main.rs');
  const m = /async fn serve[\s\S]*?parse_addr\(flag\(args, "--addr"\), "([^"]+)"\)/.exec(main);
  assert.ok(m, 'wxlocal serve\'s default --addr not found in local/src/main.rs');
  const readme = read('miniprogram/README.md');
  const lan = readme.split('\n\n').find((p) => /LAN address/.test(p));
  assert.ok(lan, 'the README no longer mentions a LAN address');
  if (/^(127\.|localhost|\[::1\])/.test(m[1])) {
    assert.match(lan, /--addr 0\.0\.0\.0:\d+/, `serve listens on ${m[1]} by default: the LAN advice must say --addr 0.0.0.0`);
    assert.ok(lan.includes(m[1]), `the README should name the default address ${m[1]}`);
  }
});
