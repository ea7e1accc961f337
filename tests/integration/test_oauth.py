#!/usr/bin/python3
"""Integration tests for `p11jwt token`, `p11jwt call` and `p11jwt cache`.

The token exchange runs against a real OAuth server on 127.0.0.1: panva's
oidc-provider (tests/integration/oauth/, pinned in its package-lock.json),
which checks every client assertion with its own JOSE library. A small
misbehaving server written here (non-JSON, hangs, huge bodies, 500 then 200,
429 with Retry-After, TLS with an untrusted certificate, Adobe's custom form)
covers what a well-behaved server never does; it checks the JWTs it receives
with PyJWT. Nothing here talks to any address but 127.0.0.1.

Environment: P11JWT_SRCDIR, P11JWT_BUILDDIR (set by meson). Prints TAP.
"""
import http.server
import json
import os
import shutil
import socketserver
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
from test_agent import Agent, SRC, CLI, MKTOKEN, PAIRS, jwt_parts, run  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)

OAUTH_DIR = os.path.join(SRC, 'tests', 'integration', 'oauth')
NODE = shutil.which('node') or '/usr/bin/node'
t = Tap()


def slug(alg):
    return alg.lower()


# ---- the real OAuth server -------------------------------------------------

class OAuthServer:
    def __init__(self, work, clients):
        cfg = os.path.join(work, 'oauth-config.json')
        with open(cfg, 'w') as f:
            json.dump({'port': 0, 'clients': clients}, f)
        self.log = open(os.path.join(work, 'oauth-server.log'), 'w')
        self.proc = subprocess.Popen([NODE, os.path.join(OAUTH_DIR, 'server.mjs'), cfg],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        self.url = line.split(' ', 1)[1] if line.startswith('listening ') else None
        self.token_url = f'{self.url}/token' if self.url else None

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def post(self, path, body=None):
        req = urllib.request.Request(self.url + path, method='POST',
                                     data=json.dumps(body or {}).encode(),
                                     headers={'Content-Type': 'application/json'})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self):
        return self.get('/test/stats')

    def echo(self, token):
        req = urllib.request.Request(self.url + '/api/echo',
                                     headers={'Authorization': f'Bearer {token}'})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---- the misbehaving server ------------------------------------------------

class Bad:
    """State shared with the handler: requests seen per path."""
    hits = {}
    forms = {}
    agents = []
    jwks = None  # PyJWK for /adobe
    lock = threading.Lock()


class BadHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *a):
        pass

    def reply(self, status, body, ctype='application/json', extra=()):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.do_POST()

    def do_POST(self):
        n = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(n).decode() if n else ''
        form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
        path = self.path.split('?')[0]
        if path.startswith('http://'):  # asked as a proxy
            path = '/proxied'
        with Bad.lock:
            Bad.agents.append(self.headers.get('User-Agent'))
            Bad.hits[path] = Bad.hits.get(path, 0) + 1
            Bad.forms.setdefault(path, []).append(form)
            hit = Bad.hits[path]
        ok = json.dumps({'access_token': f'tok-{path.strip("/")}-{hit}', 'token_type': 'Bearer',
                         'expires_in': 600})
        if path == '/nonjson':
            self.reply(200, '<html><body>Service Unavailable</body></html>', 'text/html')
        elif path == '/hang':
            time.sleep(8)
            self.reply(200, ok)
        elif path == '/huge':
            self.reply(200, b'{"access_token":"' + b'a' * (2 * 1024 * 1024) + b'"}')
        elif path == '/flaky':
            self.reply(500, 'oops', 'text/plain') if hit == 1 else self.reply(200, ok)
        elif path == '/ratelimit':
            if hit == 1:
                self.reply(429, '{"error":"slow_down"}', extra=[('Retry-After', '1')])
            else:
                self.reply(200, ok)
        elif path == '/always500':
            self.reply(503, 'down', 'text/plain')
        elif path == '/incomplete':
            self.reply(200, '{"token_type":"Bearer","expires_in":600}')
        elif path == '/string-expiry':
            self.reply(200, json.dumps({'access_token': f'nhs-{hit}', 'expires_in': '599',
                                        'token_type': 'Bearer'}))
        elif path == '/bad-expiry':
            self.reply(200, '{"access_token":"x","expires_in":"soon"}')
        elif path == '/consent':
            self.reply(400, '{"error":"consent_required","error_description":"consent_required"}')
        elif path == '/adobe':
            # Adobe IMS shape: client_id, client_secret, jwt_token
            try:
                claims = pyjwt.decode(form.get('jwt_token', ''), Bad.jwks.key,
                                      algorithms=['RS256'],
                                      audience=f'http://127.0.0.1:{self.server.server_port}'
                                               '/c/adobe-client')
                good = (form.get('client_id') == 'adobe-client' and
                        form.get('client_secret') == 's3cret-for-tests' and
                        claims.get('https://ims-na1.adobelogin.com/s/ent_test') is True)
            except Exception as e:  # noqa: BLE001
                self.reply(400, json.dumps({'error': 'invalid_token', 'error_description': str(e)}))
                return
            if good:
                self.reply(200, ok)
            else:
                self.reply(400, '{"error":"invalid_client"}')
        elif path == '/proxied':
            self.reply(200, json.dumps({'access_token': 'via-proxy', 'expires_in': 60}))
        elif path == '/echo-auth':
            self.reply(200, json.dumps({'authorization': self.headers.get('Authorization')}))
        else:
            self.reply(404, '{"error":"not_found"}')


class ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def start_bad(tls_cert=None):
    srv = ThreadingServer(('127.0.0.1', 0), BadHandler)
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls_cert)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---- helpers ---------------------------------------------------------------

