#!/usr/bin/python3
"""Integration tests of p11jwt-agent --config: per-key policy over the socket,
another uid allowed by a `uids` rule, SIGHUP reloads (good and bad files,
a changed token) while clients keep signing, kid modes in JWT headers and
the JWKS (checked with PyJWT), and --check-config.

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR. Prints TAP.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_agent import (AGENT, BUILD, CLI, MKTOKEN, MODULE, TOKEN_URI, Agent, Conn,  # noqa: E402
                        copy_cli, jwt_parts, run, t)

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt, independent verifier)


def conf_text(tokdir, sock, max_lifetime=300, uids='', aud='https://int.api.service.nhs.uk/oauth2/token',
              token_uri=TOKEN_URI, tokens=True):
    tok = f'''
[token soft]
module = {MODULE}
uri = {token_uri}
pin_file = {tokdir}/pin
''' if tokens else ''
    return f'''# p11jwt-agent test configuration
[agent]
socket = {sock}
workers = 4
{tok}
[key nhs-int]
uri = pkcs11:object=rsa-2048;id=%01
algs = RS512
max_lifetime = {max_lifetime}
iss = client-1
sub = client-1
aud = {aud}
kid = fixed:nhs-kid-1
{uids}

[key ec]
object = ec-p256
kid = id

[key ed]
object = ed25519
'''


def write(path, text):
    with open(path, 'w') as f:
        f.write(text)


class ConfAgent:
    """An agent started with --config only, its log in a file we can read
    while it runs."""

    def __init__(self, conf, sock, extra=()):
        self.sock = sock
        self.logpath = conf + '.log'
        self.log = open(self.logpath, 'w')
        self.proc = subprocess.Popen([AGENT, '--foreground', '--print-env', '--config', conf,
                                      *extra], stdout=subprocess.PIPE, stderr=self.log, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith('P11JWT_AGENT_SOCK='):
                break
        self.ready = os.path.exists(sock) and self.proc.poll() is None

    def logtext(self):
        with open(self.logpath) as f:
            return f.read()

    def wait_log(self, needle, start=0, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.logtext()[start:]
            if needle in text:
                return text
            time.sleep(0.05)
        return None

    def hup(self, needle):
        """SIGHUP, then wait for the reload's outcome line in the log."""
        start = len(self.logtext())
        self.proc.send_signal(signal.SIGHUP)
        return self.wait_log(needle, start)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


NHS_CLAIMS = {'iss': 'client-1', 'sub': 'client-1',
              'aud': 'https://int.api.service.nhs.uk/oauth2/token'}


def sign_req(**kw):
    req = {'op': 'sign', 'key': 'nhs-int', 'claims': dict(NHS_CLAIMS)}
    req.update(kw)
    return req


def err_of(r):
    e = r.get('error') or {}
    return (e.get('code'), e.get('message'))


