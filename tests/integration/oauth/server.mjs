// OAuth 2.0 test peer for p11jwt integration tests.
//
// Usage: node server.mjs CONFIG.json
//
// Wraps panva's oidc-provider (in-memory adapter) and adds:
//   - a custom urn:ietf:params:oauth:grant-type:jwt-bearer grant (RFC 7523)
//   - DPoP (RFC 9449): oidc-provider's own for client_credentials and
//     refresh_token, ours for the jwt-bearer grant and /api/echo
//   - /api/echo            protected resource (Bearer or DPoP access token)
//   - /test/stats|reset|revoke|mode   test control endpoints
//   - error_description enrichment on /token errors (error_detail appended)
//
// Listens on 127.0.0.1 only. Prints "listening http://127.0.0.1:PORT" on
// stdout once ready; everything else goes to stderr.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import { createHash, hkdfSync, randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
import {
  calculateJwkThumbprint,
  compactVerify,
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  EmbeddedJWK,
  exportJWK,
  generateKeyPair,
  jwtVerify,
} from 'jose';

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const API_SCOPES = ['api:read', 'api:write'];
const CLIENT_AUTH_ALGS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
];
// Every alg p11jwt's keys sign with; oidc-provider 9 knows both EdDSA and
// the fully-specified Ed25519 (RFC 9864).
const DPOP_ALGS = [...CLIENT_AUTH_ALGS];
// How far a proof's iat may be from now (s), where we check proofs ourselves.
const DPOP_IAT_WINDOW = 60;
const DEFAULT_TTL = 600;
const REFRESH_TTL = 24 * 60 * 60;
const HOST = '127.0.0.1';

function log(...args) {
  process.stderr.write(`[oauth-peer] ${args.join(' ')}\n`);
}

function die(msg) {
  log(`fatal: ${msg}`);
  process.exit(2);
}

// ---------------------------------------------------------------- config

if (process.argv.length < 3) die('usage: node server.mjs CONFIG.json');
let config;
try {
  config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
} catch (e) {
  die(`cannot read config ${process.argv[2]}: ${e.message}`);
}
const port = Number(config.port ?? 0);
if (!Number.isInteger(port) || port < 0 || port > 65535) die(`bad port ${config.port}`);
const clockTolerance = Number(config.clock_tolerance ?? 0);
let dpopAlgs = DPOP_ALGS;
if (config.dpop_algs !== undefined) {
  if (!Array.isArray(config.dpop_algs) || !config.dpop_algs.length ||
      !config.dpop_algs.every((a) => DPOP_ALGS.includes(a))) {
    die(`dpop_algs must be a non-empty array of ${DPOP_ALGS.join(' ')}`);
  }
  dpopAlgs = [...config.dpop_algs];
}

const ttlByClient = new Map();
const bearerJwks = new Map(); // client_id -> jose local JWKS getter
const bearerJwksRaw = new Map();
const dpopNonceClients = new Set(); // client_ids whose token requests need a DPoP nonce
const loopbackJwksUris = new Set(); // clients' jwks_uri, fetched past oidc-provider's SSRF guard
const clients = [];

