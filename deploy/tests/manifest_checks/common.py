"""What every check module shares: the failure type, the runner that prints
`ok` / `FAIL` lines, and the two names nearly every concern compares with.

Kept tiny on purpose: anything that only one concern needs lives in that
concern's module, so this one never grows into a second monolith."""

DRIVER = "cachalot.csi.dev"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"


class CheckError(Exception):
    """A manifest breaks an invariant; the message says what and how to fix it."""


def need(cond, msg):
    """Fail the current check with msg unless cond holds."""
    if not cond:
        raise CheckError(msg)


class Runner:
    """Runs each check once, isolated: a failing or crashing check is
    reported and counted, and the next one still runs.

    `only`: names (prefixes) of the checks to run; the others are skipped,
    but loaders (`load`) always run, since checks read what they load. A
    test that breaks one thing runs just the check that must catch it."""

    def __init__(self, only=None):
        self.passed = 0
        self.failed = []
        self.skipped = 0
        self.selected = 0
        self.only = only or []

    def load(self, name, fn, *args):
        """A step that loads what later checks read: never skipped."""
        self._run(name, fn, *args)

    def check(self, name, fn, *args):
        if self.only and not any(name.startswith(o) for o in self.only):
            self.skipped += 1
            return
        self.selected += 1
        self._run(name, fn, *args)

    def _run(self, name, fn, *args):
        try:
            fn(*args)
        except CheckError as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}")
        except Exception as e:  # a crash in a check is a failure too
            self.failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")