def main():
    work = tempfile.mkdtemp(prefix='itest-config-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    # sockets under /tmp: short paths, and reachable by another uid
    sockdir = tempfile.mkdtemp(prefix='p11jwt-cfg-', dir='/tmp')
    os.chmod(sockdir, 0o711)
    try:
        test_check_config(tokdir, work, sockdir)
        test_policy_agent(tokdir, work, sockdir)
        test_cmdline_token(tokdir, work, sockdir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)
    t.done()


def test_check_config(tokdir, work, sockdir):
    good = os.path.join(work, 'good.conf')
    write(good, conf_text(tokdir, os.path.join(sockdir, 'x', 'agent.sock')))
    r = run([AGENT, '--check-config', good])
    t.ok(r.returncode == 0 and 'valid' in r.stdout, '--check-config: a good file exits 0',
         r.stdout + r.stderr)
    bad = os.path.join(work, 'bad.conf')
    write(bad, '[agent]\nworkers = 99\n[key k]\nobject = x\nalgs = RS256 HS256\n'
               'uids = no-such-user-p11j\n[key k]\ntoken = nowhere\n')
    r = run([AGENT, '--check-config', bad])
    want = [f'{bad}:2: \'workers\' must be a whole number from 1 to 64',
            f'{bad}:5: unknown alg \'HS256\'',
            f'{bad}:6: unknown user \'no-such-user-p11j\'',
            f'{bad}:7: duplicate [key k] (first at line 3)']
    t.ok(r.returncode == 2 and all(w in r.stderr for w in want),
         '--check-config: a bad file exits 2 and reports every error as FILE:LINE', r.stderr)
    # --check-config opens no token: a module that does not exist is fine
    nomod = os.path.join(work, 'nomod.conf')
    write(nomod, '[token x]\nmodule = /nonexistent/lib.so\n[key k]\nobject = y\n')
    r = run([AGENT, '--check-config', nomod])
    t.eq(r.returncode, 0, '--check-config does not open the tokens')
    # the shipped example is valid once its user and group exist
    src = os.environ.get('P11JWT_SRCDIR') or os.path.join(os.path.dirname(__file__), '..', '..')
    with open(os.path.join(src, 'dist', 'p11jwt-agent.conf.example')) as f:
        example = f.read()
    ex = os.path.join(work, 'example.conf')
    write(ex, example.replace('uids = nhs-svc', 'uids = nobody')
          .replace('gids = jwt-clients', 'gids = nogroup'))
    r = run([AGENT, '--check-config', ex])
    t.ok(r.returncode == 0 and '1 token section, 3 key sections' in r.stdout,
         'dist/p11jwt-agent.conf.example passes --check-config', r.stdout + r.stderr)
    # the agent refuses to start on a bad file, with the same messages
    r = run([AGENT, '--foreground', '--config', bad])
    t.ok(r.returncode == 2 and want[1] in r.stderr, 'the agent does not start with a bad --config',
         r.stderr)
    r = run([AGENT, '--foreground', '--config', good, '--module', MODULE])
    t.ok(r.returncode == 2 and '[token]' in r.stderr,
         '--module next to a file with [token] sections is a usage error', r.stderr)


def check_kids(sock):
    c = Conn(sock)
    jwks = c.req({'op': 'jwks'})
    keys = c.req({'op': 'keys'})
    by_name = {k['name']: k for k in keys.get('keys', [])}
    t.eq(sorted(by_name), ['ec', 'ed', 'nhs-int'],
         'with [key] sections the agent serves exactly those keys, by their names')
    kids = sorted(j['kid'] for j in jwks.get('keys', []))
    t.ok('02' in kids and 'nhs-kid-1' in kids and len(kids) == 3,
         'JWKS: kid = id gives the CKA_ID in hex, kid = fixed:... the string', kids)
    t.eq((by_name.get('ec', {}).get('kid'), by_name.get('nhs-int', {}).get('kid'),
          by_name.get('nhs-int', {}).get('alg')), ('02', 'nhs-kid-1', 'RS512'),
         'keys: the configured kids, and the default alg follows algs = RS512')
    t.eq((by_name.get('nhs-int', {}).get('algs'), by_name.get('ec', {}).get('algs')),
         (['RS512'], ['ES256']), 'keys: algs are what the policy lets a client use '
         '(algs = RS512), not all the token can do')
    jwk_by_kid = {j['kid']: j for j in jwks.get('keys', [])}
    r = c.req({'op': 'sign', 'key': 'ec', 'claims': {'sub': 'x'}})
    h, _ = jwt_parts(r['jwt'])
    t.eq(h['kid'], '02', 'kid = id in the JWT header')
    key = pyjwt.PyJWK(jwk_by_kid['02']).key
    pyjwt.decode(r['jwt'], key, algorithms=['ES256'], options={'verify_aud': False})
    t.ok(True, 'PyJWT verifies the kid = id JWT with the JWK its kid names')
    r = c.req(sign_req())
    h, claims = jwt_parts(r['jwt'])
    t.eq((h['kid'], h['alg']), ('nhs-kid-1', 'RS512'), 'kid = fixed:... in the JWT header')
    key = pyjwt.PyJWK(jwk_by_kid[h['kid']]).key
    got = pyjwt.decode(r['jwt'], key, algorithms=['RS512'],
                       audience='https://int.api.service.nhs.uk/oauth2/token')
    t.eq(got['exp'] - got['iat'], 300, 'PyJWT verifies the NHS JWT; lifetime is the default 300')
    c.close()


def check_violations(sock):
    c = Conn(sock)
    cases = [
        (sign_req(alg='RS256'), 'policy_violation',
         'alg RS256 not allowed for key nhs-int (allowed: RS512)'),
        (sign_req(lifetime=7200), 'policy_violation',
         "key nhs-int: lifetime 7200 over the key's max_lifetime 300"),
        (sign_req(claims=dict(NHS_CLAIMS, aud='https://x')), 'policy_violation',
         "key nhs-int: claim aud 'https://x' does not match any allowed value (policy aud)"),
        (sign_req(claims=dict(NHS_CLAIMS, aud=[NHS_CLAIMS['aud'], 'https://y'])),
         'policy_violation',
         "key nhs-int: claim aud 'https://y' does not match any allowed value (policy aud)"),
        (sign_req(claims=dict(NHS_CLAIMS, iss='client-2')), 'policy_violation',
         "key nhs-int: claim iss 'client-2' does not match any allowed value (policy iss)"),
        (sign_req(header={'jku': 'https://evil/jwks'}), 'policy_violation',
         'key nhs-int: header parameter jku may not be set by clients (policy deny_header)'),
        ({'op': 'sign', 'key': 'ed', 'lifetime': 3601}, 'policy_violation',
         "key ed: lifetime 3601 over the key's max_lifetime 3600"),
        ({'op': 'sign', 'key': 'ed', 'header': {'x5u': 'https://e'}}, 'policy_violation',
         'key ed: header parameter x5u may not be set by clients (policy deny_header)'),
    ]
    for req, code, msg in cases:
        r = c.req(req)
        t.eq(err_of(r), (code, msg), f'{code}: {msg}')
    r = c.req(sign_req(claims=dict(NHS_CLAIMS, aud=[NHS_CLAIMS['aud']])))
    t.ok(r.get('ok') is True, 'aud as an array whose every element matches is signed', r)
    c.close()


def as_nobody(sockdir, *args):
    cli_copy = copy_cli(sockdir)
    return run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',
                cli_copy, *args])


