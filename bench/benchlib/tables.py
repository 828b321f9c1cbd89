"""Printing: plain text tables, and a section's acceptance thresholds with PASS/FAIL."""


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def table(headers, rows):
    """Plain text table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(s):
        return s[:1].isdigit() or s[:1] in "-." and s[1:2].isdigit()

    out = []
    for k, r in enumerate(cells):
        parts = [c.rjust(w) if k and numeric(c) else c.ljust(w) for c, w in zip(r, widths)]
        out.append("  ".join(parts).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def half_width(est, lo, hi):
    """Half an interval's width as a percentage of its estimate: "±0.8%"."""
    return "±%.1f%%" % (50.0 * (hi - lo) / est)


def fmt_interval(est, lo, hi):
    """A ratio with ± half its interval ("1.022 ±0.8%"), or "-" without one."""
    if est is None or lo is None or hi is None:
        return "-"
    return "%.3f %s" % (est, half_width(est, lo, hi))


def yes_no(v):
    return "yes" if v else "NO"


class Checks:
    """A section's acceptance thresholds, {key: (op, limit)}: each add() records a check in the
    context (final summary, --json, --strict) and a row of the table print() shows at the end."""

    def __init__(self, ctx, section, thresholds):
        self.ctx, self.section, self.thresholds = ctx, section, thresholds
        self.rows = []

    def add(self, key, what, value, shown, missing="-", no_figure="FAIL (no figure)", interval=None, decidable=True):
        """value None: no figure (shown as `missing`, result `no_figure`). With `interval` (low, high)
        the interval decides (see Context.check): a limit inside it is UNDECIDED (±half-width), and
        so is any figure when not `decidable`."""
        op, limit = self.thresholds[key]
        ok = self.ctx.check(self.section, what, value, op, limit, interval, decidable)
        lim = ("yes" if limit else "no") if isinstance(limit, bool) else "%g" % limit
        shown_value = missing if value is None else shown(value)
        result = {True: "PASS", False: "FAIL", None: no_figure, "undecided": "UNDECIDED"}[ok]
        if interval is not None and value and None not in interval:
            pm = half_width(value, *interval)
            shown_value += " " + pm
            if ok == "undecided":
                result += " (%s)" % pm if decidable else " (too few samples)"
        self.rows.append([what, shown_value, op + " " + lim, result])
        return ok

    def print(self, title):
        print("\n-- %s --" % title)
        print(table(["check", "value", "threshold", "result"], self.rows))

    def to_json(self):
        return {k: {"op": op, "limit": lim} for k, (op, lim) in self.thresholds.items()}
