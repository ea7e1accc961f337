#!/usr/bin/python3
"""PIN lifecycle and fault recovery of the agent, on a SoftHSM token seen
through the fault-injecting module (tests/faultmod/) and through
`p11-kit server` + p11-kit-client.so.

Environment (tests/integration/meson.build): P11JWT_SRCDIR, P11JWT_BUILDDIR,
P11JWT_FAULTMOD. Prints TAP.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_agent import Agent, Conn, cli, run, t, BUILD, CLI, MKTOKEN, MODULE  # noqa: E402

import jwt as pyjwt  # noqa: E402  (Debian python3-jwt)

FAULTMOD = os.environ.get('P11JWT_FAULTMOD') or os.path.join(
    BUILD, 'tests', 'faultmod', 'libp11jfault.so')
CLIENT_MOD = '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so'

CKU_USER, CKU_CONTEXT_SPECIFIC = 1, 2


class Fault:
    """The fault module's control file and call log."""

    def __init__(self, work):
        self.ctl = os.path.join(work, 'fault.ctl')
        self.log = os.path.join(work, 'fault.log')
        self.gen = 0
        self.set('')
        open(self.log, 'w').close()

    def set(self, text):
        # mtime granularity is fine, but make each version differ in size too
        self.gen += 1
        with open(self.ctl + '.new', 'w') as f:
            f.write(text + '\n' + '#' * (self.gen % 7) + '\n')
        os.replace(self.ctl + '.new', self.ctl)

    def lines(self):
        with open(self.log) as f:
            return f.read().splitlines()

    def count(self, prefix):
        return sum(1 for line in self.lines() if line.startswith(prefix))

    def env(self, base=None):
        e = dict(base or os.environ)
        e.pop('P11JWT_PIN', None)
        e.pop('CREDENTIALS_DIRECTORY', None)
        e.update(P11JWT_FAULT_CTL=self.ctl, P11JWT_FAULT_LOG=self.log)
        return e


def err_code(resp):
    return (resp.get('error') or {}).get('code')


def sign(conn, key='ec-p256'):
    return conn.req({'op': 'sign', 'key': key, 'claims': {'sub': 'fault-test'}})


def verify_jwt(sock, resp, key):
    """Check a sign response's JWT with PyJWT against the agent's JWKS."""
    r = cli('jwks', '--key', key, sock=sock)
    if r.returncode != 0 or not resp.get('ok'):
        return False
    jwk = json.loads(r.stdout)['keys'][0]
    try:
        pk = pyjwt.PyJWK(jwk).key
        pyjwt.decode(resp['jwt'], pk, algorithms=[resp['alg']],
                     options={'verify_aud': False})
        return True
    except Exception as e:  # noqa: BLE001
        t.diag(f'verify failed: {e!r}')
        return False


def wait_ok(conn, key='ec-p256', limit=5.0):
    deadline = time.time() + limit
    resp = None
    while time.time() < deadline:
        resp = sign(conn, key)
        if resp.get('ok'):
            return resp
        time.sleep(0.1)
    return resp


def main():
    work = tempfile.mkdtemp(prefix='faults-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    pin = open(os.path.join(tokdir, 'pin')).read().strip()
    # a key that needs the PIN for every signature, made by SoftHSM itself
    r = run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test', '--login',
             '--pin', 'env:P11JWT_TEST_PIN', '--keypairgen', '--key-type', 'EC:prime256v1',
             '--label', 'always-auth', '--id', '0a', '--usage-sign', '--always-auth'],
            env=dict(os.environ, P11JWT_TEST_PIN=pin))
    t.ok(r.returncode == 0, 'pkcs11-tool makes a CKA_ALWAYS_AUTHENTICATE key on SoftHSM',
         r.stdout + r.stderr)
    sockdir = tempfile.mkdtemp(prefix='p11jwt-ft-', dir='/tmp')
    try:
        test_fault_module(work, tokdir, sockdir, pin)
        test_credentials(work, tokdir, sockdir, pin)
        test_pinpad(work, tokdir, sockdir, pin)
        test_session_limit_workers(work, tokdir, sockdir, pin)
        test_p11kit_server(work, tokdir, sockdir, pin)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    t.done()


def start_faulty(tokdir, sock, fault, extra=()):
    return Agent(tokdir, sock, env=fault.env(),
                 extra=['--module', FAULTMOD, '--module-allow', os.path.dirname(FAULTMOD),
                        *extra])