for (const c of config.clients ?? []) {
  if (typeof c.client_id !== 'string' || !c.client_id) die('client without client_id');
  // jwks_uri (client_credentials only): a loopback URL the test serves
  const jwksUri = c.jwks_uri && c.grant === 'client_credentials' ? String(c.jwks_uri) : null;
  if (jwksUri && !/^http:\/\/127\.0\.0\.1:\d+\//.test(jwksUri)) die(`client ${c.client_id}: jwks_uri must be http://127.0.0.1:PORT/...`);
  if (jwksUri) loopbackJwksUris.add(jwksUri);
  if (!jwksUri && (!c.jwks || !Array.isArray(c.jwks.keys))) die(`client ${c.client_id}: jwks.keys missing`);
  const ttl = Number(c.ttl ?? DEFAULT_TTL);
  if (!(ttl > 0)) die(`client ${c.client_id}: bad ttl`);
  ttlByClient.set(c.client_id, ttl);
  const dpopMeta = c.dpop ? { dpop_bound_access_tokens: true } : {};
  if (c.dpop_nonce) dpopNonceClients.add(c.client_id);
  if (c.grant === 'client_credentials') {
    clients.push({
      client_id: c.client_id,
      token_endpoint_auth_method: 'private_key_jwt',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: API_SCOPES.join(' '),
      ...(jwksUri ? { jwks_uri: jwksUri } : { jwks: c.jwks }),
      ...dpopMeta,
    });
  } else if (c.grant === 'jwt-bearer') {
    clients.push({
      client_id: c.client_id,
      token_endpoint_auth_method: 'none',
      grant_types: [JWT_BEARER, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      scope: API_SCOPES.join(' '),
      ...dpopMeta,
    });
    bearerJwksRaw.set(c.client_id, c.jwks);
    bearerJwks.set(c.client_id, createLocalJWKSet(c.jwks));
  } else {
    die(`client ${c.client_id}: unknown grant ${JSON.stringify(c.grant)}`);
  }
}

// ---------------------------------------------------------------- state

const zeroStats = () => ({
  token_requests: 0,
  by_grant: { client_credentials: 0, [JWT_BEARER]: 0, refresh_token: 0 },
  api_requests: 0,
  api_401: 0,
  last_assertion: null,
  dpop: {
    token_proofs: 0, // /token requests with a DPoP header
    api_proofs: 0, // /api/echo requests with a DPoP header
    use_dpop_nonce: 0, // use_dpop_nonce answers, /token and /api/echo
    use_dpop_nonce_token: 0,
    use_dpop_nonce_api: 0,
    invalid_proofs: 0, // invalid_dpop_proof answers, both places
    replays: 0, // proofs refused for a jti seen before, both places
    issued: { Bearer: 0, DPoP: 0 }, // token_type of successful /token answers
    last_token_proof: null, // {header, claims, ok, error}
    last_api_proof: null,
    api_by_scheme: { Bearer: 0, DPoP: 0 },
  },
});
let stats = zeroStats();
let tokenDelayMs = 0;
// The resource's own nonce (POST /test/mode {"api_dpop_nonce": true}).
let apiNonceRequired = false;
let apiNonceRotateOnSuccess = false;
// Misbehaviour on demand (POST /test/mode): a fresh nonce demanded for every
// proof at /token or /api/echo, and a token endpoint that ignores proofs.
let tokenNonceAlways = false;
let apiNonceAlways = false;
let tokenIgnoreDpop = false;
const newApiNonce = () => `api-${randomBytes(16).toString('base64url')}`;
let apiNonce = newApiNonce();
// DPoP proof jtis seen by our own checks: key -> expiry (epoch s)
const seenDpopJtis = new Map();

// Access tokens issued so far (model name + jti), so /test/revoke can kill them.
const issuedAccessTokens = new Map(); // jti -> model kind
// jwt-bearer assertion replay cache: `${client_id} ${jti}` -> exp
const seenAssertions = new Map();

function ttlFor(client) {
  return ttlByClient.get(client?.clientId) ?? DEFAULT_TTL;
}

// ---------------------------------------------------------------- provider

// Listen first so the issuer can carry the real (possibly ephemeral) port.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, HOST, resolve);
}).catch((e) => die(`cannot listen on ${HOST}:${port}: ${e.message}`));
const actualPort = server.address().port;
const issuer = `http://${HOST}:${actualPort}`;

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: 'peer-rs256' };

// DPoP nonces for the token endpoint. oidc-provider derives them from this
// secret (HKDF-SHA256 over the 60 s time step, info "DPoP", helpers/
// challenge.js); the jwt-bearer grant computes the same values, so that one
// server nonce works for every grant at /token.
const dpopNonceSecret = randomBytes(32);
const NONCE_STEP = 60;
function nonceAt(step) {
  const salt = Buffer.alloc(8);
  salt.writeBigUInt64BE(BigInt(step));
  return Buffer.from(hkdfSync('sha256', dpopNonceSecret, salt, 'DPoP', 32)).toString('base64url');
}
function nextTokenNonce() {
  return nonceAt(Math.floor(Date.now() / 1000 / NONCE_STEP) + 1);
}
function checkTokenNonce(value) {
  const step = Math.floor(Date.now() / 1000 / NONCE_STEP);
  for (let s = step - 2; s <= step + 2; s += 1) if (nonceAt(s) === value) return true;
  return false;
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', ...API_SCOPES],
  clockTolerance,
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id }),
  }),
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    dPoP: {
      enabled: true,
      nonceSecret: dpopNonceSecret,
      requireNonce: (ctx) => dpopNonceClients.has(ctx.oidc?.client?.clientId),
    },
  },
  enabledJWA: {
    clientAuthSigningAlgValues: CLIENT_AUTH_ALGS,
    dPoPSigningAlgValues: dpopAlgs,
  },
  rotateRefreshToken: true,
  // oidc-provider refuses loopback fetches (SSRF guard); the test's own
  // jwks_uri servers on 127.0.0.1 are let through, nothing else
  fetch: (url, options) => {
    if (!loopbackJwksUris.has(String(url))) return globalThis.fetch(url, options);
    const { dispatcher, ...rest } = options; // eslint-disable-line no-unused-vars
    return globalThis.fetch(url, rest);
  },
  ttl: {
    AccessToken: (ctx, token, client) => ttlFor(client),
    ClientCredentials: (ctx, token, client) => ttlFor(client),
    RefreshToken: () => REFRESH_TTL,
    Grant: () => REFRESH_TTL,
    IdToken: () => 3600,
    Interaction: () => 3600,
    Session: () => 3600,
    AuthorizationCode: () => 60,
    DeviceCode: () => 600,
    BackchannelAuthenticationRequest: () => 600,
  },
  renderError(ctx, out) {
    ctx.type = 'json';
    ctx.body = out;
  },
});

