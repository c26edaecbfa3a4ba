/*
 * DOM helpers shared by the agent console and the web chat widget.
 *
 * How it is shared: the console imports this file as an ES module. The widget is a classic
 * script that other sites embed with one tag, so it cannot import; instead connectors/widget.py
 * pastes this file into widget.js, at its `include lib/dom.js` marker, when it loads widget.js
 * to serve it (`inline_modules` in connectors/static_files.py). Hence the rules for this file:
 * no imports, and each export is a single `export function|class|const NAME` declaration; what
 * is not exported stays private in the widget as it does in a module.
 */

const SVG_NS = "http://www.w3.org/2000/svg";

/** The element with this id in the page. */
export function $(id) {
  return document.getElementById(id);
}

/**
 * A new HTML element. Attributes: `class` sets the class name, `text` the text content (never
 * HTML), `true` an empty attribute; null, undefined and false leave the attribute out.
 * Children are nodes or strings (as text); null and undefined are skipped.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** A new SVG element; null and undefined attributes and falsy children are skipped. */
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}
