#!/usr/bin/python3
"""Integration tests for DPoP (RFC 9449): proofs made by the agent on a
SoftHSM token, used against panva's oidc-provider on 127.0.0.1
(tests/integration/oauth/: its own DPoP for client_credentials and
refresh_token, the test server's for the jwt-bearer grant and /api/echo).

Phase A drives `p11jwt dpop` and sends the proofs with urllib; phase B
drives `p11jwt token --dpop` and `p11jwt call --dpop`. Every proof is also
checked here with PyJWT against the jwk in its own header, and outcomes
are read from the server's /test/stats, not only from p11jwt's output.
Nothing here talks to any address but 127.0.0.1.

Environment: P11JWT_SRCDIR, P11JWT_BUILDDIR (set by meson). Prints TAP.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
from test_agent import Agent, CLI, MKTOKEN, b64u, jwt_parts, run  # noqa: E402
from test_oauth import NODE, OAUTH_DIR, OAuthServer  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)

t = Tap()

JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
# key, proof alg: every key type of the test token
DPOP_PAIRS = [('rsa-2048', 'RS256'), ('rsa-2048', 'PS256'), ('ec-p256', 'ES256'),
              ('ec-p384', 'ES384'), ('ed25519', 'EdDSA')]
PRIVATE_MEMBERS = ('d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k')
THUMB_MEMBERS = {'RSA': ('e', 'kty', 'n'), 'EC': ('crv', 'kty', 'x', 'y'),
                 'OKP': ('crv', 'kty', 'x')}


def slug(alg):
    return alg.lower()


def thumbprint(jwk):
    """RFC 7638: the required members, sorted, no whitespace, SHA-256."""
    canon = json.dumps({m: jwk[m] for m in THUMB_MEMBERS[jwk['kty']]}, separators=(',', ':'),
                       sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def ath_of(token):
    return b64u(hashlib.sha256(token.encode()).digest())


# ---- the servers -------------------------------------------------------------

class DpopServer(OAuthServer):
    """test_oauth's OAuthServer, with server options (dpop_algs) and its
    own directory, so that two can run side by side."""

    def __init__(self, work, clients, name='oauth', **options):
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        cfg = os.path.join(d, 'oauth-config.json')
        with open(cfg, 'w') as f:
            json.dump({'port': 0, 'clients': clients, **options}, f)
        self.logpath = os.path.join(d, 'oauth-server.log')
        self.log = open(self.logpath, 'w')
        self.proc = subprocess.Popen([NODE, os.path.join(OAUTH_DIR, 'server.mjs'), cfg],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline().strip()
        self.url = line.split(' ', 1)[1] if line.startswith('listening ') else None
        self.token_url = f'{self.url}/token' if self.url else None
        self.echo_url = f'{self.url}/api/echo' if self.url else None

    def mode(self, **kw):
        return self.post('/test/mode', kw)

    def dstats(self):
        return self.stats()['dpop']

    def logtail(self):
        self.log.flush()
        return open(self.logpath).read()[-3000:]


def http(method, url, form=None, headers=None, data=None):
    """One request; (status, JSON body or text, headers as a dict with
    lower-case names)."""
    body = urllib.parse.urlencode(form).encode() if form is not None else data
    h = dict(headers or {})
    if form is not None:
        h['Content-Type'] = 'application/x-www-form-urlencoded'
    req = urllib.request.Request(url, method=method, data=body, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        out = json.loads(raw)
    except ValueError:
        out = raw.decode(errors='replace')
    return status, out, {k.lower(): v for k, v in hdrs.items()}


def parse_challenge(value):
    """`DPoP error="x", error_description="y", algs="..."` -> (scheme, dict)."""
    if not value:
        return None, {}
    scheme, _, rest = value.partition(' ')
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


# ---- p11jwt ------------------------------------------------------------------

class Ctx:
    """What every test needs: the CLI's environment, the work directory,
    and every proof seen (for the jti check at the end)."""

    def __init__(self, env, work):
        self.env = env
        self.work = work
        self.jtis = []
        self.nproofs = 0
        self.bad_proofs = []
        self.tokens = []  # access tokens seen, to look for in the audit trail

    def p11jwt(self, *args, input=None, env=None, timeout=120):
        return run([CLI, *args], env=env or self.env, input=input, timeout=timeout)

    def assertion(self, key, alg, client_id, aud, sub=None):
        r = self.p11jwt('sign', '--key', key, '--alg', alg, '--claim', f'iss={client_id}',
                        '--claim', f'sub={sub or client_id}', '--claim', f'aud={aud}',
                        '--lifetime', '60')
        if r.returncode != 0:
            raise RuntimeError(f'p11jwt sign failed: {r.stderr}')
        return r.stdout.strip()

    def token_file(self, token):
        path = os.path.join(self.work, 'access-token')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(token)
        return path

    def proof(self, key, htm, htu, alg=None, nonce=None, token=None, stdin=False,
              want_htu=None, loud=False):
        """A proof from `p11jwt dpop --json`, checked here on its own
        (PyJWT, the header's jwk); returns the --json object."""
        args = ['dpop', '--key', key, '--htm', htm, '--htu', htu, '--json']
        if alg:
            args += ['--alg', alg]
        if nonce is not None:
            args += ['--nonce', nonce]
        inp = None
        if token is not None:
            if stdin:
                args += ['--token-file', '-']
                inp = token + '\n'
            else:
                args += ['--token-file', self.token_file(token)]
        r = self.p11jwt(*args, input=inp)
        if r.returncode != 0:
            raise RuntimeError(f'p11jwt {" ".join(args)}: exit {r.returncode}: {r.stderr}')
        out = json.loads(r.stdout)
        self.check_proof(out['jwt'], htm=htm, htu=want_htu or norm_htu(htu), alg=alg,
                         nonce=nonce, ath=ath_of(token) if token is not None else None,
                         jkt=out.get('jkt'), what=f'{key} {htm} {htu}', quiet=not loud)
        return out

    def check_proof(self, proof, *, htm, htu, alg=None, nonce=None, ath=None, jkt=None,
                    what='', quiet=False):
        """Independent verification of one proof; one TAP line (unless
        quiet: then failures are collected for one line at the end)."""
        problems = []
        try:
            h = pyjwt.get_unverified_header(proof)
            jwk = h.get('jwk') or {}
            if h.get('typ') != 'dpop+jwt':
                problems.append(f"typ {h.get('typ')!r}")
            if set(h) != {'typ', 'alg', 'jwk'}:
                problems.append(f'header members {sorted(h)}')
            if alg and h.get('alg') != alg:
                problems.append(f"alg {h.get('alg')} != {alg}")
            bad = [m for m in (*PRIVATE_MEMBERS, 'kid', 'alg', 'use', 'key_ops') if m in jwk]
            if bad:
                problems.append(f'jwk has {bad}')
            if set(jwk) - {'kty', 'crv', 'x', 'y', 'n', 'e'}:
                problems.append(f'jwk members {sorted(jwk)}')
            key = pyjwt.PyJWK(jwk, algorithm=h['alg']).key
            c = pyjwt.decode(proof, key=key, algorithms=[h['alg']],
                             options={'require': ['jti', 'iat'], 'verify_aud': False})
            if c.get('htm') != htm:
                problems.append(f"htm {c.get('htm')!r}")
            if c.get('htu') != htu:
                problems.append(f"htu {c.get('htu')!r} != {htu!r}")
            if c.get('nonce') != nonce:
                problems.append(f"nonce {c.get('nonce')!r} != {nonce!r}")
            if c.get('ath') != ath:
                problems.append(f"ath {c.get('ath')!r} != {ath!r}")
            if not isinstance(c.get('iat'), int) or abs(c['iat'] - time.time()) > 5:
                problems.append(f"iat {c.get('iat')!r} is not now")
            if 'exp' in c:
                problems.append('exp present')
            jti = c.get('jti', '')
            if not re.fullmatch(r'[A-Za-z0-9_-]{22,}', jti):
                problems.append(f'jti {jti!r} is not >= 128 bits of base64url')
            self.jtis.append(jti)
            if jkt is not None and thumbprint(jwk) != jkt:
                problems.append(f'jkt {jkt} != RFC 7638 thumbprint {thumbprint(jwk)}')
        except Exception as e:  # noqa: BLE001
            problems.append(f'does not verify: {e!r}')
        self.nproofs += 1
        if quiet:
            if problems:
                self.bad_proofs.append((what, problems))
            return not problems
        return t.ok(not problems, f'proof {what}: PyJWT verifies it with its own jwk; typ, '
                    'public jwk, alg, htm, htu, nonce, ath, iat, jti, jkt', problems)


def norm_htu(url):
    """What the agent signs as htu (the cases the tests use): no query or
    fragment, scheme and host in lower case, default port dropped."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ''
    port = u.port
    scheme = u.scheme.lower()
    netloc = host if port is None or (scheme, port) in (('http', 80), ('https', 443)) \
        else f'{host}:{port}'
    return urllib.parse.urlunsplit((scheme, netloc, u.path or '/', '', ''))


# ---- main --------------------------------------------------------------------

def main():
    work = tempfile.mkdtemp(prefix='p11jwt-dp-', dir='/tmp')
    agent = srv = srv2 = None
    audit = os.path.join(work, 'audit.log')
    try:
        if not os.path.isdir(os.path.join(OAUTH_DIR, 'node_modules', 'oidc-provider')):
            r = run(['npm', 'ci', '--no-audit', '--no-fund', '--loglevel=error', '--prefix',
                     OAUTH_DIR], timeout=600)
            if not t.ok(r.returncode == 0, 'npm ci installs the pinned oidc-provider',
                        r.stdout + r.stderr):
                return
        tokdir = os.path.join(work, 'tok')
        r = run([MKTOKEN, tokdir], timeout=180)
        if not t.ok(r.returncode == 0, 'test token made', r.stderr):
            return
        os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
        sock = os.path.join(work, 'a', 'agent.sock')
        os.mkdir(os.path.dirname(sock), 0o700)
        env = dict(os.environ, P11JWT_AGENT_SOCK=sock,
                   XDG_RUNTIME_DIR=os.path.join(work, 'rt'),
                   XDG_CONFIG_HOME=os.path.join(work, 'cfg'))
        for k in ('P11JWT_CLIENT_SECRET', 'http_proxy', 'https_proxy', 'HTTP_PROXY',
                  'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY', 'no_proxy', 'NO_PROXY'):
            env.pop(k, None)
        os.makedirs(env['XDG_RUNTIME_DIR'], 0o700)
        ctx = Ctx(env, work)

        # an agent without --allow-dpop makes no proofs
        agent = Agent(tokdir, sock, extra=['--audit', 'none'])
        if t.ok(agent.ready, 'an agent without --allow-dpop starts'):
            r = ctx.p11jwt('dpop', '--key', 'ec-p256', '--htm', 'POST', '--htu',
                           'http://127.0.0.1:9/token')
            t.ok(r.returncode == 4 and 'policy_violation' in r.stderr and '--allow-dpop' in
                 r.stderr and r.stdout == '',
                 'without --allow-dpop: p11jwt dpop is refused (exit 4, policy_violation, '
                 'names --allow-dpop)', (r.returncode, r.stderr))
            r = ctx.p11jwt('sign', '--key', 'ec-p256', '--claim', 'sub=x')
            t.eq(r.returncode, 0, 'that agent still signs JWTs')
        agent.stop()
        agent = Agent(tokdir, sock, extra=['--allow-dpop', '--audit', 'file:' + audit])
        if not t.ok(agent.ready, 'the agent starts with --allow-dpop',
                    None if agent.ready else agent.stderr()):
            return

        jwks = {}
        for key, alg in DPOP_PAIRS + [('ec-p521', 'ES512')]:
            r = ctx.p11jwt('jwks', '--key', key, '--alg', alg)
            jwks[(key, alg)] = json.loads(r.stdout)
        clients = [{'client_id': f'cc-dpop-{slug(alg)}', 'jwks': jwks[(key, alg)],
                    'grant': 'client_credentials', 'dpop': True} for key, alg in DPOP_PAIRS]
        es256, eddsa = jwks[('ec-p256', 'ES256')], jwks[('ed25519', 'EdDSA')]
        clients += [
            {'client_id': 'cc-plain', 'jwks': es256, 'grant': 'client_credentials'},
            {'client_id': 'cc-nonce', 'jwks': es256, 'grant': 'client_credentials',
             'dpop': True, 'dpop_nonce': True},
            {'client_id': 'jb-dpop', 'jwks': es256, 'grant': 'jwt-bearer', 'dpop': True},
            {'client_id': 'jb-plain', 'jwks': es256, 'grant': 'jwt-bearer'},
            {'client_id': 'jb-nonce', 'jwks': eddsa, 'grant': 'jwt-bearer', 'dpop': True,
             'dpop_nonce': True},
            {'client_id': 'jb-short', 'jwks': es256, 'grant': 'jwt-bearer', 'dpop': True,
             'ttl': 62},
        ]
        srv = DpopServer(work, clients)
        if not t.ok(srv.url is not None and srv.url.startswith('http://127.0.0.1:'),
                    'oidc-provider listens on 127.0.0.1', srv.logtail()):
            return
        # a server that takes fewer proof algs (no PS256, no RS256)
        srv2 = DpopServer(work, [
            {'client_id': 'cc-dpop-ps256', 'jwks': jwks[('rsa-2048', 'PS256')],
             'grant': 'client_credentials', 'dpop': True},
            {'client_id': 'cc-dpop-es256', 'jwks': es256, 'grant': 'client_credentials',
             'dpop': True}], name='oauth2', dpop_algs=['ES256', 'ES384', 'EdDSA', 'Ed25519'])
        t.ok(srv2.url is not None, 'a second server, with dpop_algs, listens', srv2.logtail())

        for name, fn in (('discovery', lambda: test_discovery(ctx, srv, srv2)),
                         ('htu', lambda: test_htu(ctx)),
                         ('client_credentials', lambda: test_client_credentials(ctx, srv)),
                         ('replay', lambda: test_token_replay(ctx, srv)),
                         ('resource', lambda: test_resource(ctx, srv)),
                         ('resource nonce', lambda: test_resource_nonce(ctx, srv)),
                         ('token nonce', lambda: test_token_nonce(ctx, srv)),
                         ('jwt-bearer', lambda: test_jwt_bearer(ctx, srv)),
                         ('dpop_algs', lambda: test_server_algs(ctx, srv2))):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a test must report, not crash
                import traceback
                t.ok(False, f'{name} tests raised', traceback.format_exc())

        phase_b(ctx, srv, srv2)

        t.ok(not ctx.bad_proofs, f'every proof ({ctx.nproofs} in all) verified '
             'independently (PyJWT, its own jwk)', ctx.bad_proofs)
        t.ok(len(ctx.jtis) == len(set(ctx.jtis)) and len(ctx.jtis) >= 20,
             f'the jti of each of the {len(ctx.jtis)} proofs is unique',
             [j for j in ctx.jtis if ctx.jtis.count(j) > 1])
    finally:
        for s in (srv, srv2):
            if s and s.url:
                s.stop()
        if agent:
            agent.stop()
    try:
        text = open(audit).read()
        recs = [json.loads(line) for line in text.splitlines()]
        dp = [a for a in recs if a.get('op') == 'dpop' and a.get('result') == 'ok']
        leaked = [tok for tok in ctx.tokens if tok in text or ath_of(tok) in text]
        t.ok(dp and not leaked and 'eyJ' not in text,
             f'the audit trail has {len(dp)} dpop records and neither access tokens, their '
             'ath, nor proofs', leaked)
    except (OSError, ValueError, NameError) as e:
        t.ok(False, 'the audit trail is readable', repr(e))
    shutil.rmtree(work, ignore_errors=True)


# ---- phase A: p11jwt dpop, requests from here --------------------------------

def cc_form(ctx, srv, key, alg, client_id, scope='api:read'):
    return {'grant_type': 'client_credentials', 'scope': scope,
            'client_assertion_type': ASSERTION_TYPE,
            'client_assertion': ctx.assertion(key, alg, client_id, srv.token_url)}


def cc_token(ctx, srv, key, alg, client_id, proof_key=None, proof_alg=None, nonce=None,
             loud=False):
    """A client_credentials exchange with a fresh proof; (status, body,
    headers, proof --json)."""
    p = ctx.proof(proof_key or key, 'POST', srv.token_url, alg=proof_alg or alg, nonce=nonce,
                  loud=loud)
    st, body, hdrs = http('POST', srv.token_url, cc_form(ctx, srv, key, alg, client_id),
                          {'DPoP': p['jwt']})
    if st == 200:
        ctx.tokens.append(body['access_token'])
    return st, body, hdrs, p


def echo(ctx, srv, token, key=None, alg=None, method='GET', scheme='DPoP', nonce=None,
         proof=None, data=None):
    """/api/echo with the token and (unless key is None and proof is None)
    a fresh proof with ath made by key."""
    headers = {'Authorization': f'{scheme} {token}'}
    if proof is None and key is not None:
        proof = ctx.proof(key, method, srv.echo_url, alg=alg, nonce=nonce, token=token)['jwt']
    if proof is not None:
        headers['DPoP'] = proof
    return http(method, srv.echo_url, headers=headers, data=data)


def test_discovery(ctx, srv, srv2):
    st, meta, _ = http('GET', srv.url + '/.well-known/openid-configuration')
    want = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512',
            'EdDSA', 'Ed25519']
    t.ok(st == 200 and sorted(meta.get('dpop_signing_alg_values_supported', [])) == sorted(want),
         'discovery advertises dpop_signing_alg_values_supported: every alg the keys sign',
         meta.get('dpop_signing_alg_values_supported') if isinstance(meta, dict) else meta)
    st, meta, _ = http('GET', srv2.url + '/.well-known/openid-configuration')
    t.eq(meta.get('dpop_signing_alg_values_supported') if st == 200 else st,
         ['ES256', 'ES384', 'EdDSA', 'Ed25519'],
         'the server option dpop_algs replaces the list')


def test_htu(ctx):
    for given, want in (('HTTPS://Example.COM:443/a/b?x=1#f', 'https://example.com/a/b'),
                        ('http://Example.com:80/x?y', 'http://example.com/x'),
                        ('http://example.com:8080/x#frag', 'http://example.com:8080/x'),
                        ('https://EXAMPLE.com:8443', 'https://example.com:8443/')):
        out = ctx.proof('ec-p256', 'GET', given, want_htu=want, loud=True)
        t.ok(out.get('htu') == want and jwt_parts(out['jwt'])[1].get('htu') == want,
             f'htu {given} is signed as {want}', out.get('htu'))
    # the access token on standard input: the same ath as from a file
    tok = 'tok-' + b64u(os.urandom(24))
    out = ctx.proof('ec-p256', 'GET', 'https://example.com/r', token=tok, stdin=True)
    t.eq(jwt_parts(out['jwt'])[1].get('ath'), ath_of(tok),
         '--token-file - reads the token from standard input: ath = base64url(SHA-256)')
    out = ctx.proof('ec-p256', 'GET', 'https://example.com/r', token=tok)
    t.eq(jwt_parts(out['jwt'])[1].get('ath'), ath_of(tok), '--token-file FILE: the same ath')
    t.ok(set(out) >= {'jwt', 'jkt', 'alg', 'htu', 'jti', 'iat'} and
         out['jti'] == jwt_parts(out['jwt'])[1]['jti'] and
         out['iat'] == jwt_parts(out['jwt'])[1]['iat'] and out['alg'] == 'ES256',
         'p11jwt dpop --json: jwt, jkt, alg, htu, jti, iat, matching the proof', out)


def test_client_credentials(ctx, srv):
    for key, alg in DPOP_PAIRS:
        cid = f'cc-dpop-{slug(alg)}'
        srv.post('/test/reset')
        st, body, hdrs, p = cc_token(ctx, srv, key, alg, cid, loud=True)
        ok = t.ok(st == 200 and body.get('token_type') == 'DPoP',
                  f'client_credentials for {cid} with a {alg} proof ({key}): token_type DPoP',
                  (st, body))
        s = srv.dstats()
        last = s.get('last_token_proof') or {}
        t.ok(s['token_proofs'] == 1 and last.get('ok') and
             (last.get('header') or {}).get('alg') == alg and
             (last.get('claims') or {}).get('jti') == p['jti'] and s['issued']['DPoP'] == 1,
             f'{alg}: the server saw the proof (alg, jti) and issued a DPoP token', s)
        if not ok:
            continue
        token = body['access_token']
        st, out, _ = echo(ctx, srv, token, key, alg)
        t.ok(st == 200 and out.get('token_type') == 'DPoP' and out.get('jkt') == p['jkt'] and
             out.get('client_id') == cid,
             f'{alg}: the token works at the resource with a fresh proof (ath); its jkt is '
             "the agent's", (st, out))
    # a client without dpop_bound_access_tokens: the proof is optional
    st, body, _, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-plain')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'a client that does not require DPoP still gets a DPoP token when it sends a proof',
         (st, body))
    st, body, _ = http('POST', srv.token_url, cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-plain'))
    t.ok(st == 200 and body.get('token_type') == 'Bearer',
         'and a Bearer token without one', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st, out, _ = echo(ctx, srv, body['access_token'], scheme='Bearer')
        t.ok(st == 200 and out.get('token_type') == 'Bearer' and out.get('jkt') is None,
             'the Bearer token works as Bearer at the resource (token_type Bearer, no jkt)',
             (st, out))
        st, out, hdrs = echo(ctx, srv, body['access_token'], 'ec-p256')
        t.ok(st == 401 and parse_challenge(hdrs.get('www-authenticate'))[0] == 'DPoP',
             'a Bearer token sent with the DPoP scheme and a proof: 401', (st, out))
    # dpop_bound_access_tokens: no proof, no token
    srv.post('/test/reset')
    st, body, _ = http('POST', srv.token_url,
                       cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256'))
    t.ok(st == 400 and body.get('error') == 'invalid_grant' and
         'DPoP proof JWT not provided' in body.get('error_description', ''),
         'a client that requires DPoP, without a proof: 400 invalid_grant', (st, body))
    # a proof for another URL or method
    for htm, htu, what in (('POST', srv.url + '/token/introspection', 'another URL'),
                           ('GET', srv.token_url, 'another method')):
        p = ctx.proof('ec-p256', htm, htu)
        st, body, _ = http('POST', srv.token_url,
                           cc_form(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256'),
                           {'DPoP': p['jwt']})
        t.ok(st == 400 and body.get('error') == 'invalid_dpop_proof',
             f'a proof for {what}: 400 invalid_dpop_proof', (st, body))
    t.eq(srv.dstats()['invalid_proofs'], 2, 'the server counted the two invalid proofs')


def test_token_replay(ctx, srv):
    srv.post('/test/reset')
    p = ctx.proof('ec-p384', 'POST', srv.token_url, alg='ES384')
    results = []
    for _ in range(2):
        results.append(http('POST', srv.token_url,
                            cc_form(ctx, srv, 'ec-p384', 'ES384', 'cc-dpop-es384'),
                            {'DPoP': p['jwt']}))
    (st1, b1, _), (st2, b2, _) = results
    t.ok(st1 == 200 and b1.get('token_type') == 'DPoP', 'a proof is accepted once', (st1, b1))
    t.ok(st2 == 400 and 'replay' in b2.get('error_description', '').lower(),
         'the same proof again (with a fresh assertion) is refused as a replay', (st2, b2))
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['token_proofs'] == 2, 'the server counted one replay', s)


def test_resource(ctx, srv):
    st, body, _, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-dpop-es256')
    if not t.ok(st == 200, 'a DPoP token for the resource tests', (st, body)):
        return
    token, jkt = body['access_token'], p['jkt']
    srv.post('/test/reset')
    st, out, _ = echo(ctx, srv, token, 'ec-p256', method='POST', data=b'{"n":1}')
    t.ok(st == 200 and out.get('jkt') == jkt and out.get('method') == 'POST' and
         out.get('body') == '{"n":1}', 'POST with the token and a fresh proof: 200', (st, out))
    s = srv.dstats()
    t.ok(s['api_proofs'] == 1 and (s['last_api_proof'] or {}).get('ok') and
         s['last_api_proof']['claims'].get('ath') == ath_of(token),
         'the resource saw one proof, with the ath of the token', s)

    def refused(desc, st, hdrs, error):
        scheme, params = parse_challenge(hdrs.get('www-authenticate'))
        t.ok(st == 401 and scheme == 'DPoP' and params.get('error') == error,
             f'{desc}: 401, WWW-Authenticate: DPoP error="{error}"',
             (st, hdrs.get('www-authenticate')))

    st, _, hdrs = echo(ctx, srv, token, 'ec-p384', alg='ES384')
    refused('a proof by another key', st, hdrs, 'invalid_dpop_proof')
    st, _, hdrs = echo(ctx, srv, token)
    refused('no proof', st, hdrs, 'invalid_dpop_proof')
    st, _, hdrs = echo(ctx, srv, token, scheme='Bearer')
    refused('the DPoP token sent as Bearer', st, hdrs, 'invalid_token')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url, alg='ES256', token=token)
    st, _, hdrs = echo(ctx, srv, token, scheme='Bearer', proof=pr['jwt'])
    refused('as Bearer, even with a good proof', st, hdrs, 'invalid_token')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a proof without ath', st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url, token=token + 'x')
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused("a proof with another token's ath", st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'POST', srv.echo_url, token=token)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a POST proof for a GET', st, hdrs, 'invalid_dpop_proof')
    pr = ctx.proof('ec-p256', 'GET', srv.url + '/api/other', token=token)
    st, _, hdrs = echo(ctx, srv, token, proof=pr['jwt'])
    refused('a proof for another URL', st, hdrs, 'invalid_dpop_proof')
    # the query is not part of htu
    pr = ctx.proof('ec-p256', 'GET', srv.echo_url + '?page=2', token=token)
    st, out, _ = http('GET', srv.echo_url + '?page=2',
                      headers={'Authorization': f'DPoP {token}', 'DPoP': pr['jwt']})
    t.ok(st == 200, 'a proof for the URL with a query (htu without it): 200', (st, out))
    st, _, hdrs = http('GET', srv.echo_url,
                       headers={'Authorization': f'DPoP {token}', 'DPoP': pr['jwt']})
    refused('the same proof again', st, hdrs, 'invalid_dpop_proof')
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['api_by_scheme']['DPoP'] >= 8, 'the resource counted the replay',
         s)


def test_resource_nonce(ctx, srv):
    st, body, _, p = cc_token(ctx, srv, 'ed25519', 'EdDSA', 'cc-dpop-eddsa')
    if not t.ok(st == 200, 'a DPoP token for the resource nonce tests', (st, body)):
        return
    token = body['access_token']
    m = srv.mode(api_dpop_nonce=True)
    srv.post('/test/reset')
    try:
        st, _, hdrs = echo(ctx, srv, token, 'ed25519')
        scheme, params = parse_challenge(hdrs.get('www-authenticate'))
        nonce = hdrs.get('dpop-nonce')
        t.ok(st == 401 and scheme == 'DPoP' and params.get('error') == 'use_dpop_nonce' and
             params.get('error_description') and nonce == m['api_nonce'],
             'nonce mode: a proof without a nonce gets 401 use_dpop_nonce and a DPoP-Nonce',
             (st, hdrs))
        st, out, _ = echo(ctx, srv, token, 'ed25519', nonce=nonce)
        t.ok(st == 200 and out.get('jkt') == p['jkt'], 'the proof with that nonce: 200',
             (st, out))
        t.eq(srv.dstats()['last_api_proof']['claims'].get('nonce'), nonce,
             'the server saw the nonce in the proof')
        m2 = srv.mode(api_dpop_nonce_rotate=True)
        st, _, hdrs = echo(ctx, srv, token, 'ed25519', nonce=nonce)
        t.ok(st == 401 and hdrs.get('dpop-nonce') == m2['api_nonce'] != nonce,
             'after the server rotates its nonce: the old one gets 401 and the new nonce',
             (st, hdrs))
        st, _, _ = echo(ctx, srv, token, 'ed25519', nonce=hdrs.get('dpop-nonce'))
        t.eq(st, 200, 'the new nonce: 200')
        s = srv.dstats()
        t.ok(s['use_dpop_nonce_api'] == 2 and s['use_dpop_nonce'] == 2 and
             s['use_dpop_nonce_token'] == 0, 'the server counted two use_dpop_nonce answers', s)
    finally:
        srv.mode(api_dpop_nonce=False)


def test_token_nonce(ctx, srv):
    srv.post('/test/reset')
    st, body, hdrs, _ = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-nonce')
    nonce = hdrs.get('dpop-nonce')
    t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and nonce,
         'a client that needs a nonce: 400 use_dpop_nonce with a DPoP-Nonce header', (st, body))
    st, body, hdrs, p = cc_token(ctx, srv, 'ec-p256', 'ES256', 'cc-nonce', nonce=nonce)
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'with the nonce (and a fresh assertion): a DPoP token', (st, body))
    s = srv.dstats()
    t.ok(s['use_dpop_nonce_token'] == 1 and s['last_token_proof']['claims'].get('nonce') == nonce,
         'the server counted one use_dpop_nonce and saw the nonce', s)
    # the jwt-bearer grant (the test server's code) takes the same nonces
    srv.post('/test/reset')
    form = {'grant_type': JWT_BEARER, 'client_id': 'jb-nonce',
            'assertion': ctx.assertion('ed25519', 'EdDSA', 'jb-nonce', srv.token_url, 'carol')}
    p = ctx.proof('ed25519', 'POST', srv.token_url)
    st, body, hdrs = http('POST', srv.token_url, form, {'DPoP': p['jwt']})
    n2 = hdrs.get('dpop-nonce')
    t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and n2,
         'jwt-bearer, a client that needs a nonce: 400 use_dpop_nonce, DPoP-Nonce', (st, body))
    p = ctx.proof('ed25519', 'POST', srv.token_url, nonce=nonce)
    form['assertion'] = ctx.assertion('ed25519', 'EdDSA', 'jb-nonce', srv.token_url, 'carol')
    st, body, _ = http('POST', srv.token_url, form, {'DPoP': p['jwt']})
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         "jwt-bearer accepts oidc-provider's nonce (one nonce for the token endpoint)",
         (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        p = ctx.proof('ed25519', 'POST', srv.token_url, nonce='not-a-nonce')
        st, body, hdrs = http('POST', srv.token_url,
                              {'grant_type': 'refresh_token', 'client_id': 'jb-nonce',
                               'refresh_token': body['refresh_token']}, {'DPoP': p['jwt']})
        t.ok(st == 400 and body.get('error') == 'use_dpop_nonce' and hdrs.get('dpop-nonce'),
             'a wrong nonce: use_dpop_nonce again', (st, body))
    t.eq(srv.dstats()['use_dpop_nonce_token'], 2, 'two use_dpop_nonce answers counted')


def test_jwt_bearer(ctx, srv):
    srv.post('/test/reset')

    def jb(cid, proof=None, sub='alice', key='ec-p256', alg='ES256'):
        form = {'grant_type': JWT_BEARER, 'client_id': cid,
                'assertion': ctx.assertion(key, alg, cid, srv.token_url, sub)}
        return http('POST', srv.token_url, form, {'DPoP': proof} if proof else {})

    def refresh(cid, rt, proof=None):
        return http('POST', srv.token_url, {'grant_type': 'refresh_token', 'client_id': cid,
                                            'refresh_token': rt},
                    {'DPoP': proof} if proof else {})

    st, body, _ = jb('jb-dpop')
    t.ok(st == 400 and body.get('error') == 'invalid_grant' and
         'DPoP proof JWT not provided' in body.get('error_description', ''),
         'jwt-bearer, a client that requires DPoP, no proof: 400 invalid_grant', (st, body))
    p = ctx.proof('ec-p256', 'POST', srv.token_url)
    st, body, _ = jb('jb-dpop', p['jwt'])
    if not t.ok(st == 200 and body.get('token_type') == 'DPoP' and body.get('refresh_token'),
                'jwt-bearer with a proof: token_type DPoP and a refresh token', (st, body)):
        return
    ctx.tokens.append(body['access_token'])
    st, out, _ = echo(ctx, srv, body['access_token'], 'ec-p256')
    t.ok(st == 200 and out.get('jkt') == p['jkt'] and out.get('sub') == 'alice',
         'the jwt-bearer token is bound to the proof key (jkt) at the resource', (st, out))
    st, _, _ = echo(ctx, srv, body['access_token'], scheme='Bearer')
    t.eq(st, 401, 'and is refused as Bearer')
    st2, b2, _ = jb('jb-dpop', p['jwt'])
    t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof' and
         'replay' in b2.get('error_description', '').lower(),
         'jwt-bearer: the same proof again is refused as a replay', (st2, b2))
    for htm, htu, what in (('GET', srv.token_url, 'for GET'),
                           ('POST', srv.url + '/tokens', 'for another URL')):
        px = ctx.proof('ec-p256', htm, htu)
        st2, b2, _ = jb('jb-dpop', px['jwt'])
        t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof',
             f'jwt-bearer: a proof {what}: 400 invalid_dpop_proof', (st2, b2))
    st2, b2, _ = jb('jb-dpop', 'not.a.proof')
    t.ok(st2 == 400 and b2.get('error') == 'invalid_dpop_proof',
         'jwt-bearer: garbage in DPoP: 400 invalid_dpop_proof', (st2, b2))
    s = srv.dstats()
    t.ok(s['replays'] == 1 and s['invalid_proofs'] == 4 and s['issued']['DPoP'] == 1,
         'the server counted 1 replay, 4 invalid proofs, 1 DPoP token', s)

    # refresh (oidc-provider's grant) wants a proof by the same key
    rt = body['refresh_token']
    st2, b2, _ = refresh('jb-dpop', rt)
    t.ok(st2 == 400 and b2.get('error') == 'invalid_grant',
         'refresh of a DPoP-bound token without a proof: invalid_grant', (st2, b2))
    px = ctx.proof('ec-p384', 'POST', srv.token_url, alg='ES384')
    st2, b2, _ = refresh('jb-dpop', rt, px['jwt'])
    t.ok(st2 == 400 and b2.get('error') == 'invalid_grant' and
         'jkt' in b2.get('error_description', ''),
         'refresh with a proof by another key: invalid_grant (jkt)', (st2, b2))
    px = ctx.proof('ec-p256', 'POST', srv.token_url)
    st2, b2, _ = refresh('jb-dpop', rt, px['jwt'])
    t.ok(st2 == 200 and b2.get('token_type') == 'DPoP' and b2.get('refresh_token') != rt,
         'refresh with a proof by the same key: a new DPoP token', (st2, b2))
    if st2 == 200:
        ctx.tokens.append(b2['access_token'])
        st, out, _ = echo(ctx, srv, b2['access_token'], 'ec-p256')
        t.ok(st == 200 and out.get('jkt') == p['jkt'], 'the refreshed token is bound too',
             (st, out))

    # a client that does not require DPoP but sends a proof: the refresh
    # token is bound all the same
    p = ctx.proof('ec-p256', 'POST', srv.token_url)
    st, body, _ = jb('jb-plain', p['jwt'], sub='bob')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'jwt-bearer, a client that does not require DPoP, with a proof: DPoP', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st2, b2, _ = refresh('jb-plain', body['refresh_token'])
        t.ok(st2 == 400 and b2.get('error') == 'invalid_grant' and
             'jkt' in b2.get('error_description', ''),
             'its refresh token is bound: a refresh without a proof fails (jkt)', (st2, b2))
    st, body, _ = jb('jb-plain', sub='bob')
    t.ok(st == 200 and body.get('token_type') == 'Bearer',
         'jwt-bearer without a proof, for that client: Bearer', (st, body))
    if st == 200:
        ctx.tokens.append(body['access_token'])
        st2, b2, _ = refresh('jb-plain', body['refresh_token'])
        t.ok(st2 == 200 and b2.get('token_type') == 'Bearer',
             'and its refresh token needs no proof', (st2, b2))


def test_server_algs(ctx, srv2):
    srv2.post('/test/reset')
    st, body, _, _ = cc_token(ctx, srv2, 'rsa-2048', 'PS256', 'cc-dpop-ps256')
    t.ok(st == 400 and body.get('error') == 'invalid_dpop_proof',
         'a server without PS256 in dpop_algs: a PS256 proof is invalid_dpop_proof',
         (st, body))
    st, body, _, _ = cc_token(ctx, srv2, 'rsa-2048', 'PS256', 'cc-dpop-ps256',
                              proof_key='ec-p256', proof_alg='ES256')
    t.ok(st == 200 and body.get('token_type') == 'DPoP',
         'the same client with an ES256 proof (another key than the assertion): DPoP',
         (st, body))


# ---- phase B: p11jwt token --dpop, p11jwt call --dpop ------------------------

def cli_has_dpop(ctx):
    r = ctx.p11jwt('token', '--help')
    return '--dpop' in r.stdout + r.stderr


def phase_b(ctx, srv, srv2):
    if not cli_has_dpop(ctx):
        t.skip('p11jwt token --dpop, call --dpop', 'the CLI has no --dpop yet')
        return


if __name__ == '__main__':
    try:
        main()
    except Exception:  # noqa: BLE001
        import traceback
        t.ok(False, 'test_dpop raised', traceback.format_exc())
    t.done()
