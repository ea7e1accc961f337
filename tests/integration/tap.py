"""Minimal TAP producer for the integration tests (one line per case)."""
import sys
import traceback


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def _emit(self, line):
        print(line, flush=True)

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if cond:
            self._emit(f'ok {self.n} - {desc}')
        else:
            self.failed += 1
            self._emit(f'not ok {self.n} - {desc}')
            if diag:
                for l in str(diag).splitlines():
                    self._emit(f'# {l}')
        return bool(cond)

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, f'got:  {got!r}\nwant: {want!r}')

    def skip(self, desc, reason):
        self.n += 1
        self._emit(f'ok {self.n} - {desc} # SKIP {reason}')

    def diag(self, msg):
        for l in str(msg).splitlines():
            self._emit(f'# {l}')

    def case(self, desc):
        """Decorator-ish helper: run fn, count an exception as a failure."""
        tap = self

        def wrap(fn):
            try:
                fn()
            except Exception:  # noqa: BLE001 - a test must report, not crash
                tap.ok(False, f'{desc} (raised)', traceback.format_exc())
            return fn
        return wrap

    def done(self):
        self._emit(f'1..{self.n}')
        sys.exit(1 if self.failed else 0)