def open_socket(sock):
    """Let file permissions through, so that only the policy decides."""
    os.chmod(os.path.dirname(sock), 0o711)
    os.chmod(sock, 0o666)


def test_policy_agent(tokdir, work, sockdir):
    sock = os.path.join(sockdir, 'run', 'agent.sock')
    conf = os.path.join(work, 'agent.conf')
    can_switch = os.geteuid() == 0 and shutil.which('setpriv')
    write(conf, conf_text(tokdir, sock, uids='uids = nobody' if can_switch else ''))
    a = ConfAgent(conf, sock)
    if not t.ok(a.ready, 'agent starts with --config (socket from [agent])', a.logtext()):
        a.stop()
        return
    try:
        check_kids(sock)
        check_violations(sock)
        if can_switch:
            open_socket(sock)
            r = as_nobody(sockdir, '--socket', sock, 'keys', '--json')
            names = [k['name'] for k in json.loads(r.stdout)] if r.returncode == 0 else None
            t.eq(names, ['nhs-int'], 'uids = nobody: nobody sees only the key it may use')
            r = as_nobody(sockdir, '--socket', sock, 'sign', '--key', 'nhs-int', '--claim',
                          'iss=client-1', '--claim', 'sub=client-1', '--claim',
                          'aud=https://int.api.service.nhs.uk/oauth2/token')
            t.ok(r.returncode == 0 and r.stdout.count('.') == 2,
                 'uids = nobody: nobody signs with nhs-int', r.stderr)
            r = as_nobody(sockdir, '--socket', sock, 'sign', '--key', 'ed')
            t.ok(r.returncode == 4 and 'forbidden' in r.stderr,
                 'nobody is forbidden a key without a uids rule', r.stderr)
        else:
            for d in ('other uid allowed by uids', 'other uid sees its key', 'other uid refused'):
                t.skip(d, 'needs root and setpriv')
        check_reloads(a, tokdir, sock, conf, sockdir, can_switch)
    finally:
        rc = a.stop()
    t.eq(rc, 0, 'agent exits 0 on SIGTERM after the reloads')


def lifetime_ok(sock, lifetime):
    c = Conn(sock)
    r = c.req(sign_req(lifetime=lifetime))
    c.close()
    return r.get('ok') is True, r