for (const kind of ['access_token', 'client_credentials']) {
  provider.on(`${kind}.saved`, (token) => issuedAccessTokens.set(token.jti, kind));
  provider.on(`${kind}.issued`, (token) => issuedAccessTokens.set(token.jti, kind));
}

// Keep the hidden error_detail so the middleware below can expose it.
provider.on('grant.error', (ctx, err) => {
  if (err?.error_detail !== undefined) ctx.state.errorDetail = String(err.error_detail);
});
provider.on('server_error', (ctx, err) => log(`server_error: ${err?.stack || err}`));

// Middleware in front of the provider routes: counting, delay, error detail.
provider.use(async (ctx, next) => {
  const isToken = ctx.path === '/token' && ctx.method === 'POST';
  if (isToken) stats.token_requests += 1;
  const proof = isToken ? ctx.get('DPoP') : '';
  if (proof) stats.dpop.token_proofs += 1;
  if (proof && tokenNonceAlways) {
    ctx.set('DPoP-Nonce', `always-${randomBytes(16).toString('base64url')}`);
    ctx.set('Cache-Control', 'no-store');
    ctx.status = 400;
    ctx.body = { error: 'use_dpop_nonce', error_description: 'a fresh DPoP nonce for every request (test mode)' };
    recordProof('last_token_proof', proof, ctx.status, ctx.body.error);
    countDpopOutcome('token', ctx.status, ctx.body, proof);
    log('/token -> 400 use_dpop_nonce (test mode)');
    return;
  }
  if (proof && tokenIgnoreDpop) delete ctx.req.headers.dpop;
  await next();
  if (!isToken) return;
  if (proof) recordProof('last_token_proof', proof, ctx.status, ctx.body?.error);

  let gt = ctx.oidc?.params?.grant_type ?? ctx.oidc?.body?.grant_type;
  if (Array.isArray(gt)) [gt] = gt;
  if (typeof gt === 'string' && gt) stats.by_grant[gt] = (stats.by_grant[gt] ?? 0) + 1;
  else gt = '(no grant_type)';
  recordAssertion(ctx);

  const body = ctx.body;
  if (body && typeof body === 'object' && typeof body.error === 'string') {
    let detail = ctx.state.errorDetail;
    if (detail && body.error === 'invalid_client') detail += assertionSummary(ctx, detail);
    if (detail) detail = sanitize(detail);
    if (detail && !(body.error_description ?? '').includes(detail)) {
      const desc = body.error_description ? `${body.error_description} (${detail})` : detail;
      ctx.body = { ...body, error_description: desc };
    }
    log(`/token ${gt} -> ${ctx.status} ${ctx.body.error}: ${ctx.body.error_description ?? ''}`);
  } else {
    log(`/token ${gt} -> ${ctx.status}`);
  }
  countDpopOutcome('token', ctx.status, ctx.body, proof);

  if (tokenDelayMs > 0) await new Promise((r) => setTimeout(r, tokenDelayMs));
});

// What the last /token request's JWT (client_assertion, else assertion) had
// in its header, and whether the request succeeded, for /test/stats.
function recordAssertion(ctx) {
  const p = ctx.oidc?.params ?? {};
  const jwt = typeof p.client_assertion === 'string' ? p.client_assertion : p.assertion;
  if (typeof jwt !== 'string') return;
  try {
    const h = decodeProtectedHeader(jwt);
    const c = decodeJwt(jwt);
    stats.last_assertion = {
      alg: h.alg ?? null, kid: h.kid ?? null, typ: h.typ ?? null, iss: c.iss ?? null,
      ok: ctx.status >= 200 && ctx.status < 300,
    };
  } catch {
    stats.last_assertion = { alg: null, ok: false };
  }
}

