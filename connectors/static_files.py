"""The files under `connectors/static`: read from the installed package, served by name.

Both web connectors serve their pages, scripts and stylesheets from there. A request never
chooses a path on disk: it names an asset, and only names in the connector's whitelist are
read, so `../x` and `console/../../x` are unknown names (404) like any other.

Code shared by the agent console and the web chat widget lives in `static/lib/`. The console
loads it as native ES modules. The widget cannot: third-party sites embed it with a classic
`<script src=".../widget.js" defer>` tag (a module would need CORS and a different tag, and
`document.currentScript` is gone in modules). So `inline_modules` pastes the shared modules
into `widget.js` when the widget connector loads it: no build step, one file for embedders.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib import resources

from aiohttp import web

JAVASCRIPT = "text/javascript"
# A line of widget.js that stands for a shared module: `/*include lib/dom.js*/`.
INCLUDE = re.compile(r"^[ \t]*/\*include (lib/[a-z0-9_-]+\.js)\*/[ \t]*$", re.MULTILINE)
# The only exports that can be inlined: one named declaration each, at the top level.
EXPORT = re.compile(
    r"^export (?=(?:async )?(?:function\*?|class|const|let) +([A-Za-z_$][\w$]*))", re.MULTILINE
)
MODULE_SYNTAX = re.compile(r"^[ \t]*(?:import|export)\b|\bimport\.meta\b", re.MULTILINE)


def read_static(name: str) -> str:
    """The text of `connectors/static/<name>`; `name` may have `/`-separated folders.

    Raises:
        FileNotFoundError: no such file, or `name` has empty, `.` or `..` parts.
    """
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise FileNotFoundError(f"{name!r} is not a plain path under connectors/static")
    return resources.files("connectors").joinpath("static", *parts).read_text(encoding="utf-8")


def asset_response(name: str, assets: Mapping[str, str], cache_control: str) -> web.Response:
    """The asset `name` if the whitelist `assets` (name -> content type) lists it.

    Raises:
        web.HTTPNotFound: `name` is not in `assets`, or the package lacks the file.
    """
    content_type = assets.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no asset {name!r}")
    try:
        text = read_static(name)
    except FileNotFoundError as exc:
        raise web.HTTPNotFound(text=f"{name} is missing from connectors/static") from exc
    return web.Response(
        text=text,
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"},
    )


def inline_module(source: str, name: str) -> str:
    """An ES module's code as one classic-script statement binding the names it exports.

    The body runs in a function of its own that returns the exports, and `const { a, b } =`
    binds them in the including script's scope, as an import would; what the module does not
    export stays private, as in a module.

    Raises:
        ValueError: the module imports, uses `import.meta`, or exports in another form than
            `export function|class|const|let NAME`; says how to fix it.
    """
    names = EXPORT.findall(source)
    body = EXPORT.sub("", source)
    found = MODULE_SYNTAX.search(body)
    if found is not None or not names:
        line = body.count("\n", 0, found.start()) + 1 if found is not None else 1
        what = f"line {line}: {found.group().strip()!r}" if found is not None else "no exports"
        raise ValueError(
            f"{name} {what}; the widget inlines this module, so it may not import and must "
            "export each name as one `export function|class|const|let NAME` declaration"
        )
    exported = ", ".join(names)
    return (
        f"// {name}, inlined by the server (connectors/static_files.py)\n"
        f"const {{ {exported} }} = (() => {{\n{body.rstrip()}\nreturn {{ {exported} }};\n}})();"
    )


def inline_modules(script: str, read: Callable[[str], str] = read_static) -> str:
    """`script` with each `/*include lib/NAME.js*/` line replaced by that module, inlined.

    Args:
        script: a classic script, such as widget.js.
        read: reads a static file by name (tests pass their own).

    Raises:
        ValueError: an included module cannot be inlined (see `inline_module`).
        FileNotFoundError: an included module does not exist.
    """
    return INCLUDE.sub(lambda m: inline_module(read(m.group(1)), m.group(1)), script)
