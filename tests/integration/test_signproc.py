#!/usr/bin/python3
"""Signing processes (--sign-processes N, issue 20): the agent's signatures
made by processes of its own, each with its own C_Initialize and login, on a
SoftHSM token seen through the fault module (tests/faultmod/), whose
`crash C_Sign` takes a signing process down in the middle of C_Sign.

Environment (tests/integration/meson.build): P11JWT_SRCDIR, P11JWT_BUILDDIR,
P11JWT_FAULTMOD. Prints TAP.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_agent import Agent, Conn, cli, run, t, AGENT, BUILD, MKTOKEN, MODULE  # noqa: E402
from test_faults import FAULTMOD, Fault, err_code, verify_jwt  # noqa: E402

SIGN_ARG = '--internal-sign-process'


def sign(conn, key='ec-p256', alg=None, sub='signproc'):
    req = {'op': 'sign', 'key': key, 'claims': {'sub': sub}}
    if alg:
        req['alg'] = alg
    return conn.req(req)


def status(sock):
    c = Conn(sock)
    try:
        return c.req({'op': 'status'})
    finally:
        c.close()


def procs(sock):
    """The first token's sign_processes entry of "status"."""
    st = status(sock)
    return (st.get('tokens') or [{}])[0].get('sign_processes')


def children(pid):
    """The agent's signing processes, from /proc (pid, cmdline)."""
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open(f'/proc/{d}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{d}/cmdline', 'rb') as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == pid:
            out.append((int(d), cmd))
    return sorted(out)


def wait_ok(conn, key='ec-p256', limit=15.0):
    deadline = time.time() + limit
    resp = None
    while time.time() < deadline:
        resp = sign(conn, key)
        if resp.get('ok'):
            return resp
        time.sleep(0.05)
    return resp


def wait_running(sock, n, limit=15.0):
    deadline = time.time() + limit
    p = None
    while time.time() < deadline:
        p = procs(sock)
        if p and p.get('running') == n:
            return p
        time.sleep(0.05)
    return p


def agent_env(fault, extra_env=None):
    env = fault.env()
    # a crash must reach the agent as the signal, not as ASan's report
    # (UBSan parses UBSAN_OPTIONS for the same common flags after ASan,
    # with handle_segv=1 by default: both must say it)
    for var in ('ASAN_OPTIONS', 'UBSAN_OPTIONS'):
        env[var] = (env.get(var, '') + ':handle_segv=0:handle_abort=0').lstrip(':')
    env.update(extra_env or {})
    return env


def start(tokdir, sock, fault, extra=(), env=None):
    return Agent(tokdir, sock, env=env or agent_env(fault),
                 extra=['--module', FAULTMOD, '--module-allow', os.path.dirname(FAULTMOD),
                        *extra])


