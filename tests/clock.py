"""Injected time for logic that depends on it (breaker windows, backoff)."""

T0 = 1_000_000.0


class FakeClock:
    """A clock that moves only when a test says so."""

    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
