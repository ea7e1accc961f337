#!/usr/bin/python3
"""Operations: the audit trail (file destination, fields, no JWT, mode 0600,
fail-closed), `p11jwt status` counters, systemd socket activation and
readiness notification (without systemd: LISTEN_FDS/LISTEN_PID and a
NOTIFY_SOCKET set up here, and systemd-socket-activate when installed), the
unit files (systemd-analyze verify), and the agent under a
MemoryDenyWriteExecute-like restriction (PR_SET_MDWE).

Environment (set by tests/integration/meson.build): P11JWT_SRCDIR,
P11JWT_BUILDDIR. Prints TAP.
"""
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tap import Tap  # noqa: E402
from test_agent import (AGENT, BUILD, CLI, MKTOKEN, MODULE, SRC, TOKEN_URI,  # noqa: E402
                        run)

t = Tap()


def agent_args(tokdir, sock, extra=()):
    return [AGENT, '--foreground', '--module', MODULE, '--token', TOKEN_URI,
            '--pin-file', os.path.join(tokdir, 'pin'), '--socket', sock, *extra]


def wait_socket(path, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            s.close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(15)
        self.s.connect(path)
        self.buf = b''

    def req(self, obj):
        self.s.sendall(json.dumps(obj).encode() + b'\n')
        while b'\n' not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError('connection closed')
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b'\n')
        return json.loads(line)

    def close(self):
        self.s.close()


def status(sock):
    r = run([CLI, '--socket', sock, 'status', '--json'])
    return json.loads(r.stdout) if r.returncode == 0 else {'_rc': r.returncode, '_err': r.stderr}


def settled_status(sock, want, tries=40):
    """status until it shows want open connections: a client that has just
    closed is counted until its thread has seen the close (each connection
    belongs to one of several threads). Returns it and the calls made."""
    for calls in range(1, tries + 1):
        st = status(sock)
        if st.get('connections') == want:
            break
        time.sleep(0.05)
    return st, calls


def main():
    if os.path.exists('/usr/lib/softhsm/libsofthsm2.so') is False:
        t.skip('operations', 'SoftHSM2 missing')
        t.done()
    work = tempfile.mkdtemp(prefix='ops-', dir=os.path.join(BUILD, 'tests'))
    tokdir = os.path.join(work, 'token')
    r = run([MKTOKEN, tokdir], timeout=180)
    if not t.ok(r.returncode == 0, 'mktoken makes the test token', r.stdout + r.stderr):
        t.done()
    os.environ['SOFTHSM2_CONF'] = os.path.join(tokdir, 'softhsm2.conf')
    sockdir = tempfile.mkdtemp(prefix='p11jwt-ops-', dir='/tmp')
    for fn in (test_audit_and_status, test_audit_rotation_and_locked, test_audit_fail_closed,
               test_socket_activation,
               test_socket_activate_tool, test_units, test_mdwe):
        try:
            fn(tokdir, sockdir, work)
        except Exception as e:  # noqa: BLE001 - report, do not crash
            import traceback
            t.ok(False, f'{fn.__name__} raised {e!r}', traceback.format_exc())
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(sockdir, ignore_errors=True)
    t.done()


def read_audit(path):
    with open(path) as f:
        text = f.read()
    return text, [json.loads(line) for line in text.splitlines()]