def main():
    work = tempfile.mkdtemp(prefix='signproc-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    pin = open(os.path.join(tokdir, 'pin')).read().strip()
    sockdir = tempfile.mkdtemp(prefix='p11jwt-sp-', dir='/tmp')
    try:
        test_options(work)
        test_workers(work, tokdir, sockdir, pin)
        test_config(work, tokdir, sockdir, pin)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    t.done()


def test_options(work):
    for bad in ('0', '65', 'junk', '-1', ''):
        r = run([AGENT, '--foreground', '--sign-processes', bad])
        t.ok(r.returncode == 2 and '--sign-processes must be 1 to 64' in r.stderr,
             f'--sign-processes {bad!r}: exit 2, says 1 to 64', r.stderr)
    r = run([AGENT, '--help'])
    t.ok('--sign-processes N' in r.stdout, '--help lists --sign-processes')
    for val, ok in (('2', True), ('64', True), ('0', False), ('65', False), ('two', False)):
        path = os.path.join(work, f'sp-{val}.conf')
        with open(path, 'w') as f:
            f.write(f'[agent]\nworkers = 4\nsign_processes = {val}\n')
        r = run([AGENT, '--check-config', path])
        if ok:
            t.ok(r.returncode == 0, f'config sign_processes = {val}: valid', r.stderr)
        else:
            t.ok(r.returncode == 2 and f'{path}:3:' in r.stderr and 'sign_processes' in r.stderr,
                 f'config sign_processes = {val}: exit 2, FILE:LINE names it', r.stderr)
    path = os.path.join(work, 'sp-twice.conf')
    with open(path, 'w') as f:
        f.write('[agent]\nsign_processes = 2\nsign_processes = 3\n')
    r = run([AGENT, '--check-config', path])
    t.ok(r.returncode == 2 and f'{path}:3:' in r.stderr, 'sign_processes given twice: exit 2',
         r.stderr)


def test_workers(work, tokdir, sockdir, pin):
    fault = Fault(work)
    sock = os.path.join(sockdir, 'w', 'agent.sock')
    # the PIN in the agent's environment: the strongest case for "nowhere
    # in a child's environment"
    a = start(tokdir, sock, fault, extra=['--sign-processes', '2', '--workers', '4'],
              env=agent_env(fault, {'P11JWT_PIN': pin}))
    if not t.ok(a.ready, 'agent with --sign-processes 2 starts', None if a.ready else a.stderr()):
        a.stop()
        t.diag(a.stderr())
        return
    try:
        basics(a, sock, fault, pin)
        parallel(a, sock, fault)
        crash_under_load(a, sock, fault)
        crash_kinds(a, sock, fault)
        backoff(a, sock, fault)
        restart_failure(a, sock, fault)
        lock_login(a, sock, fault, pin)
        removal(a, sock, fault)
        rescan(a, sock, fault, tokdir, pin)
    finally:
        apid = a.proc.pid
        kids = [p for p, _ in children(apid)]
        rc = a.stop()
        err = a.stderr()
        t.eq(rc, 0, 'agent exits 0 after the signing-process tests')
        gone = all(not os.path.exists(f'/proc/{p}') for p in kids)
        t.ok(gone, 'its signing processes are gone with it', kids)
        t.ok(pin not in err, 'no PIN in the agent log')
        if t.failed:
            t.diag(err[-6000:])


def basics(a, sock, fault, pin):
    apid = a.proc.pid
    p = procs(sock)
    t.ok(p and p.get('count') == 2 and p.get('running') == 2 and len(set(p.get('pids', []))) == 2
         and p.get('restarts') == 0 and p.get('crashes') == 0,
         'status: 2 signing processes running, none restarted', p)
    kids = children(apid)
    t.ok(sorted(k for k, _ in kids) == sorted(p.get('pids', [])) and
         all(cmd == b'p11jwt-agent\0' + SIGN_ARG.encode() + b'\0' for _, cmd in kids),
         'they are the agent\'s children, argv "p11jwt-agent --internal-sign-process"', kids)
    # each process logged in by itself: C_Initialize and C_Login once each,
    # plus the agent's own
    t.ok(fault.count('C_Initialize') >= 3 and fault.count('C_Login 1 rv=0x0') >= 3,
         'three C_Initialize and three C_Login (the agent and 2 processes)',
         [line for line in fault.lines() if line.startswith(('C_Initialize', 'C_Login'))])
    # the PIN: not in any argv or environment
    found = []
    for pid in [apid] + [k for k, _ in kids]:
        for what in ('cmdline', 'environ'):
            try:
                with open(f'/proc/{pid}/{what}', 'rb') as f:
                    data = f.read()
            except OSError as e:
                found.append((pid, what, f'unreadable: {e}'))
                continue
            if pin.encode() in data:
                found.append((pid, what, 'PIN'))
            if what == 'environ' and pid != apid and b'P11JWT_PIN=' in data:
                found.append((pid, what, 'P11JWT_PIN'))
    t.ok(not found, 'the PIN is in no /proc/PID/cmdline or environ (agent and processes)', found)
    c = Conn(sock)
    for key, alg in (('rsa-2048', 'RS256'), ('rsa-2048', 'PS256'), ('ec-p256', 'ES256'),
                     ('ec-p384', 'ES384'), ('ed25519', 'EdDSA'), ('rsa-2048', 'PS512')):
        before = fault.count('C_Sign ')
        r = sign(c, key, alg)
        t.ok(r.get('ok') and r.get('alg') == alg and verify_jwt(sock, r, key) and
             fault.count('C_Sign ') == before + 1,
             f'{alg} with {key} through a signing process: PyJWT verifies it', r)
    c.close()
    st = status(sock)['tokens'][0]
    t.ok(st.get('signatures', 0) >= 6 and st.get('module_cpu_samples', -1) >= 0,
         'status counts the signatures made in the processes', st)
    # the JWKS the agent publishes comes from its own context; the OpenSSL
    # command line checks signatures of the processes against it
    for key, alg in (('ec-p256', 'ES256'), ('rsa-2048', 'RS256'), ('rsa-2048', 'PS256')):
        ok, why = openssl_verify(sock, key, alg)
        t.ok(ok, f'openssl dgst -verify accepts a {alg} JWT signed by a process', why)


def openssl_verify(sock, key, alg):
    import base64
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    import jwt as pyjwt

    def unb64(x):
        return base64.urlsafe_b64decode(x + '=' * (-len(x) % 4))
    r = cli('sign', '--key', key, '--alg', alg, '--claim', 'sub=ossl', sock=sock)
    j = cli('jwks', '--key', key, sock=sock)
    if r.returncode != 0 or j.returncode != 0:
        return False, (r.stderr, j.stderr)
    head, body, sig = r.stdout.strip().split('.')
    pub = pyjwt.PyJWK(json.loads(j.stdout)['keys'][0]).key
    d = tempfile.mkdtemp(prefix='ossl-', dir=os.path.join(BUILD, 'tests'))
    try:
        with open(os.path.join(d, 'pub.pem'), 'wb') as f:
            f.write(pub.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo))
        with open(os.path.join(d, 'in'), 'wb') as f:
            f.write(f'{head}.{body}'.encode())
        raw = unb64(sig)
        if alg.startswith('ES'):
            n = len(raw) // 2
            raw = encode_dss_signature(int.from_bytes(raw[:n], 'big'),
                                       int.from_bytes(raw[n:], 'big'))
        with open(os.path.join(d, 'sig'), 'wb') as f:
            f.write(raw)
        args = ['openssl', 'dgst', '-sha256', '-verify', os.path.join(d, 'pub.pem'),
                '-signature', os.path.join(d, 'sig')]
        if alg.startswith('PS'):
            args += ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32']
        v = run(args + [os.path.join(d, 'in')])
        return v.returncode == 0 and 'Verified OK' in v.stdout, v.stdout + v.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def parallel(a, sock, fault):
    # at 2 clients, the 2 processes sign at once: two 600 ms C_Signs take
    # 600 ms, not 1.2 s
    fault.set('delay C_Sign 600ms')
    conns = [Conn(sock), Conn(sock)]
    res = [None, None]

    def one(i):
        res[i] = sign(conns[i])
    t0 = time.monotonic()
    th = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for x in th:
        x.start()
    for x in th:
        x.join()
    took = time.monotonic() - t0
    fault.set('')
    t.ok(all(r and r.get('ok') for r in res) and took < 1.1,
         f'2 clients, 2 processes: two 600 ms signatures in {took:.2f} s (in parallel)', res)
    for c in conns:
        c.close()


