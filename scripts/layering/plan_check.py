#!/usr/bin/env python3
"""Check the proposed crate split of LAYERING-PLAN.md against today's references.

Every internal reference (from modgraph.py --all: file, line, absolute target path) is mapped to
(source crate, target crate) as if the moves of the plan were done: the source by file and line
range, the target by the longest matching path prefix. Reports the crate graph, any cycle, and any
edge that points up ORDER. Redirections the plan makes by changing code rather than moving it
(Shared -> ServeCtx, demo's is_successor passed in) are listed in REDIRECT.
"""
import collections, json, subprocess, sys

ORDER = ['core', 'config', 'observe', 'plugins', 'runtime', 'proxy', 'server', 'wasmgate', 'demo', 'bin']
RANK = {c: i for i, c in enumerate(ORDER)}

# source side: file -> crate, or list of (first_line, last_line, crate)
SRC = {
    'error.rs': 'core', 'proxy/normalize.rs': 'core',
    'proxy/body.rs': [(1, 215, 'core'), (216, 9999, 'proxy')],          # ClientBody -> pipeline
    'proxy/mod.rs': [(38, 66, 'core'), (1, 9999, 'proxy')],              # ConnInfo, TlsConn -> core
    'plugins/mod.rs': [(45, 62, 'core'), (1, 9999, 'plugins')],          # RequestState -> core
    'server.rs': [(136, 165, 'core'), (1, 135, 'wasmgate'), (166, 209, 'wasmgate'), (210, 243, 'server'), (244, 466, 'wasmgate'), (467, 9999, 'server')],
    'log.rs': [(310, 377, 'core'), (1, 9999, 'observe')],               # decimal, ip, escaped, field
    'proxy/forwarded.rs': [(279, 285, 'core'), (1, 9999, 'runtime')],   # canonical -> core
    'proxy/client.rs': [(205, 208, 'core'), (1, 9999, 'runtime')],      # BackendBodyIdle -> core
    'egress/mod.rs': [(139, 223, 'config'), (1, 9999, 'runtime')],      # check_literal, judge, bare_host
    'runtime/owners.rs': [(15, 47, 'config'), (1, 9999, 'runtime')],    # overlap, covers
    'plugins/builtin.rs': 'plugins', 'plugins/engine.rs': [(33, 48, 'config'), (1, 9999, 'plugins')],
    'tls.rs': [(59, 84, 'server'), (1, 9999, 'runtime')],                 # SniResolver/server_config stay in server
    'metrics.rs': 'observe', 'log_sink.rs': 'observe',
    'router.rs': 'runtime', 'runtime/': 'runtime',
    'egress/': 'config',  # addr, local, rules (pure)
    'config/': 'config', 'plugins/': 'plugins',
    'proxy/': 'proxy', 'websocket.rs': 'proxy', 'watchdog.rs': 'server', 'proxy_protocol.rs': 'server',
    'conn_limits.rs': 'server',
    'reload.rs': 'wasmgate', 'admin.rs': 'wasmgate', 'handover.rs': 'wasmgate', 'main.rs': 'bin',
    'lib.rs': 'wasmgate', 'demo/': 'demo',
}

