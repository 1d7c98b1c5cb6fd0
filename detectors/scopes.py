"""Per-scope filter facts of a statement, for the tenant check: which table instances each SELECT
scope (or the UPDATE/DELETE itself) reads, and which of their columns its conditions pin to a value.

Schema-free, so they can be cached with the fingerprint; ``detectors.rules`` resolves them against
the catalog. Scopes keep aliases apart (a self-join, an alias reused in a subquery), a derived table
or CTE passes an outer pin on one of its output columns down to its own tables, a LEFT JOIN's ON
pins only the joined table, and FILTER (WHERE ...) pins nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

Col = tuple[str | None, str]  # (alias, column); alias None when the column is unqualified


@dataclass(frozen=True, slots=True)
class FilterScope:
    tables: tuple[tuple[str, str], ...]  # (alias, table name)
    derived: tuple[tuple[str, int], ...]  # (alias, index of the child scope)
    outputs: frozenset[str]  # output column names ("*" when it selects everything)
    pins: frozenset[Col]
    equalities: tuple[tuple[Col, Col], ...]
    parent: int | None = None  # enclosing scope: correlated references reach its pinned columns


def _col(c: exp.Column) -> Col:
    return (c.table or None), c.name


def _value(node: exp.Expression) -> bool:
    """Does not depend on the row: literal, parameter, function of those, subquery, ANY(array)."""
    if isinstance(node, (exp.Subquery, exp.Any)):
        return True
    return not any(isinstance(n, exp.Column) for n in node.walk())


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def conditions(cond: exp.Expression) -> tuple[set[Col], list[tuple[Col, Col]]]:
    """Columns pinned by a condition that must hold, and the column = column equalities it states."""
    pins: set[Col] = set()
    eqs: list[tuple[Col, Col]] = []
    cond = _unparen(cond)
    if isinstance(cond, exp.And):
        for side in (cond.left, cond.right):
            p, e = conditions(side)
            pins |= p
            eqs += e
    elif isinstance(cond, exp.Or):
        left, _ = conditions(cond.left)
        right, _ = conditions(cond.right)
        pins |= left & right  # pinned whichever branch holds
    elif isinstance(cond, (exp.EQ, exp.NullSafeEQ)):
        left, right = _unparen(cond.left), _unparen(cond.right)
        if isinstance(left, exp.Tuple) and isinstance(right, exp.Tuple):
            for a, b in zip(left.expressions, right.expressions, strict=False):
                p, e = conditions(exp.EQ(this=a, expression=b))
                pins |= p
                eqs += e
        elif isinstance(left, exp.Column) and isinstance(right, exp.Column):
            eqs.append((_col(left), _col(right)))
        else:
            for a, b in ((left, right), (right, left)):
                if isinstance(a, exp.Column) and _value(b):
                    pins.add(_col(a))
    elif isinstance(cond, exp.In) and isinstance(_unparen(cond.this), exp.Column):
        pins.add(_col(_unparen(cond.this)))
    return pins, eqs


def _outputs(expression: exp.Expression) -> frozenset[str]:
    if not isinstance(expression, exp.Select):
        return frozenset({"*"})
    names = set()
    for e in expression.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            names.add("*")
        else:
            names.add(e.alias_or_name)
    return frozenset(names)


def _joins(expression: exp.Expression, pins: set[Col], eqs: list[tuple[Col, Col]], left_aliases: list[str]) -> None:
    for join in expression.args.get("joins") or []:
        alias = join.this.alias_or_name
        side = (join.side or "").upper()
        on = join.args.get("on")
        if on is not None and side not in ("RIGHT", "FULL"):
            p, e = conditions(on)
            if side == "LEFT":  # rows of the left side survive whatever ON says
                p = {c for c in p if c[0] == alias}
                e = [pair for pair in e if alias in (pair[0][0], pair[1][0])]
            pins |= p
            eqs += e
        for ident in join.args.get("using") or []:
            name = ident.name
            eqs.extend(((left, name), (alias, name)) for left in left_aliases)
        left_aliases.append(alias)


def _scope_facts(scope: Scope, index: dict[int, int]) -> FilterScope:
    expression = scope.expression
    tables, derived = [], []
    for alias, (_node, source) in scope.selected_sources.items():
        if isinstance(source, exp.Table):
            tables.append((alias, source.name))
        elif isinstance(source, Scope) and id(source) in index:
            derived.append((alias, index[id(source)]))
    pins: set[Col] = set()
    eqs: list[tuple[Col, Col]] = []
    where = expression.args.get("where")
    if where is not None:
        pins, eqs = conditions(where.this)
    from_ = expression.args.get("from") or expression.args.get("from_")
    left = [from_.this.alias_or_name] if from_ is not None else []
    _joins(expression, pins, eqs, left)
    parent = index.get(id(scope.parent)) if scope.parent is not None else None
    return FilterScope(tuple(tables), tuple(derived), _outputs(expression), frozenset(pins), tuple(eqs), parent)


def _write_scope(tree: exp.Update | exp.Delete) -> FilterScope:
    tables = []
    target = tree.this
    if isinstance(target, exp.Table):
        tables.append((target.alias_or_name, target.name))
    from_ = tree.args.get("from") or tree.args.get("from_")
    extra = [from_.this] if from_ is not None else []
    extra += list(tree.args.get("using") or [])
    tables += [(t.alias_or_name, t.name) for t in extra if isinstance(t, exp.Table)]
    pins: set[Col] = set()
    eqs: list[tuple[Col, Col]] = []
    where = tree.args.get("where")
    if where is not None:
        pins, eqs = conditions(where.this)
    return FilterScope(tuple(tables), (), frozenset(), frozenset(pins), tuple(eqs))


def filter_scopes(tree: exp.Expression) -> tuple[FilterScope, ...]:
    if isinstance(tree, (exp.Update, exp.Delete)):
        # Subqueries first and the UPDATE/DELETE last, as traverse_scope orders children before parents.
        subs = [sub for sub in tree.find_all(exp.Select) if sub.find_ancestor(exp.Select) is None]
        parts = [filter_scopes(sub) for sub in subs]
        root = sum(len(p) for p in parts)
        out: list[FilterScope] = []
        for part in parts:
            offset = len(out)
            out += [FilterScope(f.tables, tuple((a, i + offset) for a, i in f.derived), f.outputs, f.pins,
                                f.equalities, root if f.parent is None else f.parent + offset) for f in part]
        out.append(_write_scope(tree))
        return tuple(out)
    scopes = traverse_scope(tree)
    index = {id(s): i for i, s in enumerate(scopes)}
    return tuple(_scope_facts(s, index) for s in scopes)