def p11jwt(*args, env, timeout=120):
    return run([CLI, *args], env=env, timeout=timeout)


# Presets whose provider accepts more than one alg, each with every key of
# the test token that one of those algs fits, and the alg chosen with no
# --alg (entra's PS256/RS256 fit only the RSA key).
PRESET_KEYS = [('smart', 'ec-p384', 'ES384'), ('smart', 'rsa-2048', 'RS384'),
               ('okta', 'ec-p256', 'ES256'), ('okta', 'ec-p384', 'ES384'),
               ('okta', 'ec-p521', 'ES512'), ('okta', 'rsa-2048', 'RS256')]


def cc_args(srv, key, alg, *extra):
    return ['--key', key, '--alg', alg, '--client-id', f'cc-{slug(alg)}', '--token-url',
            srv.token_url, *extra]


def main():
    work = tempfile.mkdtemp(prefix='p11jwt-oa-', dir='/tmp')
    agent = srv = bad = tls = None
    try:
        if not os.path.isdir(os.path.join(OAUTH_DIR, 'node_modules', 'oidc-provider')):
            # scripts/ensure-deps does this for ./run-tests; a release
            # tarball's `meson test` (meson dist) gets here without it
            r = run(['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error', '--prefix',
                     OAUTH_DIR], timeout=600)
            if not t.ok(r.returncode == 0, 'npm ci installs the pinned oidc-provider',
                        r.stdout + r.stderr):
                return
        tokdir = os.path.join(work, 'tok')
        r = run([MKTOKEN, tokdir])
        if not t.ok(r.returncode == 0, 'test token made', r.stderr):
            return
        os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
        sock = os.path.join(work, 'a', 'agent.sock')
        os.mkdir(os.path.dirname(sock), 0o700)
        agent = Agent(tokdir, sock)
        if not t.ok(agent.ready, 'agent started'):
            return
        env = dict(os.environ, P11JWT_AGENT_SOCK=sock,
                   XDG_RUNTIME_DIR=os.path.join(work, 'rt'),
                   XDG_CONFIG_HOME=os.path.join(work, 'cfg'))
        env.pop('P11JWT_CLIENT_SECRET', None)
        for k in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'all_proxy',
                  'ALL_PROXY'):
            env.pop(k, None)
        os.makedirs(env['XDG_RUNTIME_DIR'], 0o700)

        clients = []
        jwks = {}
        for key, alg in PAIRS:
            r = p11jwt('jwks', '--key', key, '--alg', alg, env=env)
            jwks[(key, alg)] = json.loads(r.stdout)
            clients.append({'client_id': f'cc-{slug(alg)}', 'jwks': jwks[(key, alg)],
                            'grant': 'client_credentials', 'ttl': 600})
        # issue 16: the JWKS for a preset comes from `jwks --preset`, with
        # the alg the preset signs with for that key (no --alg anywhere)
        preset_jwks = {}
        for preset, key, alg in PRESET_KEYS:
            r = p11jwt('jwks', '--preset', preset, '--key', key, env=env)
            got = json.loads(r.stdout)['keys'][0].get('alg') if r.returncode == 0 else None
            t.ok(got == alg and f'{alg}: first of {preset}' in r.stderr,
                 f'jwks --preset {preset} --key {key}: the JWK says {alg}, and why',
                 (got, r.stderr))
            preset_jwks[(preset, key)] = json.loads(r.stdout) if r.returncode == 0 else \
                jwks[(key, alg)]
            clients.append({'client_id': f'{preset}-{key}', 'jwks': preset_jwks[(preset, key)],
                            'grant': 'client_credentials', 'ttl': 600})
        clients.append({'client_id': 'bearer-es256', 'jwks': jwks[('ec-p256', 'ES256')],
                        'grant': 'jwt-bearer', 'ttl': 600})
        clients.append({'client_id': 'bearer-short', 'jwks': jwks[('ed25519', 'EdDSA')],
                        'grant': 'jwt-bearer', 'ttl': 62})
        srv = OAuthServer(work, clients)
        if not t.ok(srv.url is not None and srv.url.startswith('http://127.0.0.1:'),
                    'oidc-provider listens on 127.0.0.1', open(os.path.join(
                        work, 'oauth-server.log')).read()[-2000:]):
            return

        test_every_alg(srv, env)
        test_preset_algs(srv, env)
        test_cache(srv, env, work)
        test_parallel(srv, env)
        test_jwt_bearer_refresh(srv, env, work)
        test_call(srv, env)
        test_rejections(srv, env)
        test_profiles_dry_run(srv, env, work)
        Bad.jwks = pyjwt.PyJWK(jwks[('rsa-2048', 'RS256')]['keys'][0])
        bad = start_bad()
        test_bad_server(bad, env, work)
        tls = test_tls(env, work)
        test_oracle(bad, env, jwks)
        test_cache_files(srv, env, work)
    finally:
        for s in (bad, tls):
            if s:
                s.shutdown()
        if srv:
            srv.stop()
        if agent:
            agent.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_every_alg(srv, env):
    for key, alg in PAIRS:
        r = p11jwt('token', *cc_args(srv, key, alg, '--scope', 'api:read', '--json'), env=env)
        ok = t.ok(r.returncode == 0, f'client_credentials with {alg} ({key})', r.stderr)
        if not ok:
            continue
        resp = json.loads(r.stdout)
        t.eq(resp.get('scope'), 'api:read', f'{alg}: the scope was granted')
        st, body = srv.echo(resp.get('access_token'))
        t.ok(st == 200 and body['client_id'] == f'cc-{slug(alg)}',
             f'{alg}: the token works at the protected API', (st, body))


def agent_requests(env):
    r = p11jwt('status', '--json', env=env)
    return json.loads(r.stdout)['requests'] if r.returncode == 0 else -1