def load(sock, nclients, seconds, key='ec-p256', start_evt=None):
    """nclients threads signing one request at a time on their own
    connection for `seconds`; returns per-client lists of answers."""
    out = [[] for _ in range(nclients)]
    stop = time.monotonic() + seconds

    def client(i):
        c = Conn(sock)
        if start_evt:
            start_evt.wait()
        while time.monotonic() < stop:
            try:
                out[i].append(sign(c, key, sub=f'load-{i}'))
            except Exception as e:  # noqa: BLE001
                out[i].append({'ok': False, 'exception': repr(e)})
                break
        c.close()
    th = [threading.Thread(target=client, args=(i,)) for i in range(nclients)]
    for x in th:
        x.start()
    return th, out


def crash_under_load(a, sock, fault):
    apid = a.proc.pid
    before = procs(sock)
    old = set(before.get('pids', []))
    th, out = load(sock, 4, 2.0)
    time.sleep(0.5)
    fault.set('crash C_Sign 1')  # the next C_Sign, in whichever process
    for x in th:
        x.join()
    answers = [r for lst in out for r in lst]
    bad = [r for r in answers if not r.get('ok')]
    t.ok(len(answers) > 100, f'4 clients made {len(answers)} requests over 2 s')
    t.eq(len(bad), 1, 'a signing process crashing in C_Sign under load fails exactly one request')
    msg = (bad[0].get('error') or {}).get('message', '') if bad else ''
    m = re.search(r'signing process (\d+) .*killed by signal 11 \(SIGSEGV', msg)
    t.ok(bad and err_code(bad[0]) == 'token_unavailable' and m and int(m.group(1)) in old,
         'it fails with token_unavailable, naming the process, its pid and SIGSEGV', bad)
    t.ok(all('exception' not in r for r in answers),
         'no client connection was closed (each went on with the next request)',
         [r for r in answers if 'exception' in r][:3])
    after = wait_running(sock, 2)
    new = set(after.get('pids', [])) if after else set()
    t.ok(after and len(new) == 2 and len(old & new) == 1 and
         (m is None or int(m.group(1)) not in new),
         'the crashed process is replaced (one new pid), the other kept', (before, after))
    t.ok(after and after.get('restarts') == 1 and after.get('crashes') == 1,
         'status counts 1 restart and 1 crash', after)
    t.ok(a.proc.poll() is None and a.proc.pid == apid and
         sorted(k for k, _ in children(apid)) == sorted(new),
         'the agent itself keeps running (same pid), its children are the 2 processes')
    c = Conn(sock)
    r = sign(c)
    t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'), 'the next request signs', r)
    c.close()


