#!/usr/bin/env python3
"""Top-level module import graph of the wasmgate host crate, from the sources.

Counts every reference of one top-level module to another: `use crate::X..` (groups expanded),
inline `crate::X::` paths, `super::` chains that climb to the crate root, and in main.rs the
`wasmgate::X` paths. Comments and string literals are stripped first; intra-doc links
([`crate::x::Y`] in comments) are reported separately (they compile, but break `cargo doc` across
crates). Inline `mod name {` blocks are tracked so `super::` resolves correctly.

usage: modgraph.py [SRC_DIR] [--edges] [--up] [--cycles] [--docs] [--json]
"""
import collections, json, os, re, sys

SRC = next((a for a in sys.argv[1:] if not a.startswith('--')), '/work/main/host/src')
FLAGS = {a for a in sys.argv[1:] if a.startswith('--')} or {'--edges', '--up', '--cycles'}

# Target layering (issue 16). Same number = same layer (siblings).
LAYER = {
    'error': 0,
    'config': 1,
    'router': 2, 'log': 2, 'log_sink': 2, 'metrics': 2, 'plugins': 2, 'egress': 2,
    'runtime': 3,
    'proxy': 4, 'websocket': 4,
    'server': 5, 'tls': 5, 'watchdog': 5, 'conn_limits': 5, 'proxy_protocol': 5,
    'reload': 6, 'admin': 6, 'handover': 6, 'demo': 6, 'main': 6, 'lib': 6,
}
ROOT_REEXPORT = {'Config': 'config', 'Server': 'server', 'StartError': 'server'}  # lib.rs `pub use`
LAYER_NAME = ['core', 'config', 'mid', 'runtime', 'pipeline', 'server', 'control']