def test_preset_algs(srv, env):
    """Issue 16: with no --alg a preset signs with the first of its
    provider's algs that the key signs; oidc-provider checks the assertion
    against the JWKS `jwks --preset` exported."""
    for preset, key, alg in PRESET_KEYS:
        srv.post('/test/reset')
        # these clients take bearer tokens: okta's DPoP default is off here
        # (test_dpop.py covers it)
        nodpop = ['--no-dpop'] if preset == 'okta' else []
        r = p11jwt('token', '--preset', preset, '--key', key, '--client-id', f'{preset}-{key}',
                   '--token-url', srv.token_url, '--scope', 'api:read', '--json', '--no-cache',
                   *nodpop, env=env)
        ok = t.ok(r.returncode == 0, f'{preset} with {key}, no --alg: token exchanged',
                  r.stderr)
        resp = json.loads(r.stdout) if ok else {}
        last = srv.stats().get('last_assertion') or {}
        t.ok(last.get('alg') == alg and last.get('ok') and last.get('typ') == 'JWT' and
             last.get('kid'), f'{preset} with {key}: the server got a {alg} assertion', last)
        own = resp.get('p11jwt', {})
        t.ok(own.get('alg') == alg and own.get('alg_reason', '').startswith(
             f"{alg}: first of {preset}'s ") and f"key '{key}'" in own.get('alg_reason', ''),
             f'{preset} with {key}: --json says {alg} and why', own)
        st, body = srv.echo(resp.get('access_token'))
        t.ok(st == 200 and body['client_id'] == f'{preset}-{key}',
             f'{preset} with {key}: the token works at the API', (st, body))
    # the cache: the chosen alg is part of the key, a second call is a hit
    srv.post('/test/reset')
    a = ['token', '--preset', 'okta', '--no-dpop', '--key', 'ec-p384', '--client-id',
         'okta-ec-p384', '--token-url', srv.token_url, '--scope', 'api:read']
    r1, r2 = p11jwt(*a, env=env), p11jwt(*a, '--json', env=env)
    resp = json.loads(r2.stdout) if r2.returncode == 0 else {}
    t.ok(r1.returncode == 0 and resp.get('access_token') == r1.stdout.strip() and
         srv.stats()['token_requests'] == 1 and resp.get('p11jwt', {}).get('alg') == 'ES384' and
         resp['p11jwt'].get('alg_reason', '').startswith("ES384: first of okta's"),
         'okta with ec-p384: the second call is a cache hit, and --json still says ES384 '
         'and why (from the cache entry)', (r1.stderr, r2.stdout))
    a0, b0 = agent_requests(env), agent_requests(env)
    n0 = agent_requests(env)
    r3 = p11jwt(*a, env=env)
    n1 = agent_requests(env)
    # one keys request: is the key still served, with the same thumbprint
    # (issue 19: the cache drops a token of a key that is gone)
    t.ok(r3.returncode == 0 and r3.stdout == r1.stdout and n1 - n0 == b0 - a0 + 1,
         'a cache hit asks the agent only for its key list, and signs nothing (the cache '
         'key holds the alg asked for)',
         (n0, n1, b0 - a0, r3.stderr))
    # --dry-run shows the alg and why
    r = p11jwt('token', '--preset', 'smart', '--key', 'ec-p384', '--client-id', 'x',
               '--token-url', srv.token_url, '--dry-run', env=env)
    out = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(out.get('alg') == 'ES384' and out.get('header', {}).get('alg') == 'ES384' and
         out.get('alg_reason') == "ES384: first of smart's RS384, ES384 that key 'ec-p384' signs",
         '--dry-run: smart with ec-p384 shows ES384 and why', r.stdout + r.stderr)
    # a key that fits none of the provider's algs: refused before signing
    for preset, key, words in (
            ('nhs', 'ec-p256', "preset 'nhs' accepts RS512 only; key 'ec-p256' is P-256"),
            ('entra', 'ec-p384', "preset 'entra' accepts PS256, RS256; key 'ec-p384' is P-384"),
            ('smart', 'ed25519', "preset 'smart' accepts RS384, ES384; key 'ed25519' is "
                                 "Ed25519")):
        srv.post('/test/reset')
        a, b = agent_requests(env), agent_requests(env)
        d0 = b - a  # what one status request adds (itself)
        n0 = agent_requests(env)
        r = p11jwt('token', '--preset', preset, '--key', key, '--client-id', 'x',
                   '--token-url', srv.token_url, '--no-cache', env=env)
        n1 = agent_requests(env)
        t.ok(r.returncode == 2 and 'unsupported_alg' in r.stderr and words in r.stderr,
             f'{preset} with {key}: exit 2, unsupported_alg naming key, type and algs',
             r.stderr)
        t.ok(n1 - n0 == d0 + 1 and srv.stats()['token_requests'] == 0,
             f'{preset} with {key}: one keys request, nothing signed, nothing sent',
             (n0, n1, d0))
    r = p11jwt('jwks', '--preset', 'nhs', '--key', 'ec-p256', env=env)
    t.ok(r.returncode == 2 and "preset 'nhs' accepts RS512 only" in r.stderr and
         r.stdout == '', 'jwks --preset nhs --key ec-p256: exit 2, no JWKS printed', r.stderr)
    # --alg outside the list still works where the key fits, with the warning
    r = p11jwt('token', '--preset', 'smart', '--key', 'ec-p256', '--alg', 'ES256',
               '--client-id', 'x', '--token-url', srv.token_url, '--dry-run', env=env)
    out = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(out.get('alg') == 'ES256' and 'takes RS384 ES384; ES256 will likely be rejected'
         in r.stderr, 'smart --alg ES256 on ec-p256: signed as asked, with the warning',
         r.stdout + r.stderr)
    # a profile's algs replace the preset's list
    prof = os.path.join(env['XDG_RUNTIME_DIR'], 'okta-algs.json')
    with open(prof, 'w') as f:
        json.dump({'preset': 'okta', 'dpop': False, 'key': 'ec-p384',
                   'algs': ['ES512', 'ES384'],
                   'client_id': 'okta-ec-p384', 'token_url': srv.token_url,
                   'scope': 'api:read'}, f)
    srv.post('/test/reset')
    r = p11jwt('token', '--profile', prof, '--no-cache', '--json', env=env)
    resp = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(r.returncode == 0 and srv.stats()['last_assertion']['alg'] == 'ES384' and
         resp['p11jwt']['alg_reason'] == "ES384: first of the profile's algs ES512, ES384 "
                                        "that key 'ec-p384' signs",
         "a profile's algs: the first the key signs, exchanged", r.stdout + r.stderr)
    r = p11jwt('token', '--profile', prof, '--key', 'rsa-2048', '--no-cache', env=env)
    t.ok(r.returncode == 2 and 'the profile accepts ES512, ES384' in r.stderr,
         "a profile's algs that fit no alg of the key: exit 2, named", r.stderr)


