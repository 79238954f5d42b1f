"""MkDocs hooks (mkdocs.yml, ``hooks:``): the tables written from the code, and the benchmark figures.

- ``<!-- options-table -->`` in a page becomes a table of every :class:`LearnerConfig` field (setting, default,
  meaning), the meaning taken from the class docstring's ``:param name:`` entry. A field without one, or an
  entry naming no field, fails the build: the page cannot fall behind the code.
- ``<!-- presets-table -->`` becomes a table of :data:`PRESETS`, each preset by what it changes.
- The learning curves and scene pictures the benchmarks write under ``benchmarks/results/`` are added to the
  site as they are (never copied into ``docs/``). Pages link them as ``../benchmarks/results/...``, which
  also works when GitHub shows the page; that prefix is rewritten to the figures' place in the site. A results
  table included with ``--8<--`` that shows a figure beside it by its bare file name (``![x](name.png)``, as
  imitation_compare.md does) has the link pointed at that figure too.
- The docstrings' Sphinx roles (``:class:`OracleLabeler```, ``:meth:`~a.b.C.load```), which the Sphinx docstring
  parser leaves in the text, become code linked to the API page of the object where it is documented.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import posixpath
import re
import sys
from pathlib import Path
from functools import lru_cache
from typing import Any, Dict

from markdown import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
FIGURES = "benchmarks/results"
OPTIONS_MARKER = "<!-- options-table -->"
PRESETS_MARKER = "<!-- presets-table -->"


def load_config_module():
    """vlm_reward_wrappers/config.py on its own: it imports only the standard library, and loading it alone
    keeps the docs build from importing torch (seconds) through the package's ``__init__``."""
    name = "_vlm_reward_wrappers_config_for_docs"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "vlm_reward_wrappers" / "config.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolves the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def param_docs(docstring: str) -> Dict[str, str]:
    """``{name: text}`` of each ``:param name: text`` entry, its indented continuation lines joined."""
    params: Dict[str, str] = {}
    current = None
    for line in docstring.splitlines():
        match = re.match(r"\s*:param\s+(\w+):\s*(.*)", line)
        if match:
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current and line.strip() and not line.strip().startswith(":"):
            params[current] += " " + line.strip()
        else:
            current = None
    return params


def markdown_text(text: str) -> str:
    """Sphinx markup as Markdown: ``:class:`~a.b.C``` -> `C`, ``:mod:`a.b``` -> `a.b`, ````x```` -> `x`;
    pipes escaped for a table cell."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: "`" + (m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0)
                                                          else m.group(1)) + "`", text)
    return text.replace("``", "`").replace("|", "\\|")


def format_value(value: Any) -> str:
    """A setting's value as Python would be written: ``"frame"``, ``20_000``, ``None``, and bytes in MiB."""
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        mib = f" ({value // 2**20} MiB)" if value >= 2**20 and value % 2**20 == 0 else ""
        return f"`{value:_}`{mib}"
    return f"`{value!r}`"


def options_table(config_class: Any = None) -> str:
    """The Markdown table of every field of ``config_class`` (``LearnerConfig`` by default); a PluginError,
    which fails the build, where a field has no ``:param`` entry or an entry names no field."""
    config_class = config_class or load_config_module().LearnerConfig
    name = config_class.__name__
    fields = dataclasses.fields(config_class)
    docs = param_docs(config_class.__doc__ or "")
    undocumented = [f.name for f in fields if not docs.get(f.name)]
    if undocumented:
        raise PluginError(f"{name} fields without a ':param name:' entry in its docstring: {undocumented}; "
                          "document them in vlm_reward_wrappers/config.py (the options page is built from it)")
    stale = sorted(set(docs) - {f.name for f in fields})
    if stale:
        raise PluginError(f"{name}'s docstring documents {stale}, which are not fields of it")
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {format_value(f.default)} | {markdown_text(docs[f.name])} |" for f in fields]
    return "\n".join(rows)


