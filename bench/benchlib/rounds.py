"""The one timing discipline every section uses: wait for a quiet machine, run the variants
interleaved (v0, v1, ..., v0, v1, ... for N rounds), and compare them as ratios of medians, per
round and min/min.

On a shared 2-core machine a round is ±5-7% noisy: interleaving spreads a burst of load over every
variant instead of one, the median ignores the worst rounds, and min/min (interference only ever adds
time) is the steadier figure when the machine is busy. Sections print both.

    res = interleave(ctx, "ruby rewrite timing", ["orig", "fixed"], rounds, run)
    res.ratio("fixed", "orig"), res.min_ratio("fixed", "orig"), res.round_ratios("fixed", "orig")

`run(key, round_index)` runs one variant once and returns its time in seconds, or a list of times
(several instances of one run: the median pools them all, a round's figure is their median).

When a round's samples of two variants were taken next to each other (sample i of a beside sample
i of b, as the pyodide section's alternating calls are), `res.paired_ratio(a, b)` compares them
pair by pair and says how sure that figure is (a bootstrap interval); `verdict()` turns an
interval and a limit into PASS, FAIL or UNDECIDED.
"""
import math
import os
import random
import statistics
import sys
import time

LOAD_LIMIT = 1.5


def median(xs):
    return statistics.median(xs) if xs else None


def procs_running():
    """Runnable tasks right now (/proc/stat procs_running), this process included; None if unknown."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_for_quiet(ctx, what):
    """Print the load average before a timing-sensitive part; above LOAD_LIMIT, wait (up to
    --max-load-wait s) until it drops, or until the run queue has held nothing but us for 15 s
    (the 1-minute average lags a finished build by a minute or two). Returns what it saw."""
    t0 = time.monotonic()
    load = os.getloadavg()
    quiet_samples = 0
    if load[0] > LOAD_LIMIT and ctx.args.max_load_wait > 0:
        print("load %.2f > %.1f before %s: waiting up to %ds" % (load[0], LOAD_LIMIT, what, ctx.args.max_load_wait),
              file=sys.stderr, flush=True)
    while load[0] > LOAD_LIMIT and time.monotonic() - t0 < ctx.args.max_load_wait:
        time.sleep(5)
        load = os.getloadavg()
        running = procs_running()
        quiet_samples = quiet_samples + 1 if running is not None and running <= 1 else 0
        if quiet_samples >= 3:
            break
    waited = time.monotonic() - t0
    note = ""
    if load[0] > LOAD_LIMIT:
        note = " (run queue empty for 15 s)" if quiet_samples >= 3 else " (STILL ABOVE %.1f: figures may be noisy)" % LOAD_LIMIT
    print("load before %s: %.2f %.2f %.2f, waited %.0f s%s" % (what, load[0], load[1], load[2], waited, note), flush=True)
    return {"before": what, "loadavg": [round(x, 2) for x in load], "waited_s": round(waited, 1),
            "quiet": load[0] <= LOAD_LIMIT or quiet_samples >= 3}


def _div(a, b):
    return a / b if a is not None and b else None


class Rounds:
    """Times of interleaved rounds: for each variant, one list of samples per round."""

    def __init__(self, keys, load=None):
        self.keys = list(keys)
        self.rounds = {k: [] for k in self.keys}
        self.load = load  # what wait_for_quiet saw before the rounds (None: no wait)

    def add(self, key, samples):
        self.rounds[key].append(list(samples) if isinstance(samples, (list, tuple)) else [samples])

    def samples(self, key):
        """Every sample of every round, in order."""
        return [x for r in self.rounds[key] for x in r]

    def per_round(self, key):
        """Each round's figure: the median of its samples."""
        return [median(r) for r in self.rounds[key]]

    def median(self, key):
        return median(self.samples(key))

    def min(self, key):
        xs = self.samples(key)
        return min(xs) if xs else None

    def ratio(self, a, b):
        """median(a) / median(b): the figure the checks use."""
        return _div(self.median(a), self.median(b))

    def min_ratio(self, a, b):
        """min(a) / min(b): steadier when other processes interfere (they only ever add time)."""
        return _div(self.min(a), self.min(b))

    def round_ratios(self, a, b):
        """a / b within each round (same load for both): the spread shows the noise."""
        return [x / y for x, y in zip(self.per_round(a), self.per_round(b)) if y]

    def paired_ratio(self, a, b, resamples=2000, level=0.95, seed=1):
        """For rounds whose samples of a and b were taken in pairs (sample i of a round beside
        sample i of b): exp(median of every pair's log(a/b)), and a `level` bootstrap interval of
        it: each resample draws rounds with replacement, then pairs within each drawn round with
        replacement (rounds differ more than pairs in a round do, so both levels are resampled).
        Returns (ratio, low, high), or Nones without pairs. The same data give the same interval
        (fixed seed)."""
        rounds = [[math.log(x / y) for x, y in zip(ra, rb) if x > 0 and y > 0]
                  for ra, rb in zip(self.rounds[a], self.rounds[b])]
        rounds = [r for r in rounds if r]
        if not rounds:
            return None, None, None
        est = math.exp(statistics.median([d for r in rounds for d in r]))
        rng = random.Random(seed)
        stats = []
        for _ in range(resamples):
            pool = []
            for _ in rounds:
                r = rounds[rng.randrange(len(rounds))]
                pool.extend(r[rng.randrange(len(r))] for _ in r)
            stats.append(statistics.median(pool))
        stats.sort()
        tail = (1 - level) / 2
        low = stats[int(tail * (resamples - 1))]
        high = stats[int(math.ceil((1 - tail) * (resamples - 1)))]
        return est, math.exp(low), math.exp(high)


def verdict(low, high, op, limit):
    """A ratio's check from its interval: True (PASS) when the whole interval meets the limit, False
    (FAIL) when none of it does, "undecided" when the limit falls inside it; None without figures."""
    if low is None or high is None:
        return None
    if op == "<=":
        return True if high <= limit else False if low > limit else "undecided"
    if op == ">=":
        return True if low >= limit else False if high < limit else "undecided"
    raise ValueError("verdict: op %r" % op)


def interleave(ctx, what, keys, rounds, run, label=None):
    """Run `run(key, round_index)` for every key, `rounds` times, interleaved. With `what`, first waits
    for a quiet machine (wait_for_quiet prints the load it saw). Returns a Rounds."""
    res = Rounds(keys, wait_for_quiet(ctx, what) if what else None)
    for r in range(rounds):
        for k in res.keys:
            print("%s: round %d/%d %s" % (label or what or "timing", r + 1, rounds, k), file=sys.stderr, flush=True)
            res.add(k, run(k, r))
    return res
