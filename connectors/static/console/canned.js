/*
 * Canned responses: the team's library of replies (the Canned responses tab: create, edit,
 * delete) and their use in the reply box, filled for the open conversation by the server
 * ({name}, {agent}, entity values such as {order_id}): pick one from "Insert canned
 * response…", or type /shortcut and press Tab. Variables the conversation cannot fill stay
 * as {variable} and are named under the box.
 */

import { $, el } from "../lib/dom.js";
import { announce } from "./alerts.js";
import { api } from "./api.js";
import { formatTime } from "./format.js";

let library = []; // canned responses, filled for `filledFor`
let filledFor = null; // the conversation they are filled for
let editing = null; // id of the canned response in the form, or null for a new one

/** Fetch the library, filled for conversation `id` (or none). */
export async function loadCanned(id) {
  filledFor = id || null;
  try {
    const query = filledFor ? `?conversation_id=${encodeURIComponent(filledFor)}` : "";
    const data = await api("GET", `canned-responses${query}`);
    if ((id || null) !== filledFor) return;
    library = data.canned_responses || [];
  } catch (error) {
    if (error.status !== 401) $("canned-error").textContent = `Canned responses could not be loaded: ${error.message}`;
    return;
  }
  renderPicker();
  renderLibrary();
}

function renderPicker() {
  const picker = $("canned-picker");
  picker.replaceChildren(el("option", { value: "", text: library.length ? "Insert canned response…" : "No canned responses yet" }));
  for (const item of library) picker.append(el("option", { value: String(item.id), text: `/${item.shortcut} · ${item.title}` }));
}

/** Put a canned response's filled text into the reply box at the caret (replacing `from`-`to`). */
function insert(item, from, to) {
  const box = $("reply");
  if (box.disabled) {
    $("canned-hint").textContent = "Claim the conversation to use a canned response.";
    return;
  }
  const start = from ?? box.selectionStart;
  const end = to ?? box.selectionEnd;
  box.value = box.value.slice(0, start) + item.filled + box.value.slice(end);
  const caret = start + item.filled.length;
  box.focus();
  box.setSelectionRange(caret, caret);
  $("canned-hint").textContent = item.missing.length
    ? `Fill in before sending: ${item.missing.map((v) => `{${v}}`).join(", ")}`
    : "";
  announce(`Inserted canned response ${item.shortcut}.`);
}

/** Tab after /shortcut in the reply box expands it (an exact shortcut, else the only match). */
function expandShortcut(event) {
  if (event.key !== "Tab" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
  const box = $("reply");
  if (box.selectionStart !== box.selectionEnd) return;
  const before = box.value.slice(0, box.selectionStart);
  const match = /(?:^|\s)\/([a-z0-9][a-z0-9_-]*)$/.exec(before);
  if (!match) return;
  const typed = match[1];
  const exact = library.find((item) => item.shortcut === typed);
  const prefixed = library.filter((item) => item.shortcut.startsWith(typed));
  const item = exact || (prefixed.length === 1 ? prefixed[0] : null);
  if (!item) {
    $("canned-hint").textContent = prefixed.length
      ? `/${typed} matches ${prefixed.map((i) => `/${i.shortcut}`).join(", ")}: type more.`
      : `No canned response has the shortcut /${typed}.`;
    event.preventDefault();
    return;
  }
  event.preventDefault();
  insert(item, box.selectionStart - typed.length - 1, box.selectionStart);
}

function renderLibrary() {
  const list = $("canned-list");
  list.replaceChildren(
    ...library.map((item) => {
      const edit = el("button", { type: "button", class: "button small", text: "Edit", "aria-label": `Edit /${item.shortcut}` });
      const remove = el("button", { type: "button", class: "button small bad", text: "Delete", "aria-label": `Delete /${item.shortcut}` });
      edit.addEventListener("click", () => startEditing(item));
      remove.addEventListener("click", () => removeCanned(item));
      return el(
        "li",
        { class: "canned-item" },
        el("div", { class: "canned-head" }, el("code", { text: `/${item.shortcut}` }), el("strong", { text: item.title }), el("span", { class: "hint", text: `${item.author} · ${formatTime(item.updated_at)}` }), edit, remove),
        el("p", { class: "canned-text", text: item.text })
      );
    })
  );
  $("canned-empty").hidden = library.length > 0;
}

function startEditing(item) {
  editing = item ? item.id : null;
  $("canned-shortcut").value = item ? item.shortcut : "";
  $("canned-title").value = item ? item.title : "";
  $("canned-text").value = item ? item.text : "";
  $("canned-form-title").textContent = item ? `Edit /${item.shortcut}` : "New canned response";
  $("canned-cancel").hidden = !item;
  $("canned-shortcut").focus();
}

async function saveCanned(event) {
  event.preventDefault();
  const body = { shortcut: $("canned-shortcut").value, title: $("canned-title").value, text: $("canned-text").value };
  try {
    if (editing === null) await api("POST", "canned-responses", body);
    else await api("PUT", `canned-responses/${editing}`, body);
    $("canned-error").textContent = "";
    announce(`Canned response /${body.shortcut.trim().toLowerCase()} saved.`);
    startEditing(null);
    await loadCanned(filledFor);
  } catch (error) {
    if (error.status !== 401) $("canned-error").textContent = `${error.message} (${error.status})`;
  }
}

async function removeCanned(item) {
  if (!confirm(`Delete the canned response /${item.shortcut}?`)) return;
  try {
    await api("DELETE", `canned-responses/${item.id}`);
    announce(`Canned response /${item.shortcut} deleted.`);
    if (editing === item.id) startEditing(null);
    await loadCanned(filledFor);
  } catch (error) {
    if (error.status !== 401) $("canned-error").textContent = `${error.message} (${error.status})`;
  }
}

export function wireCanned() {
  $("canned-picker").addEventListener("change", (event) => {
    const item = library.find((i) => String(i.id) === event.target.value);
    event.target.value = "";
    if (item) insert(item);
  });
  $("reply").addEventListener("keydown", expandShortcut);
  $("canned-form").addEventListener("submit", saveCanned);
  $("canned-cancel").addEventListener("click", () => startEditing(null));
}