def crash_kinds(a, sock, fault):
    c = Conn(sock)
    for mode, sig, name in (('abort', 6, 'SIGABRT'), ('kill', 9, 'SIGKILL')):
        wait_running(sock, 2)
        time.sleep(0.05)
        fault.set(f'crash C_Sign 1 {mode}')
        r = sign(c)
        msg = (r.get('error') or {}).get('message', '')
        t.ok(err_code(r) == 'token_unavailable' and
             re.search(rf'signing process \d+ .*killed by signal {sig} \({name}', msg),
             f'crash by {mode}: token_unavailable naming signal {sig} ({name})', r)
        fault.set('')
        r = wait_ok(c)
        t.ok(r.get('ok'), f'after the {mode} crash the same connection signs again', r)
    c.close()


def backoff(a, sock, fault):
    # a module that crashes at every C_Sign: the processes are started
    # again ever more slowly, not in a loop, and the agent stays up
    wait_running(sock, 2)
    p0 = procs(sock)
    fault.set('crash C_Sign 0')
    c = Conn(sock)
    codes, t0 = [], time.monotonic()
    while time.monotonic() - t0 < 3.0:
        r = sign(c)
        codes.append(err_code(r))
        time.sleep(0.01)
    p1 = procs(sock)
    fault.set('')
    restarts = p1['restarts'] - p0['restarts']
    t.ok(all(x == 'token_unavailable' for x in codes) and len(codes) > 50,
         f'crashing at every C_Sign: {len(codes)} requests in 3 s, all token_unavailable, '
         'answered at once', codes[:5])
    t.ok(2 <= restarts <= 12, f'{restarts} processes started in 3 s (back-off: 100, 200, '
         '400, 800 ms ...), not hundreds', (p0, p1))
    fast = [r for r in [sign(c)] if not r.get('ok')]
    msg = (fast[0].get('error') or {}).get('message', '') if fast else ''
    t.ok(not fast or 'no signing process' in msg or 'signing process' in msg,
         'meanwhile a request says no signing process runs and when the next starts', msg)
    r = wait_ok(c, limit=20)
    t.ok(r.get('ok'), 'once the module behaves, signing works again (after the back-off)', r)
    t.ok(a.proc.poll() is None, 'the agent survived every crash')
    c.close()


def lock_login(a, sock, fault, pin):
    wait_running(sock, 2)
    p0 = procs(sock)
    logouts = fault.count('C_Logout')
    r = cli('lock', sock=sock)
    t.ok(r.returncode == 0, 'p11jwt lock', r.stderr)
    t.ok(fault.count('C_Logout') - logouts >= 3,
         'lock: the agent and both processes C_Logout', fault.count('C_Logout') - logouts)
    c = Conn(sock)
    signs = fault.count('C_Sign ')
    r = sign(c)
    t.ok(err_code(r) == 'pin_required' and fault.count('C_Sign ') == signs,
         'locked: sign answers pin_required and no process calls C_Sign', r)
    logins = fault.count('C_Login 1 rv=0x0')
    r = cli('login', sock=sock, input=pin + '\n')
    t.ok(r.returncode == 0, 'p11jwt login', r.stderr)
    t.eq(fault.count('C_Login 1 rv=0x0') - logins, 3,
         'login: the PIN reaches both processes (3 successful C_Login)')
    r = sign(c)
    t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'), 'after login, the processes sign', r)
    p1 = procs(sock)
    t.ok(p1.get('pids') == p0.get('pids'), 'lock and login kept the same processes', (p0, p1))
    c.close()