function decodeProof(jwt) {
  try {
    return { header: decodeProtectedHeader(jwt), claims: decodeJwt(jwt) };
  } catch {
    return { header: null, claims: null };
  }
}

function recordProof(where, jwt, status, error) {
  stats.dpop[where] = {
    ...decodeProof(jwt), jwt, ok: status >= 200 && status < 300, error: error ?? null,
  };
}

// Count one answer's DPoP outcome: nonce demands, invalid proofs, replays,
// and the token_type of tokens issued.
function countDpopOutcome(where, status, body, proof) {
  if (!body || typeof body !== 'object') return;
  if (status >= 200 && status < 300 && typeof body.token_type === 'string') {
    const tt = body.token_type;
    stats.dpop.issued[tt] = (stats.dpop.issued[tt] ?? 0) + 1;
    return;
  }
  if (body.error === 'use_dpop_nonce') {
    stats.dpop.use_dpop_nonce += 1;
    stats.dpop[`use_dpop_nonce_${where}`] += 1;
  } else if (body.error === 'invalid_dpop_proof') {
    stats.dpop.invalid_proofs += 1;
  }
  if (proof && /DPoP proof JWT replay/i.test(body.error_description ?? '')) stats.dpop.replays += 1;
}

// For failed private_key_jwt auth: say which kid/alg/aud/exp the assertion had.
function assertionSummary(ctx, detail) {
  const jwt = ctx.oidc?.params?.client_assertion;
  if (typeof jwt !== 'string') return '';
  try {
    const h = decodeProtectedHeader(jwt);
    const c = decodeJwt(jwt);
    if (/aud/.test(detail)) return `; assertion aud=${fmt(c.aud)}`;
    if (/expired|exp\b/.test(detail)) return `; assertion exp=${fmt(c.exp)}, now=${Math.floor(Date.now() / 1000)}`;
    if (/key|signature/.test(detail)) return `; assertion kid=${fmt(h.kid)} alg=${fmt(h.alg)}`;
    if (/once/.test(detail)) return `; assertion jti=${fmt(c.jti)}`;
  } catch {
    // not a JWT: the provider's own detail says so
  }
  return '';
}

// ---------------------------------------------------------------- jwt-bearer grant

// RFC 6749 5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
function sanitize(text) {
  return String(text).replace(/[^\x20-\x21\x23-\x5b\x5d-\x7e]/g, '?');
}

function fmt(value) {
  if (value === undefined) return '(none)';
  if (Array.isArray(value)) return `[${value.map(fmt).join(', ')}]`;
  return typeof value === 'string' ? value : sanitize(JSON.stringify(value));
}

function invalidGrant(description) {
  const text = sanitize(description);
  const err = new errors.InvalidGrant(text);
  err.error_description = text;
  return err;
}

function pruneReplayCache(now) {
  for (const [k, exp] of seenAssertions) if (exp + clockTolerance < now) seenAssertions.delete(k);
  for (const [k, exp] of seenDpopJtis) if (exp < now) seenDpopJtis.delete(k);
}

// The URL a proof's htu names, without query and fragment (RFC 9449 4.3),
// as WHATWG URL serialises it (scheme and host lower case, default port
// dropped); null if it is not a URL.
function htuOf(value) {
  if (typeof value !== 'string') return null;
  const u = URL.parse(value);
  if (!u) return null;
  u.search = '';
  u.hash = '';
  return u.href;
}

const ath = (token) => createHash('sha256').update(token).digest('base64url');