def test_cache(srv, env, work):
    srv.post('/test/reset')
    args = cc_args(srv, 'ec-p256', 'ES256', '--scope', 'api:write')
    r1 = p11jwt('token', *args, env=env)
    r2 = p11jwt('token', *args, env=env)
    s = srv.stats()
    t.ok(r1.returncode == 0 and r2.returncode == 0, 'two token calls succeed', r1.stderr + r2.stderr)
    t.eq(r2.stdout, r1.stdout, 'the second call returns the cached token')
    t.eq(s['token_requests'], 1, 'a cache hit makes no HTTP request (server counted 1)')
    r3 = p11jwt('token', *args, '--json', env=env)
    resp = json.loads(r3.stdout) if r3.returncode == 0 else {}
    t.ok(0 < resp.get('expires_in', 0) <= 600 and resp.get('access_token') == r1.stdout.strip(),
         '--json on a cache hit shows the remaining expires_in', r3.stdout)
    r4 = p11jwt('token', *args, '--no-cache', env=env)
    t.ok(r4.returncode == 0 and r4.stdout != r1.stdout and srv.stats()['token_requests'] == 2,
         '--no-cache makes a new exchange', r4.stderr)
    # different scope, same client: not shared
    r5 = p11jwt('token', *cc_args(srv, 'ec-p256', 'ES256', '--scope', 'api:read'), env=env)
    t.ok(r5.returncode == 0 and r5.stdout != r1.stdout, 'another scope gets its own token')
    cdir = os.path.join(env['XDG_RUNTIME_DIR'], 'p11jwt', 'cache')
    st = os.stat(cdir)
    t.eq(stat.S_IMODE(st.st_mode), 0o700, 'cache directory is 0700')
    files = [f for f in os.listdir(cdir) if f.endswith('.json')]
    t.ok(files and all(stat.S_IMODE(os.stat(os.path.join(cdir, f)).st_mode) == 0o600
                       for f in files), 'cache files are 0600', files)
    r = p11jwt('cache', 'list', env=env)
    t.ok(r.returncode == 0 and 'cc-es256' in r.stdout and r1.stdout.strip() not in r.stdout,
         'cache list names the entries and shows no token', r.stdout)


def test_parallel(srv, env):
    srv.post('/test/reset')
    srv.post('/test/mode', {'token_delay_ms': 700})
    args = [CLI, 'token', *cc_args(srv, 'ec-p384', 'ES384', '--scope', 'api:read api:write')]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(10)]
    outs = [p.communicate(timeout=120) for p in procs]
    srv.post('/test/mode', {'token_delay_ms': 0})
    t.ok(all(p.returncode == 0 for p in procs), 'ten parallel token calls succeed',
         [o[1] for o in outs])
    t.eq(len({o[0] for o in outs}), 1, 'they print the same token')
    t.eq(srv.stats()['token_requests'], 1, 'ten parallel calls make one exchange')