def test_audit_and_status(tokdir, sockdir, work):
    sock = os.path.join(sockdir, 'a', 'agent.sock')
    audit = os.path.join(work, 'audit', 'audit.log')
    os.makedirs(os.path.dirname(audit), mode=0o700)
    proc = subprocess.Popen(agent_args(tokdir, sock, ['--audit', 'file:' + audit]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if not t.ok(wait_socket(sock, proc), 'agent with --audit file:PATH starts',
                    proc.stderr.read() if proc.poll() is not None else None):
            return
        t.eq(stat.S_IMODE(os.stat(audit).st_mode), 0o600, 'audit file is created mode 0600')
        st0, _ = settled_status(sock, 1)
        t.ok('_rc' not in st0, 'p11jwt status --json answers', st0)
        t.eq(st0.get('version'), run([AGENT, '--version']).stdout.split()[-1],
             'status: the agent version')
        t.eq(st0.get('keys'), 5, 'status: 5 keys')
        t.eq([(x.get('label'), x.get('state'), x.get('present'), x.get('logged_in'))
              for x in st0.get('tokens', [])], [('p11jwt-test', 'ready', True, True)],
             'status: the token, ready, present and logged in')
        t.ok(isinstance(st0.get('uptime'), int) and 0 <= st0['uptime'] < 60,
             'status: uptime in seconds', st0.get('uptime'))
        t.eq(st0.get('connections'), 1, 'status: one connection open (the asking one)')

        c = Conn(sock)
        ok = c.req({'op': 'sign', 'key': 'ec-p256',
                    'claims': {'iss': 'client-1', 'sub': 'user-1',
                               'aud': ['https://a.example/token', 'b']}})
        t.ok(ok.get('ok') is True, 'a signature is made', ok)
        e1 = c.req({'op': 'sign', 'key': 'no-such-key', 'claims': {'iss': 'x'}})
        e2 = c.req({'op': 'sign', 'key': 'ec-p256', 'alg': 'RS256'})
        e3 = c.req({'op': 'sign', 'key': 'no-such-key'})
        for _ in range(10):
            c.req({'op': 'hello'})
        c.req({'op': 'keys'})
        st1, n1 = settled_status(sock, 2)
        t.eq(st1.get('connections'), 2, 'status: two connections open')
        c.close()
        t.eq((e1['error']['code'], e2['error']['code'], e3['error']['code']),
             ('unknown_key', 'unsupported_alg', 'unknown_key'), 'refused requests')
        # the status call of st0 was answered before st1: it counts too, as
        # do the calls before st1 while a closed connection was still counted
        t.eq(st1.get('requests', 0) - st0.get('requests', 0), 15 + n1,
             'status: requests move by the 15 requests sent and the status calls')
        t.eq(st1.get('errors', {}).get('unknown_key', 0) - st0.get('errors', {}).get('unknown_key', 0),
             2, 'status: unknown_key errors counted')
        t.eq(st1.get('errors', {}).get('unsupported_alg', 0), 1,
             'status: unsupported_alg errors counted')
        t.ok(st1.get('connections_accepted', 0) >= 3, 'status: connections accepted counted',
             st1)
        r = run([CLI, '--socket', sock, 'status'])
        t.ok(r.returncode == 0 and re.search(r'^requests\s+\d+$', r.stdout, re.M) and
             'unknown_key 2' in r.stdout and 'p11jwt-test: ready (logged in)' in r.stdout,
             'p11jwt status prints requests, errors by code and the token', r.stdout + r.stderr)

        text, lines = read_audit(audit)
        t.eq(len(lines), 4, 'one audit line per sign request, none for hello/keys/status')
        t.ok('eyJ' not in text and ok['jwt'] not in text and ok['jwt'].split('.')[2] not in text,
             'no JWT or signature in the audit file')
        a = lines[0]
        t.eq(list(a.keys()), ['time', 'uid', 'gid', 'pid', 'op', 'key', 'alg', 'kid', 'iss',
                              'sub', 'aud', 'jti', 'exp', 'result'],
             'audit line members, in order')
        t.ok(re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z', a['time']) is not None,
             'audit time is RFC 3339 UTC with milliseconds', a['time'])
        t.eq((a['uid'], a['gid'], a['pid']), (os.getuid(), os.getgid(), os.getpid()),
             'audit: the peer uid, gid and pid')
        t.eq((a['op'], a['key'], a['alg'], a['kid'], a['iss'], a['sub'], a['aud'], a['jti'],
              a['exp'], a['result']),
             ('sign', 'ec-p256', 'ES256', ok['kid'], 'client-1', 'user-1',
              ['https://a.example/token', 'b'], ok['jti'], ok['exp'], 'ok'),
             'audit: what was signed, as in the answer')
        t.eq([(x['key'], x.get('alg'), x['result']) for x in lines[1:]],
             [('no-such-key', None, 'unknown_key'), ('ec-p256', 'RS256', 'unsupported_alg'),
              ('no-such-key', None, 'unknown_key')], 'audit: refused requests with their codes')
        t.eq(lines[2].get('kid'), ok['kid'], 'audit: a refused request on a known key has its kid')
        tk0, tk1 = st0['tokens'][0], st1['tokens'][0]
        t.eq(tk1.get('signatures', 0) - tk0.get('signatures', 0), 1,
             'status: the token counts the one signature made')
        c = Conn(sock)
        for _ in range(99):
            c.req({'op': 'sign', 'key': 'ec-p256', 'claims': {'iss': 'client-1'}})
        c.close()
        st2, _ = settled_status(sock, 1)
        tk2 = st2['tokens'][0]
        t.eq(tk2.get('signatures', 0) - tk0.get('signatures', 0), 100,
             'status: 100 signatures counted')
        t.ok(tk2.get('module_cpu_samples', 0) >= 2 and tk2.get('module_cpu_sampled_ns', 0) > 0 and
             abs(tk2['module_cpu_us'] - tk2['module_cpu_sampled_ns'] /
                 tk2['module_cpu_samples'] / 1000) < 0.01 and 1 < tk2['module_cpu_us'] < 100000,
             'status: the module CPU of a signature, sampled every 16th (100 on up to 4 '
             'threads: at least 2 samples) and their mean', tk2)

        # forbidden: another uid (needs root and setpriv)
        if os.geteuid() == 0 and shutil.which('setpriv'):
            os.chmod(sockdir, 0o711)
            os.chmod(os.path.dirname(sock), 0o711)
            os.chmod(sock, 0o666)
            code = ('import socket,json;s=socket.socket(socket.AF_UNIX);s.connect(%r);'
                    's.sendall(b\'{"op":"sign","key":"ec-p256"}\\n{"op":"status"}\\n\');'
                    'f=s.makefile();print(f.readline().strip());print(f.readline().strip())'
                    % sock)
            r = run(['setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups',
                     '/usr/bin/python3', '-c', code])
            os.chmod(sock, 0o600)
            os.chmod(os.path.dirname(sock), 0o700)
            answers = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
            t.eq([x.get('error', {}).get('code') for x in answers], ['forbidden', 'forbidden'],
                 'another uid gets forbidden for sign and status')
            _, lines = read_audit(audit)
            t.eq((lines[-1]['result'], lines[-1]['uid'], lines[-1]['key']),
                 ('forbidden', 65534, 'ec-p256'), 'audit: the forbidden attempt with its uid')
        else:
            t.skip('another uid gets forbidden for sign and status', 'needs root and setpriv')
            t.skip('audit: the forbidden attempt with its uid', 'needs root and setpriv')
    finally:
        t.eq(stop(proc), 0, 'agent with audit exits 0')


def test_audit_rotation_and_locked(tokdir, sockdir, work):
    """No PIN: the agent starts locked; status says so, a sign attempt is
    audited as pin_required, a login is audited without the PIN. SIGHUP
    reopens the audit file after it was renamed (log rotation)."""
    sock = os.path.join(sockdir, 'l', 'agent.sock')
    audit = os.path.join(work, 'audit-rot.log')
    pin = open(os.path.join(tokdir, 'pin')).read().strip()
    env = {k: v for k, v in os.environ.items() if k != 'P11JWT_PIN'}
    proc = subprocess.Popen([AGENT, '--foreground', '--module', MODULE, '--token', TOKEN_URI,
                             '--socket', sock, '--audit', 'file:' + audit],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        if not t.ok(wait_socket(sock, proc), 'agent without a PIN starts (locked)'):
            return
        st = status(sock)
        t.eq([(x.get('state'), x.get('present'), x.get('logged_in')) for x in st.get('tokens', [])],
             [('locked', True, False)], 'status: the token is locked, present, not logged in')
        c = Conn(sock)
        a = c.req({'op': 'sign', 'key': 'ec-p256'})
        t.eq(a.get('error', {}).get('code'), 'pin_required', 'signing while locked: pin_required')
        os.rename(audit, audit + '.1')
        os.kill(proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        b = c.req({'op': 'login', 'pin': pin})
        d = c.req({'op': 'sign', 'key': 'ec-p256'})
        c.close()
        t.ok(b.get('ok') and d.get('ok'), 'login, then a signature', [b, d])
        st = status(sock)
        t.eq(st.get('errors', {}).get('pin_required'), 1, 'status: pin_required counted')
        t.eq([(x.get('state'), x.get('logged_in')) for x in st.get('tokens', [])],
             [('ready', True)], 'status: ready and logged in after login')
        t.ok(proc.poll() is None, 'the agent runs on after SIGHUP')
        _, old = read_audit(audit + '.1')
        text, new = read_audit(audit)
        t.eq([(x['op'], x['result']) for x in old], [('sign', 'pin_required')],
             'audit before rotation: the refused sign')
        t.eq([(x['op'], x['result']) for x in new], [('login', 'ok'), ('sign', 'ok')],
             'audit after SIGHUP goes to the new file: login and sign')
        t.eq(stat.S_IMODE(os.stat(audit).st_mode), 0o600, 'the reopened audit file is 0600')
        t.ok(pin not in text and 'pin' not in new[0], 'the PIN is not in the audit trail')
    finally:
        stop(proc)


def test_audit_fail_closed(tokdir, sockdir, work):
    """A line that cannot be written (file size limit) refuses the JWT."""
    sock = os.path.join(sockdir, 'f', 'agent.sock')
    audit = os.path.join(work, 'audit-full.log')
    with open(audit, 'w') as f:
        f.write('x' * 3000)
    os.chmod(audit, 0o600)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3100, 3100))

    proc = subprocess.Popen(agent_args(tokdir, sock, ['--audit', 'file:' + audit]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)
    try:
        if not t.ok(wait_socket(sock, proc), 'agent with a nearly full audit file starts'):
            return
        c = Conn(sock)
        a = c.req({'op': 'sign', 'key': 'ec-p256', 'claims': {'iss': 'x' * 200}})
        b = c.req({'op': 'hello'})
        c.close()
        t.eq((a.get('ok'), a.get('error', {}).get('code'), 'jwt' in a), (False, 'internal', False),
             'no JWT when its audit line cannot be written (fail closed)')
        t.eq(b.get('ok'), True, 'requests that are not audited are still served')
    finally:
        stop(proc)
    err = proc.stderr.read()
    t.ok('audit' in err and 'refusing' in err, 'the audit failure is logged', err)


def activated_agent(tokdir, lsock, notify_path, extra=(), out=None):
    """fork + exec with the listening socket as fd 3 and LISTEN_PID = the
    agent's pid, as systemd does."""
    env = dict(os.environ)
    env['LISTEN_FDS'] = '1'
    env['LISTEN_FDNAMES'] = 'p11jwt-agent.socket'
    if notify_path:
        env['NOTIFY_SOCKET'] = notify_path
    args = [AGENT, '--foreground', '--module', MODULE, '--token', TOKEN_URI,
            '--pin-file', os.path.join(tokdir, 'pin'), *extra]
    pid = os.fork()
    if pid == 0:
        try:
            if out is not None:
                os.dup2(out, 1)
                os.dup2(out, 2)
            os.dup2(lsock.fileno(), 3)
            os.set_inheritable(3, True)
            env['LISTEN_PID'] = str(os.getpid())
            os.execve(AGENT, args, env)
        finally:
            os._exit(127)
    return pid


def wait_pid(pid, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p == pid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_socket_activation(tokdir, sockdir, work):
    d = os.path.join(sockdir, 'sa')
    os.makedirs(d, mode=0o700)
    path = os.path.join(d, 'activated.sock')
    other = os.path.join(d, 'not-this.sock')
    notify_path = os.path.join(d, 'notify')
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(16)
    ino = os.stat(path).st_ino
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(notify_path)
    ns.settimeout(30)
    logf = open(os.path.join(work, 'activated.log'), 'w+')
    pid = activated_agent(tokdir, lsock, notify_path, ['--socket', other], logf.fileno())
    lsock.close()
    try:
        msgs = []
        try:
            msgs.append(ns.recv(4096).decode())
        except socket.timeout:
            pass
        t.ok(any('READY=1' in m.split('\n') for m in msgs),
             'READY=1 arrives on NOTIFY_SOCKET', msgs)
        c = Conn(path)
        h = c.req({'op': 'hello'})
        s = c.req({'op': 'sign', 'key': 'ed25519'})
        c.close()
        t.ok(h.get('ok') and s.get('ok') and s['jwt'].count('.') == 2,
             'the agent serves on the socket passed in (LISTEN_FDS)', [h, s])
        t.eq(os.stat(path).st_ino, ino, 'the passed socket was not replaced')
        t.ok(not os.path.exists(other), '--socket is ignored: no socket of its own is bound')
        os.kill(pid, signal.SIGTERM)
        try:
            msgs.append(ns.recv(4096).decode())
        except socket.timeout:
            pass
        t.ok(any('STOPPING=1' in m.split('\n') for m in msgs), 'STOPPING=1 on SIGTERM', msgs)
        t.eq(wait_pid(pid), 0, 'the activated agent exits 0 on SIGTERM')
        pid = None
        t.ok(os.path.exists(path), 'the passed socket is left for the service manager')
        logf.seek(0)
        log = logf.read()
        t.ok(f'on {path}' in log, 'the log names the passed socket', log)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        ns.close()
        logf.close()

    # a socket that is not a listening Unix stream socket is refused
    d2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    logf = open(os.path.join(work, 'activated-bad.log'), 'w+')
    pid = activated_agent(tokdir, d2, None, [], logf.fileno())
    d2.close()
    rc = wait_pid(pid)
    logf.seek(0)
    log = logf.read()
    t.ok(rc == 1 and 'listening Unix stream socket' in log,
         'a passed datagram socket is refused (exit 1)', f'rc={rc} {log}')
    logf.close()


def test_socket_activate_tool(tokdir, sockdir, work):
    tool = shutil.which('systemd-socket-activate')
    if tool is None:
        t.skip('systemd-socket-activate starts the agent on the first connection',
               'systemd-socket-activate not installed')
        return
    path = os.path.join(sockdir, 'ssa.sock')
    proc = subprocess.Popen([tool, '-l', path, '-E', 'SOFTHSM2_CONF'] +
                            agent_args(tokdir, os.path.join(sockdir, 'unused.sock')),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 10
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.05)
        c = Conn(path)
        st = c.req({'op': 'status'})
        c.close()
        t.ok(st.get('ok') and st.get('keys') == 5,
             'systemd-socket-activate starts the agent on the first connection', st)
    finally:
        stop(proc)


def test_units(tokdir, sockdir, work):
    units = os.path.join(BUILD, 'dist', 'systemd')
    src = os.path.join(SRC, 'dist', 'systemd')
    sa = shutil.which('systemd-analyze')
    if sa is None:
        t.skip('systemd-analyze verify accepts the units', 'systemd-analyze not installed')
        return
    for kind, svc, sock, user in (
            ('system', os.path.join(units, 'p11jwt-agent.service'),
             os.path.join(src, 'p11jwt-agent.socket'), False),
            ('user', os.path.join(units, 'p11jwt-agent.user.service'),
             os.path.join(src, 'user', 'p11jwt-agent.socket'), True)):
        d = tempfile.mkdtemp(dir=work)
        with open(svc) as f:
            text = f.read()
        # ExecStart must name an existing program: the built agent
        text = re.sub(r'^ExecStart=\S+', 'ExecStart=' + AGENT, text, flags=re.M)
        with open(os.path.join(d, 'p11jwt-agent.service'), 'w') as f:
            f.write(text)
        shutil.copy(sock, os.path.join(d, 'p11jwt-agent.socket'))
        env = dict(os.environ, XDG_RUNTIME_DIR=d, SYSTEMD_LOG_LEVEL='warning')
        args = [sa] + (['--user'] if user else []) + ['verify', '--man=no',
                                                      'p11jwt-agent.socket', 'p11jwt-agent.service']
        r = subprocess.run(args, cwd=d, env=env, capture_output=True, text=True, timeout=60)
        t.ok(r.returncode == 0 and r.stderr.strip() == '',
             f'systemd-analyze verify accepts the {kind} units', r.stdout + r.stderr)
        for key in ('Type=notify', 'ProtectSystem=strict', 'PrivateNetwork=yes',
                    'NoNewPrivileges=yes', 'RestrictAddressFamilies=AF_UNIX',
                    'MemoryDenyWriteExecute=yes', 'CapabilityBoundingSet=\n',
                    'ExecReload=/bin/kill -HUP $MAINPID'):
            if key not in text:
                t.ok(False, f'{kind} unit has {key.strip()}')
                break
        else:
            t.ok(True, f'{kind} unit has the sandboxing and notify settings')


def test_mdwe(tokdir, sockdir, work):
    """MemoryDenyWriteExecute=yes is systemd's seccomp filter; the kernel's
    PR_SET_MDWE (Linux 6.3) refuses the same thing (memory that is or was
    writable becoming executable) and is inherited across execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

    def mdwe():
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            os._exit(77)

    probe = subprocess.run(['/bin/true'], preexec_fn=mdwe)
    if probe.returncode == 77:
        t.skip('agent works under MemoryDenyWriteExecute (PR_SET_MDWE)', 'kernel lacks PR_SET_MDWE')
        return
    sock = os.path.join(sockdir, 'mdwe', 'agent.sock')
    proc = subprocess.Popen(agent_args(tokdir, sock, ['--audit', 'none']),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=mdwe)
    try:
        up = wait_socket(sock, proc)
        got = []
        if up:
            c = Conn(sock)
            for key in ('rsa-2048', 'ec-p256', 'ec-p384', 'ec-p521', 'ed25519'):
                got.append(c.req({'op': 'sign', 'key': key}).get('ok'))
            c.close()
        t.ok(up and got == [True] * 5,
             'agent (SoftHSM, p11-kit, OpenSSL) signs with every key type under PR_SET_MDWE',
             proc.stderr.read() if proc.poll() is not None else got)
    finally:
        stop(proc)


if __name__ == '__main__':
    main()
