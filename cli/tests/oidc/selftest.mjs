// Checks this fixture on its own, without the Rust side:
//
//   ACCESS_TTL=2 node selftest.mjs
//
// Starts provider.mjs on a free port, runs a device login for alice the way the
// jitsudo CLI does (scope only, no `resource`), approves it with approve.mjs,
// then checks the JWT access token, a refresh, and the discovery document.
import { spawn, execFile } from 'node:child_process';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import assert from 'node:assert/strict';

const here = new URL('.', import.meta.url).pathname;
const ttl = Number(process.env.ACCESS_TTL || 2);

const free = createServer().listen(0, '127.0.0.1');
await once(free, 'listening');
const { port } = free.address();
free.close();

const child = spawn(process.execPath, [`${here}provider.mjs`, String(port)], {
  env: { ...process.env, ACCESS_TTL: String(ttl) },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const cleanup = () => child.kill();
process.on('exit', cleanup);
const [line] = await once(createInterface({ input: child.stdout }), 'line');
const issuer = line.replace(/^READY /, '');
assert.equal(issuer, `http://127.0.0.1:${port}`);

const post = async (path, form) => {
  const res = await fetch(`${issuer}${path}`, { method: 'POST', body: new URLSearchParams(form) });
  return { status: res.status, json: await res.json() };
};
const claims = (jwt) => jwt.split('.').slice(0, 2)
  .map((part) => JSON.parse(Buffer.from(part, 'base64url')));
const checkAccessToken = (jwt) => {
  const [header, body] = claims(jwt);
  assert.equal(header.typ, 'at+jwt');
  assert.equal(header.alg, 'RS256');
  assert.equal(body.aud, 'jitsudo');
  assert.equal(body.iss, issuer);
  assert.equal(body.sub, 'alice');
  assert.equal(body.client_id, 'jitsudo-cli');
  assert.deepEqual(body.groups, ['engineering']);
  assert.equal(body.email, 'alice@example.com');
  assert.equal(body.exp - body.iat, ttl);
  return body;
};

const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
assert.equal(discovery.device_authorization_endpoint, `${issuer}/device/auth`);
assert.equal(discovery.jwks_uri, `${issuer}/jwks`);

const scope = 'openid profile email offline_access api';
const auth = await post('/device/auth', { client_id: 'jitsudo-cli', scope });
assert.equal(auth.status, 200, JSON.stringify(auth.json));
const grant = { client_id: 'jitsudo-cli', grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: auth.json.device_code };
assert.equal((await post('/token', grant)).json.error, 'authorization_pending');

await promisify(execFile)(process.execPath, [`${here}approve.mjs`, auth.json.verification_uri_complete, 'alice']);

const first = await post('/token', grant);
assert.equal(first.status, 200, JSON.stringify(first.json));
assert.ok(first.json.refresh_token, 'no refresh_token');
assert.ok(first.json.id_token, 'no id_token');
console.log('token response scope:', first.json.scope);
console.log('access token:', JSON.stringify(checkAccessToken(first.json.access_token)));
console.log('id token:', JSON.stringify(claims(first.json.id_token)[1]));

await new Promise((r) => { setTimeout(r, (ttl + 1) * 1000); });
const refreshed = await post('/token', { client_id: 'jitsudo-cli', grant_type: 'refresh_token', refresh_token: first.json.refresh_token });
assert.equal(refreshed.status, 200, JSON.stringify(refreshed.json));
console.log('refreshed access token:', JSON.stringify(checkAccessToken(refreshed.json.access_token)));
console.log('refresh token rotated:', refreshed.json.refresh_token !== first.json.refresh_token);

console.log('oidc fixture: 1 passed, 0 failed');
cleanup();
