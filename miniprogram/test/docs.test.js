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

test('the client and its README point the mini program at the filed domain, not execute-api', () => {
  // docs/DEPLOY.md: the mini program may only call an ICP-filed HTTPS domain (DomainName);
  // API Gateway's own URL cannot be filed, so devices refuse it.
  assert.match(read('docs/DEPLOY.md'), /ICP-filed/);
  const config = read('miniprogram/config.js');
  const base = /baseUrl:\s*'([^']+)'/.exec(config);
  assert.ok(base, 'no baseUrl in miniprogram/config.js');
  assert.doesNotMatch(base[1], /execute-api/, 'config.js baseUrl is an execute-api URL');
  const settings = read('miniprogram/README.md').split('\n\n').find((p) => /request legal domain/.test(p));
  assert.ok(settings, 'the README no longer says which request legal domain to add');
  assert.match(settings, /DomainName/);
});

test('the error codes the client README gives as examples are codes the server sends', () => {
  const readme = read('miniprogram/README.md');
  const line = readme.split('\n').find((l) => /`code` is the server's/.test(l));
  assert.ok(line, 'no example codes line in miniprogram/README.md');
  const sources = ['shared/src/handlers', 'shared/src']
    .flatMap((d) => fs.readdirSync(path.join(REPO, d)).filter((f) => f.endsWith('.rs')).map((f) => read(`${d}/${f}`)))
    .join('\n');
  for (const m of line.matchAll(/`([A-Z][A-Z_]+)`/g)) {
    assert.ok(sources.includes(`"${m[1]}"`), `README example code ${m[1]} is not a code the server sends`);
  }
});

test('the client README and wxshop.js state the unifiedOrder timeouts as the template sets them', () => {
  const template = read('infra/template.yaml');
  const fn = /UnifiedOrderFunction:[\s\S]*?Timeout:\s*(\d+)/.exec(template);
  assert.ok(fn, 'no UnifiedOrderFunction Timeout in infra/template.yaml');
  const fnSecs = Number(fn[1]);
  const client = read('miniprogram/wxshop.js');
  const ms = /requestTimeoutMs:\s*(\d+)/.exec(client);
  assert.ok(ms, 'no requestTimeoutMs default in wxshop.js');
  const clientSecs = Number(ms[1]) / 1000;
  assert.ok(clientSecs <= fnSecs, `the client's ${clientSecs} s outlasts the function's ${fnSecs} s`);
  const readme = read('miniprogram/README.md');
  assert.ok(readme.includes(`(${clientSecs} s)`), `the README does not give the client's ${clientSecs} s`);
  assert.ok(readme.includes(`${fnSecs} s`), `the README does not give unifiedOrder's ${fnSecs} s`);
  assert.doesNotMatch(readme + client, /timeout (\(\d+ s\) )?equals the (server )?function'?s/i);
});