def test_jwt_bearer_refresh(srv, env, work):
    srv.post('/test/reset')
    args = ['--grant', 'jwt-bearer', '--key', 'ec-p256', '--alg', 'ES256', '--client-id',
            'bearer-es256', '--sub', 'alice', '--token-url', srv.token_url, '--form',
            'client_id=bearer-es256']
    r = p11jwt('token', *args, '--json', env=env)
    resp = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(r.returncode == 0 and 'refresh_token' in resp, 'jwt-bearer grant gives a token',
         r.stderr)
    st, body = srv.echo(resp.get('access_token'))
    t.ok(st == 200 and body.get('sub') == 'alice', 'the jwt-bearer token is for the subject',
         body)
    t.eq(srv.stats()['by_grant'].get('urn:ietf:params:oauth:grant-type:jwt-bearer'), 1,
         'one jwt-bearer grant request')
    r = p11jwt('token', *args[:-2], env=env)
    t.ok(r.returncode == 6 and 'token endpoint said' in r.stderr,
         'without client_id in the form the public client is refused: exit 6', r.stderr)

    # refresh round trip: ttl 62 s, margin 60 s, so stale after 2 s
    sargs = ['--grant', 'jwt-bearer', '--key', 'ed25519', '--alg', 'EdDSA', '--client-id',
             'bearer-short', '--sub', 'bob', '--token-url', srv.token_url, '--form',
             'client_id=bearer-short']
    srv.post('/test/reset')
    r1 = p11jwt('token', *sargs, env=env)
    time.sleep(2.5)
    r2 = p11jwt('token', *sargs, env=env)
    s = srv.stats()
    t.ok(r1.returncode == 0 and r2.returncode == 0 and r1.stdout != r2.stdout,
         'a near-expiry token is replaced', r1.stderr + r2.stderr)
    t.eq((s['by_grant'].get('refresh_token'),
          s['by_grant'].get('urn:ietf:params:oauth:grant-type:jwt-bearer')), (1, 1),
         'by the refresh token, not a new assertion')
    st, body = srv.echo(r2.stdout.strip())
    t.ok(st == 200 and body.get('sub') == 'bob', 'the refreshed token works', body)
    # a refresh token the server refuses: back to an assertion
    cdir = os.path.join(env['XDG_RUNTIME_DIR'], 'p11jwt', 'cache')
    for f in os.listdir(cdir):
        if not f.endswith('.json'):
            continue
        path = os.path.join(cdir, f)
        e = json.load(open(path))
        if e.get('client_id') == 'bearer-short':
            e['refresh_token'] = 'not-a-valid-refresh-token'
            e['expires_at'] = int(time.time()) - 1
            with open(path, 'w') as fh:
                json.dump(e, fh)
    r3 = p11jwt('token', *sargs, env=env)
    s = srv.stats()
    t.ok(r3.returncode == 0 and 'refresh token was refused' in r3.stderr,
         'a refused refresh token falls back to a new assertion', r3.stderr)
    t.eq(s['by_grant'].get('urn:ietf:params:oauth:grant-type:jwt-bearer'), 2,
         'the fallback made one new jwt-bearer request')


def test_call(srv, env):
    args = cc_args(srv, 'rsa-2048', 'PS256', '--scope', 'api:read')
    r = p11jwt('call', *args, f'{srv.url}/api/echo', env=env)
    body = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(r.returncode == 0 and body.get('ok') and body.get('method') == 'GET',
         'call GETs the protected API with the token', r.stderr)
    r = p11jwt('call', *args, '-d', '{"n":1}', f'{srv.url}/api/echo', env=env)
    body = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(body.get('method') == 'POST' and body.get('body') == '{"n":1}',
         'call -d POSTs the data', r.stdout + r.stderr)
    r = p11jwt('call', *args, '-X', 'PUT', '-H', 'X-Trace: 1', '-d', 'a=b',
               f'{srv.url}/api/echo', env=env)
    body = json.loads(r.stdout) if r.returncode == 0 else {}
    t.eq(body.get('method'), 'PUT', 'call -X sets the method')
    datafile = os.path.join(env['XDG_RUNTIME_DIR'], 'body.json')
    with open(datafile, 'w') as f:
        f.write('{"from": "file"}')
    r = p11jwt('call', *args, '-d', f'@{datafile}', f'{srv.url}/api/echo', env=env)
    body = json.loads(r.stdout) if r.returncode == 0 else {}
    t.eq(body.get('body'), '{"from": "file"}', 'call -d @FILE sends the file')
    r = p11jwt('call', *args, '-d', '@/nonexistent/x', f'{srv.url}/api/echo', env=env)
    t.ok(r.returncode == 2 and '/nonexistent/x' in r.stderr, 'call -d @missing: exit 2',
         r.stderr)
    # 401 then retry with a new token
    srv.post('/test/reset')
    srv.post('/test/revoke')
    r = p11jwt('call', *args, f'{srv.url}/api/echo', env=env)
    s = srv.stats()
    t.ok(r.returncode == 0 and 'answered 401' in r.stderr, 'a 401 to the cached token: '
         'new token, one retry', r.stderr)
    t.eq((s['api_401'], s['token_requests'], s['api_requests']), (1, 1, 2),
         'one 401, one exchange, two API requests')
    r = p11jwt('call', *args, f'{srv.url}/api/missing', env=env)
    t.ok(r.returncode == 11 and 'HTTP 404' in r.stderr and r.stdout == '',
         'a non-2xx answer: exit 11, status and body on stderr', (r.returncode, r.stderr))
    r = p11jwt('call', *args, '-H', 'Authorization: Basic x', f'{srv.url}/api/echo', env=env)
    t.eq(r.returncode, 2, 'call refuses a user Authorization header')
    r = p11jwt('call', *args, 'http://192.0.2.1/api', env=env)
    t.ok(r.returncode == 2 and 'loopback' in r.stderr,
         'call refuses plain http to a non-loopback host (before connecting)', r.stderr)


def test_rejections(srv, env):
    base = cc_args(srv, 'ec-p256', 'ES256', '--no-cache')
    r = p11jwt('token', *base, '--aud', 'https://wrong.example/token', env=env)
    t.ok(r.returncode == 6 and 'token endpoint said invalid_client' in r.stderr and
         "aud was 'https://wrong.example/token'" in r.stderr,
         'wrong aud: exit 6, the server\'s words and an aud hint', r.stderr)
    past = int(time.time()) - 600
    r = p11jwt('token', *base, '--claim', f'iat:={past}', '--lifetime', '60', env=env)
    t.ok(r.returncode == 6 and 'expired' in r.stderr and 'clock' in r.stderr,
         'expired assertion: exit 6 with a clock hint', r.stderr)
    jti = f'fixed-{time.time()}'
    r1 = p11jwt('token', *base, '--claim', f'jti={jti}', env=env)
    r2 = p11jwt('token', *base, '--claim', f'jti={jti}', env=env)
    t.ok(r1.returncode == 0 and r2.returncode == 6 and f"jti '{jti}'" in r2.stderr,
         'replayed jti: exit 6 with a jti hint', r2.stderr)
    r = p11jwt('token', '--key', 'ec-p384', '--alg', 'ES384', '--client-id', 'cc-es256',
               '--token-url', srv.token_url, '--no-cache', env=env)
    t.ok(r.returncode == 6 and "register that key" in r.stderr and 'ec-p384' in r.stderr,
         'unregistered key: exit 6 with a key hint', r.stderr)
    r = p11jwt('token', *base, '--scope', 'nope:bad', env=env)
    t.ok(r.returncode in (0, 6), 'an unknown scope is handled (server may drop it)', r.stderr)


