"""Abuse limits: token buckets (fair after a server stall), sliding-window counters, and the
buckets a user's connections share, so that reconnecting does not reset a user's limit.

Pure bookkeeping, no I/O: every call takes ``now`` (seconds of a monotonic clock).
"""

from __future__ import annotations

from collections import deque

__all__ = ["TokenBucket", "UserBuckets", "WindowCounter", "take_all"]


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take(now)`` spends one if there is one.

    While a stall is in progress (``begin_stall`` .. ``end_stall``: the server is busy and the
    client's frames wait unread) tokens keep accruing past ``burst``, up to ``burst +
    max_credit``, so a backlog sent at a fair pace is not refused when it arrives at once.
    Tokens past ``burst`` fade at ``rate`` once no stall is in progress. Over any span of T
    seconds at most ``burst + rate * T`` tokens are ever granted, stalls or not.
    """

    __slots__ = ("burst", "max_credit", "rate", "stalls", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float, *, max_credit: float = 0.0) -> None:
        if rate <= 0 or burst < 1 or max_credit < 0:
            raise ValueError("rate must be positive, burst at least 1, max_credit >= 0")
        self.rate = rate
        self.burst = float(burst)
        self.max_credit = float(max_credit)
        self.tokens = float(burst)
        self.stamp = now
        self.stalls = 0  # stalls in progress (a shared bucket may have several)

    def refill(self, now: float) -> None:
        """Add what accrued since the last call (within the bounds above)."""
        elapsed = now - self.stamp
        if elapsed <= 0:
            return
        self.stamp = now
        gained = elapsed * self.rate
        tokens = self.tokens
        if self.stalls:
            self.tokens = min(self.burst + self.max_credit, tokens + gained)
        elif tokens < self.burst:
            self.tokens = min(self.burst, tokens + gained)
        elif tokens > self.burst:  # credit from a stall, unused: it fades
            self.tokens = max(self.burst, tokens - gained)

    def ready(self, now: float) -> bool:
        """True when a token is there to spend (without spending it)."""
        self.refill(now)
        return self.tokens >= 1.0

    def take(self, now: float) -> bool:
        """Spend a token; False (nothing spent) when there is none."""
        if self.ready(now):
            self.tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 when one is)."""
        self.refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def begin_stall(self, now: float) -> None:
        """The server starts work that keeps the client's next frames unread."""
        self.refill(now)
        self.stalls += 1

    def end_stall(self, now: float) -> None:
        """That work is over: what accrued meanwhile is kept, past ``burst`` if need be."""
        self.refill(now)
        self.stalls = max(0, self.stalls - 1)


def take_all(buckets: tuple[TokenBucket, ...], now: float) -> float | None:
    """Spend one token from each of ``buckets`` if every one has one; else spend nothing and
    return the seconds until they all do."""
    if all([bucket.ready(now) for bucket in buckets]):  # a list: refill every bucket
        for bucket in buckets:
            bucket.tokens -= 1.0
        return None
    return max(bucket.wait(now) for bucket in buckets)


class WindowCounter:
    """Events in the last ``window`` seconds; ``hit(now)`` is True while within ``limit``."""

    __slots__ = ("_events", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window positive")
        self.limit = limit
        self.window = window
        #: Made on the first event: most sockets never have one, and an empty deque holds 760 B.
        self._events: deque[float] | None = None

    def hit(self, now: float) -> bool:
        events = self._events
        if events is None:
            events = self._events = deque(maxlen=self.limit + 1)
        while events and now - events[0] >= self.window:
            events.popleft()
        events.append(now)
        return len(events) <= self.limit


class UserBuckets:
    """One token bucket per user, shared by all of that user's connections (in one process).

    ``acquire`` with a user's first connection makes it; ``release`` with their last one lets
    it go once it has refilled (a full bucket is as good as a new one), so a user who
    reconnects at once finds their bucket as they left it, and nothing is kept for users who
    are gone: the table holds the users connected now and those who left in the last
    ``burst / rate`` seconds.
    """

    __slots__ = ("_buckets", "_holders", "_idle")

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._holders: dict[str, int] = {}
        #: users with no connection left, oldest release first: when their bucket is full again
        self._idle: dict[str, float] = {}

    def acquire(
        self, user_id: str, rate: float, burst: int, now: float, *, max_credit: float = 0.0
    ) -> TokenBucket:
        """The bucket of ``user_id`` (made with these bounds if they have none); hold it."""
        self.sweep(now)
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = TokenBucket(rate, burst, now, max_credit=max_credit)
            self._buckets[user_id] = bucket
        self._idle.pop(user_id, None)
        self._holders[user_id] = self._holders.get(user_id, 0) + 1
        return bucket

    def release(self, user_id: str, now: float) -> None:
        """One connection of ``user_id`` is done with the bucket."""
        held = self._holders.get(user_id, 0) - 1
        if held > 0:
            self._holders[user_id] = held
            return
        self._holders.pop(user_id, None)
        bucket = self._buckets.get(user_id)
        if bucket is not None:
            bucket.refill(now)
            self._idle[user_id] = now + max(0.0, bucket.burst - bucket.tokens) / bucket.rate
        self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop the buckets of users gone long enough for them to be full again."""
        idle = self._idle
        while idle:
            user_id, full_at = next(iter(idle.items()))
            if full_at > now:
                break
            del idle[user_id]
            del self._buckets[user_id]

    def get(self, user_id: str) -> TokenBucket | None:
        return self._buckets.get(user_id)

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._buckets