def strip(text):
    """Return (code, docs): code with comments/strings blanked (newlines kept), and doc/comment
    text per line for intra-doc links."""
    out, docs = [], collections.defaultdict(str)
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            docs[line] += text[i:j]
            out.append(' ' * (j - i)); i = j; continue
        if text.startswith('/*', i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith('/*', j): depth += 1; j += 2
                elif text.startswith('*/', j): depth -= 1; j += 2
                else: j += 1
            seg = text[i:j]
            docs[line] += seg
            out.append(re.sub(r'[^\n]', ' ', seg)); line += seg.count('\n'); i = j; continue
        m = re.match(r'b?r(#*)"', text[i:i + 10])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            seg = text[i:j]; out.append(re.sub(r'[^\n]', ' ', seg)); line += seg.count('\n'); i = j; continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == '\\' else 1
            j += 1
            seg = text[i:j]; out.append(re.sub(r'[^\n]', ' ', seg)); line += seg.count('\n'); i = j; continue
        if c == "'":
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x..|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append(' ' * m.end()); i += m.end(); continue
        if c == '\n': line += 1
        out.append(c); i += 1
    return ''.join(out), docs


def file_modpath(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] == 'mod': rel = rel[:-1]
    if rel in (['lib'], ['main']): return [], rel[0]
    return rel, rel[0]


def expand_use(tree):
    """`a::{b::c, d}` -> ['a::b::c', 'a::d'] (whitespace already removed)."""
    m = re.match(r'^(.*?)\{(.*)\}$', tree)
    if not m: return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ''
    for ch in inner:
        if ch == ',' and depth == 0: parts.append(cur); cur = ''; continue
        depth += ch == '{'; depth -= ch == '}'; cur += ch
    parts.append(cur)
    res = []
    for p in parts:
        if p: res += expand_use(prefix + p)
    return res


def resolve(path, modstack, is_bin):
    """Return (top, rest) for a path that leaves the current top-level module, else None."""
    segs = path.split('::')
    if segs[0] == 'crate' or (is_bin and segs[0] == 'wasmgate'):
        if len(segs) < 2: return None
        top = ROOT_REEXPORT.get(segs[1], segs[1])
        return top, '::'.join(segs[2:])
    if segs[0] == 'super':
        k = 0
        while k < len(segs) and segs[k] == 'super': k += 1
        base = modstack[:len(modstack) - k]
        if len(base) == 0 and k <= len(modstack) and len(segs) > k:
            return segs[k], '::'.join(segs[k + 1:])
        return None
    return None


def absolute(path, modstack, children, is_bin):
    """Absolute module path (list) of a crate-internal path, or None if external."""
    segs = path.split('::')
    if segs[0] == 'crate' or (is_bin and segs[0] == 'wasmgate'):
        return [ROOT_REEXPORT.get(segs[1], segs[1])] + segs[2:] if len(segs) > 1 else None
    if segs[0] == 'super':
        k = 0
        while k < len(segs) and segs[k] == 'super': k += 1
        return modstack[:len(modstack) - k] + segs[k:]
    if segs[0] == 'self':
        return modstack + segs[1:]
    if segs[0] in children.get(tuple(modstack), ()):
        return modstack + segs
    return None


ALL = []  # (file, line, src_modpath, dst_abs_path)


def scan():
    refs = []   # (src_top, dst_top, file, line, path, kind)
    docrefs = []
    children = collections.defaultdict(set)
    for root, _, files in os.walk(SRC):
        for f in files:
            if f.endswith('.rs'):
                p = os.path.join(root, f)
                mp, _ = file_modpath(p)
                for m in re.finditer(r'^\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;', open(p).read(), re.M):
                    children[tuple(mp)].add(m.group(1))
    for root, _, files in os.walk(SRC):
        for f in sorted(files):
            if not f.endswith('.rs'): continue
            p = os.path.join(root, f)
            text = open(p).read()
            code, docs = strip(text)
            modpath, top = file_modpath(p)
            is_bin = top == 'main'
            rel = os.path.relpath(p, os.path.dirname(os.path.dirname(SRC)))
            # inline modules: track `mod x {` with brace depth
            stack, depth, line = [], 0, 1
            tokens = re.finditer(r'\n|\{|\}|\bmod\s+(\w+)\s*\{|\buse\s+([^;]*);|'
                                 r'\b((?:crate|wasmgate|super|self|\w+)(?:\s*::\s*(?:\w+|\{))+)', code)
            pending_mod = []
            for t in tokens:
                s = t.group(0)
                if s == '\n': line += 1; continue
                if s == '{': depth += 1; continue
                if s == '}':
                    depth -= 1
                    if stack and stack[-1][1] == depth: stack.pop()
                    continue
                if t.group(1):
                    stack.append((t.group(1), depth)); depth += 1; continue
                ms = modpath + [m for m, _ in stack]
                if t.group(2) is not None:
                    body = re.sub(r'\s+as\s+\w+', '', t.group(2))
                    body = re.sub(r'\s+', '', body)
                    for u in expand_use(body):
                        a = absolute(u, ms, children, is_bin)
                        if a: ALL.append((rel, line, ms, a))
                        r = resolve(u, ms, is_bin)
                        if r and r[0] != top and r[0] != 'self':
                            refs.append((top, r[0], rel, line, u, 'use'))
                    line += s.count('\n'); continue
                if t.group(3):
                    u = re.sub(r'\s+', '', t.group(3)).rstrip(':{')
                    a = absolute(u, ms, children, is_bin)
                    if a: ALL.append((rel, line, ms, a))
                    if u.split('::')[0] not in ('crate', 'wasmgate', 'super'):
                        line += s.count('\n'); continue
                    r = resolve(u, ms, is_bin)
                    if r and r[0] != top:
                        refs.append((top, r[0], rel, line, u, 'path'))
                    line += s.count('\n')
            for ln, d in docs.items():
                for m in re.finditer(r'\bcrate::(\w+)(::[\w:]+)?', d):
                    if m.group(1) != top:
                        docrefs.append((top, m.group(1), rel, ln, m.group(0)))
    return refs, docrefs


def cycles(edges, nodes):
    # Tarjan SCC
    idx, low, on, st, out, counter = {}, {}, set(), [], [], [0]
    def visit(v):
        idx[v] = low[v] = counter[0]; counter[0] += 1; st.append(v); on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in idx: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in sorted(nodes):
        if v not in idx: visit(v)
    return out


def main():
    refs, docrefs = scan()
    cnt = collections.Counter((a, b) for a, b, *_ in refs)
    edges = collections.defaultdict(set)
    for a, b in cnt: edges[a].add(b)
    nodes = set(LAYER)
    if '--all' in FLAGS:
        print(json.dumps([dict(file=f, line=l, src=ms, dst=a) for f, l, ms, a in ALL], indent=0))
        return
    if '--json' in FLAGS:
        print(json.dumps([dict(src=a, dst=b, file=f, line=l, path=p, kind=k) for a, b, f, l, p, k in refs], indent=1))
        return
    if '--edges' in FLAGS:
        print('# edges: src -> dst  (references)')
        for a in sorted(edges):
            print(f'{a:15} -> ' + ', '.join(f'{b}({cnt[a, b]})' for b in sorted(edges[a])))
    if '--cycles' in FLAGS:
        print('\n# strongly connected components')
        for c in cycles(edges, nodes): print('  ' + ' '.join(c))
        print('\n# 2-cycles (a <-> b)')
        for a, b in sorted(cnt):
            if a < b and (b, a) in cnt: print(f'  {a} <-> {b}  ({cnt[a, b]}/{cnt[b, a]})')
    if '--up' in FLAGS:
        print('\n# upward edges (src layer < dst layer)')
        for a, b, f, l, p, k in sorted(refs, key=lambda r: (r[0], r[1], r[2], r[3])):
            if LAYER.get(a, 9) < LAYER.get(b, 9):
                print(f'  {a}[{LAYER_NAME[LAYER[a]]}] -> {b}[{LAYER_NAME[LAYER[b]]}]  {f}:{l}  {p}')
        print('\n# sibling edges (same layer, different module)')
        for a, b, f, l, p, k in sorted(refs, key=lambda r: (r[0], r[1], r[2], r[3])):
            if LAYER.get(a) == LAYER.get(b) and a not in ('main', 'lib'):
                print(f'  {a} -> {b}  {f}:{l}  {p}')
    if '--docs' in FLAGS:
        print('\n# intra-doc links to other top-level modules')
        for a, b, f, l, p in sorted(docrefs):
            print(f'  {a} -> {b}  {f}:{l}  {p}')


if __name__ == '__main__':
    main()
