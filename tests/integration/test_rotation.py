#!/usr/bin/python3
"""Integration tests of key rotation without downtime (issue 19).

- A running agent (no --config) sees keys made by `p11jwt keygen` after it
  started: on SIGHUP, on `p11jwt reload`, and when a request names a key it
  does not know (one rescan per 5 s, however many unknown names arrive);
  a key deleted from the token answers unknown_key; clients signing in a
  loop while keys come and go see no failure.
- `p11jwt jwks --out FILE`: temp file + rename, mode 0644.
- --config with key states (active, next, retiring + retire_after),
  `p11jwt keys` and `--key @active`, and `p11jwt rotate`.
- A rotation end to end with a jwks_uri client at the loopback
  oidc-provider (tests/integration/oauth): old key, both keys, new key,
  old key removed, with no failed exchange; the JWKS the provider fetches
  is the file `p11jwt jwks --out` wrote, served by a Python HTTP server on
  127.0.0.1. The token cache drops a token of a key that is gone.

Every JWT is checked with PyJWT or the OpenSSL command line against the
public key from the JWKS. Environment: P11JWT_SRCDIR, P11JWT_BUILDDIR.
Prints TAP.
"""
import http.server
import json
import os
import shutil
import signal
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_agent import (AGENT, CLI, MKTOKEN, MODULE, OSSL_VERIFY, TOKEN_URI, Agent,  # noqa: E402
                        Conn, jwt_parts, run, t)
from test_oauth import OAUTH_DIR, OAuthServer  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt, independent verifier)

RESCAN_LINE = "listing the tokens' keys again"


def err_of(r):
    e = r.get('error') or {}
    return (e.get('code'), e.get('message'))


class Env:
    def __init__(self, work, tokdir, sock):
        self.work, self.tokdir, self.sock = work, tokdir, sock
        self.pin = os.path.join(tokdir, 'pin')
        self.env = dict(os.environ, P11JWT_AGENT_SOCK=sock,
                        XDG_RUNTIME_DIR=os.path.join(work, 'rt'),
                        XDG_CONFIG_HOME=os.path.join(work, 'cfg'))
        for k in ('P11JWT_CLIENT_SECRET', 'http_proxy', 'https_proxy', 'HTTP_PROXY',
                  'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
            self.env.pop(k, None)
        os.makedirs(self.env['XDG_RUNTIME_DIR'], 0o700, exist_ok=True)

    def cli(self, *args, timeout=120):
        return run([CLI, *args], env=self.env, timeout=timeout)

    def tok(self):
        return ['--module', MODULE, '--token', TOKEN_URI, '--pin-file', self.pin]

    def keygen(self, label, typ='ec:P-256'):
        return self.cli('keygen', *self.tok(), '--type', typ, '--label', label)

    def delete(self, label):
        """Both halves of a key pair, with pkcs11-tool (not our code)."""
        pin = open(self.pin).read().strip()
        ok = True
        for typ in ('privkey', 'pubkey'):
            r = run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test',
                     '--login', '--pin', pin, '--delete-object', '--type', typ, '--label',
                     label])
            ok = ok and r.returncode == 0
        return ok

    def jwk_of(self, name):
        r = self.cli('jwks', '--key', name)
        return json.loads(r.stdout)['keys'][0] if r.returncode == 0 else None


def verify_jwt(token, jwk, desc):
    """PyJWT with the key's public JWK: the signature and the kid."""
    try:
        hdr = pyjwt.get_unverified_header(token)
        pyjwt.decode(token, key=pyjwt.PyJWK(jwk).key, algorithms=[hdr['alg']],
                     options={'verify_aud': False})
        return t.ok(hdr.get('kid') == jwk['kid'], desc, (hdr, jwk.get('kid')))
    except Exception as e:  # noqa: BLE001
        return t.ok(False, desc, repr(e))


