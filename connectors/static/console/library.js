/*
 * The answer library (the Answer library tab): the live answer index's answers, the most
 * served first, a page at a time from the server (GET /console/api/answers: text, intent,
 * kind, rated down, disabled), each with its source, how often the bot served it and its
 * ratings, and what agents did to it (who, when). Any agent may disable or enable an answer
 * (from the next message, on every replica), edit it (served at once in place of the
 * original, and saved as an approved answer for the next `supportbot index build` or
 * retrain) or approve a conversation answer (POST /console/api/answers/{disable,enable,edit,
 * approve}).
 *
 * "Excluded by curation" lists instead the answers curation kept out of the index (saved with
 * it, the most frequent first: GET /console/api/answers/excluded) with the reasons, and
 * "Approve a clean version" opens the approval dialog on one (approval.js).
 */

import { $, el } from "../lib/dom.js";
import { announce } from "./alerts.js";
import { api } from "./api.js";
import { openCleanVersion } from "./approval.js";
import { formatTime } from "./format.js";

const PER_PAGE = 20;
const FIELDS = [
  ["q", "library-q"],
  ["intent", "library-intent"],
  ["kind", "library-kind"],
];
const FLAGS = [
  ["rated_down", "library-rated-down"],
  ["disabled", "library-disabled"],
];
const KINDS = { conversation: "from a conversation", faq: "FAQ", approved: "approved" };
const ACTIONS = { disabled: "Disabled", enabled: "Enabled again", edited: "Edited", approved: "Approved" };

let page = 1;
let intentsShown = "";

/** Fetch page `wanted` of the library for the form's filters (the first page by default). */
export async function loadLibrary(wanted = 1) {
  const excluded = $("library-excluded").checked;
  // The index's own filters do not apply to excluded answers: only the text does.
  for (const id of ["library-intent", "library-kind", ...FLAGS.map(([, flag]) => flag)]) $(id).disabled = excluded;
  if (excluded) return loadExcluded(wanted);
  const params = new URLSearchParams();
  for (const [name, id] of FIELDS) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  for (const [name, id] of FLAGS) if ($(id).checked) params.set(name, "1");
  params.set("page", String(wanted));
  params.set("per_page", String(PER_PAGE));
  $("library-error").textContent = "";
  let data;
  try {
    data = await api("GET", `answers?${params}`);
  } catch (error) {
    if (error.status !== 401) $("library-error").textContent = `The answer library could not be loaded: ${error.message}`;
    return;
  }
  page = data.page;
  renderIntents(data.intents);
  $("library-list").replaceChildren(...data.answers.map(entryItem));
  $("library-summary").textContent = data.total
    ? `${data.total} of ${data.indexed} indexed answer${data.indexed === 1 ? "" : "s"}, the most served first.`
    : data.indexed
      ? "No indexed answer matches."
      : "The answer index is empty.";
  $("library-page").textContent = data.total ? `Page ${data.page} of ${data.pages}` : "";
  $("library-prev").disabled = data.page <= 1;
  $("library-next").disabled = data.page >= data.pages;
}

async function loadExcluded(wanted) {
  const params = new URLSearchParams();
  const text = $("library-q").value.trim();
  if (text) params.set("q", text);
  params.set("page", String(wanted));
  params.set("per_page", String(PER_PAGE));
  $("library-error").textContent = "";
  let data;
  try {
    data = await api("GET", `answers/excluded?${params}`);
  } catch (error) {
    if (error.status !== 401) $("library-error").textContent = `The excluded answers could not be loaded: ${error.message}`;
    return;
  }
  page = data.page;
  $("library-list").replaceChildren(...data.excluded.map(excludedItem));
  $("library-summary").textContent = data.total
    ? `${data.total} of the ${data.listed} most frequent answers curation kept out of the index, the most frequent first.`
    : data.listed
      ? "No excluded answer matches."
      : "Curation excluded no answer (or the index was built before excluded answers were saved: run supportbot index build).";
  $("library-page").textContent = data.total ? `Page ${data.page} of ${data.pages}` : "";
  $("library-prev").disabled = data.page <= 1;
  $("library-next").disabled = data.page >= data.pages;
}

function excludedItem(excluded) {
  const approved = excluded.approved_answer_id !== null;
  const item = el("li", { class: "library-item excluded", "data-source": excluded.source });
  const chips = el(
    "div",
    { class: "library-head" },
    ...excluded.reasons.map((reason) => el("span", { class: "chip status-disabled", text: reason })),
    el("span", { class: "chip", text: excluded.intent || "no intent" }),
    approved ? el("span", { class: "chip status-approved", text: "clean version approved" }) : null,
    el("span", { class: "usage", text: `${excluded.conversations} conversation${excluded.conversations === 1 ? "" : "s"}` })
  );
  const body = el(
    "dl",
    { class: "library-pair" },
    el("dt", { text: "Question" }),
    el("dd", { class: "question", text: excluded.question }),
    el("dt", { text: "Answer" }),
    el("dd", { class: "answer", text: excluded.answer })
  );
  if (approved) body.append(el("dt", { text: "Clean version" }), el("dd", { class: "clean", text: excluded.clean_answer }));
  const state = approved ? ` · clean version by ${excluded.by} ${formatTime(excluded.at)}, served from the next index build or retrain` : "";
  const meta = el("p", { class: "hint library-meta" }, el("span", { class: "source", text: excluded.source }), state ? el("span", { class: "state", text: state }) : null);
  const error = el("p", { class: "label-error", role: "alert" });
  const button = el("button", { type: "button", class: "button small", text: approved ? "Edit the clean version" : "Approve a clean version" });
  button.addEventListener("click", async () => {
    error.textContent = "";
    try {
      await openCleanVersion(excluded, () => loadLibrary(page));
    } catch (failure) {
      if (failure.status !== 401) error.textContent = failure.message;
    }
  });
  const actions = el("div", { class: "library-actions", role: "group", "aria-label": "Excluded answer actions" }, button);
  item.append(chips, body, meta, actions, error);
  return item;
}

