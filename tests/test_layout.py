"""The house rules, checked on the source: lower layers never import higher ones (trainers < envs
< agents; inside agents: reporting and parallel < learners and baselines < methods < experiments
< the commands), no import cycles between modules, and agents/ holds only thin command modules at
its top level, none importing another."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainers", "envs", "agents")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    """Project modules a module imports, at any depth of the file (function-level imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != module:
                found.add(n)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, m, set(mods)) for m, p in mods.items()}


def test_lower_layers_never_import_higher_ones():
    rank = {"trainers": 0, "envs": 1, "agents": 2}
    bad = [(m, d) for m, deps in _graph().items() for d in deps if rank[d.split(".")[0]] > rank[m.split(".")[0]]]
    assert not bad, bad


def _agents_rank(module: str) -> int:
    """Inside agents/: reporting and parallel < learners and baselines < methods < experiments < the commands."""
    ranks = {"reporting": 0, "parallel": 0, "learners": 1, "baselines": 1, "methods": 2, "integrations": 2,
             "experiments": 3}
    parts = module.split(".")
    return ranks.get(parts[1], 4) if len(parts) > 1 else 4


def test_inside_agents_imports_go_down_only():
    bad = [(m, d) for m, deps in _graph().items() if m.startswith("agents.")
           for d in deps if d.startswith("agents.") and _agents_rank(d) > _agents_rank(m)]
    assert not bad, bad
    same_rank = [(m, d) for m, deps in _graph().items() if m.startswith("agents.") and _agents_rank(m) < 2
                 for d in deps if d.startswith("agents.") and _agents_rank(d) == _agents_rank(m)
                 and d.split(".")[1] != m.split(".")[1]]
    assert not same_rank, same_rank  # learners and baselines do not lean on each other


def test_no_import_cycles():
    full = _graph()
    graph = {m: deps & full.keys() for m, deps in full.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package importing its own submodules is not a cycle of two modules
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


COMMAND_MAX_LINES = 150


def _commands() -> list[Path]:
    return [p for p in (REPO / "agents").glob("*.py") if p.name != "__init__.py"]


def test_agents_top_level_holds_only_thin_commands():
    """A command parses its arguments, checks them and calls a room below: it has a main and stays short."""
    assert len(_commands()) >= 8
    for path in _commands():
        tree = ast.parse(path.read_text())
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in funcs, f"{path.name} sits at agents/ top level but is not a command (no main)"
        n = len(path.read_text().splitlines())
        assert n <= COMMAND_MAX_LINES, f"{path.name} has {n} lines; a command stays within {COMMAND_MAX_LINES}"


def test_no_command_imports_another_command():
    commands = {f"agents.{p.stem}" for p in _commands()}
    graph = _graph()
    bad = [(c, d) for c in commands for d in graph[c] if d in commands]
    assert not bad, bad