def test_profiles_dry_run(srv, env, work):
    pdir = os.path.join(env['XDG_CONFIG_HOME'], 'p11jwt', 'profiles')
    os.makedirs(pdir)
    with open(os.path.join(pdir, 'local.json'), 'w') as f:
        json.dump({'preset': 'client-assertion', 'key': 'ec-p521', 'alg': 'ES512',
                   'client_id': '${env:TEST_CLIENT}', 'token_url': srv.token_url,
                   'scope': 'api:read', 'claims_file': 'extra-claims.json',
                   'header': {'x-profile': '${client_id}'}}, f)
    with open(os.path.join(pdir, 'extra-claims.json'), 'w') as f:
        json.dump({'department': 'radiology'}, f)
    penv = dict(env, TEST_CLIENT='cc-es512')
    srv.post('/test/reset')
    r = p11jwt('token', '--profile', 'local', '--dry-run', env=penv)
    out = json.loads(r.stdout) if r.returncode == 0 else {}
    t.ok(r.returncode == 0 and out['claims']['iss'] == 'cc-es512' and
         out['claims']['department'] == 'radiology' and
         out['header'].get('x-profile') == 'cc-es512' and out['header']['alg'] == 'ES512',
         'profile: ${env:...}, ${client_id} and a claims file next to it', r.stdout + r.stderr)
    t.ok(out.get('form', {}).get('client_assertion', '').startswith('<signed JWT'),
         '--dry-run redacts the assertion', out.get('form'))
    t.eq(srv.stats()['token_requests'], 0, '--dry-run sends nothing')
    r = p11jwt('token', '--profile', 'local', '--scope', 'api:write', '--json', env=penv)
    out = json.loads(r.stdout) if r.returncode == 0 else {}
    t.eq(out.get('scope'), 'api:write', 'the command line overrides the profile')
    r = p11jwt('token', '--profile', 'local', env=env)
    t.ok(r.returncode == 2 and 'TEST_CLIENT' in r.stderr,
         'an unset ${env:...} is named', r.stderr)
    with open(os.path.join(pdir, 'typo.json'), 'w') as f:
        json.dump({'key': 'ec-p256', 'tokenurl': 'x'}, f)
    r = p11jwt('token', '--profile', 'typo', env=env)
    t.ok(r.returncode == 2 and "unknown member 'tokenurl'" in r.stderr,
         'a misspelt profile member is an error', r.stderr)
    r = p11jwt('token', '--profile', 'nonesuch', env=env)
    t.ok(r.returncode == 2 and 'nonesuch' in r.stderr, 'a missing profile is an error', r.stderr)
    # presets' warnings and secret redaction
    senv = dict(env, P11JWT_CLIENT_SECRET='very-secret-value')
    r = p11jwt('token', '--preset', 'adobe', '--key', 'rsa-2048', '--client-id', 'x',
               '--iss', 'o@AdobeOrg', '--sub', 't@techacct.adobe.com', '--token-url', 'http://127.0.0.1:9/ims/exchange/jwt', '--dry-run', env=senv)
    t.ok(r.returncode == 0 and 'very-secret-value' not in r.stdout + r.stderr and
         '<client secret, redacted>' in r.stdout, '--dry-run redacts the client secret',
         r.stdout + r.stderr)
    r = p11jwt('token', '--preset', 'nhs', '--key', 'rsa-2048', '--alg', 'RS256',
               '--client-id', 'x', '--token-url', 'http://127.0.0.1:9/t', '--lifetime', '600',
               '--dry-run', env=env)
    t.ok('takes RS512' in r.stderr and 'over the 300 s' in r.stderr,
         'nhs preset warns about alg and lifetime before sending', r.stderr)
    r = p11jwt('token', '--key', 'ec-p256', '--client-id', 'x', '--token-url',
               'http://127.0.0.1:9/t', '--client-secret', 'x', env=env)
    t.eq(r.returncode, 2, 'there is no option to pass a secret on the command line')
    base = ['--key', 'ec-p256', '--client-id', 'x', '--token-url', 'http://127.0.0.1:9/t']
    for args, words, desc in (
            (['token', *base, '--form', '=v'], 'empty field name', '--form with no name'),
            (['token', *base, '--grant', 'password'], "--grant 'password'", 'an unknown --grant'),
            (['token', *base, '--timeout', '0'], '--timeout', '--timeout 0'),
            (['token', *base, '--lifetime', '-5'], '--lifetime', 'a negative --lifetime'),
            (['token', *base, '--header', 'nokv'], "no '='", '--header without ='),
            (['token', *base, '--preset', 'zzz'], "unknown preset 'zzz'", 'an unknown preset'),
            (['token', '--client-id', 'x', '--token-url', 'http://127.0.0.1:9/t'],
             '--key NAME is required', 'no --key'),
            (['call', *base, '-H', 'no colon', 'http://127.0.0.1:9/'], "'Name: value'",
             'call -H without a colon'),
            (['call', *base], 'URL to call is missing', 'call without a URL'),
            (['cache', 'bogus'], "'list' or 'clear'", 'cache with an unknown action')):
        r = p11jwt(*args, env=env)
        t.ok(r.returncode == 2 and words in r.stderr, f'{desc}: exit 2, named', r.stderr)


