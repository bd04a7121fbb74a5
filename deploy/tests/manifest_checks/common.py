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
    reported and counted, and the next one still runs."""

    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, fn, *args):
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