def test_fault_module(work, tokdir, sockdir, pin):
    fault = Fault(work)
    sock = os.path.join(sockdir, 'f', 'agent.sock')
    a = start_faulty(tokdir, sock, fault)
    if not t.ok(a.ready, 'agent without any PIN starts (locked) through the fault module',
                None if a.ready else a.stderr()):
        a.stop()
        return
    try:
        pin_lifecycle(a, sock, fault, pin)
        faults(a, sock, fault, pin)
        always_auth(a, sock, fault, pin)
        stalled_worker(a, sock, fault)
    finally:
        rc = a.stop()
        err = a.stderr()
        t.eq(rc, 0, 'agent exits 0 after the fault tests')
        t.ok(pin not in err and 'wrong-pin-1' not in err, 'no PIN in the agent log', err)
        t.ok('token_unavailable until the token is back' in err and "is back" in err,
             'the agent logs the loss and the return of the token', err)


def stalled_worker(a, sock, fault):
    # One request stuck in C_Sign (3 s here: a PIN pad, a slow remote HSM)
    # holds one signing thread; the other clients go on with the others.
    time.sleep(0.6)  # past any fault back-off from the tests before
    slow = Conn(sock)
    others = [Conn(sock) for _ in range(8)]
    t.ok(all(sign(c).get('ok') for c in others), '8 clients sign before the stall')
    fault.set('delay C_Sign 3000ms 1')
    t0 = time.monotonic()
    slow.send(b'{"op":"sign","key":"ec-p256","claims":{"sub":"slow"}}\n')
    time.sleep(0.15)  # the slow request is in C_Sign now
    lat = []
    for c in others:
        t1 = time.monotonic()
        r = sign(c)
        lat.append((time.monotonic() - t1, bool(r.get('ok'))))
    t.ok(all(ok for _, ok in lat), 'every other client is answered during the stall', lat)
    t.ok(max(d for d, _ in lat) < 1.0 and time.monotonic() - t0 < 2.5,
         'no other client waits for the stuck request (each answered within 1 s)',
         [round(d, 3) for d, _ in lat])
    r = slow.line()
    t.ok(r.get('ok') and time.monotonic() - t0 >= 3.0, 'the slow request is answered after it',
         r)
    fault.set('')
    for c in [slow] + others:
        c.close()


def pin_lifecycle(a, sock, fault, pin):
    c = Conn(sock)
    keys = c.req({'op': 'keys'})
    names = sorted(k['name'] for k in keys.get('keys', []))
    t.eq(names, ['always-auth', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519', 'rsa-2048'],
         'locked agent lists the keys from public objects')
    r = sign(c)
    t.eq(err_code(r), 'pin_required', 'locked agent: sign answers pin_required')
    r = cli('sign', '--key', 'rsa-2048', sock=sock)
    t.ok(r.returncode == 4 and 'pin_required' in r.stderr and 'p11jwt login' in r.stderr,
         'p11jwt sign on a locked agent: exit 4, pin_required, says how to log in', r.stderr)
    logins = fault.count(f'C_Login {CKU_USER} ')
    t.eq(logins, 0, 'no C_Login while no PIN is known')

    r = cli('login', sock=sock, input='wrong-pin-1\n')
    t.ok(r.returncode == 4 and 'pin_incorrect' in r.stderr, 'login with a wrong PIN: pin_incorrect',
         r.stderr)
    t.eq(fault.count(f'C_Login {CKU_USER} rv=0xa0'), 1, 'the wrong PIN went to the token once')
    r = cli('login', sock=sock, input='wrong-pin-1\n')
    t.ok(r.returncode == 4 and 'pin_incorrect' in r.stderr and 'already rejected' in r.stderr,
         'the same wrong PIN again: pin_incorrect', r.stderr)
    t.eq(fault.count(f'C_Login {CKU_USER} '), 1, '... without calling C_Login again')
    t.eq(err_code(sign(c)), 'pin_required', 'still locked after wrong PINs')

    r = cli('login', sock=sock, input=pin + '\n')
    t.ok(r.returncode == 0 and 'ready' in r.stderr, 'login with the right PIN (stdin)', r.stderr)
    r = sign(c)
    t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'),
         'after login, signing works on the connection opened while locked', r)
    r = cli('login', sock=sock, input=pin + '\n')
    t.eq(r.returncode, 0, 'login again with the same PIN: fine')
    r = cli('login', sock=sock, input='another-pin\n')
    t.ok(r.returncode == 4 and 'lock it first' in r.stderr,
         'login with another PIN while logged in is refused', r.stderr)
    t.ok(sign(c).get('ok'), '... and the agent stays logged in')

    outs = fault.count('C_Logout')
    r = cli('lock', sock=sock)
    t.ok(r.returncode == 0 and 'locked' in r.stderr, 'p11jwt lock', r.stderr)
    t.eq(fault.count('C_Logout') - outs, 1, 'lock calls C_Logout')
    t.eq(err_code(sign(c)), 'pin_required', 'after lock: pin_required')
    t.eq(err_code(c.req({'op': 'lock', 'token': 'pkcs11:token=other'})), 'bad_request',
         'lock naming another token: bad_request')
    t.eq(err_code(c.req({'op': 'login', 'pin': 12345})), 'bad_request',
         'login with a non-string pin: bad_request')
    t.eq(err_code(c.req({'op': 'login', 'pin': pin, 'pin2': 'x'})), 'bad_request',
         'login with an unknown field: bad_request')
    r = c.req({'id': 7, 'op': 'login', 'pin': pin, 'token': 'pkcs11:token=p11jwt-test'})
    t.ok(r.get('ok') and r.get('state') == 'ready' and r.get('token') == 'p11jwt-test'
         and r.get('id') == 7, 'login op over the socket, naming the token', r)
    t.ok(sign(c).get('ok'), 'signing works again after lock + login')

    # on a terminal: a prompt, and the PIN is not echoed
    t.eq(cli('lock', sock=sock).returncode, 0, 'lock before the terminal login')
    rc, out = login_on_tty(sock, pin)
    t.ok(rc == 0 and 'PIN' in out and pin not in out and 'ready' in out,
         'p11jwt login on a terminal: prompts, does not echo the PIN, logs in', out)
    t.ok(sign(c).get('ok'), 'signing works after the terminal login')
    c.close()


