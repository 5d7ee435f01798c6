"""A team's report templates, checked before any model runs, and template errors as the user's problems.

`check_templates` compiles every `.j2` file of the policy's template folders:
a syntax error, or a name the report never provides, is refused with the
template file and line when the policy is loaded, not after the whole run.
What can only fail while rendering (`r.no_such_key`, a sandbox violation) is
turned into the same kind of message by `template_problem`.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import jinja2
from jinja2 import meta, nodes

from qcheck.errors import Problem, QcheckError

# what render_html gives every template (build_context's keys, plus the stylesheet)
CONTEXT_NAMES = frozenset({"r", "groups", "worst", "figures", "analysis_figures", "n_activations", "n_weights", "css"})
MAX_TEMPLATE_BYTES = 1 << 20


def template_problem(exc: BaseException, user_dirs: list[Path] | None = None) -> QcheckError:
    """A Jinja error raised while loading or rendering, located at the template file and line.

    Raised in a built-in template, it is the results' fault (a hand-edited results.json lacking what the report
    shows), and the hint says so.
    """
    file, line = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if file is None:
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename.endswith(".j2"):
                file, line = frame.filename, frame.lineno
                break
    if file is not None and line is None:
        line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__)) if f.filename == file), None)
    what = {"UndefinedError": "undefined value", "SecurityError": "not allowed in a report template",
            "TemplateSyntaxError": "syntax error", "TemplateNotFound": "template not found"}.get(type(exc).__name__,
                                                                                              type(exc).__name__)
    message = getattr(exc, "message", None) or str(exc)
    if user_dirs is not None and not from_user_template(exc, user_dirs) and what != "syntax error":
        return QcheckError(Problem(f"the results do not hold what the report shows: {message}",
                                   hint="render results.json as a qcheck run wrote it; hand edits must keep its "
                                        "structure"))
    return QcheckError(Problem(f"report template: {what}: {message}", file, line,
                               hint="fix the template (report.templates), or remove it to use the built-in one"))


def from_user_template(exc: BaseException, dirs: list[Path]) -> bool:
    """Whether a team's template was running when `exc` was raised (not qcheck's own code or templates)."""
    roots = [str(d.resolve()) for d in dirs]
    return any(any(str(Path(f.filename).resolve()).startswith(r) for r in roots)
               for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2"))


def check_templates(dirs: list[Path], env: jinja2.Environment, builtin: Path) -> list[Problem]:
    """Every problem in the `.j2` files of `dirs` that can be known without results."""
    problems = []
    for folder in dirs:
        for path in sorted(folder.rglob("*.j2")):
            problem = _check_one(path, path.relative_to(folder), env, builtin)
            if problem:
                problems.append(problem)
    return problems


def _check_one(path: Path, rel: Path, env: jinja2.Environment, builtin: Path) -> Problem | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_TEMPLATE_BYTES:
            return Problem(f"report template is not a regular file under {MAX_TEMPLATE_BYTES >> 20} MB", str(path))
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Problem(f"cannot read report template: {exc}", str(path))
    try:
        tree = env.parse(source, name=str(rel), filename=str(path))
        env.compile(tree, name=str(rel), filename=str(path))
    except jinja2.TemplateSyntaxError as exc:
        return Problem(f"report template: syntax error: {exc.message}", str(path), exc.lineno)
    except RecursionError:
        return Problem("report template: nested too deeply", str(path))
    problem = _extends_problem(tree, path, rel, builtin)
    if problem:
        return problem
    original = builtin / rel
    if not original.is_file():
        return None  # a new partial: what its includer passes is unknown here; rendering checks it
    allowed = CONTEXT_NAMES | set(env.globals) | meta.find_undeclared_variables(
        env.parse(original.read_text(encoding="utf-8")))
    unknown = sorted(meta.find_undeclared_variables(tree) - allowed)
    if not unknown:
        return None
    line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == unknown[0]), None)
    return Problem(f"report template: undefined name '{unknown[0]}'", str(path), line,
                   hint=f"a template can use: {', '.join(sorted(CONTEXT_NAMES))}")


def _extends_problem(tree: nodes.Template, path: Path, rel: Path, builtin: Path) -> Problem | None:
    """A template that extends itself (endless), or overrides a block its built-in parent does not have (ignored
    by Jinja without a word: a misspelt block name would silently change nothing)."""
    extends = next(tree.find_all(nodes.Extends), None)
    if extends is None or not isinstance(extends.template, nodes.Const):
        return None
    parent = str(extends.template.value)
    if parent == rel.as_posix():
        return Problem(f"report template extends itself ('{parent}')", str(path), extends.lineno,
                       hint=f'extend the built-in one: {{% extends "qcheck/{parent}" %}}')
    if not parent.startswith("qcheck/") or not (builtin / parent.removeprefix("qcheck/")).is_file():
        return None
    known = _blocks(builtin / parent.removeprefix("qcheck/"))
    for block in tree.find_all(nodes.Block):
        if block.name not in known:
            return Problem(f"report template: block '{block.name}' is not a block of {parent}, so it would never "
                           f"be shown", str(path), block.lineno, hint=f"its blocks are: {', '.join(sorted(known))}")
    return None


def _blocks(template: Path) -> set[str]:
    env = jinja2.Environment()
    return {b.name for b in env.parse(template.read_text(encoding="utf-8")).find_all(nodes.Block)}
