#!/usr/bin/env python3
"""Checks two conventions of the code base, run by scripts/test.sh:

1. No import circle between the top-level modules of a crate (a module is a file or folder
   directly under src/; an edge is a `crate::NAME` path outside its tests).
2. In airlock-gateway, a module imports only modules of a lower layer or of its own group (the
   layers of ARCHITECTURE.md: the data plane and identity sit side by side and do not import
   each other; the control plane sits above both). A new module must be given a layer here.
3. A source file whose code (tests left out) is longer than 800 lines says why it is one file,
   in a line containing "Why one file:" among its first 20 lines.

Prints each violation and exits 1 when there is one.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIMIT = 800

# airlock-gateway's layers: (level, group) per module.
GATEWAY_LAYERS = {
    **{m: (0, "leaves") for m in ("util", "histogram", "otel")},
    **{m: (1, "shared") for m in ("tokens", "usage", "record", "credentials")},
    **{m: (2, "data plane") for m in ("policy", "upstream", "proxy", "models")},
    **{m: (2, "identity") for m in ("identity", "oidc")},
    **{m: (3, "control plane") for m in ("admin", "rotation", "incident", "alarms")},
    **{m: (4, "composition") for m in ("config", "state", "server", "testkit")},
}


def code_of(text):
    """The file's text before its test module."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\nmod \w+", text, re.M)
    return text[: m.start()] if m else text


def strongly_connected(graph):
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    problems = []
    for src in sorted(ROOT.glob("crates/*/src")):
        modules = {}
        for p in src.iterdir():
            if p.suffix == ".rs" and p.stem not in ("lib", "main"):
                modules[p.stem] = [p]
            elif p.is_dir():
                modules[p.name] = sorted(p.rglob("*.rs"))
        graph = {}
        for name, files in modules.items():
            deps = set()
            for f in files:
                for dep in re.findall(r"\bcrate::(\w+)", code_of(f.read_text())):
                    if dep in modules and dep != name:
                        deps.add(dep)
            graph[name] = deps
        if src.parent.name == "airlock-gateway":
            for name, deps in sorted(graph.items()):
                if name not in GATEWAY_LAYERS:
                    problems.append(f"airlock-gateway: module {name} has no layer in scripts/conventions.py")
                    continue
                level, group = GATEWAY_LAYERS[name]
                for dep in sorted(deps):
                    dl, dg = GATEWAY_LAYERS.get(dep, (99, "?"))
                    if dg != group and dl >= level:
                        problems.append(
                            f"airlock-gateway: {name} ({group}) imports {dep} ({dg}), which is not below it"
                        )
        for circle in strongly_connected(graph):
            problems.append(f"{src.parent.name}: modules import each other: {', '.join(circle)}")
    for f in sorted(ROOT.glob("crates/*/src/**/*.rs")):
        text = f.read_text()
        lines = code_of(text).count("\n")
        head = "\n".join(text.splitlines()[:20])
        if lines > LIMIT and "Why one file:" not in head:
            problems.append(
                f"{f.relative_to(ROOT)}: {lines} lines of code without a 'Why one file:' line at its top"
            )
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