def check_reloads(a, tokdir, sock, conf, sockdir, can_switch):
    ok, _ = lifetime_ok(sock, 500)
    t.ok(not ok, 'before the reload: lifetime 500 is over max_lifetime 300')

    # a client loop that must see every request answered across the reloads
    stop = threading.Event()
    stats = {'ok': 0, 'bad': []}

    def loop():
        while not stop.is_set():
            try:
                c = Conn(sock)
                for _ in range(20):
                    r = c.req({'op': 'sign', 'key': 'ec', 'claims': {'sub': 'loop'}})
                    if r.get('ok') is True:
                        stats['ok'] += 1
                    else:
                        stats['bad'].append(r)
                c.close()
            except Exception as e:  # noqa: BLE001
                stats['bad'].append(repr(e))
    threads = [threading.Thread(target=loop) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        # a good file: the rule changes (and nobody loses nhs-int)
        write(conf, conf_text(tokdir, sock, max_lifetime=600))
        log = a.hup('reload: ' + conf + ' loaded')
        t.ok(log is not None, 'SIGHUP with a good file: the agent logs the reload', a.logtext())
        ok, r = lifetime_ok(sock, 500)
        t.ok(ok, 'after the reload: lifetime 500 is within the new max_lifetime 600', r)
        ok, r = lifetime_ok(sock, 601)
        t.ok(not ok and "max_lifetime 600" in (err_of(r)[1] or ''),
             'and 601 is over it, the message names the new limit', r)
        if can_switch:
            r = as_nobody(sockdir, '--socket', sock, 'sign', '--key', 'nhs-int', '--claim',
                          'iss=client-1', '--claim', 'sub=client-1', '--claim',
                          'aud=https://int.api.service.nhs.uk/oauth2/token')
            t.ok(r.returncode == 4 and 'forbidden' in r.stderr,
                 'after the reload without uids = nobody, nobody is forbidden', r.stderr)
        else:
            t.skip('other uid refused after the reload', 'needs root and setpriv')

        # a bad file: the old rule stays, the log names file and line
        text = conf_text(tokdir, sock, max_lifetime=900).replace('algs = RS512',
                                                                  'algs = RS512 XX1')
        write(conf, text)
        line = text.splitlines().index('algs = RS512 XX1') + 1
        log = a.hup('keeping the current configuration')
        t.ok(log is not None and f"{conf}:{line}: unknown alg 'XX1'" in log,
             'SIGHUP with a bad file: the agent logs FILE:LINE and keeps the old one', log)
        ok, r = lifetime_ok(sock, 500)
        ok2, _ = lifetime_ok(sock, 700)
        t.ok(ok and not ok2, 'after the bad reload the old rule (600) still holds', r)

        # a changed [token] section: a new token opens before the switch,
        # the old one closes after; signing goes on
        write(conf, conf_text(tokdir, sock, max_lifetime=600,
                              token_uri=TOKEN_URI + ';manufacturer=SoftHSM%20project'))
        log = a.hup('reload: ' + conf + ' loaded')
        t.ok(log is not None, 'SIGHUP with a changed [token] section reloads', a.logtext())
        ok, r = lifetime_ok(sock, 500)
        t.ok(ok, 'signing works with the newly opened token', r)

        # a token that does not open: the old generation stays
        write(conf, conf_text(tokdir, sock, max_lifetime=1000,
                              token_uri='pkcs11:token=no-such-token'))
        log = a.hup('keeping the current configuration')
        t.ok(log is not None and '[token soft]' in log,
             'SIGHUP naming a missing token keeps the current configuration', a.logtext())
        ok, r = lifetime_ok(sock, 700)
        t.ok(not ok and 'max_lifetime 600' in (err_of(r)[1] or ''),
             'and the 600 s rule still holds', r)

        # more reloads back and forth while the loop runs
        for i in range(6):
            write(conf, conf_text(tokdir, sock, max_lifetime=300 + i))
            a.hup('reload: ' + conf + ' loaded')
    finally:
        time.sleep(0.3)
        stop.set()
        for th in threads:
            th.join(timeout=30)
    t.ok(stats['ok'] > 50 and not stats['bad'],
         f'a client loop kept being answered across the reloads ({stats["ok"]} JWTs)',
         stats['bad'][:5])
    t.ok(a.proc.poll() is None, 'the agent is still running after the reloads')


def test_cmdline_token(tokdir, work, sockdir):
    """A file without [token]: the command line's token, the file's keys."""
    sock = os.path.join(sockdir, 'cmd', 'agent.sock')
    conf = os.path.join(work, 'keys-only.conf')
    write(conf, conf_text(tokdir, sock, tokens=False).replace(f'socket = {sock}\n', ''))
    a = Agent(tokdir, sock, extra=['--config', conf])
    if not t.ok(a.ready, 'agent with --module/--token and a file with only [key] sections',
                a.stderr() if a.proc.poll() is not None else None):
        a.stop()
        return
    try:
        c = Conn(sock)
        r = c.req({'op': 'keys'})
        t.eq(sorted(k['name'] for k in r.get('keys', [])), ['ec', 'ed', 'nhs-int'],
             'the file names the keys of the command-line token')
        r = c.req(sign_req(alg='RS256'))
        t.eq(err_of(r)[0], 'policy_violation', 'and its policy applies')
        c.close()
    finally:
        a.stop()
    # no --config at all: a default max_lifetime of 3600
    sock2 = os.path.join(sockdir, 'plain', 'agent.sock')
    a = Agent(tokdir, sock2)
    try:
        c = Conn(sock2)
        r1 = c.req({'op': 'sign', 'key': 'ec-p256', 'lifetime': 3600})
        r2 = c.req({'op': 'sign', 'key': 'ec-p256', 'lifetime': 3601})
        t.ok(r1.get('ok') is True and err_of(r2) ==
             ('policy_violation', "key ec-p256: lifetime 3601 over the key's max_lifetime 3600"),
             'without --config: lifetime up to 3600, not more', (r1, r2))
        # SIGHUP without --config neither stops nor breaks the agent
        a.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        r = c.req({'op': 'hello'})
        t.ok(r.get('ok') is True and a.proc.poll() is None,
             'SIGHUP without --config: the agent keeps serving', r)
        c.close()
    finally:
        a.stop()


if __name__ == '__main__':
    main()