// Check a DPoP proof as RFC 9449 4.3 says, for our own endpoints. `nonce`:
// {required, check(value), next()} or undefined. Throws {code, description,
// nonce?} (code: invalid_dpop_proof or use_dpop_nonce); returns {thumbprint,
// jti, iat, nonce, header, claims}. The jti is not recorded: call
// consumeDpopJti once every other check has passed.
async function checkProof(proof, { htm, htu, accessToken, nonce }) {
  const fail = (description, extra = {}) => Object.assign(new Error(description),
    { code: 'invalid_dpop_proof', description, ...extra });
  let verified;
  try {
    verified = await jwtVerify(proof, EmbeddedJWK, { algorithms: dpopAlgs, typ: 'dpop+jwt' });
  } catch (e) {
    throw fail(`invalid DPoP proof (${e.code ?? 'error'}: ${e.message})`);
  }
  const { payload: c, protectedHeader: h } = verified;
  const now = Math.floor(Date.now() / 1000);
  if (typeof c.iat !== 'number' || !c.iat) throw fail('DPoP proof must have a iat number property');
  if (Math.abs(now - c.iat) > DPOP_IAT_WINDOW) {
    throw fail(`DPoP proof iat is not recent enough: iat=${c.iat}, now=${now}`);
  }
  if (typeof c.jti !== 'string' || !c.jti) throw fail('DPoP proof must have a jti string property');
  if (c.htm !== htm) throw fail(`DPoP proof htm mismatch: expected ${htm}, got ${fmt(c.htm)}`);
  if (htuOf(c.htu) !== htu) throw fail(`DPoP proof htu mismatch: expected ${htu}, got ${fmt(c.htu)}`);
  if (accessToken !== undefined && c.ath !== ath(accessToken)) {
    throw fail(c.ath === undefined ? 'DPoP proof ath missing' : 'DPoP proof ath mismatch');
  }
  if (c.nonce !== undefined && typeof c.nonce !== 'string') throw fail('DPoP proof nonce must be a string');
  if (nonce) {
    if (c.nonce === undefined && nonce.required) {
      throw fail('nonce is required in the DPoP proof', { code: 'use_dpop_nonce', nonce: nonce.next() });
    }
    if (c.nonce !== undefined && !nonce.check(c.nonce)) {
      throw fail('invalid nonce in DPoP proof', { code: 'use_dpop_nonce', nonce: nonce.next() });
    }
  } else if (c.nonce !== undefined) {
    throw fail('DPoP nonces are not supported here');
  }
  return {
    thumbprint: await calculateJwkThumbprint(h.jwk), jti: c.jti, iat: c.iat, nonce: c.nonce,
    header: h, claims: c,
  };
}

// Record a proof's jti; false if it was seen before (a replay).
function consumeDpopJti(scope, result) {
  const now = Math.floor(Date.now() / 1000);
  pruneReplayCache(now);
  const k = `${scope} ${result.thumbprint} ${result.jti}`;
  if (seenDpopJtis.has(k)) return false;
  seenDpopJtis.set(k, Math.max(result.iat, now) + DPOP_IAT_WINDOW + 5);
  return true;
}

// DPoP for the jwt-bearer grant (a custom grant gets no helpers): the proof
// in the DPoP header, checked against the token URL and this client's nonce
// rule. Returns the proof's result, or undefined without a proof (an error
// for a dpop_bound_access_tokens client).
async function jwtBearerDpop(ctx, client, tokenUrl) {
  const proof = ctx.get('DPoP');
  if (!proof) {
    if (client.dpopBoundAccessTokens) throw new errors.InvalidGrant('DPoP proof JWT not provided');
    return undefined;
  }
  const required = dpopNonceClients.has(client.clientId);
  try {
    const result = await checkProof(proof, {
      htm: ctx.method,
      htu: tokenUrl,
      nonce: { required, check: checkTokenNonce, next: nextTokenNonce },
    });
    // as oidc-provider does: a proof without the newest nonce learns it
    const next = nextTokenNonce();
    if (result.nonce !== next) ctx.set('DPoP-Nonce', next);
    return result;
  } catch (e) {
    if (e.code === 'use_dpop_nonce') {
      ctx.set('DPoP-Nonce', e.nonce);
      throw new errors.UseDpopNonce(e.description);
    }
    throw new errors.InvalidDpopProof(sanitize(e.description));
  }
}