def login_on_tty(sock, pin):
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen([CLI, '--socket', sock, 'login'], stdin=slave, stdout=slave,
                         stderr=slave, close_fds=True, start_new_session=True)
    os.close(slave)
    out = b''
    deadline = time.time() + 10
    sent = False
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b'PIN' in out:
            os.write(master, pin.encode() + b'\n')
            sent = True
        if p.poll() is not None and not r:
            break
    os.close(master)
    return p.wait(timeout=10), out.decode(errors='replace')


def faults(a, sock, fault, pin):
    c = Conn(sock)
    t.ok(sign(c).get('ok'), 'signing works before the removal')
    logins = fault.count(f'C_Login {CKU_USER} rv=0x0')

    fault.set('removed on')
    times, codes = [], []
    for _ in range(5):
        t0 = time.monotonic()
        r = sign(c)
        times.append(time.monotonic() - t0)
        codes.append(err_code(r))
    t.eq(codes, ['token_unavailable'] * 5, 'token removed: every request gets token_unavailable')
    t.ok(max(times) < 1.0, f'... fast (slowest {max(times) * 1000:.0f} ms)', times)
    signs = fault.count('C_Sign ')
    for _ in range(5):
        sign(c)
    t.eq(fault.count('C_Sign ') - signs, 0, 'while removed, requests do not reach C_Sign')
    t.ok(c.req({'op': 'keys'}).get('ok'), 'keys still answers while the token is away')

    time.sleep(0.3)
    fault.set('removed off')
    r = wait_ok(c)
    t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'),
         'token back: signing works again on the same connection, no restart', r)
    t.ok(fault.count(f'C_Login {CKU_USER} rv=0x0') > logins,
         'the agent logged in again with the cached PIN')
    t.ok(wait_ok(c, 'rsa-2048').get('ok') and wait_ok(c, 'ed25519').get('ok'),
         'every key handle was found again')

    for rv, code in (('CKR_SESSION_HANDLE_INVALID', 'b3'), ('CKR_SESSION_CLOSED', 'b0'),
                     ('CKR_USER_NOT_LOGGED_IN', '101'), ('CKR_DEVICE_ERROR', '30')):
        time.sleep(0.6)  # out of the previous recovery's back-off
        fault.set(f'fail C_Sign {rv} 1')
        logins = fault.count(f'C_Login {CKU_USER} rv=0x0')
        r = sign(c)
        t.ok(r.get('ok') and fault.count(f'C_Sign 0 rv=0x{code}') >= 1,
             f'one {rv} from C_Sign: recovered and signed in the same request', r)
        t.ok(fault.count(f'C_Login {CKU_USER} rv=0x0') > logins,
             f'... after logging in again ({rv})')

    time.sleep(0.6)
    fault.set('fail C_Sign CKR_DEVICE_REMOVED 3')
    r = sign(c)
    t.eq(err_code(r), 'token_unavailable', 'repeated faults: token_unavailable')
    signs = fault.count('C_Sign ')
    t0 = time.monotonic()
    r2 = sign(c)
    t.ok(err_code(r2) == 'token_unavailable' and fault.count('C_Sign ') == signs
         and time.monotonic() - t0 < 0.4,
         'within the back-off, no recovery is tried and the answer is immediate', r2)
    r = wait_ok(c)
    t.ok(r.get('ok'), 'after the faults stop, signing works again', r)

    # the delay rule: a slow C_Sign is waited for, not treated as a fault
    time.sleep(0.6)
    fault.set('delay C_Sign 300ms')
    t0 = time.monotonic()
    r = sign(c)
    t.ok(r.get('ok') and time.monotonic() - t0 >= 0.3, 'delay rule: a slow C_Sign still signs')
    fault.set('')
    c.close()


