# A Python workload for Pyodide benchmarks: interpreter dispatch, C-level slot calls (getters
# through function-pointer casts), json, re, collections and dict/sort work. Prints one line whose
# value must not change when the module is rewritten.
import collections
import hashlib
import itertools
import json
import re


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Point:
    __slots__ = ("_x", "_y")

    def __init__(self, x, y):
        self._x = x
        self._y = y

    @property
    def x(self):
        return self._x

    @property
    def y(self):
        return self._y


def run():
    h = hashlib.sha256()
    h.update(str(fib(24)).encode())
    p = Point(3, 4)
    acc = 0
    for i in range(60000):
        acc += p.x * i + p.y
    h.update(str(acc).encode())
    d = {f"key{i}": [i, i * 2, str(i)] for i in range(20000)}
    h.update(json.dumps(d, sort_keys=True).encode())
    words = " ".join(f"w{i % 997}x{i % 13}" for i in range(40000))
    found = re.findall(r"w(\d+)x1\b", words)
    h.update(str(len(found)).encode())
    c = collections.Counter(words.split())
    h.update(str(c.most_common(5)).encode())
    perms = sorted(itertools.permutations(range(7)), key=lambda t: (t[3], t[::-1]))
    h.update(str(perms[:3] + perms[-3:]).encode())
    big = {i: i * i for i in range(50000)}
    h.update(str(sum(big.values())).encode())
    return h.hexdigest()
