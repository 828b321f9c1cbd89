"""Checks of the bench's statistics on synthetic timings whose true ratio is known.

    python3 -m unittest discover -s bench -p 'test_*.py'

The synthetic calls copy what Pyodide's calls do on this machine: each call runs either at the
module's cost or ~1.6x slower (the slow mode comes and goes from call to call, whatever the
module), plus a few percent of jitter.
"""
import random
import unittest

from benchlib.rounds import Rounds, verdict


def bimodal(rng, cost, n):
    return [cost * (1.6 if rng.random() < 0.4 else 1.0) * rng.uniform(0.97, 1.03) for _ in range(n)]


def rounds_for(true_ratio, calls, rounds=4, seed=7):
    rng = random.Random(seed)
    res = Rounds(["original", "variant"])
    for _ in range(rounds):
        base = rng.uniform(0.14, 0.16)  # processes differ a little too
        res.add("original", bimodal(rng, base, calls))
        res.add("variant", bimodal(rng, base * true_ratio, calls))
    return res


class PairedRatio(unittest.TestCase):
    def test_interval_holds_the_true_ratio(self):
        for true in (1.0, 1.01, 1.05):
            est, low, high = rounds_for(true, 60).paired_ratio("variant", "original")
            self.assertLessEqual(low, true)
            self.assertGreaterEqual(high, true)
            self.assertAlmostEqual(est, true, delta=0.02)

    def test_more_calls_narrow_the_interval(self):
        _, low_few, high_few = rounds_for(1.0, 8).paired_ratio("variant", "original")
        _, low_many, high_many = rounds_for(1.0, 80).paired_ratio("variant", "original")
        self.assertLess(high_many - low_many, high_few - low_few)

    def test_same_data_same_interval(self):
        self.assertEqual(rounds_for(1.0, 20).paired_ratio("variant", "original"),
                         rounds_for(1.0, 20).paired_ratio("variant", "original"))

    def test_pairs_cancel_a_slowdown_both_calls_share(self):
        # A burst of load that slows both calls of a cycle (and not the next cycle's): compared
        # pair by pair the bursts cancel, and the interval stays narrow.
        rng = random.Random(3)
        res = Rounds(["original", "variant"])
        for _ in range(4):
            a, b = [], []
            for _ in range(40):
                f = 1.6 if rng.random() < 0.4 else 1.0
                a.append(0.15 * f * rng.uniform(0.995, 1.005))
                b.append(0.15 * 1.01 * f * rng.uniform(0.995, 1.005))
            res.add("original", a)
            res.add("variant", b)
        est, low, high = res.paired_ratio("variant", "original")
        self.assertAlmostEqual(est, 1.01, delta=0.003)
        self.assertLess(high - low, 0.003)  # 0.0046 when pairs are misaligned by one call

    def test_no_pairs(self):
        self.assertEqual(Rounds(["a", "b"]).paired_ratio("a", "b"), (None, None, None))


class Verdict(unittest.TestCase):
    def test_decides_only_outside_the_interval(self):
        self.assertIs(verdict(0.99, 1.01, "<=", 1.02), True)
        self.assertIs(verdict(1.03, 1.05, "<=", 1.02), False)
        self.assertEqual(verdict(1.00, 1.04, "<=", 1.02), "undecided")
        self.assertIs(verdict(1.03, 1.05, ">=", 1.02), True)
        self.assertIs(verdict(None, None, "<=", 1.02), None)

    def test_known_ratios_get_the_right_verdict(self):
        self.assertIs(verdict(*rounds_for(1.00, 80).paired_ratio("variant", "original")[1:], "<=", 1.02), True)
        self.assertIs(verdict(*rounds_for(1.06, 80).paired_ratio("variant", "original")[1:], "<=", 1.02), False)
        # Two calls a round cannot tell 1.00 from 1.02.
        self.assertEqual(verdict(*rounds_for(1.00, 2).paired_ratio("variant", "original")[1:], "<=", 1.02),
                         "undecided")


if __name__ == "__main__":
    unittest.main()
