// OAuth 2.0 test peer for p11jwt integration tests.
//
// Usage: node server.mjs CONFIG.json
//
// Wraps panva's oidc-provider (in-memory adapter) and adds:
//   - a custom urn:ietf:params:oauth:grant-type:jwt-bearer grant (RFC 7523)
//   - /api/echo            protected resource (Bearer access token)
//   - /test/stats|reset|revoke|mode   test control endpoints
//   - error_description enrichment on /token errors (error_detail appended)
//
// Listens on 127.0.0.1 only. Prints "listening http://127.0.0.1:PORT" on
// stdout once ready; everything else goes to stderr.

import { readFileSync } from 'node:fs';
import http from 'node:http';
import { randomBytes } from 'node:crypto';

import Provider, { errors } from 'oidc-provider';
import {
  compactVerify,
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
} from 'jose';

const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const API_SCOPES = ['api:read', 'api:write'];
const CLIENT_AUTH_ALGS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
];
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

const ttlByClient = new Map();
const bearerJwks = new Map(); // client_id -> jose local JWKS getter
const bearerJwksRaw = new Map();
const clients = [];

for (const c of config.clients ?? []) {
  if (typeof c.client_id !== 'string' || !c.client_id) die('client without client_id');
  if (!c.jwks || !Array.isArray(c.jwks.keys)) die(`client ${c.client_id}: jwks.keys missing`);
  const ttl = Number(c.ttl ?? DEFAULT_TTL);
  if (!(ttl > 0)) die(`client ${c.client_id}: bad ttl`);
  ttlByClient.set(c.client_id, ttl);
  if (c.grant === 'client_credentials') {
    clients.push({
      client_id: c.client_id,
      token_endpoint_auth_method: 'private_key_jwt',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: API_SCOPES.join(' '),
      jwks: c.jwks,
    });
  } else if (c.grant === 'jwt-bearer') {
    clients.push({
      client_id: c.client_id,
      token_endpoint_auth_method: 'none',
      grant_types: [JWT_BEARER, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
      scope: API_SCOPES.join(' '),
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
});
let stats = zeroStats();
let tokenDelayMs = 0;

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
  },
  enabledJWA: {
    clientAuthSigningAlgValues: CLIENT_AUTH_ALGS,
  },
  rotateRefreshToken: true,
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
  await next();
  if (!isToken) return;

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
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();

  const rt = new provider.RefreshToken({
    accountId, client, grantId, gty: JWT_BEARER, scope: scope || undefined,
  });
  ctx.oidc.entity('RefreshToken', rt);
  const refreshToken = await rt.save();

  ctx.body = {
    access_token: accessToken,
    token_type: 'Bearer',
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

async function handleEcho(req, res) {
  stats.api_requests += 1;
  const raw = await readBody(req);
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  const token = await findLiveAccessToken(m?.[1]);
  if (!token) {
    stats.api_401 += 1;
    send(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
    return;
  }
  send(res, 200, {
    ok: true,
    client_id: token.clientId,
    sub: token.accountId ?? null,
    method: req.method,
    body: raw.length ? raw.toString('utf8') : null,
  });
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
        send(res, 200, { ok: true, token_delay_ms: tokenDelayMs });
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