def always_auth(a, sock, fault, pin):
    c = Conn(sock)
    # SoftHSM's own CKA_ALWAYS_AUTHENTICATE key
    ctx = fault.count(f'C_Login {CKU_CONTEXT_SPECIFIC} rv=0x0')
    rs = [sign(c, 'always-auth') for _ in range(3)]
    t.ok(all(r.get('ok') for r in rs) and verify_jwt(sock, rs[-1], 'always-auth'),
         'a CKA_ALWAYS_AUTHENTICATE key (SoftHSM) signs', rs)
    t.eq(fault.count(f'C_Login {CKU_CONTEXT_SPECIFIC} rv=0x0') - ctx, 3,
         '... with one context-specific login per signature')

    # the fault module's emulation on another key: found at the next login
    fault.set('always_auth ec-p384')
    t.eq(cli('lock', sock=sock).returncode, 0, 'lock (to pick up the emulated key)')
    t.eq(cli('login', sock=sock, input=pin + '\n').returncode, 0, 'login')
    ctx = fault.count(f'C_Login {CKU_CONTEXT_SPECIFIC} rv=0x0')
    nli = fault.count('C_Sign 0 rv=0x101')
    rs = [sign(c, 'ec-p384') for _ in range(2)]
    t.ok(all(r.get('ok') for r in rs) and verify_jwt(sock, rs[-1], 'ec-p384'),
         'emulated always-authenticate key signs', rs)
    t.eq(fault.count(f'C_Login {CKU_CONTEXT_SPECIFIC} rv=0x0') - ctx, 2,
         '... with a context login each time')
    t.eq(fault.count('C_Sign 0 rv=0x101') - nli, 0,
         '... and C_Sign never said USER_NOT_LOGGED_IN')
    t.ok(sign(c, 'ec-p256').get('ok'), 'other keys need no context login')
    fault.set('')
    c.close()


def test_credentials(work, tokdir, sockdir, pin):
    creds = os.path.join(work, 'creds')
    os.mkdir(creds, 0o700)
    with open(os.path.join(creds, 'pin'), 'w') as f:
        f.write(pin + '\n')
    os.chmod(os.path.join(creds, 'pin'), 0o400)
    sock = os.path.join(sockdir, 'c', 'agent.sock')
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds)
    env.pop('P11JWT_PIN', None)
    a = Agent(tokdir, sock, env=env)
    ok = a.ready
    r = cli('sign', '--key', 'ec-p256', sock=sock) if ok else None
    t.ok(ok and r.returncode == 0 and r.stdout.count('.') == 2,
         'PIN from $CREDENTIALS_DIRECTORY/pin: the agent starts logged in',
         a.stderr() if not ok else r.stderr)
    a.stop()


def test_pinpad(work, tokdir, sockdir, pin):
    """A token with a protected authentication path (PIN pad), emulated by
    the fault module: with no PIN configured the agent logs in with a NULL
    PIN, and never sends one."""
    fault = Fault(os.path.join(work))
    fault.set(f'pinpad {pin}')
    sock = os.path.join(sockdir, 'pp', 'agent.sock')
    a = start_faulty(tokdir, sock, fault)
    ok = a.ready
    r = cli('sign', '--key', 'ec-p256', sock=sock) if ok else None
    t.ok(ok and r.returncode == 0 and r.stdout.count('.') == 2,
         'PIN pad token: the agent logs in with a NULL PIN and signs',
         a.stderr() if not ok else r.stderr)
    logins = [line for line in fault.lines() if line.startswith('C_Login')]
    t.ok(logins and all('pinpad' in line for line in logins),
         'every login went through the PIN pad path (no PIN sent)', logins)
    a.stop()