def removal(a, sock, fault):
    c = Conn(sock)
    wait_ok(c)
    fault.set('removed on')
    r = sign(c)
    t.eq(err_code(r), 'token_unavailable', 'token removed: token_unavailable')
    st = status(sock)
    t.eq(st['tokens'][0]['state'], 'unavailable', 'status: the agent\'s token is unavailable too')
    time.sleep(0.3)
    fault.set('removed off')
    r = wait_ok(c, limit=10)
    t.ok(r.get('ok') and verify_jwt(sock, r, 'ec-p256'),
         'token back: the agent and its processes recover and sign', r)
    t.ok(status(sock)['tokens'][0]['state'] == 'ready', 'status: ready again')
    c.close()


def rescan(a, sock, fault, tokdir, pin):
    # a key made while the agent runs: the agent rescans for the unknown
    # name, the process (which never listed it) finds it by CKA_ID and name
    r = run(['pkcs11-tool', '--module', MODULE, '--token-label', 'p11jwt-test', '--login',
             '--pin', 'env:P11JWT_TEST_PIN', '--keypairgen', '--key-type', 'EC:prime256v1',
             '--label', 'sp-new', '--id', '5e', '--usage-sign'],
            env=dict(os.environ, P11JWT_TEST_PIN=pin))
    t.ok(r.returncode == 0, 'pkcs11-tool makes a new key while the agent runs',
         r.stdout + r.stderr)
    c = Conn(sock)
    r = sign(c, 'sp-new')
    t.ok(r.get('ok') and verify_jwt(sock, r, 'sp-new'),
         'the new key signs through a signing process (rescan)', r)
    for _ in range(4):
        r = sign(c, 'sp-new')
    t.ok(r.get('ok'), 'and again, on whichever process', r)
    c.close()


def test_config(work, tokdir, sockdir, pin):
    fault = Fault(work)
    sock = os.path.join(sockdir, 'c', 'agent.sock')
    path = os.path.join(work, 'agent.conf')
    with open(path, 'w') as f:
        f.write('[agent]\nsign_processes = 3\n')
    a = start(tokdir, sock, fault, extra=['--config', path, '--pin-file',
                                          os.path.join(tokdir, 'pin')])
    ok = a.ready
    p = procs(sock) if ok else None
    r = cli('sign', '--key', 'ed25519', sock=sock) if ok else None
    a.stop()
    t.ok(ok and p and p.get('count') == 3 and p.get('running') == 3 and r.returncode == 0,
         'sign_processes = 3 in [agent]: 3 processes, they sign', (p, a.stderr()[-2000:]))
    # without the option: no processes, no status entry
    a = start(tokdir, sock, fault, extra=['--pin-file', os.path.join(tokdir, 'pin')])
    p = procs(sock) if a.ready else 'not started'
    kids = children(a.proc.pid)
    a.stop()
    t.ok(p is None and not kids, 'without --sign-processes: no process, no status entry', (p, kids))


def restart_failure(a, sock, fault):
    # a process killed from outside whose successor cannot log in (the
    # module crashes in C_Login): the other process goes on serving alone
    wait_running(sock, 2)
    p0 = procs(sock)
    fault.set('crash C_Login 0')
    os.kill(p0['pids'][0], 9)
    # once the agent has seen it go (a request sent to it before that
    # would fail with it, as one in flight)
    deadline = time.time() + 5
    while time.time() < deadline and p0['pids'][0] in (procs(sock) or {}).get('pids', []):
        time.sleep(0.01)
    c = Conn(sock)
    res = [sign(c) for _ in range(100)]
    p1 = procs(sock)
    t.ok(all(r.get('ok') for r in res), 'while one process fails to start, 100 requests sign on '
         'the other', [r for r in res if not r.get('ok')][:2])
    t.ok(p1 and p1.get('running') == 1 and p0['pids'][1] in p1.get('pids', []),
         'status: 1 running, the survivor', p1)
    fault.set('')
    p2 = wait_running(sock, 2, limit=20)
    t.ok(p2 and p2.get('running') == 2, 'once C_Login works again, 2 run again', p2)
    c.close()


if __name__ == '__main__':
    main()