async function jwtBearerHandler(ctx) {
  const { client, params } = ctx.oidc;
  const clientId = client.clientId;
  const tokenUrl = ctx.oidc.urlFor('token');
  const assertion = params.assertion;
  if (!assertion) {
    throw new errors.InvalidRequest("missing required parameter 'assertion'");
  }
  const jwks = bearerJwks.get(clientId);
  if (!jwks) throw invalidGrant(`client ${clientId} has no jwks for jwt-bearer`);
  const dPoP = await jwtBearerDpop(ctx, client, tokenUrl);

  let header;
  let payload;
  try {
    header = decodeProtectedHeader(assertion);
    payload = decodeJwt(assertion);
  } catch (e) {
    throw invalidGrant(`assertion is not a valid JWT: ${e.message}`);
  }
  if (!CLIENT_AUTH_ALGS.includes(header.alg)) {
    throw invalidGrant(`assertion alg not allowed: ${header.alg}`);
  }

  let key;
  try {
    key = await jwks(header, { alg: header.alg });
  } catch (e) {
    throw invalidGrant(
      `assertion key not found: no key in client jwks for kid=${header.kid ?? '(none)'} alg=${header.alg} (${e.code ?? e.message})`,
    );
  }
  try {
    await compactVerify(assertion, key, { algorithms: [header.alg] });
  } catch (e) {
    // createLocalJWKSet may return a function that tries several keys
    throw invalidGrant(`assertion signature verification failed (kid=${header.kid ?? '(none)'} alg=${header.alg}): ${e.message}`);
  }

  const now = Math.floor(Date.now() / 1000);
  if (payload.iss !== clientId) {
    throw invalidGrant(`assertion iss mismatch: expected ${clientId}, got ${fmt(payload.iss)}`);
  }
  const aud = payload.aud;
  const audOk = Array.isArray(aud) ? aud.includes(tokenUrl) : aud === tokenUrl;
  if (!audOk) {
    throw invalidGrant(`assertion aud mismatch: expected ${tokenUrl}, got ${fmt(aud)}`);
  }
  if (typeof payload.exp !== 'number') throw invalidGrant('assertion exp missing');
  if (payload.exp + clockTolerance <= now) {
    throw invalidGrant(`assertion expired: exp=${payload.exp}, now=${now}`);
  }
  if (typeof payload.nbf === 'number' && payload.nbf - clockTolerance > now) {
    throw invalidGrant(`assertion not yet valid: nbf=${payload.nbf}, now=${now}`);
  }
  if (typeof payload.sub !== 'string' || !payload.sub) throw invalidGrant('assertion sub missing');
  if (typeof payload.jti !== 'string' || !payload.jti) throw invalidGrant('assertion jti missing');
  pruneReplayCache(now);
  const replayKey = `${clientId} ${payload.jti}`;
  if (seenAssertions.has(replayKey)) {
    throw invalidGrant(`assertion jti replayed: ${payload.jti}`);
  }
  seenAssertions.set(replayKey, payload.exp);
  if (dPoP && !consumeDpopJti(`token ${clientId}`, dPoP)) {
    throw new errors.InvalidDpopProof(`DPoP proof JWT Replay detected (jti ${sanitize(dPoP.jti)})`);
  }

  // scope: default to everything the client may have
  const allowed = new Set((client.scope ?? '').split(' ').filter(Boolean));
  let requested = params.scope ? params.scope.split(' ').filter(Boolean) : [...allowed];
  const bad = requested.filter((s) => !allowed.has(s));
  if (bad.length) throw new errors.InvalidScope(`requested scope is not allowed: ${bad.join(' ')}`, bad.join(' '));
  requested = [...new Set(requested)];
  const scope = requested.join(' ');

  const accountId = payload.sub;
  const grant = new provider.Grant({ accountId, clientId });
  if (scope) grant.addOIDCScope(scope);
  const grantId = await grant.save();

  const at = new provider.AccessToken({
    accountId, client, grantId, gty: JWT_BEARER, scope: scope || undefined,
  });
  // bound to the proof's key: oidc-provider's refresh_token grant then
  // wants a proof by the same key (refreshToken.jkt)
  if (dPoP) at.setThumbprint('jkt', dPoP.thumbprint);
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();

  const rt = new provider.RefreshToken({
    accountId, client, grantId, gty: JWT_BEARER, scope: scope || undefined,
  });
  if (dPoP) rt.setThumbprint('jkt', dPoP.thumbprint);
  ctx.oidc.entity('RefreshToken', rt);
  const refreshToken = await rt.save();

  ctx.body = {
    access_token: accessToken,
    token_type: at.tokenType,
    expires_in: at.expiration,
    refresh_token: refreshToken,
    scope,
  };
}

provider.registerGrantType(JWT_BEARER, jwtBearerHandler, ['assertion', 'scope']);

// ---------------------------------------------------------------- own routes

function send(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 1 << 20) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function findLiveAccessToken(value) {
  if (!value) return undefined;
  for (const Model of [provider.AccessToken, provider.ClientCredentials]) {
    const t = await Model.find(value);
    if (t && !t.isExpired) return t;
  }
  return undefined;
}

