#!/usr/bin/env python3
"""Checks the shape of the source tree (issue 21): no import loop between
modules, and no source file longer than the limit.

A module "imports" another when its code (not its comments, not its
`#[cfg(test)]` modules) names it by a `crate::` or `super::` path. A module
may use its ancestors, which are its namespace (a `mod.rs` declaring a trait
and the submodules implementing it); any other cycle is a loop: to be read,
each of its modules needs all the others.

Usage: scripts/layout.py [--max-lines N] [SRC_DIR ...]
(defaults: 800 lines, every crates/*/src and crates/*/tests)."""
import glob
import os
import re
import sys
from collections import defaultdict


def modules(src):
    mods = {}
    for dp, _, fn in os.walk(src):
        for f in fn:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = p
    return mods


def code_of(text):
    text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
    while True:
        m = re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod \w+\s*\{", text)
        if not m:
            return text
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        text = text[: m.start()] + text[j:]


def resolve(parts, mods):
    while "super" in parts:
        k = parts.index("super")
        parts = parts[: max(k - 1, 0)] + parts[k + 1 :]
    for n in range(len(parts), 0, -1):
        if tuple(parts[:n]) in mods:
            return tuple(parts[:n])
    return None


def imports(mod, path, text, mods):
    out = set()
    # A mod.rs is its module; a plain file's `super` is its parent.
    here = list(mod)
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        base = here[:-1] if m.group(1) == "super" else []
        r = resolve(base + m.group(2).strip(":").split("::"), mods)
        if r:
            out.add(r)
    # use crate::{a, b::{c, d}} and use super::{...}
    for m in re.finditer(r"use (crate|super)::\{(.*?)\};", text, re.S):
        base = here[:-1] if m.group(1) == "super" else []
        for item in re.findall(r"(?:^|[,{]\s*)(\w+)", m.group(2)):
            r = resolve(base + [item], mods)
            if r:
                out.add(r)
    return {r for r in out if r != mod and r != tuple(mod[: len(r)])}


def loops(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main():
    args = sys.argv[1:]
    limit = 800
    if args[:1] == ["--max-lines"]:
        limit, args = int(args[1]), args[2:]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    dirs = args or sorted(glob.glob(os.path.join(root, "crates/*/src")) + glob.glob(os.path.join(root, "crates/*/tests")))
    bad = 0
    for src in dirs:
        mods = modules(src)
        graph = defaultdict(set)
        for m, p in mods.items():
            text = open(p, encoding="utf-8").read()
            n = text.count("\n")
            if n > limit:
                bad += 1
                print(f"{os.path.relpath(p, root)}: {n} lines (limit {limit}): split it by job")
            graph[m] |= imports(m, p, code_of(text), mods)
        for comp in loops(graph):
            bad += 1
            names = sorted("::".join(c) or "(root)" for c in comp)
            print(f"{os.path.relpath(src, root)}: import loop between {', '.join(names)}")
            for a in sorted(comp):
                for b in sorted(graph[a]):
                    if b in comp:
                        print(f"    {'::'.join(a) or '(root)'} -> {'::'.join(b) or '(root)'}")
    if bad:
        sys.exit(1)
    print(f"layout: no import loop, no file over {limit} lines")


if __name__ == "__main__":
    main()