def test_bad_server(bad, env, work):
    url = f'http://127.0.0.1:{bad.server_port}'

    def tok(path, *extra, e=env):
        return p11jwt('token', '--key', 'ec-p256', '--client-id', 'c', '--token-url',
                      f'{url}{path}', '--no-cache', *extra, env=e)

    r = tok('/nonjson')
    t.ok(r.returncode == 10 and 'not a JSON object' in r.stderr and 'Service Unavailable'
         in r.stderr, 'non-JSON answer: exit 10, an excerpt shown', r.stderr)
    t0 = time.time()
    r = tok('/hang', '--timeout', '1')
    el = time.time() - t0
    t.ok(r.returncode == 8 and 'did not answer within 1 s' in r.stderr,
         'a hanging server: exit 8 after the timeout', r.stderr)
    t.ok(Bad.hits.get('/hang') == 3 and 3 <= el < 20, f'3 attempts with backoff ({el:.1f} s)',
         Bad.hits.get('/hang'))
    r = tok('/huge')
    t.ok(r.returncode == 10 and 'over 1048576 bytes' in r.stderr,
         'a 2 MiB body is refused at the 1 MiB cap: exit 10', r.stderr)
    r = tok('/flaky')
    forms = Bad.forms.get('/flaky', [])
    t.ok(r.returncode == 0 and r.stdout.strip() == 'tok-flaky-2' and 'HTTP 500' in r.stderr,
         '500 then 200: retried, and the token printed', r.stderr)
    jtis = [jwt_parts(f['client_assertion'])[1]['jti'] for f in forms]
    t.ok(len(jtis) == 2 and jtis[0] != jtis[1], 'the retry carries a fresh assertion (new jti)',
         jtis)
    t0 = time.time()
    r = tok('/ratelimit')
    t.ok(r.returncode == 0 and time.time() - t0 >= 0.9, '429 with Retry-After: 1 is honoured',
         r.stderr)
    r = tok('/always500')
    t.ok(r.returncode == 10 and 'HTTP 503' in r.stderr and Bad.hits['/always500'] == 3,
         'a server that keeps failing: 3 attempts, then exit 10', r.stderr)
    r = tok('/incomplete')
    t.ok(r.returncode == 10 and 'no access_token' in r.stderr, 'incomplete answer: exit 10',
         r.stderr)
    r = tok('/bad-expiry')
    t.ok(r.returncode == 10 and 'expires_in' in r.stderr, 'a non-numeric expires_in: exit 10',
         r.stderr)
    r = tok('/consent')
    t.ok(r.returncode == 6 and 'consent' in r.stderr and 'hint:' in r.stderr,
         'consent_required: exit 6 with a consent hint', r.stderr)
    # expires_in as a string (NHS): accepted and cached
    a = ['--key', 'rsa-2048', '--preset', 'nhs', '--client-id', 'nhs-app', '--token-url',
         f'{url}/string-expiry']
    r1 = p11jwt('token', *a, env=env)
    r2 = p11jwt('token', *a, '--json', env=env)
    out = json.loads(r2.stdout) if r2.returncode == 0 else {}
    t.ok(r1.returncode == 0 and r1.stdout.strip() == 'nhs-1' and out.get('access_token') ==
         'nhs-1' and 590 <= out.get('expires_in', 0) <= 599 and Bad.hits['/string-expiry'] == 1,
         'expires_in "599" (a string, as NHS sends it) is used for caching', r2.stdout)
    form = Bad.forms['/string-expiry'][0]
    h, c = jwt_parts(form['client_assertion'])
    t.ok(h['alg'] == 'RS512' and h['typ'] == 'JWT' and h.get('kid') and c['iss'] == 'nhs-app' and
         c['sub'] == 'nhs-app' and c['aud'] == f'{url}/string-expiry' and
         c['exp'] - c['iat'] <= 300 and form['grant_type'] == 'client_credentials' and
         form['client_assertion_type'] ==
         'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
         'nhs preset: RS512, typ, kid, iss=sub=client id, aud=token URL, exp <= 5 min', (h, c))
    # Adobe's custom form with a client secret, checked with PyJWT
    sf = os.path.join(work, 'secret')
    with open(sf, 'w') as f:
        f.write('s3cret-for-tests\n')
    os.chmod(sf, 0o600)
    a = ['--preset', 'adobe', '--key', 'rsa-2048', '--client-id', 'adobe-client', '--iss',
         'org@AdobeOrg', '--sub', 'tech@techacct.adobe.com', '--scope', 'ent_test',
         '--token-url', f'{url}/adobe', '--client-secret-file', sf, '--no-cache']
    r = p11jwt('token', *a, env=env)
    t.ok(r.returncode == 0 and r.stdout.startswith('tok-adobe-'),
         'adobe: client_id, client_secret and jwt_token accepted (PyJWT verified the JWT)',
         r.stderr)
    f = Bad.forms['/adobe'][-1]
    t.eq(sorted(f), ['client_id', 'client_secret', 'jwt_token'], 'adobe form has exactly '
         'the three fields')
    os.chmod(sf, 0o644)
    r = p11jwt('token', *a, env=env)
    t.ok(r.returncode == 2 and 'insecure' in r.stderr, 'a client secret file readable by others '
         'is refused', r.stderr)
    os.chmod(sf, 0o600)
    r = p11jwt('token', *a[:-3], '--no-cache', env=dict(env, P11JWT_CLIENT_SECRET='s3cret-for-tests'))
    t.eq(r.returncode, 0, 'the client secret from P11JWT_CLIENT_SECRET')
    r = p11jwt('token', *a[:-3], '--no-cache', env=env)
    t.ok(r.returncode == 2 and 'client secret' in r.stderr, 'adobe without a secret: exit 2',
         r.stderr)
    t.ok(Bad.agents and all(a == Bad.agents[0] for a in Bad.agents) and
         Bad.agents[0].startswith('p11jwt/'), 'User-Agent is p11jwt/VERSION', set(Bad.agents))
    # the proxy environment is honoured
    r = p11jwt('token', '--key', 'ec-p256', '--client-id', 'c', '--token-url',
               'http://127.0.0.1:9/token', '--no-cache', '--timeout', '5',
               env=dict(env, http_proxy=url))
    t.ok(r.returncode == 0 and r.stdout.strip() == 'via-proxy' and Bad.hits.get('/proxied') == 1,
         'http_proxy is honoured', r.stderr)
    # nothing listening
    s = __import__('socket').socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    r = p11jwt('token', '--key', 'ec-p256', '--client-id', 'c', '--token-url',
               f'http://127.0.0.1:{port}/token', '--no-cache', env=env)
    t.ok(r.returncode == 7 and 'cannot talk to' in r.stderr, 'connection refused: exit 7',
         r.stderr)


