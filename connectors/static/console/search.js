/*
 * Search over every conversation, resolved ones included (GET /console/api/search: text,
 * customer, channel, status, a date range, pages), and the open conversation's history
 * beside it (GET /console/api/conversations/{id}/history: its earlier hand-offs and the same
 * customer's other conversations). A result opens the conversation in the Queue tab.
 */

import { $, el } from "../lib/dom.js";
import { api } from "./api.js";
import { channelLabel, customerLabel, formatTime, reasonLabel } from "./format.js";
import { selectTab } from "./tabs.js";

const FIELDS = [
  ["q", "search-q"],
  ["customer", "search-customer"],
  ["channel", "search-channel"],
  ["status", "search-status"],
  ["from", "search-from"],
  ["to", "search-to"],
];
const PER_PAGE = 20;

let open = () => {}; // opens a conversation by id (wireSearch)
let page = 1;
let historyFor = null; // the conversation whose history is shown

function statusText(result) {
  const esc = result.escalation;
  if (result.status === "claimed") return `claimed by ${result.assignee}`;
  if (result.status === "waiting") return "waiting for an agent";
  if (esc && esc.outcome) return esc.outcome === "resolved" ? "resolved by an agent" : "handed back to the bot";
  return "with the bot";
}

/** One conversation found (a search result or one of the customer's other conversations). */
function hitButton(result, compact) {
  const snippet = result.snippet;
  const button = el(
    "button",
    { type: "button", class: "search-hit", "data-conversation-id": result.conversation_id },
    el(
      "span",
      { class: "hit-head" },
      el("strong", { class: "customer", text: customerLabel(result.customer) }),
      el("span", { class: "chip channel", text: channelLabel(result.channel) }),
      el("span", { class: `chip status-${result.status}`, text: statusText(result) }),
      el("span", { class: "when", text: formatTime(result.last_activity) })
    ),
    snippet ? el("span", { class: "snippet", text: `${snippet.role === "customer" ? "" : `${snippet.role}: `}${snippet.text}` }) : null,
    compact
      ? null
      : el("span", {
          class: "hit-meta",
          text: [
            `${result.messages} message${result.messages === 1 ? "" : "s"}`,
            result.escalation ? `escalated ${formatTime(result.escalation.created_at)}: ${reasonLabel(result.escalation.reason)}` : "never escalated",
          ].join(" · "),
        })
  );
  button.addEventListener("click", () => {
    selectTab($("tab-queue"), false);
    open(result.conversation_id);
  });
  return button;
}

async function runSearch(wanted) {
  const params = new URLSearchParams();
  for (const [name, id] of FIELDS) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  params.set("page", String(wanted));
  params.set("per_page", String(PER_PAGE));
  $("search-error").textContent = "";
  try {
    const data = await api("GET", `search?${params}`);
    page = data.page;
    $("search-results").replaceChildren(...data.results.map((r) => el("li", {}, hitButton(r, false))));
    $("search-summary").textContent = data.total
      ? `${data.total} conversation${data.total === 1 ? "" : "s"} found, most recently active first.`
      : "No conversation matches.";
    $("search-page").textContent = data.total ? `Page ${data.page} of ${data.pages}` : "";
    $("search-prev").disabled = data.page <= 1;
    $("search-next").disabled = data.page >= data.pages;
  } catch (error) {
    if (error.status !== 401) $("search-error").textContent = `The search failed: ${error.message}`;
  }
}

/** Show the history of conversation `id` (its earlier hand-offs, the customer's others). */
export async function loadHistory(id) {
  historyFor = id;
  const box = $("history");
  try {
    const data = await api("GET", `conversations/${encodeURIComponent(id)}/history`);
    if (historyFor !== id) return;
    const parts = [];
    if (data.episodes.length) {
      parts.push(
        el(
          "ul",
          { class: "episodes", "aria-label": "Earlier hand-offs" },
          ...data.episodes.map((e) =>
            el("li", {
              text: `${formatTime(e.created_at)}: ${reasonLabel(e.reason)}, ${(e.outcome || "closed").replace(/_/g, " ")}${e.resolved_at ? ` ${formatTime(e.resolved_at)}` : ""}`,
            })
          )
        )
      );
    }
    if (data.others.length) {
      parts.push(
        el(
          "ul",
          { class: "other-conversations", "aria-label": "Same customer elsewhere" },
          ...data.others.map((r) => el("li", {}, hitButton(r, true)))
        )
      );
    }
    if (!parts.length) parts.push(el("p", { class: "hint", text: "No earlier conversations with this customer." }));
    box.replaceChildren(...parts);
  } catch (error) {
    if (historyFor === id && error.status !== 401) box.replaceChildren(el("p", { class: "hint", text: `The history could not be loaded: ${error.message}` }));
  }
}

export function wireSearch(openConversation) {
  open = openConversation;
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    runSearch(1);
  });
  $("search-prev").addEventListener("click", () => runSearch(Math.max(1, page - 1)));
  $("search-next").addEventListener("click", () => runSearch(page + 1));
}