// The WWW-Authenticate value for a 401 at /api/echo.
function challenge(scheme, error, description) {
  const parts = [`error="${error}"`];
  if (description) parts.push(`error_description="${sanitize(description)}"`);
  if (scheme === 'DPoP') parts.push(`algs="${dpopAlgs.join(' ')}"`);
  return `${scheme} ${parts.join(', ')}`;
}

function unauthorized(res, scheme, error, description, headers = {}) {
  stats.api_401 += 1;
  const body = { error };
  if (description) body.error_description = sanitize(description);
  countDpopOutcome('api', 401, body, null);
  send(res, 401, body, { 'www-authenticate': challenge(scheme, error, description), ...headers });
}

async function handleEcho(req, res) {
  stats.api_requests += 1;
  const raw = await readBody(req);
  const m = /^(Bearer|DPoP)\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  const scheme = m && m[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
  if (m) stats.dpop.api_by_scheme[scheme] += 1;
  const proof = req.headers.dpop;
  if (typeof proof === 'string' && proof) stats.dpop.api_proofs += 1;
  const token = await findLiveAccessToken(m?.[2]);
  if (!token) {
    unauthorized(res, scheme, 'invalid_token');
    return;
  }
  let jkt = null;
  if (scheme === 'Bearer') {
    // RFC 9449 7.2: a DPoP-bound token is no bearer token
    if (token.jkt) {
      unauthorized(res, 'DPoP', 'invalid_token', 'DPoP-bound access token sent with the Bearer scheme');
      return;
    }
  } else {
    if (typeof proof !== 'string' || !proof) {
      unauthorized(res, 'DPoP', 'invalid_dpop_proof', 'DPoP proof missing');
      return;
    }
    let result;
    try {
      result = await checkProof(proof, {
        htm: req.method,
        htu: `${issuer}/api/echo`,
        accessToken: m[2],
        nonce: apiNonceAlways ? {
          required: true, check: () => false, next: () => `always-${randomBytes(16).toString('base64url')}`,
        } : apiNonceRequired ? {
          required: true, check: (v) => v === apiNonce, next: () => apiNonce,
        } : { required: false, check: () => true, next: () => apiNonce },
      });
    } catch (e) {
      stats.dpop.last_api_proof = {
        ...decodeProof(proof), jwt: proof, ok: false, error: e.code ?? 'invalid_dpop_proof',
      };
      if (e.code === 'use_dpop_nonce') {
        unauthorized(res, 'DPoP', 'use_dpop_nonce', 'Resource server requires nonce in DPoP proof',
          { 'dpop-nonce': e.nonce });
      } else {
        unauthorized(res, 'DPoP', 'invalid_dpop_proof', e.description ?? String(e));
      }
      return;
    }
    const fail = (error, description) => {
      stats.dpop.last_api_proof = { header: result.header, claims: result.claims, jwt: proof, ok: false, error };
      unauthorized(res, 'DPoP', error, description);
    };
    if (!token.jkt) {
      fail('invalid_token', 'the access token is not DPoP-bound');
      return;
    }
    if (token.jkt !== result.thumbprint) {
      fail('invalid_dpop_proof', `DPoP proof key ${result.thumbprint} is not the one the token is bound to`);
      return;
    }
    if (!consumeDpopJti('api', result)) {
      stats.dpop.replays += 1;
      fail('invalid_dpop_proof', `DPoP proof JWT Replay detected (jti ${result.jti})`);
      return;
    }
    stats.dpop.last_api_proof = { header: result.header, claims: result.claims, jwt: proof, ok: true, error: null };
    jkt = token.jkt;
  }
  const extra = {};
  if (scheme === 'DPoP' && apiNonceRequired && apiNonceRotateOnSuccess) {
    apiNonce = newApiNonce();
    extra['dpop-nonce'] = apiNonce;
  }
  send(res, 200, {
    ok: true,
    client_id: token.clientId,
    sub: token.accountId ?? null,
    method: req.method,
    body: raw.length ? raw.toString('utf8') : null,
    token_type: scheme,
    jkt,
  }, extra);
}

async function revokeAll() {
  let n = 0;
  for (const [jti, kind] of issuedAccessTokens) {
    const Model = kind === 'client_credentials' ? provider.ClientCredentials : provider.AccessToken;
    const t = await Model.find(jti, { ignoreExpiration: true });
    if (t) {
      await t.destroy();
      n += 1;
    }
  }
  issuedAccessTokens.clear();
  return n;
}

const providerCallback = provider.callback();

server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  const p = url.pathname;
  try {
    if (p === '/api/echo') {
      if (!['GET', 'POST', 'PUT', 'PATCH', 'DELETE'].includes(req.method)) {
        send(res, 405, { error: 'method_not_allowed' }, { allow: 'GET, POST, PUT, PATCH, DELETE' });
        return;
      }
      await handleEcho(req, res);
      return;
    }
    if (p.startsWith('/test/')) {
      if (p === '/test/stats' && req.method === 'GET') {
        send(res, 200, stats);
      } else if (p === '/test/reset' && req.method === 'POST') {
        await readBody(req);
        stats = zeroStats();
        send(res, 200, { ok: true });
      } else if (p === '/test/revoke' && req.method === 'POST') {
        await readBody(req);
        const revoked = await revokeAll();
        log(`revoked ${revoked} access token(s)`);
        send(res, 200, { ok: true, revoked });
      } else if (p === '/test/jwks-stale' && req.method === 'POST') {
        // a jwks_uri client's cached keys expire now (oidc-provider keeps
        // them at least 60 s): the next assertion with an unknown kid makes
        // it fetch the JWKS again, as it would once its cache time is over
        const { client_id: id } = JSON.parse((await readBody(req)).toString('utf8') || '{}');
        const client = await provider.Client.find(String(id));
        if (!client?.jwksUri) {
          send(res, 400, { error: 'invalid_request', error_description: 'no jwks_uri client of that id' });
          return;
        }
        client.asymmetricKeyStore.freshUntil = 0;
        send(res, 200, { ok: true });
      } else if (p === '/test/mode' && req.method === 'POST') {
        const raw = (await readBody(req)).toString('utf8');
        let mode;
        try {
          mode = raw ? JSON.parse(raw) : {};
        } catch {
          send(res, 400, { error: 'invalid_request', error_description: 'body must be JSON' });
          return;
        }
        if (mode.token_delay_ms !== undefined) {
          const d = Number(mode.token_delay_ms);
          if (!Number.isFinite(d) || d < 0) {
            send(res, 400, { error: 'invalid_request', error_description: 'token_delay_ms must be >= 0' });
            return;
          }
          tokenDelayMs = d;
        }
        const flags = ['api_dpop_nonce', 'api_dpop_nonce_rotate', 'api_dpop_nonce_rotate_on_success',
          'api_dpop_nonce_always', 'token_dpop_nonce_always', 'token_ignore_dpop'];
        for (const k of flags) {
          if (mode[k] !== undefined && typeof mode[k] !== 'boolean') {
            send(res, 400, { error: 'invalid_request', error_description: `${k} must be true or false` });
            return;
          }
        }
        if (mode.api_dpop_nonce !== undefined) apiNonceRequired = mode.api_dpop_nonce;
        if (mode.api_dpop_nonce_rotate_on_success !== undefined) {
          apiNonceRotateOnSuccess = mode.api_dpop_nonce_rotate_on_success;
        }
        if (mode.api_dpop_nonce_rotate) apiNonce = newApiNonce();
        if (mode.api_dpop_nonce_always !== undefined) apiNonceAlways = mode.api_dpop_nonce_always;
        if (mode.token_dpop_nonce_always !== undefined) tokenNonceAlways = mode.token_dpop_nonce_always;
        if (mode.token_ignore_dpop !== undefined) tokenIgnoreDpop = mode.token_ignore_dpop;
        send(res, 200, {
          ok: true,
          token_delay_ms: tokenDelayMs,
          api_dpop_nonce: apiNonceRequired,
          api_dpop_nonce_rotate_on_success: apiNonceRotateOnSuccess,
          api_dpop_nonce_always: apiNonceAlways,
          token_dpop_nonce_always: tokenNonceAlways,
          token_ignore_dpop: tokenIgnoreDpop,
          api_nonce: apiNonce,
        });
      } else {
        send(res, 404, { error: 'not_found' });
      }
      return;
    }
    providerCallback(req, res);
  } catch (e) {
    log(`error on ${req.method} ${p}: ${e.stack || e}`);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
    else res.destroy();
  }
});

// ---------------------------------------------------------------- lifecycle

function shutdown(sig) {
  log(`${sig}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

log(`issuer ${issuer}, ${clients.length} client(s)`);
process.stdout.write(`listening ${issuer}\n`);