def test_tls(env, work):
    cert, key = os.path.join(work, 'tls.crt'), os.path.join(work, 'tls.key')
    r = run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
             '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1',
             '-addext', 'subjectAltName=IP:127.0.0.1'])
    if not t.ok(r.returncode == 0, 'test TLS certificate made', r.stderr):
        return None
    srv = start_bad((cert, key))
    url = f'https://127.0.0.1:{srv.server_port}/string-expiry'
    a = ['token', '--key', 'ec-p256', '--client-id', 'c', '--token-url', url, '--no-cache']
    r = p11jwt(*a, env=env)
    t.ok(r.returncode == 9 and 'TLS' in r.stderr, 'an untrusted certificate: exit 9', r.stderr)
    r = p11jwt(*a, '--cacert', cert, env=env)
    t.ok(r.returncode == 0 and r.stdout.startswith('nhs-'), '--cacert trusts it', r.stderr)
    return srv


def test_oracle(bad, env, jwks):
    r = p11jwt('token', '--preset', 'oracle', '--key', 'rsa-2048', '--sub', 'bob', env=env)
    jwt = r.stdout.strip()
    ok = t.ok(r.returncode == 0 and jwt.count('.') == 2, 'oracle prints a signed JWT', r.stderr)
    if ok:
        pub = pyjwt.PyJWK(jwks[('rsa-2048', 'RS256')]['keys'][0])
        c = pyjwt.decode(jwt, pub.key, algorithms=['RS256'], options={'verify_aud': False})
        h = pyjwt.get_unverified_header(jwt)
        t.ok(c['sub'] == 'bob' and c['prn'] == 'bob' and c['iss'] == 'www.oracle.com' and
             h.get('x5t') and h.get('typ') == 'JWT', 'oracle: PyJWT verifies; sub, prn, iss, '
             'x5t as Oracle takes them', (h, c))
    url = f'http://127.0.0.1:{bad.server_port}/echo-auth'
    r = p11jwt('call', '--preset', 'oracle', '--key', 'rsa-2048', '--sub', 'bob', url, env=env)
    auth = json.loads(r.stdout).get('authorization', '') if r.returncode == 0 else ''
    t.ok(auth.startswith('Bearer ') and jwt_parts(auth[7:])[1].get('prn') == 'bob',
         'call --preset oracle sends the JWT itself as the bearer token', r.stderr)


def test_cache_files(srv, env, work):
    args = cc_args(srv, 'ec-p256', 'ES256', '--scope', 'api:read api:write')
    r = p11jwt('token', *args, env=env)
    cdir = os.path.join(env['XDG_RUNTIME_DIR'], 'p11jwt', 'cache')
    before = set(os.listdir(cdir))
    srv.post('/test/reset')
    # find this entry: the newest file
    newest = max((os.path.join(cdir, f) for f in before if f.endswith('.json')),
                 key=os.path.getmtime)
    with open(newest, 'w') as f:
        f.write('{"v":1, "access_token": tru')
    r = p11jwt('token', *args, env=env)
    t.ok(r.returncode == 0 and 'ignoring a cache file' in r.stderr and
         srv.stats()['token_requests'] == 1, 'a corrupt cache file is ignored: new exchange',
         r.stderr)
    t.ok(json.load(open(newest)).get('v') == 1, 'and replaced by a valid entry')
    os.chmod(newest, 0o644)
    r = p11jwt('token', *args, env=env)
    t.ok(r.returncode == 0 and 'ignoring' in r.stderr and srv.stats()['token_requests'] == 2,
         'a cache file readable by others is not trusted', r.stderr)
    t.eq(stat.S_IMODE(os.stat(newest).st_mode), 0o600, 'the replacement is 0600')
    if os.geteuid() == 0:
        os.chown(newest, 65534, 65534)
        r = p11jwt('token', *args, env=env)
        t.ok(r.returncode == 0 and 'ignoring' in r.stderr and
             os.stat(newest).st_uid == 0, 'a foreign-owned cache file is ignored and replaced',
             r.stderr)
    else:
        t.skip('foreign-owned cache file', 'needs root to chown')
    r = p11jwt('cache', 'clear', env=env)
    t.ok(r.returncode == 0 and 'removed' in r.stdout, 'cache clear', r.stderr)
    r = p11jwt('cache', 'list', '--json', env=env)
    t.eq(json.loads(r.stdout) if r.returncode == 0 else None, [], 'the cache is empty after clear')


if __name__ == '__main__':
    try:
        main()
    except Exception:  # noqa: BLE001
        import traceback
        t.ok(False, 'test_oauth raised', traceback.format_exc())
    t.done()