function renderIntents(intents) {
  const key = intents.join("|");
  if (key === intentsShown) return;
  intentsShown = key;
  const select = $("library-intent");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "any" }), ...intents.map((i) => el("option", { value: i, text: i })));
  select.value = intents.includes(chosen) ? chosen : "";
}

function stateText(answer) {
  if (!answer.action) return null;
  const what = ACTIONS[answer.action] || answer.action;
  return `${what} by ${answer.by} ${formatTime(answer.at)}`;
}

function entryItem(answer) {
  const item = el("li", { class: `library-item${answer.disabled ? " disabled" : ""}`, "data-source": answer.source });
  const chips = el(
    "div",
    { class: "library-head" },
    el("span", { class: "chip", text: answer.intent || "no intent" }),
    el("span", { class: "chip", text: KINDS[answer.kind] || answer.kind }),
    answer.disabled ? el("span", { class: "chip status-disabled", text: "disabled" }) : null,
    answer.edited_answer !== null ? el("span", { class: "chip status-edited", text: "edited" }) : null,
    answer.approved_answer_id !== null ? el("span", { class: "chip status-approved", text: "approved" }) : null,
    answer.replaced_by ? el("span", { class: "chip status-replaced", text: "replaced by its approved answer" }) : null,
    el("span", {
      class: "usage",
      text: `served ${answer.served}× · rated up ${answer.rated_up} · down ${answer.rated_down}`,
    })
  );
  const body = el(
    "dl",
    { class: "library-pair" },
    el("dt", { text: "Question" }),
    el("dd", { class: "question", text: answer.question }),
    el("dt", { text: answer.edited_answer !== null ? "Served (edited)" : "Answer" }),
    el("dd", { class: "answer", text: answer.served_answer })
  );
  if (answer.edited_answer !== null) body.append(el("dt", { text: "Original" }), el("dd", { class: "original", text: answer.answer }));
  let state = stateText(answer);
  // Indexed now as an approved answer: the two serve the same text, once (not twice).
  if (answer.replaced_by) state = `${state} · indexed as ${answer.replaced_by}, served once`;
  const meta = el("p", { class: "hint library-meta" }, el("span", { class: "source", text: answer.source }), state ? el("span", { class: "state", text: ` · ${state}` }) : null);
  const error = el("p", { class: "label-error", role: "alert" });
  const actions = el("div", { class: "library-actions", role: "group", "aria-label": "Answer actions" });
  const act = (label, path, extra = {}) => {
    const button = el("button", { type: "button", class: "button small", text: label });
    button.addEventListener("click", () => change(path, { source: answer.source, ...extra }, button, error, `${label}: done.`));
    return button;
  };
  actions.append(answer.disabled ? act("Enable", "enable") : act("Disable", "disable"));
  const edit = el("button", { type: "button", class: "button small", text: "Edit" });
  edit.addEventListener("click", () => openEditor(item, answer, error));
  actions.append(edit);
  if (answer.kind === "conversation" && answer.approved_answer_id === null) actions.append(act("Approve", "approve"));
  item.append(chips, body, meta, actions, error);
  return item;
}

function openEditor(item, answer, error) {
  if (item.querySelector(".library-editor")) return;
  const box = el("textarea", { rows: "4", maxlength: "4000", "aria-label": "Edited answer" });
  box.value = answer.served_answer;
  const save = el("button", { type: "submit", class: "button small primary", text: "Save edit" });
  const cancel = el("button", { type: "button", class: "button small", text: "Cancel" });
  const form = el(
    "form",
    { class: "library-editor" },
    box,
    el("p", { class: "hint", text: "Served at once in place of the original (same question), and saved as an approved answer for the next supportbot index build or retrain." }),
    el("div", { class: "row" }, save, cancel)
  );
  cancel.addEventListener("click", () => form.remove());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    change("edit", { source: answer.source, answer: box.value }, save, error, "Edit saved: served from the next message.");
  });
  item.querySelector(".library-actions").after(form);
  box.focus();
}

async function change(path, body, button, error, done) {
  button.disabled = true;
  try {
    await api("POST", `answers/${path}`, body);
  } catch (failure) {
    if (failure.status === 401) return;
    error.textContent = failure.status ? `${failure.message} (${failure.status})` : failure.message;
    button.disabled = false;
    return;
  }
  announce(done);
  await loadLibrary(page);
}

/** A colleague changed an answer: show it, if the library is open and nobody is editing. */
export function libraryChanged() {
  if ($("view-library").hidden || $("library-list").querySelector(".library-editor")) return;
  loadLibrary(page);
}

export function wireLibrary() {
  $("library-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadLibrary(1);
  });
  for (const id of [...FLAGS.map(([, flag]) => flag), "library-excluded"]) $(id).addEventListener("change", () => loadLibrary(1));
  for (const id of ["library-intent", "library-kind"]) $(id).addEventListener("change", () => loadLibrary(1));
  $("library-prev").addEventListener("click", () => loadLibrary(Math.max(1, page - 1)));
  $("library-next").addEventListener("click", () => loadLibrary(page + 1));
}
