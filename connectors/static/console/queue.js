/*
 * The escalation queue: the list of customers waiting for a person, most urgent first, with
 * live waiting times, a "new" mark and a beep for escalations that arrive while the page is
 * open, and the count of those in the page title.
 */

import { $, el } from "../lib/dom.js";
import { announce, beep } from "./alerts.js";
import { agent, api } from "./api.js";
import { channelLabel, customerLabel, fixed, formatWaiting, reasonLabel } from "./format.js";
import { notifyArrivals } from "./shortcuts.js";

const TITLE = "supportbot console";

let queue = []; // queue items as last fetched
let queueFetchedAt = 0; // performance.now() of that fetch: waiting times tick from it
let queueLoaded = false;
const knownEscalations = new Set(); // escalation ids seen in the queue since page load
const fresh = new Set(); // escalation ids that arrived while the page was open, not yet opened
const queueNodes = new Map(); // escalation_id -> <li>
let current = null; // the open conversation's id
let open = () => {}; // opens a conversation by id (wireQueue)

function updateTitle() {
  document.title = fresh.size ? `(${fresh.size}) ${TITLE}` : TITLE;
}

function waitingOf(item) {
  return item.waiting_s + (performance.now() - queueFetchedAt) / 1000;
}

function urgencyOf(item) {
  return item.priority + waitingOf(item) / 600;
}

function urgencyLevel(urgency) {
  if (urgency >= 2.5) return "high";
  if (urgency >= 1.8) return "medium";
  return "low";
}

export async function loadQueue() {
  try {
    const data = await api("GET", "queue");
    queue = data.escalations || [];
    queueFetchedAt = performance.now();
    $("queue-error").textContent = "";
    renderQueue();
  } catch (error) {
    if (error.status !== 401) $("queue-error").textContent = `The queue could not be loaded: ${error.message}`;
  }
}

/** The conversations of the queue, in its order (most urgent first). */
export function queueOrder() {
  return queue.map((item) => item.conversation_id);
}

/** Mark conversation `id` (or none) as the open one: its escalations are no longer new. */
export function selectInQueue(id) {
  current = id;
  if (id) for (const item of queue) if (item.conversation_id === id) fresh.delete(item.escalation_id);
  renderQueue();
}

function assigneeText(item) {
  if (item.status !== "claimed" || !item.assignee) return "Unassigned";
  return item.assignee === agent().name ? "Claimed by you" : `Claimed by ${item.assignee}`;
}

function fillQueueItem(button, item) {
  const urgency = urgencyOf(item);
  const last = item.last_message ? `“${item.last_message}”` : "";
  button.replaceChildren(
    el("span", { class: "customer", title: item.customer, text: customerLabel(item.customer) }),
    el("span", {
      class: `urgency ${urgencyLevel(urgency)}`,
      title: `Urgency ${urgency.toFixed(2)}: priority ${fixed(item.priority)} plus waiting time`,
      "data-field": "urgency",
      text: `urgency ${urgency.toFixed(1)}`,
    }),
    el("span", { class: "reason", text: reasonLabel(item.reason) }),
    el("span", { class: "reason", "data-field": "waiting", text: `waiting ${formatWaiting(waitingOf(item))}` }),
    el("span", { class: "last", text: last }),
    el(
      "span",
      { class: "meta" },
      el("span", { class: "chip channel", text: channelLabel(item.channel) }),
      el("span", { class: `chip${item.status === "claimed" ? " claimed" : ""}`, text: assigneeText(item) }),
      item.unread > 0 ? el("span", { class: "chip unread", text: `${item.unread} unread` }) : null
    )
  );
  button.classList.toggle("new", fresh.has(item.escalation_id));
  button.dataset.conversationId = item.conversation_id;
  if (item.conversation_id === current) button.setAttribute("aria-current", "true");
  else button.removeAttribute("aria-current");
}

function renderQueue() {
  const list = $("queue");
  const arrived = [];
  for (const item of queue) {
    if (!knownEscalations.has(item.escalation_id)) {
      knownEscalations.add(item.escalation_id);
      if (queueLoaded && item.conversation_id !== current) {
        fresh.add(item.escalation_id);
        arrived.push(item);
      }
    }
  }
  const inQueue = new Set(queue.map((item) => item.escalation_id));
  for (const id of Array.from(fresh)) if (!inQueue.has(id)) fresh.delete(id);
  queueLoaded = true;

  const focusedId = document.activeElement && document.activeElement.closest("#queue li")
    ? document.activeElement.closest("li").dataset.escalationId
    : null;
  for (const [id, node] of queueNodes) {
    if (!inQueue.has(Number(id)) && !inQueue.has(id)) {
      node.remove();
      queueNodes.delete(id);
    }
  }
  const order = [];
  for (const item of queue) {
    const key = String(item.escalation_id);
    let node = queueNodes.get(key);
    if (!node) {
      const button = el("button", { type: "button", class: "queue-item" });
      button.addEventListener("click", () => open(button.dataset.conversationId));
      node = el("li", {}, button);
      node.dataset.escalationId = key;
      queueNodes.set(key, node);
    }
    fillQueueItem(node.firstChild, item);
    order.push(node);
  }
  const same = order.length === list.children.length && order.every((node, i) => list.children[i] === node);
  if (!same) {
    list.replaceChildren(...order);
    if (focusedId && queueNodes.has(focusedId)) queueNodes.get(focusedId).firstChild.focus();
  }

  $("queue-empty").hidden = queue.length > 0;
  const waiting = queue.filter((item) => item.status !== "claimed").length;
  $("queue-count").textContent = queue.length
    ? `${waiting} waiting, ${queue.length - waiting} claimed`
    : "nobody waiting";
  updateTitle();
  if (arrived.length) {
    beep();
    notifyArrivals(arrived);
    const [first] = arrived;
    announce(
      arrived.length === 1
        ? `New escalation: ${customerLabel(first.customer)} on ${channelLabel(first.channel)}, ${reasonLabel(first.reason)}.`
        : `${arrived.length} new escalations.`
    );
  }
}

function tick() {
  for (const item of queue) {
    const node = queueNodes.get(String(item.escalation_id));
    if (!node) continue;
    const waiting = node.querySelector('[data-field="waiting"]');
    const text = `waiting ${formatWaiting(waitingOf(item))}`;
    if (waiting.textContent !== text) waiting.textContent = text;
    const urgency = urgencyOf(item);
    const badge = node.querySelector('[data-field="urgency"]');
    const label = `urgency ${urgency.toFixed(1)}`;
    if (badge.textContent !== label) {
      badge.textContent = label;
      badge.className = `urgency ${urgencyLevel(urgency)}`;
    }
  }
}

function queueKeys(event) {
  const buttons = Array.from($("queue").querySelectorAll(".queue-item"));
  const index = buttons.indexOf(document.activeElement);
  if (index === -1) return;
  let target = null;
  if (event.key === "ArrowDown") target = buttons[Math.min(buttons.length - 1, index + 1)];
  else if (event.key === "ArrowUp") target = buttons[Math.max(0, index - 1)];
  else if (event.key === "Home") target = buttons[0];
  else if (event.key === "End") target = buttons[buttons.length - 1];
  if (target) {
    event.preventDefault();
    target.focus();
  }
}

/** Arrow keys in the list, the ticking waiting times, and `openConversation` on a click. */
export function wireQueue(openConversation) {
  open = openConversation;
  $("queue").addEventListener("keydown", queueKeys);
  window.addEventListener("focus", updateTitle);
  setInterval(tick, 1000);
}
