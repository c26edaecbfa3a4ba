"""Static files: reading by name, the console's whitelist, and inlining the shared modules into
the widget script."""

from __future__ import annotations

import posixpath
import re
from importlib import resources

import pytest
from aiohttp import web

from connectors.console import ASSETS
from connectors.static_files import (
    JAVASCRIPT,
    asset_response,
    inline_module,
    inline_modules,
    read_static,
)

IMPORT = re.compile(r'^import [^"]* from "(\.{1,2}/[^"]+)";$', re.MULTILINE)
TRAVERSALS = [
    "../pyproject.toml",
    "../console.py",
    "console/../../console.py",
    "console/../console.js",
    "lib/../../static_files.py",
    "/etc/passwd",
    "./console.js",
    "console//api.js",
    "console.js/",
]


def static_names(folder: str) -> set[str]:
    root = resources.files("connectors").joinpath("static", folder)
    return {f"{folder}/{item.name}" for item in root.iterdir() if item.name.endswith(".js")}


def console_modules() -> set[str]:
    """Every module the console page loads: console.js and what it imports, transitively."""
    seen: set[str] = set()
    todo = ["console.js"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target in IMPORT.findall(read_static(name)):
            todo.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), target)))
    return seen


def test_read_static_reads_nested_names_and_nothing_outside() -> None:
    assert "export function el(" in read_static("lib/dom.js")
    assert "<html" in read_static("console.html")
    for name in [*TRAVERSALS, "", "lib", "missing.js"]:
        with pytest.raises((FileNotFoundError, IsADirectoryError)):
            read_static(name)


def test_the_console_whitelist_serves_its_modules_and_404s_the_rest() -> None:
    response = asset_response("console/api.js", ASSETS, cache_control="no-cache")
    assert response.content_type == JAVASCRIPT and response.charset == "utf-8"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.text is not None and "X-CSRF-Token" in response.text
    for name in [*TRAVERSALS, "widget.js", "console.html", "secrets.txt"]:
        with pytest.raises(web.HTTPNotFound):
            asset_response(name, ASSETS, cache_control="no-cache")
    # Listed but missing from the package: a 404 that says so, not a 500.
    with pytest.raises(web.HTTPNotFound) as missing:
        asset_response("gone.js", {"gone.js": JAVASCRIPT}, cache_control="no-cache")
    assert missing.value.text == "gone.js is missing from connectors/static"


def test_every_console_module_is_whitelisted_and_every_whitelisted_file_exists() -> None:
    modules = console_modules()
    assert {"console.js", "console/api.js", "lib/dom.js", "lib/backoff.js"} <= modules
    assert modules <= set(ASSETS), f"not in connectors/console.py ASSETS: {modules - set(ASSETS)}"
    shipped = static_names("console") | static_names("lib")
    assert shipped <= modules, f"not imported by the console: {shipped - modules}"
    for name, content_type in ASSETS.items():
        assert read_static(name)
        assert content_type == JAVASCRIPT if name.endswith(".js") else content_type == "text/css"


def test_inline_module_binds_the_exports_and_keeps_the_rest_private() -> None:
    source = (
        "const PRIVATE = 1;\n"
        "export function el(tag) {\n  return tag;\n}\n"
        "export class Backoff {}\n"
        "export const LIMIT = PRIVATE + 1;\n"
        "export async function wait() {}\n"
    )
    inlined = inline_module(source, "lib/x.js")
    assert inlined.startswith("// lib/x.js, inlined by the server")
    assert "const { el, Backoff, LIMIT, wait } = (() => {\n" in inlined
    assert inlined.endswith("return { el, Backoff, LIMIT, wait };\n})();")
    assert "export" not in inlined
    assert "const PRIVATE = 1;\nfunction el(tag) {" in inlined
    assert "async function wait() {}" in inlined


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('import { el } from "./dom.js";\nexport function a() {}\n', "line 1: 'import'"),
        ("export function a() {}\nexport default a;\n", "line 2: 'export'"),
        ("function a() {}\nexport { a };\n", "line 2: 'export'"),
        ("export const URL_ = new URL('.', import.meta.url);\n", "line 1: 'import.meta'"),
        ("function a() {}\n", "no exports"),
    ],
)
def test_inline_module_refuses_what_a_classic_script_cannot_hold(source: str, found: str) -> None:
    with pytest.raises(ValueError, match="may not import") as error:
        inline_module(source, "lib/bad.js")
    assert f"lib/bad.js {found}" in str(error.value)


def test_inline_modules_replaces_each_include_line() -> None:
    files = {"lib/a.js": "export function a() {}\n", "lib/b.js": "export const b = 2;\n"}
    script = "(() => {\n  /*include lib/a.js*/\n  /*include lib/b.js*/\n  a(b);\n})();\n"
    served = inline_modules(script, files.__getitem__)
    assert "include" not in served
    assert served.index("const { a } =") < served.index("const { b } =") < served.index("a(b);")
    # Only whole lines naming a lib/ module are includes; anything else is left alone.
    other = "x = '/*include lib/a.js*/';\n/*include ../secret.js*/\n"
    assert inline_modules(other, files.__getitem__) == other


def test_the_served_widget_holds_the_shared_modules_and_no_module_syntax() -> None:
    source = read_static("widget.js")
    included = re.findall(r"/\*include (lib/[\w-]+\.js)\*/", source)
    assert sorted(included) == sorted(static_names("lib"))
    served = inline_modules(source)
    assert "/*include" not in served
    assert not re.search(r"^\s*(import|export)\b", served, re.MULTILINE)
    for name in included:
        assert f"// {name}, inlined by the server" in served
    # The config placeholder the widget connector fills in is still there, once.
    assert served.count("/*config*/") == 2