def test_session_limit_workers(work, tokdir, sockdir, pin):
    """Without --workers, a token that names a session limit (a network
    HSM's 16) gets as many signing workers, so a slow HSM's sessions all
    work at once; a token naming none, or one session, keeps two per CPU;
    --workers wins. (The throughput it buys is a benchmark row,
    docs/performance.md "HSM latency".)"""
    ncpu = os.cpu_count() or 1
    base = 2 * ncpu if ncpu > 1 else 2
    pinfile = os.path.join(work, 'pin-workers')
    with open(os.open(pinfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'w') as f:
        f.write(pin + '\n')
    for ctl, extra, want in ((f'max_sessions {base + 14}', [], base + 14),
                             ('max_sessions 1', [], None),
                             ('', [], None),
                             (f'max_sessions {base + 14}', ['--workers', '3'], None)):
        fault = Fault(os.path.join(work))
        fault.set(ctl)
        sock = os.path.join(sockdir, 'w', 'agent.sock')
        a = start_faulty(tokdir, sock, fault, extra=['--pin-file', pinfile, *extra])
        ok = a.ready
        r = cli('sign', '--key', 'ec-p256', sock=sock) if ok else None
        a.stop()
        err = a.stderr()
        said = [line for line in err.splitlines() if 'signing workers' in line]
        what = f'{ctl or "no session limit"}{" " + " ".join(extra) if extra else ""}'
        if want is None:
            t.ok(ok and r.returncode == 0 and not said,
                 f'{what}: the default workers (no session-sized line), signs', err)
        else:
            t.ok(ok and r.returncode == 0 and len(said) == 1 and
                 said[0].split('info: ', 1)[-1].startswith(f'{want} signing workers'),
                 f'{what}: {want} signing workers, said once; signs', err)


def test_p11kit_server(work, tokdir, sockdir, pin):
    if not os.path.exists(CLIENT_MOD) or shutil.which('p11-kit') is None:
        t.skip('p11-kit server: agent recovers after a server restart', 'no p11-kit-client.so')
        return
    srv_sock = os.path.join(sockdir, 'p11kit.sock')
    token = 'pkcs11:token=p11jwt-test'

    def server():
        p = subprocess.Popen(['p11-kit', 'server', '-f', '-n', srv_sock, '--provider', MODULE,
                              token], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline and not os.path.exists(srv_sock):
            time.sleep(0.05)
        return p

    def kill(p):
        # the server forks a p11-kit-remote per client: stop them all
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()

    srv = server()
    env = dict(os.environ, P11_KIT_SERVER_ADDRESS=f'unix:path={srv_sock}')
    sock = os.path.join(sockdir, 'p', 'agent.sock')
    a = Agent(tokdir, sock, env=env, extra=['--module', CLIENT_MOD, '--pin-file',
                                            os.path.join(tokdir, 'pin')])
    if not t.ok(a.ready, 'agent on p11-kit-client.so starts', None if a.ready else a.stderr()):
        kill(srv)
        a.stop()
        return
    try:
        c = Conn(sock)
        r = sign(c)
        t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'), 'signing through p11-kit server', r)
        kill(srv)
        times, codes = [], []
        for _ in range(4):
            t0 = time.monotonic()
            codes.append(err_code(sign(c)))
            times.append(time.monotonic() - t0)
            time.sleep(0.2)
        t.eq(codes, ['token_unavailable'] * 4, 'server killed: token_unavailable')
        t.ok(max(times) < 1.0, f'... fast (slowest {max(times) * 1000:.0f} ms)', times)
        srv = server()
        r = wait_ok(c, limit=8)
        t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'),
             'server restarted on the same socket: signing works on the same connection', r)
        t.ok(wait_ok(c, 'rsa-2048').get('ok'), '... with every key')
        c.close()
    finally:
        a.stop()
        err = a.stderr()
        kill(srv)
    t.ok('initialising the PKCS#11 module again' in err, 'the agent re-initialised the client '
         'module', err)


if __name__ == '__main__':
    main()