def presets_table() -> str:
    """The Markdown table of ``PRESETS``: each preset by the settings where it differs from the defaults."""
    config = load_config_module()
    default = config.LearnerConfig()
    rows = ["| preset | differs from the defaults |", "|---|---|"]
    for name, preset in config.PRESETS.items():
        changes = [f"`{f.name}={getattr(preset, f.name)!r}`" for f in dataclasses.fields(preset)
                   if getattr(preset, f.name) != getattr(default, f.name)]
        rows.append(f'| `"{name}"` | {", ".join(changes) or "nothing: the defaults"} |')
    return "\n".join(rows)


@lru_cache(maxsize=1)
def short_names() -> Dict[str, str]:
    """``{name: full path}`` of the package's module-level classes, functions and data whose name is unique,
    found by griffe's static reading of the source (what mkdocstrings renders from)."""
    import griffe

    found: Dict[str, list] = {}

    def walk(module) -> None:
        for member in module.members.values():
            if member.is_alias:
                continue
            if member.is_module:
                walk(member)
            elif not member.name.startswith("_"):
                found.setdefault(member.name, []).append(member.path)

    walk(griffe.load("vlm_reward_wrappers", search_paths=[str(ROOT)], resolve_aliases=False))
    return {name: paths[0] for name, paths in found.items() if len(paths) == 1}


ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj|const):<code>(~?)([\w.]+)(\(\))?</code>")


def role_link(match: re.Match) -> str:
    """One Sphinx role as code, linked (optionally: no warning where the object is not documented)."""
    short, path = match.group(1) == "~", match.group(2)
    title = f"<code>{path.rsplit('.', 1)[-1] if short else path}</code>"
    if not path.startswith("vlm_reward_wrappers"):
        head, _, rest = path.partition(".")
        if head not in short_names():
            return title
        path = short_names()[head] + (f".{rest}" if rest else "")
    return f'<autoref identifier="{path}" optional>{title}</autoref>'


class FiguresBesideTables(Preprocessor):
    """Runs after pymdownx.snippets has included the results tables: a link to a bare ``name.png`` that is a
    figure under benchmarks/results (one of that name) points at it, from the page being rendered."""

    page_dir = ""

    def run(self, lines):
        figures: Dict[str, list] = {}
        for path in (ROOT / FIGURES).rglob("*.png"):
            figures.setdefault(path.name, []).append(path.relative_to(ROOT).as_posix())

        def point(match: re.Match) -> str:
            found = figures.get(match.group(1), [])
            if len(found) != 1:
                return match.group(0)
            return f"]({posixpath.relpath(found[0], self.page_dir or '.')})"

        return [re.sub(r"\]\(([\w.+-]+\.png)\)", point, line) for line in lines]


class FiguresExtension(Extension):
    preprocessor = FiguresBesideTables()

    def extendMarkdown(self, md):
        # pymdownx.snippets includes files at priority 32; this must see what it included.
        md.preprocessors.register(self.preprocessor, "vlmrw_results_figures", 25)


FIGURES_EXTENSION = FiguresExtension()


def on_config(config):
    config.markdown_extensions.append(FIGURES_EXTENSION)
    return config


def on_files(files, config):
    """Add the benchmark figures (PNG under benchmarks/results) to the site at the same path."""
    for path in sorted((ROOT / FIGURES).rglob("*.png")):
        uri = path.relative_to(ROOT).as_posix()
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill the generated tables in, and point ``../benchmarks/results/`` links at the figures in the site."""
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, options_table())
    if PRESETS_MARKER in markdown:
        markdown = markdown.replace(PRESETS_MARKER, presets_table())
    page_dir = posixpath.dirname(page.file.src_uri)
    FIGURES_EXTENSION.preprocessor.page_dir = page_dir
    # From docs/<page>.md the repository's folder is "../"; in the site the figures sit under the site root.
    in_repository = posixpath.relpath(FIGURES, posixpath.join("docs", page_dir))
    in_site = posixpath.relpath(FIGURES, page_dir or ".")
    return markdown.replace(f"]({in_repository}/", f"]({in_site}/")


def on_page_content(html, page, config, files):
    """Sphinx roles left in docstrings, as linked code."""
    return ROLE.sub(role_link, html)
