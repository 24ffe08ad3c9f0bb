"""The layout the README promises, checked: views stay thin (their rules live in the domain,
catalog or a form), and nothing below the blueprints imports one of them."""
from __future__ import annotations

import ast
from pathlib import Path

CHAT = Path(__file__).resolve().parent.parent / "chat"
BLUEPRINTS = {"admin", "api", "auth", "contacts", "dashboard", "files", "inbox", "webhooks"}
MAX_VIEW_LINES = 15


def _modules():
    for path in sorted(CHAT.rglob("*.py")):
        if "migrations" not in path.parts:
            yield path, ast.parse(path.read_text())


def _is_view(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        ast.unparse(d).startswith(("bp.get", "bp.post", "bp.route", "bp.delete", "bp.put", "bp.patch"))
        for d in node.decorator_list)


def test_every_view_is_at_most_fifteen_lines():
    long = []
    for path, tree in _modules():
        for node in tree.body:
            if not _is_view(node):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring says what it does; it is not logic
            lines = body[-1].end_lineno - body[0].lineno + 1
            if lines > MAX_VIEW_LINES:
                long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "views longer than 15 lines (move their rules into the domain or a form):\n" + "\n".join(long)


def test_nothing_below_the_blueprints_imports_one():
    back_edges = []
    for path, tree in _modules():
        if path.stem in BLUEPRINTS or path.name == "__init__.py" and path.parent == CHAT:
            continue  # create_app registers the blueprints: the table of contents, above them all
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                named = {node.module} if node.module else {alias.name for alias in node.names}
                for module in named & BLUEPRINTS:
                    back_edges.append(f"{path.relative_to(CHAT)}:{node.lineno} imports {module}")
    assert not back_edges, "\n".join(back_edges)
