"""No two project modules import each other, directly or around a loop (pure Python, AST only, no imports).

Every module of the Python packages (poco_msgs is generated code) is parsed; every import statement counts,
wherever it is (module level, inside functions, under `if TYPE_CHECKING:`): a function-local import only
hides a circle, it does not remove it. An import names the most specific project module it reaches
(`from poco_policy import config` -> poco_policy.config; `from poco_policy.config import from_dict` ->
poco_policy.config).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ('poco_policy', 'poco_learner', 'poco_sim', 'poco_bringup')


def project_modules(repo: Path = REPO) -> dict[str, Path]:
    """{dotted module name: source file} of every module of the packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((repo / pkg / pkg).rglob('*.py')):
            parts = list(f.relative_to(repo / pkg).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts.pop()
            mods['.'.join(parts)] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition('.')[0]
    return name or None


def imports_of(module: str, source: str, path: Path, mods: dict[str, Path]) -> dict[str, int]:
    """{imported project module: first line} of one module's source."""
    out: dict[str, int] = {}
    package = module.split('.') if path.name == '__init__.py' else module.split('.')[:-1]
    for node in ast.walk(ast.parse(source, str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:  # relative: from .x import y / from .. import z
                anchor = package[:len(package) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            names = [f'{base}.{a.name}' if base else a.name for a in node.names]
        for n in names:
            target = _resolve(n, mods)
            if target and target != module:
                out.setdefault(target, node.lineno)
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    return {m: imports_of(m, f.read_text(), f, mods) for m, f in mods.items()}


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each as one loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(_loop(sorted(comp), graph))
    return comps


def _loop(comp: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """One concrete loop through the component's first module (shortest, breadth-first)."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp  # unreachable for a real component


def describe(loop: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f'{a} (line {graph[a][b]}) -> {b}' for a, b in zip(loop, loop[1:])]
    return 'import circle: ' + '; '.join(steps)


def test_no_import_circles():
    mods = project_modules()
    assert len(mods) > 20, f'found only {sorted(mods)}: wrong repo layout?'
    graph = import_graph(mods)
    found = [describe(loop, graph) for loop in cycles(graph)]
    assert not found, '\n'.join(found)


def test_the_checker_finds_direct_indirect_and_local_import_circles(tmp_path):
    pkg = tmp_path / 'poco_sim' / 'poco_sim'
    pkg.mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'a.py').write_text('from poco_sim.b import thing\n')
    (pkg / 'b.py').write_text('def f():\n    from . import a\n')               # function-local, relative
    (pkg / 'c.py').write_text('import poco_sim.d\n')
    (pkg / 'd.py').write_text('from poco_sim import e\n')
    (pkg / 'e.py').write_text('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n')
    (pkg / 'ok.py').write_text('import poco_sim.a\nimport os\nimport numpy\n')
    mods = project_modules(tmp_path)
    graph = import_graph(mods)
    assert graph['poco_sim.ok'] == {'poco_sim.a': 1}
    loops = sorted(cycles(graph))
    assert loops == [['poco_sim.a', 'poco_sim.b', 'poco_sim.a'],
                     ['poco_sim.c', 'poco_sim.d', 'poco_sim.e', 'poco_sim.c']], loops
    assert describe(loops[0], graph) == ('import circle: poco_sim.a (line 1) -> poco_sim.b; '
                                               'poco_sim.b (line 2) -> poco_sim.a')
