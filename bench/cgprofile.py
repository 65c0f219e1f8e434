#!/usr/bin/python3
"""cgprofile.py — per-session profile from two callgrind output files.

    /usr/bin/python3 bench/cgprofile.py STARTUP.out RUN.out SESSIONS [TOP]

Reads each file's self cost (Ir) per function and per object (shared
library or executable), subtracts the startup-only run from the N-session
run and divides by N: where one session's instructions go. Used by
bench/callgrind; callgrind_annotate cannot take the difference of two runs.

Functions without symbols (LuaJIT's internals: Debian strips them; code the
JIT generated, which lives in anonymous memory) are grouped under their
object as "(no symbol)".
"""

import collections
import os
import sys


def parse(path):
    """Returns ({(object, function): self Ir}, total Ir) of one callgrind file."""
    names = {"ob": {}, "fn": {}}
    cost = collections.Counter()
    ob = fn = None
    skip_next_cost = False
    total = 0

    def name(kind, rest):
        rest = rest.strip()
        if rest.startswith("("):
            ident, _, label = rest.partition(")")
            ident = ident + ")"
            label = label.strip()
            if label:
                names[kind][ident] = label
            return names[kind].get(ident, ident)
        return rest

    with open(path, errors="replace") as f:
        for line in f:
            if not line or line[0] == "\n":
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                if skip_next_cost:  # the inclusive cost of a call, not self cost
                    skip_next_cost = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    ir = int(parts[1])
                    cost[(ob, fn)] += ir
                    total += ir
                continue
            key, eq, rest = line.partition("=")
            if not eq:
                continue
            if key == "ob":
                ob = name("ob", rest)
            elif key == "fn":
                fn = name("fn", rest)
            elif key in ("cob", "cfn"):
                name(key[1:], rest)  # defines a name for later use
            elif key == "calls":
                skip_next_cost = True
    return cost, total


def label(ob, fn):
    obj = os.path.basename(ob or "?")
    if fn is None or fn.startswith("0x"):
        return "(no symbol)", obj
    return fn, obj


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    startup, _ = parse(argv[0])
    run, _ = parse(argv[1])
    n = int(argv[2])
    top = int(argv[3]) if len(argv) > 3 else 10
    per_fn = collections.Counter()
    per_ob = collections.Counter()
    for (ob, fn), ir in run.items():
        d = ir - startup.get((ob, fn), 0)
        fname, obj = label(ob, fn)
        per_fn[(fname, obj)] += d
        per_ob[obj] += d
    total = sum(per_ob.values())
    print("per session, by object (self Ir, run minus startup, / %d):" % n)
    for obj, ir in per_ob.most_common():
        if ir / n >= 1:
            print("  %10.0f  %5.1f%%  %s" % (ir / n, 100 * ir / total, obj))
    print()
    print("per session, top %d functions (self Ir):" % top)
    for (fname, obj), ir in per_fn.most_common(top):
        print("  %10.0f  %5.1f%%  %s  [%s]" % (ir / n, 100 * ir / total, fname, obj))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