def openssl_verify(token, jwk, work, desc):
    pem = os.path.join(work, 'pub-%s.pem' % jwk['kid'][:8])
    with open(pem, 'wb') as f:
        from cryptography.hazmat.primitives import serialization
        f.write(pyjwt.PyJWK(jwk).key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r = run([OSSL_VERIFY, token, pem])
    return t.ok(r.returncode == 0, desc, r.stdout + r.stderr)


class AgentLog:
    """The agent's stderr (its log), as Agent drains it."""

    def __init__(self, agent):
        self.a = agent

    def text(self):
        return ''.join(self.a._err)

    def wait(self, needle, start=0, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.text()[start:]:
                return True
            time.sleep(0.05)
        return False


class Signer(threading.Thread):
    """A client signing with one key in a loop on one connection."""

    def __init__(self, sock, key):
        super().__init__(daemon=True)
        self.sock, self.key = sock, key
        self.stop = threading.Event()
        self.ok, self.failed, self.jwts = 0, [], []

    def run(self):
        c = Conn(self.sock)
        while not self.stop.is_set():
            r = c.req({'op': 'sign', 'key': self.key, 'claims': {'sub': 'loop'}})
            if r.get('ok'):
                self.ok += 1
                if len(self.jwts) < 5 or self.ok % 50 == 0:
                    self.jwts.append(r['jwt'])
            else:
                self.failed.append(r)
        c.close()


def main():
    work = tempfile.mkdtemp(prefix='p11jwt-rot-', dir='/tmp')
    try:
        tokdir = os.path.join(work, 'tok')
        r = run([MKTOKEN, tokdir], timeout=180)
        if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
            return
        os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
        sock = os.path.join(work, 'a', 'agent.sock')
        os.mkdir(os.path.dirname(sock), 0o700)
        e = Env(work, tokdir, sock)
        test_no_config(e)
        test_jwks_out(e)
        test_states_and_oauth(e)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    t.done()


# ---- an agent without --config ---------------------------------------------

def test_no_config(e):
    a = Agent(e.tokdir, e.sock, extra=['--audit', 'none'])
    if not t.ok(a.ready, 'agent (no --config) started'):
        a.stop()
        return
    log = AgentLog(a)
    try:
        c = Conn(e.sock)
        signers = [Signer(e.sock, k) for k in ('ec-p256', 'rsa-2048', 'ec-p256')]
        for s in signers:
            s.start()

        # SIGHUP
        r = e.keygen('rot-hup')
        t.ok(r.returncode == 0, 'keygen while the agent runs', r.stderr)
        start = len(log.text())
        a.proc.send_signal(signal.SIGHUP)
        t.ok(log.wait('added: rot-hup', start), 'SIGHUP without --config lists the keys '
             'again: the log names the new key', log.text()[start:])
        r = c.req({'op': 'sign', 'key': 'rot-hup', 'claims': {'iss': 'me'}})
        jwk = e.jwk_of('rot-hup')
        t.ok(r.get('ok') is True and jwk is not None, 'after SIGHUP the new key signs, '
             'without a restart', r)
        if r.get('ok') and jwk:
            verify_jwt(r['jwt'], jwk, 'its JWT verifies with PyJWT against its JWK')
            openssl_verify(r['jwt'], jwk, e.work, 'and with the OpenSSL command line')

        # p11jwt reload
        r = e.keygen('rot-cmd', 'rsa:2048')
        t.ok(r.returncode == 0, 'keygen rsa:2048', r.stderr)
        r = e.cli('reload')
        t.ok(r.returncode == 0 and 'added    rot-cmd' in r.stdout and 'removed  none' in
             r.stdout, 'p11jwt reload says what was added', r.stdout + r.stderr)
        r = e.cli('reload', '--json')
        j = json.loads(r.stdout) if r.returncode == 0 else {}
        t.ok(j.get('added') == [] and j.get('removed') == [] and j.get('keys') == 7 and
             'config' in j and j['config'] is None,
             'reload --json: nothing new the second time, 7 keys, no file', r.stdout)
        r = e.cli('sign', '--key', 'rot-cmd', '--alg', 'PS256', '--claim', 'iss=me')
        jwk = e.jwk_of('rot-cmd')
        t.ok(r.returncode == 0, 'after p11jwt reload the new RSA key signs', r.stderr)
        if r.returncode == 0 and jwk:
            openssl_verify(r.stdout.strip(), jwk, e.work, 'PS256 by the new key: OpenSSL')
        r = c.req({'op': 'reload', 'id': 'r1', 'extra': 1})
        t.eq(err_of(r)[0], 'bad_request', 'the reload op refuses a field it does not know')

        # an unknown name: one rescan, then the key signs at once
        r = e.keygen('rot-lazy')
        start = len(log.text())
        r = c.req({'op': 'sign', 'key': 'rot-lazy', 'claims': {'iss': 'me'}})
        jwk = e.jwk_of('rot-lazy')
        t.ok(r.get('ok') is True, 'a sign naming a key made after the last reload: the '
             'agent looks again and signs with it in the same request', r)
        if r.get('ok') and jwk:
            verify_jwt(r['jwt'], jwk, 'that JWT verifies with PyJWT')
        t.eq(log.text()[start:].count(RESCAN_LINE), 1, 'one rescan for it')

        # a flood of unknown names within the interval: no more rescans
        e.keygen('rot-later')
        start = len(log.text())
        t0 = time.time()
        codes = set()
        for i in range(200):
            codes.add(err_of(c.req({'op': 'sign', 'key': f'no-such-{i}'}))[0])
        r = c.req({'op': 'sign', 'key': 'rot-later'})
        took = time.time() - t0
        t.ok(codes == {'unknown_key'} and err_of(r)[0] == 'unknown_key',
             '200 unknown names and a new key within 5 s of a rescan: unknown_key', (codes, r))
        t.ok(log.text()[start:].count(RESCAN_LINE) == 0 and took < 4,
             'and no rescan for any of them (rate limit: one per 5 s)',
             (log.text()[start:][-2000:], took))
        time.sleep(RELOAD_INTERVAL)
        r = c.req({'op': 'sign', 'key': 'rot-later'})
        t.ok(r.get('ok') is True, 'after the interval the next request for it rescans and '
             'signs', r)
        time.sleep(RELOAD_INTERVAL)
        start = len(log.text())
        r = c.req({'op': 'sign', 'key': '@active'})
        t.ok(err_of(r)[0] == 'unknown_key' and RESCAN_LINE not in log.text()[start:],
             'a role name (@active) over the socket is unknown_key and no rescan', r)

        # a key removed from the token
        t.ok(e.delete('rot-cmd'), 'pkcs11-tool deletes rot-cmd from the token')
        r = e.cli('reload')
        t.ok(r.returncode == 0 and 'removed  rot-cmd' in r.stdout,
             'p11jwt reload says rot-cmd was removed', r.stdout + r.stderr)
        r = c.req({'op': 'sign', 'key': 'rot-cmd'})
        t.ok(err_of(r)[0] == 'unknown_key' and "no key named 'rot-cmd'" in err_of(r)[1],
             'its requests fail with unknown_key', r)
        r = e.cli('sign', '--key', 'rot-cmd')
        t.ok(r.returncode == 4 and 'unknown_key' in r.stderr, 'p11jwt sign: exit 4, '
             'unknown_key', r.stderr)
        r = e.cli('keys', '--json')
        names = [k['name'] for k in json.loads(r.stdout)] if r.returncode == 0 else []
        t.ok('rot-cmd' not in names and 'rot-hup' in names, 'keys no longer lists it', names)
        t.ok(e.delete('rot-hup'), 'pkcs11-tool deletes rot-hup')
        start = len(log.text())
        a.proc.send_signal(signal.SIGHUP)
        t.ok(log.wait('removed: rot-hup', start),
             'SIGHUP: the log says rot-hup was removed', log.text()[-600:])

        # a reload while requests are in flight, several times
        for i in range(3):
            e.keygen(f'rot-churn-{i}')
            e.cli('reload')
            a.proc.send_signal(signal.SIGHUP)
            e.delete(f'rot-churn-{i}')
            e.cli('reload')
        time.sleep(0.3)
        for s in signers:
            s.stop.set()
        for s in signers:
            s.join(timeout=20)
        total = sum(s.ok for s in signers)
        fails = [f for s in signers for f in s.failed]
        t.ok(total > 50 and not fails, f'{total} signatures in a loop on 3 connections '
             'during keygens, reloads and deletions: none failed', fails[:3])
        jwk_ec, jwk_rsa = e.jwk_of('ec-p256'), e.jwk_of('rsa-2048')
        bad = []
        for s in signers:
            for tok in s.jwts:
                jwk = jwk_ec if s.key == 'ec-p256' else jwk_rsa
                try:
                    pyjwt.decode(tok, key=pyjwt.PyJWK(jwk).key,
                                 algorithms=[pyjwt.get_unverified_header(tok)['alg']])
                except Exception as ex:  # noqa: BLE001
                    bad.append(repr(ex))
        t.ok(not bad and sum(len(s.jwts) for s in signers) > 5,
             'the JWTs signed during the churn verify with PyJWT', bad[:3])

        # a certificate stored next to a served key: served after a reload
        r = e.cli('cert', *e.tok(), '--key', 'rot-lazy', '--subject', '/CN=rot-lazy',
                  '--days', '2', '--store')
        t.ok(r.returncode == 0 and 'p11jwt reload' in r.stderr,
             'cert --store says to reload the agent', r.stderr)
        r = e.cli('reload')
        r = c.req({'op': 'keys'})
        lazy = next((k for k in r.get('keys', []) if k['name'] == 'rot-lazy'), {})
        t.ok(lazy.get('has_cert') is True, 'after p11jwt reload the agent serves the stored '
             'certificate with the key (same kid)', lazy)
        r = c.req({'op': 'sign', 'key': 'rot-lazy', 'include': ['x5t#S256']})
        hdr = pyjwt.get_unverified_header(r['jwt']) if r.get('ok') else {}
        t.ok('x5t#S256' in hdr, 'and signs with its x5t#S256', r)

        # @active without states: every key is active, so it is ambiguous
        r = e.cli('jwks', '--key', '@active')
        t.ok(r.returncode == 2 and 'keys are active' in r.stderr and '@active needs exactly '
             'one' in r.stderr, 'jwks --key @active with several active keys: exit 2, '
             'naming them', r.stderr)
        r = e.cli('jwks', '--key', '@next')
        t.ok(r.returncode == 2 and 'no key of the agent is next' in r.stderr,
             'jwks --key @next with no next key: exit 2', r.stderr)
        r = e.cli('jwks', '--key', '@old')
        t.ok(r.returncode == 2 and "unknown key role '@old'" in r.stderr,
             'jwks --key @old: unknown role, exit 2', r.stderr)
        c.close()
    finally:
        for s in locals().get('signers', []):
            s.stop.set()
        a.stop()


RELOAD_INTERVAL = 5.3


# ---- jwks --out ------------------------------------------------------------

def test_jwks_out(e):
    a = Agent(e.tokdir, e.sock, extra=['--audit', 'none'])
    if not t.ok(a.ready, 'agent started for jwks --out'):
        a.stop()
        return
    try:
        d = os.path.join(e.work, 'pub')
        os.mkdir(d, 0o755)
        out = os.path.join(d, 'jwks.json')
        with open(out, 'w') as f:
            f.write('old contents')
        os.chmod(out, 0o600)
        ino = os.stat(out).st_ino
        old = os.umask(0o077)
        r = e.cli('jwks', '--out', out)
        os.umask(old)
        st = os.stat(out)
        want = e.cli('jwks').stdout
        n = len(json.loads(want)['keys'])
        t.ok(r.returncode == 0 and f'wrote {n} keys to' in r.stderr and r.stdout == '',
             'jwks --out FILE writes the file and says so, nothing on stdout', r.stderr)
        t.eq(open(out).read(), want, 'the file holds what jwks prints')
        t.eq(stat.S_IMODE(st.st_mode), 0o644, 'mode 0644 whatever the umask (077 here)')
        t.ok(st.st_ino != ino, 'a new inode: written beside and renamed over the old file',
             (ino, st.st_ino))
        t.eq(sorted(os.listdir(d)), ['jwks.json'], 'no temporary file is left behind')
        r = e.cli('jwks', '--pem', '--out', out + '.pem')
        t.ok(r.returncode == 0 and open(out + '.pem').read().count('BEGIN PUBLIC KEY') == n,
             'jwks --pem --out FILE writes the PEM keys', r.stderr)
        r = e.cli('jwks', '--out', os.path.join(e.work, 'no-such-dir', 'jwks.json'))
        t.ok(r.returncode == 2 and 'cannot write next to' in r.stderr,
             'jwks --out into a missing directory: exit 2, a clear message', r.stderr)
        r = e.cli('jwks', '--out', '')
        t.ok(r.returncode == 2 and '--out needs a file name' in r.stderr,
             'jwks --out with an empty name: usage error', r.stderr)
        os.chmod(d, 0o555)
        r = e.cli('jwks', '--out', out)
        os.chmod(d, 0o755)
        if os.geteuid() == 0:
            t.skip('jwks --out into a directory it cannot write', 'root writes anywhere')
        else:
            t.ok(r.returncode == 2 and open(out).read() == want,
                 'jwks --out into a read-only directory fails and leaves the file', r.stderr)
    finally:
        a.stop()


# ---- states, rotate, and a jwks_uri client at oidc-provider ----------------

class JwksServer:
    """Serves one directory on 127.0.0.1 and counts GETs of jwks.json."""

    def __init__(self, root):
        outer = self
        self.fetches = 0

        class H(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=root, **kw)

            def do_GET(self):
                if self.path == '/jwks.json':
                    outer.fetches += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.httpd = S(('127.0.0.1', 0), H)
        self.url = 'http://127.0.0.1:%d/jwks.json' % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def conf(e, keys):
    """[key] sections only: the token is the command line's (Agent's)."""
    text = '# p11jwt-agent test configuration\n'
    for name, lines in keys:
        text += f'\n[key {name}]\nobject = {name}\n' + ''.join(f'{x}\n' for x in lines)
    return text


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def exchange(e, srv, key, *extra):
    return e.cli('token', '--key', key, '--client-id', 'rot-client', '--token-url',
                 srv.token_url, '--scope', 'api:read', '--json', *extra)


def test_states_and_oauth(e):
    for label in ('oa-old',):
        r = e.keygen(label)
        t.ok(r.returncode == 0, f'keygen {label}', r.stderr)
    cfgpath = os.path.join(e.work, 'agent.conf')
    soon = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 3600))
    write(cfgpath, conf(e, [('oa-old', ['state = active']), ('ec-p256', ['state = next'])]))
    r = run([AGENT, '--check-config', cfgpath])
    t.ok(r.returncode == 0, 'a file with state = active and state = next checks', r.stderr)
    bad = os.path.join(e.work, 'bad.conf')
    write(bad, conf(e, [('oa-old', ['state = retired']),
                        ('ec-p256', ['state = retiring', 'retire_after = tomorrow'])]))
    r = run([AGENT, '--check-config', bad])
    t.ok(r.returncode != 0 and "bad.conf:5: unknown state 'retired' (active, next, retiring)"
         in r.stderr and "bad.conf:10: retire_after: 'tomorrow' is not a date" in r.stderr,
         '--check-config names a bad state and a bad date with FILE:LINE', r.stderr)

    a = Agent(e.tokdir, e.sock, extra=['--config', cfgpath, '--audit', 'none'])
    if not t.ok(a.ready, 'agent with key states started'):
        a.stop()
        return
    log = AgentLog(a)
    srv = jw = None
    try:
        r = e.cli('keys')
        lines = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
        t.ok(r.returncode == 0 and lines.get('oa-old', '').split()[5:] == ['active', 'no'] and
             lines.get('ec-p256', '').split()[5:] == ['next', 'no'] and 'STATE' in r.stdout,
             'p11jwt keys shows each key\'s state', r.stdout)
        r = e.cli('jwks')
        kids = [k['kid'] for k in json.loads(r.stdout)['keys']] if r.returncode == 0 else []
        t.ok(len(kids) == 2, 'p11jwt jwks publishes the active and the next key', r.stdout)
        r = e.cli('sign', '--key', 'ec-p256', '--claim', 'iss=me')
        t.ok(r.returncode == 0, 'a next key signs when a request names it', r.stderr)

        # the loopback provider with a jwks_uri client, and its JWKS file
        pubdir = os.path.join(e.work, 'www')
        os.mkdir(pubdir, 0o755)
        jwks_file = os.path.join(pubdir, 'jwks.json')
        jw = JwksServer(pubdir)
        r = e.cli('jwks', '--key', '@active', '--out', jwks_file)
        t.ok(r.returncode == 0 and "@active is key 'oa-old'" in r.stderr,
             'jwks --key @active --out: the old key alone, to start with', r.stderr)
        if not os.path.isdir(os.path.join(OAUTH_DIR, 'node_modules', 'oidc-provider')):
            t.skip('rotation at oidc-provider', 'oidc-provider not installed (npm ci)')
            return
        srv = OAuthServer(e.work, [{'client_id': 'rot-client', 'jwks_uri': jw.url,
                                    'grant': 'client_credentials', 'ttl': 600}])
        if not t.ok(srv.url is not None and srv.url.startswith('http://127.0.0.1:'),
                    'oidc-provider listens on 127.0.0.1, its client has a jwks_uri'):
            return
        failed = []

        def xch(desc, key, want_kid, *extra):
            r = exchange(e, srv, key, *extra)
            ok = r.returncode == 0
            if not ok:
                failed.append((desc, r.stderr))
            last = srv.stats().get('last_assertion') or {}
            got = last.get('kid')
            t.ok(ok and (want_kid is None or got == want_kid), desc, (r.stderr, got, want_kid))
            return json.loads(r.stdout) if ok else None

        old_jwk = e.jwk_of('oa-old')
        # 1. the old key
        xch('1. old key: the exchange with --key @active works (provider fetched the file)',
            '@active', old_jwk['kid'], '--no-cache')
        t.eq(jw.fetches, 1, 'oidc-provider fetched the jwks_uri once')

        # 2. rotate: the next key, published beside the old one
        r = e.cli('rotate', *e.tok(), '--key', 'oa-old', '--type', 'ec:P-256', '--label',
                  'oa-new')
        made = json.loads(r.stdout) if r.returncode == 0 else {}
        t.ok(r.returncode == 0 and made.get('name') == 'oa-new' and made.get('jwk', {}).get(
            'kty') == 'EC' and 'state = next' in r.stderr and "replace 'oa-old'" in r.stderr,
            'p11jwt rotate makes the next key and prints its JWK and the steps',
            r.stdout + r.stderr)
        r = e.cli('rotate', *e.tok(), '--key', 'no-such-key')
        t.ok(r.returncode == 2 and "no usable signing key labelled 'no-such-key'" in r.stderr,
             'rotate --key of a key that is not there: exit 2', r.stderr)
        r = e.cli('rotate', *e.tok(), '--key', 'oa-old', '--type', 'rsa:1024')
        t.ok(r.returncode == 2 and 'rsa:2048' in r.stderr, 'rotate --type rsa:1024: exit 2 '
             'naming the types', r.stderr)
        write(cfgpath, conf(e, [('oa-old', ['state = active']), ('oa-new', ['state = next'])]))
        r = e.cli('reload')
        t.ok(r.returncode == 0 and 'added    oa-new' in r.stdout and 'removed  ec-p256' in
             r.stdout and f'config   {cfgpath}' in r.stdout,
             'reload with the file: oa-new added (next), ec-p256 no longer configured',
             r.stdout + r.stderr)
        new_jwk = e.jwk_of('oa-new')
        t.ok(new_jwk is not None and new_jwk['kid'] == made.get('kid'),
             'the agent serves the new key with the kid rotate printed', (new_jwk, made))
        r = e.cli('jwks', '--key', '@active', '--key', '@next', '--out', jwks_file)
        t.ok(r.returncode == 0 and 'wrote 2 keys' in r.stderr, 'jwks --key @active --key '
             '@next --out: the set of the old and the new key', r.stderr)
        both = json.load(open(jwks_file))['keys']
        t.ok(sorted(k['kid'] for k in both) == sorted([old_jwk['kid'], new_jwk['kid']]),
             '2. the published JWKS holds both keys', both)
        # the provider's copy is fresh for 60 s at least: the test lets it expire
        srv.post('/test/jwks-stale', {'client_id': 'rot-client'})
        xch('2. both published, still signing with the old key (@active)', '@active',
            old_jwk['kid'], '--no-cache')
        r = e.cli('sign', '--key', '@next')
        t.ok(r.returncode != 0, 'p11jwt sign takes no roles (a name only)', r.stderr)

        # 3. switch: the new key active, the old one retiring
        write(cfgpath, conf(e, [('oa-old', ['state = retiring', f'retire_after = {soon}']),
                                ('oa-new', ['state = active'])]))
        start = len(log.text())
        a.proc.send_signal(signal.SIGHUP)
        t.ok(log.wait(f'reload: {cfgpath} loaded', start), 'SIGHUP re-reads the file',
             log.text()[start:])
        r = e.cli('keys')
        old_line = next((ln for ln in r.stdout.splitlines() if ln.startswith('oa-old ')), '')
        t.ok(old_line.split()[5:] == ['retiring', 'no', 'until', soon],
             'keys: the old key is retiring, until its date', r.stdout)
        fetches = jw.fetches
        got = xch('3. switched: --key @active is the new key, the provider accepts it',
                  '@active', new_jwk['kid'])
        t.ok(jw.fetches == fetches + 1, 'the unknown kid made oidc-provider fetch the JWKS '
             'again', (fetches, jw.fetches))
        last = srv.stats().get('last_assertion') or {}
        t.ok(got is not None and got.get('token_type') == 'Bearer' and last.get('alg') ==
             'ES256' and last.get('ok') is True, 'the provider took an ES256 assertion', last)
        xch('3. the retiring key still signs before its date', 'oa-old', old_jwk['kid'])
        # the retiring key after its date
        past = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - 60))
        write(cfgpath, conf(e, [('oa-old', ['state = retiring', f'retire_after = {past}']),
                                ('oa-new', ['state = active'])]))
        e.cli('reload')
        r = e.cli('sign', '--key', 'oa-old')
        t.ok(r.returncode == 4 and 'policy_violation' in r.stderr and
             f'signs nothing after {past}' in r.stderr,
             'after retire_after the old key refuses: policy_violation naming the date',
             r.stderr)
        r = e.cli('jwks')
        t.eq(len(json.loads(r.stdout)['keys']) if r.returncode == 0 else 0, 2,
             'the retiring key is still published')
        r = e.cli('token', '--key', 'oa-old', '--client-id', 'rot-client', '--token-url',
                  srv.token_url, '--scope', 'api:read', '--json')
        t.ok(r.returncode == 0, 'a cached token of the retired key is still served (the key '
             'is listed)', r.stderr)

        # a reload with a bad file keeps what runs, and says why
        good = open(cfgpath).read()
        write(cfgpath, good + '\n[key typo]\nobject = oa-new\nstate = nxet\n')
        r = e.cli('reload')
        t.ok(r.returncode == 4 and 'bad_request' in r.stderr and 'has errors; keeping the '
             'current configuration' in r.stderr and "unknown state 'nxet'" in r.stderr,
             'p11jwt reload with a bad file: exit 4, the file and its first error', r.stderr)
        write(cfgpath, good + '\n[key ghost]\nobject = no-such-label\n')
        r = e.cli('reload')
        t.ok(r.returncode == 4 and 'not_found' in r.stderr and '[key ghost]: no signing key '
             "matching object 'no-such-label'" in r.stderr,
             'p11jwt reload naming a key the token lacks: exit 4, not_found', r.stderr)
        r = e.cli('keys', '--json')
        t.ok(r.returncode == 0 and sorted(k['name'] for k in json.loads(r.stdout)) ==
             ['oa-new', 'oa-old'], 'and the agent serves what it served before', r.stdout)
        write(cfgpath, good)

        # 4. the old key removed: config, token, JWKS
        write(cfgpath, conf(e, [('oa-new', ['state = active'])]))
        t.ok(e.delete('oa-old'), 'pkcs11-tool deletes oa-old from the token')
        r = e.cli('reload')
        t.ok(r.returncode == 0 and 'removed  oa-old' in r.stdout, 'reload: oa-old removed',
             r.stdout + r.stderr)
        e.cli('jwks', '--out', jwks_file)
        t.eq([k['kid'] for k in json.load(open(jwks_file))['keys']], [new_jwk['kid']],
             '4. the published JWKS holds the new key only')
        srv.post('/test/jwks-stale', {'client_id': 'rot-client'})
        xch('4. the new key alone: the exchange works', '@active', new_jwk['kid'], '--no-cache')
        t.eq(failed, [], 'no exchange failed during the rotation (old, both, new, old gone)')

        # the cache drops a token of a key that is gone
        r = e.cli('token', '--key', 'oa-old', '--client-id', 'rot-client', '--token-url',
                  srv.token_url, '--scope', 'api:read', '--json')
        t.ok(r.returncode == 4 and "which the agent no longer serves" in r.stderr and
             'unknown_key' in r.stderr,
             'a cached token of a removed key is dropped, and the new exchange says '
             'unknown_key', r.stderr)
        r = e.cli('cache', 'list', '--json')
        keys = [x.get('key') for x in json.loads(r.stdout)] if r.returncode == 0 else None
        t.ok(keys is not None and 'oa-old' not in keys and 'oa-new' in keys,
             'the cache no longer holds it; the new key\'s token stays', r.stdout)
        r = exchange(e, srv, '@active')
        t.ok(r.returncode == 0 and 'note: the cached token' not in r.stderr,
             'the new key\'s cached token is used as it is', r.stderr)

        # the same name, another key pair: the cached token goes too
        t.ok(e.delete('oa-new') and e.keygen('oa-new').returncode == 0,
             'oa-new deleted and made again (a new key pair under the same label)')
        r = e.cli('reload')
        t.ok(r.returncode == 0 and 'added    oa-new' in r.stdout and 'removed  oa-new' in
             r.stdout, 'reload reports it as removed and added (another thumbprint)', r.stdout)
        again = e.jwk_of('oa-new')
        e.cli('jwks', '--key', '@active', '--out', jwks_file)
        srv.post('/test/jwks-stale', {'client_id': 'rot-client'})
        requests = srv.stats()['token_requests']
        r = exchange(e, srv, '@active')
        last = srv.stats().get('last_assertion') or {}
        t.ok(r.returncode == 0 and 'now serves with another public key' in r.stderr and
             srv.stats()['token_requests'] == requests + 1 and again and
             last.get('kid') == again['kid'] != new_jwk['kid'],
             'a cached token of a key whose public key changed is dropped; the new one is '
             'obtained with the new key pair', (r.stderr, last))
    finally:
        if srv:
            srv.stop()
        if jw:
            jw.stop()
        a.stop()


if __name__ == '__main__':
    main()