# target side: longest prefix wins
DST = {
    'error': 'core', 'proxy::body': 'core', 'proxy::body::ClientBody': 'proxy', 'proxy::normalize': 'core',
    'proxy::ConnInfo': 'core', 'proxy::TlsConn': 'core', 'proxy::client::BackendBodyIdle': 'core',
    'proxy::forwarded::canonical': 'core', 'plugins::RequestState': 'core', 'server::RequestIds': 'core',
    'log::escaped': 'core', 'log::field': 'core', 'log::ip': 'core',
    'config': 'config', 'egress': 'config', 'egress::Connector': 'runtime', 'egress::EgressPolicy': 'runtime',
    'egress::EgressError': 'runtime', 'runtime::covers': 'config', 'runtime::overlap': 'config',
    'runtime::owners::covers': 'config', 'runtime::owners::overlap': 'config',
    'plugins::builtin::NAMES': 'config', 'plugins::builtin::ACCESS_CONTROL': 'config',
    'plugins::builtin::exists': 'config', 'plugins::stack_class': 'config', 'plugins::STACK_CLASSES': 'config',
    'plugins::TENANT_INSTANCES_MAX': 'config', 'plugins::engine::POOL_INSTANCES': 'config',
    'plugins::engine::stack_class': 'config', 'plugins::engine::STACK_CLASSES': 'config',
    'plugins::engine::TENANT_INSTANCES_MAX': 'config',
    'metrics': 'observe', 'log': 'observe', 'log_sink': 'observe',
    'plugins': 'plugins',
    'router': 'runtime', 'proxy::forwarded': 'runtime', 'proxy::client': 'runtime', 'runtime': 'runtime',
    'tls': 'runtime', 'tls::server_config': 'server', 'tls::SniResolver': 'server',
    'proxy': 'proxy', 'websocket': 'proxy', 'watchdog': 'server', 'proxy_protocol': 'server',
    'conn_limits': 'server', 'server': 'server', 'Server': 'wasmgate',
    'server::Shared': 'wasmgate', 'server::ReloadStatus': 'wasmgate', 'server::Server': 'wasmgate',
    'server::StartError': 'wasmgate',
    'reload': 'wasmgate', 'admin': 'wasmgate', 'handover': 'wasmgate', 'demo': 'demo',
}
# (source file, target prefix) -> new target crate, for references the plan rewrites
REDIRECT = {
    ('proxy/mod.rs', 'server::Shared'): 'proxy',     # -> ServeCtx (pipeline)
    ('websocket.rs', 'server::Shared'): 'proxy',
    ('demo/mod.rs', 'handover::is_successor'): None,  # value passed in by main.rs
}


def src_crate(f, line):
    f = f.split('src/', 1)[1]
    m = SRC.get(f)
    if m is None:
        m = next(v for k, v in sorted(SRC.items(), key=lambda kv: -len(kv[0])) if k.endswith('/') and f.startswith(k))
    if isinstance(m, str):
        return m
    for a, b, c in m:
        if a <= line <= b:
            return c


def dst_crate(path):
    for n in range(len(path), 0, -1):
        k = '::'.join(path[:n])
        if k in DST:
            return DST[k], k
    return None, None


def main():
    refs = json.loads(subprocess.check_output([sys.executable, '/tmp/modgraph.py', '--all'], cwd='/work/main/host/src'))
    edges = collections.defaultdict(list)
    for r in refs:
        s = src_crate(r['file'], r['line'])
        d, key = dst_crate(r['dst'])
        if d is None:
            continue
        f = r['file'].split('src/', 1)[1]
        for (rf, rk), to in REDIRECT.items():
            if f == rf and '::'.join(r['dst']).startswith(rk):
                d = to
        if d is None:
            continue
        if d != s:
            edges[s, d].append(f"{r['file']}:{r['line']} {'::'.join(r['dst'])}")
    print('# crate edges (refs)')
    for (s, d), v in sorted(edges.items(), key=lambda kv: (RANK[kv[0][0]], RANK[kv[0][1]])):
        flag = '  UP!' if RANK[s] < RANK[d] else ''
        print(f'  {s:9} -> {d:9} {len(v):3}{flag}')
        if flag:
            for x in v: print('      ', x)
    g = collections.defaultdict(set)
    for s, d in edges: g[s].add(d)
    # cycle check by DFS
    colour, cyc = {}, []
    def dfs(v, stack):
        colour[v] = 1
        for w in g[v]:
            if colour.get(w) == 1: cyc.append(stack + [v, w])
            elif not colour.get(w): dfs(w, stack + [v])
        colour[v] = 2
    for v in ORDER:
        if not colour.get(v): dfs(v, [])
    print('# cycles:', cyc or 'none')


if __name__ == '__main__':
    main()
