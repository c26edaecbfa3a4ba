/*
 * The open conversation: its header and actions (claim, release, hand back, resolve), the
 * escalation's details and the bot's guesses, the transcript with its labelling controls, and
 * the reply box. Every action refetches the conversation and the queue afterwards.
 */

import { $, el } from "../lib/dom.js";
import { openApproval } from "./approval.js";
import { announce } from "./alerts.js";
import { agent, api } from "./api.js";
import { channelLabel, customerLabel, fixed, formatTime, humanize, percent, reasonLabel } from "./format.js";
import { loadQueue, selectInQueue } from "./queue.js";
import { loadHistory } from "./search.js";
import { loadCanned } from "./canned.js";

const NEW_INTENT = "__new__";
const INTENT_PATTERN = /^[a-z][a-z0-9_]{1,63}$/;
const SENTIMENTS = ["negative", "neutral", "positive"];
const ACTIONS = [
  ["claim", "Claimed. You can reply now."],
  ["release", "Released: back in the queue."],
  ["handback", "Handed back: the bot answers this customer again."],
  ["resolve", "Resolved: the bot answers this customer again."],
];

let current = null; // the open conversation's id
let conversation = null; // its last fetched payload
let intents = [];
let colleagues = []; // names of the accounts a conversation can be given to
let intentsVersion = 0;
const messageNodes = new Map(); // message id -> {node, signature}

/** The id of the open conversation, or null. */
export function currentConversationId() {
  return current;
}

export function openConversation(id) {
  if (!id) return;
  if (id !== current) {
    current = id;
    conversation = null;
    messageNodes.clear();
    $("transcript").replaceChildren();
    $("reply").value = "";
    $("history").replaceChildren();
    $("note").value = "";
    $("canned-hint").textContent = "";
    showConversationError("");
    loadHistory(id);
    loadCanned(id);
  }
  history.replaceState(null, "", `#conversation=${encodeURIComponent(id)}`);
  selectInQueue(id);
  $("placeholder").hidden = true;
  $("conversation").hidden = false;
  loadConversation();
}

function closeConversation(message) {
  current = null;
  conversation = null;
  messageNodes.clear();
  $("conversation").hidden = true;
  $("placeholder").hidden = false;
  $("placeholder").textContent = message || "Select a conversation in the queue to see it here.";
  history.replaceState(null, "", location.pathname + location.search);
  selectInQueue(null);
}

export async function loadConversation() {
  const id = current;
  if (!id) return;
  try {
    const data = await api("GET", `conversations/${encodeURIComponent(id)}`);
    if (id !== current) return;
    conversation = data;
    renderConversation();
  } catch (error) {
    if (id !== current || error.status === 401) return;
    if (error.status === 404) closeConversation(`That conversation does not exist (${error.message}).`);
    else showConversationError(`The conversation could not be loaded: ${error.message}`);
  }
}

function showConversationError(text) {
  $("conversation-error").textContent = text;
}

/** What the signed-in agent may do with the open conversation. */
function permissions() {
  const esc = conversation.escalation;
  const conv = conversation.conversation;
  const me = agent();
  const operator = me.role === "operator";
  const unresolved = !!esc && (esc.status === "open" || esc.status === "claimed");
  const holder = esc && esc.status === "claimed" ? esc.assignee : conv.status === "claimed" ? conv.assignee : null;
  const mine = holder === me.name && (unresolved || conv.status === "claimed");
  return {
    unresolved,
    holder,
    mine,
    claim: unresolved && esc.status === "open",
    release: unresolved && esc.status === "claimed" && (mine || operator),
    close: unresolved && (mine || operator),
    transfer: unresolved && (esc.status === "open" || mine || operator),
  };
}

function statusText(conv, esc) {
  if (conv.status === "claimed") return conv.assignee === agent().name ? "claimed by you" : `claimed by ${conv.assignee}`;
  if (conv.status === "waiting") return "waiting for an agent";
  if (esc && esc.status === "resolved") return "with the bot (escalation closed)";
  return "with the bot";
}

function renderConversation() {
  const { conversation: conv, escalation: esc } = conversation;
  $("conversation-title").textContent = customerLabel(conv.customer);
  $("conversation-title").title = conv.customer || "";
  $("conversation-sub").textContent = [
    channelLabel(conv.channel),
    statusText(conv, esc),
    `started ${formatTime(conv.created_at)}`,
  ].join(" · ");

  const can = permissions();
  $("claim").disabled = !can.claim;
  $("release").disabled = !can.release;
  $("handback").disabled = !can.close;
  $("resolve").disabled = !can.close;
  renderTransfer(can.transfer, can.holder);
  const reply = $("reply");
  const wasDisabled = reply.disabled;
  reply.disabled = !can.mine;
  $("send").disabled = !can.mine;
  $("reply-hint").textContent = can.mine
    ? "Enter sends, Shift+Enter starts a new line, /shortcut then Tab inserts a canned response. The customer gets it in their own channel."
    : can.holder
      ? `${can.holder} has this conversation; only they can reply.`
      : can.unresolved
        ? "Claim the conversation to reply."
        : "The bot has this conversation. Nothing to claim.";
  if (wasDisabled && !reply.disabled && document.activeElement === document.body) reply.focus();

  renderEscalation(esc);
  renderGuesses();
  renderSentiment();
  renderTranscript();
}

function renderEscalation(esc) {
  const box = $("escalation");
  if (!esc) {
    box.replaceChildren(el("p", { class: "hint", text: "This conversation was never escalated." }));
    return;
  }
  const facts = el("dl", { class: "facts-list" });
  const add = (name, value) => {
    if (value === null || value === undefined || value === "") return;
    facts.append(el("dt", { text: name }), el("dd", { text: String(value) }));
  };
  add("Status", esc.status + (esc.timed_out_at ? " (customer told nobody was free)" : ""));
  if (esc.outcome) add("Outcome", esc.outcome.replace(/_/g, " "));
  add("Priority", fixed(esc.priority));
  add("Escalated", formatTime(esc.created_at));
  if (esc.assignee) add("Assignee", esc.assignee);
  if (esc.claimed_at) add("Claimed", formatTime(esc.claimed_at));
  for (const [name, value] of Object.entries(esc.scores || {})) {
    // Counts (failed turns: 2) stay whole; scores keep three decimals.
    const shown = typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : value;
    add(name.replace(/_/g, " "), shown);
  }
  box.replaceChildren(
    el("span", { class: "reason-badge", text: reasonLabel(esc.reason) }),
    el("p", { class: "explanation", text: esc.explanation || "" }),
    facts
  );
}

function renderGuesses() {
  const list = $("guesses");
  const guesses = conversation.guesses || [];
  const lastCustomer = [...conversation.messages].reverse().find((m) => m.role === "customer");
  $("guesses-for").textContent = lastCustomer ? `For “${lastCustomer.text}”` : "No customer message yet.";
  list.replaceChildren(
    ...guesses.map(([intent, score]) =>
      el(
        "li",
        { class: "guess" },
        el("span", { text: intent }),
        el("span", { class: "score", text: percent(score) }),
        el("span", { class: "bar", "aria-hidden": "true" }, barFill(score))
      )
    )
  );
}

function barFill(score) {
  const fill = el("i");
  fill.style.width = `${Math.max(0, Math.min(1, score || 0)) * 100}%`;
  return fill;
}

function renderSentiment() {
  const group = $("conversation-sentiment");
  const labelled = (conversation.labels || {}).sentiment || null;
  const buttons = SENTIMENTS.map((value) => {
    const button = el("button", {
      type: "button",
      class: `button small${value === "negative" ? " bad" : ""}`,
      "aria-pressed": String(labelled === value),
      text: humanize(value),
    });
    button.addEventListener("click", () =>
      act(async () => {
        await api("POST", `conversations/${encodeURIComponent(current)}/labels`, { sentiment: value });
        announce(`Conversation labelled ${value}.`);
      }, button)
    );
    return button;
  });
  const focused = group.contains(document.activeElement) ? document.activeElement.textContent : null;
  group.replaceChildren(...buttons);
  if (focused) buttons.find((b) => b.textContent === focused)?.focus();
  $("sentiment-state").textContent = labelled ? `Labelled ${labelled}.` : "Not labelled yet.";
}

function renderTranscript() {
  const log = $("transcript");
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const seen = new Set();
  const nodes = [];
  let appended = false;
  for (const entry of withNotes(conversation.messages, conversation.notes || [])) {
    const { key, message, note } = entry;
    seen.add(key);
    const signature = note
      ? JSON.stringify(note)
      : `${intentsVersion}|${conversation.conversation.status}|${conversation.conversation.assignee}|${JSON.stringify(message)}`;
    const cached = messageNodes.get(key);
    if (cached && cached.signature === signature) {
      nodes.push(cached.node);
      continue;
    }
    const node = note ? renderNote(note) : renderMessage(message);
    if (cached) {
      // Keep the keyboard where it was: focus the same control in the new node.
      const active = cached.node.contains(document.activeElement) ? document.activeElement.dataset.control : null;
      cached.node.replaceWith(node);
      if (active) node.querySelector(`[data-control="${active}"]`)?.focus();
    } else {
      appended = true;
    }
    messageNodes.set(key, { node, signature });
    nodes.push(node);
  }
  for (const id of Array.from(messageNodes.keys())) if (!seen.has(id)) messageNodes.delete(id);
  const same = nodes.length === log.children.length && nodes.every((node, i) => log.children[i] === node);
  if (!same) log.replaceChildren(...nodes);
  if (appended && (atEnd || !same)) log.scrollTop = log.scrollHeight;
}

/** Messages and private notes in one timeline (a note after the messages of its time). */
function withNotes(messages, notes) {
  const entries = messages.map((message) => ({ key: message.id, at: Date.parse(message.created_at), message }));
  for (const note of notes) {
    const at = Date.parse(note.created_at);
    let index = entries.length;
    while (index > 0 && entries[index - 1].at > at) index -= 1;
    entries.splice(index, 0, { key: `note-${note.id}`, at, note });
  }
  return entries;
}

function renderNote(note) {
  return el(
    "article",
    { class: "msg note", "data-note-id": note.id, "aria-label": `Private note by ${note.author}, ${formatTime(note.created_at)}` },
    el("div", { class: "who-line" }, el("strong", { text: `Private note · ${note.author}` }), ` · ${formatTime(note.created_at)} · only agents see this`),
    el("p", { class: "text", text: note.text })
  );
}

async function addNote() {
  const box = $("note");
  const text = box.value.trim();
  if (!text || !current) return;
  $("add-note").disabled = true;
  try {
    await api("POST", `conversations/${encodeURIComponent(current)}/notes`, { text });
    box.value = "";
    $("note-error").textContent = "";
    announce("Note added. Only agents see it.");
  } catch (error) {
    if (error.status !== 401) $("note-error").textContent = `Not added: ${error.message}${error.status ? ` (${error.status})` : ""}`;
  }
  $("add-note").disabled = false;
  await loadConversation();
}

function renderMessage(message) {
  const conv = conversation.conversation;
  const role = message.role;
  const author =
    role === "customer"
      ? customerLabel(conv.customer)
      : role === "agent"
        ? `Agent ${message.agent || ""}`.trim()
        : role === "bot"
          ? "Bot"
          : "System";
  const textId = `message-${message.id}-text`;
  const node = el(
    "article",
    { class: `msg ${role}`, "data-message-id": message.id, "aria-label": `${author}, ${formatTime(message.created_at)}` },
    el("div", { class: "who-line" }, el("strong", { text: author }), ` · ${formatTime(message.created_at)}`),
    el("p", { class: "text", id: textId, text: message.text })
  );
  const facts = el("div", { class: "facts" });
  if (role === "customer") {
    facts.append(
      el("span", {
        class: "chip",
        title: "Intent the model predicted, with its calibrated confidence",
        text: message.intent
          ? `intent ${message.intent} ${percent(message.confidence)}`
          : typeof message.confidence === "number"
            ? `intent unsure (${percent(message.confidence)})`
            : "no intent",
      })
    );
    if (message.sentiment) {
      facts.append(
        el("span", {
          class: `chip ${message.sentiment}`,
          title: "Sentiment and negativity (P(negative) - P(positive))",
          text: `${message.sentiment} · negativity ${fixed(message.negativity)}`,
        })
      );
    }
    if (message.route) facts.append(el("span", { class: "chip", text: `route ${message.route}` }));
    if (message.out_of_scope) {
      facts.append(
        el("span", {
          class: "chip oos",
          title: "The out-of-scope detector found no intent the bot covers (higher score: further out)",
          text: typeof message.oos_score === "number" ? `out of scope ${fixed(message.oos_score)}` : "out of scope",
        })
      );
    }
    node.append(facts);
    if ((message.entities || []).length) node.append(entityChips(message.entities));
    node.append(intentControls(message, textId), sentimentControls(message, textId));
  } else if (role === "bot") {
    if (message.route) facts.append(el("span", { class: "chip", text: `route ${message.route}` }));
    if (message.source) facts.append(el("span", { class: "chip source", title: message.source, text: `source ${message.source}` }));
    if (typeof message.score === "number") facts.append(el("span", { class: "chip", text: `score ${fixed(message.score)}` }));
    if (facts.childElementCount) node.append(facts);
    // A hand-off notice is no answer to judge.
    if (message.route !== "handoff") node.append(ratingControls(message, textId));
  } else if (role === "agent") {
    node.append(approvalControls(message));
  }
  return node;
}

function labelByline(labels) {
  return labels && labels.by ? ` by ${labels.by}` : "";
}

function intentControls(message, textId) {
  const labels = message.labels || {};
  const box = el("div", { class: "labeling" });
  const error = el("span", { class: "label-error", role: "alert" });
  const select = el("select", {
    "aria-label": "Correct intent",
    "aria-describedby": textId,
    "data-control": "intent",
  });
  select.append(el("option", { value: "", text: "Correct intent…" }));
  for (const intent of intents) select.append(el("option", { value: intent, text: intent }));
  select.append(el("option", { value: NEW_INTENT, text: "New intent…" }));
  const name = el("input", {
    type: "text",
    class: "new-intent",
    "aria-label": "New intent name",
    placeholder: "new_intent_name",
    pattern: INTENT_PATTERN.source,
    "data-control": "new-intent",
    hidden: true,
  });
  const saveButton = el("button", { type: "button", class: "button small", "data-control": "save-intent", disabled: true, text: "Save" });
  select.addEventListener("change", () => {
    name.hidden = select.value !== NEW_INTENT;
    saveButton.disabled = !select.value;
    if (!name.hidden) name.focus();
  });
  const submit = () => {
    const intent = select.value === NEW_INTENT ? name.value.trim() : select.value;
    if (!INTENT_PATTERN.test(intent)) {
      error.textContent = "An intent name is 2-64 characters: a lower-case letter, then letters, digits or _.";
      name.focus();
      return;
    }
    error.textContent = "";
    act(async () => {
      await api("POST", `messages/${message.id}/labels`, { intent });
      if (!intents.includes(intent)) await loadIntents();
      announce(`Intent corrected to ${intent}.`);
    }, saveButton, error);
  };
  saveButton.addEventListener("click", submit);
  name.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      submit();
    }
  });
  if (labels.intent) box.append(el("span", { class: "label-state", text: `Corrected to ${labels.intent}${labelByline(labels)}` }));
  box.append(select, name, saveButton, error);
  return box;
}

/** The entities the runtime found in a customer message, one chip each (type and text). */
function entityChips(entities) {
  const box = el("div", { class: "entities", role: "list", "aria-label": "Entities" });
  for (const entity of entities) {
    const shown = entity.value !== null && String(entity.value) !== entity.text ? ` → ${entity.value}` : "";
    box.append(
      el("span", {
        class: "chip entity",
        role: "listitem",
        title: `${humanize(entity.type)}${typeof entity.start === "number" ? `, characters ${entity.start}-${entity.end}` : ""}`,
        text: `${entity.type.replace(/_/g, " ")}: ${entity.text}${shown}`,
      })
    );
  }
  return box;
}

/** The agent's sentiment of one customer message (what `supportbot retrain` learns from). */
function sentimentControls(message, textId) {
  const labels = message.labels || {};
  const box = el("div", { class: "labeling", role: "group", "aria-label": "Message sentiment", "aria-describedby": textId });
  const error = el("span", { class: "label-error", role: "alert" });
  box.append(el("span", { text: "Sentiment" }));
  for (const value of SENTIMENTS) {
    const button = el("button", {
      type: "button",
      class: `button small${value === "negative" ? " bad" : ""}`,
      "aria-pressed": String(labels.sentiment === value),
      "data-control": `sentiment-${value}`,
      text: humanize(value),
    });
    button.addEventListener("click", () =>
      act(async () => {
        await api("POST", `messages/${message.id}/labels`, { sentiment: value });
        announce(`Message labelled ${value}.`);
      }, button, error)
    );
    box.append(button);
  }
  if (labels.sentiment) box.append(el("span", { class: "sentiment-label", text: `Labelled ${labels.sentiment}${labelByline(labels)}` }));
  box.append(error);
  return box;
}

function ratingControls(message, textId) {
  const labels = message.labels || {};
  const box = el("div", { class: "labeling", role: "group", "aria-label": "Rate this answer", "aria-describedby": textId });
  const error = el("span", { class: "label-error", role: "alert" });
  box.append(el("span", { text: "Answer was" }));
  for (const [rating, text] of [["good", "Good"], ["bad", "Bad"]]) {
    const button = el("button", {
      type: "button",
      class: `button small ${rating}`,
      "aria-pressed": String(labels.rating === rating),
      "data-control": `rate-${rating}`,
      text,
    });
    button.addEventListener("click", () =>
      act(async () => {
        await api("POST", `messages/${message.id}/labels`, { rating });
        announce(`Answer rated ${rating}.`);
      }, button, error)
    );
    box.append(button);
  }
  if (labels.rating) box.append(el("span", { class: "label-state", text: `Rated${labelByline(labels)}` }));
  box.append(error);
  return box;
}

function approvalControls(message) {
  const box = el("div", { class: "labeling" });
  if (message.approved) {
    box.append(el("span", { class: "label-state", text: "Saved as an approved answer ✓" }));
    return box;
  }
  const error = el("span", { class: "label-error", role: "alert" });
  const button = el("button", {
    type: "button",
    class: "button small",
    "data-control": "approve",
    text: "Save as approved answer",
  });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await openApproval(message, () => Promise.all([loadQueue(), loadConversation()]));
      error.textContent = "";
    } catch (failure) {
      if (failure.status !== 401) error.textContent = failure.status ? `${failure.message} (${failure.status})` : failure.message;
    }
    button.disabled = false;
  });
  box.append(button, error);
  return box;
}

/**
 * Run one user action: disable its button meanwhile, show a failure inline (409 and
 * friends), then refetch what the page shows.
 */
async function act(action, button, errorBox) {
  if (button) button.disabled = true;
  const shown = errorBox || $("conversation-error");
  try {
    await action();
    shown.textContent = "";
    if (!errorBox) showConversationError("");
  } catch (error) {
    if (error.status === 401) return;
    shown.textContent = error.status ? `${error.message} (${error.status})` : error.message;
    if (button) button.disabled = false;
  }
  await Promise.all([loadQueue(), loadConversation()]);
}

function conversationAction(path, done) {
  return () =>
    act(async () => {
      const id = current;
      await api("POST", `conversations/${encodeURIComponent(id)}/${path}`);
      if (done) done();
    });
}

async function sendReply() {
  const box = $("reply");
  const text = box.value.trim();
  if (!text || box.disabled) return;
  $("send").disabled = true;
  try {
    const result = await api("POST", `conversations/${encodeURIComponent(current)}/reply`, { text });
    box.value = "";
    if (result && result.delivered === false) {
      showConversationError(
        "Your reply is saved in the transcript, but it did not reach the customer: " +
          (result.undelivered_reason || "their channel did not take it.")
      );
    } else {
      showConversationError("");
      announce("Reply sent.");
    }
  } catch (error) {
    if (error.status === 401) return;
    showConversationError(`Not sent: ${error.message}${error.status ? ` (${error.status})` : ""}`);
  }
  await Promise.all([loadQueue(), loadConversation()]);
  box.focus();
}

/** The colleagues a conversation can be assigned or transferred to. */
export async function loadColleagues() {
  try {
    colleagues = (await api("GET", "colleagues")).agents || [];
  } catch (error) {
    if (error.status !== 401) showConversationError(`The list of colleagues could not be loaded: ${error.message}`);
  }
}

function renderTransfer(allowed, holder) {
  const select = $("transfer-to");
  const chosen = select.value;
  const others = colleagues.filter((name) => name !== holder);
  select.replaceChildren(
    el("option", { value: "", text: holder ? "Transfer to…" : "Assign to…" }),
    ...others.map((name) => el("option", { value: name, text: name === agent().name ? `${name} (me)` : name }))
  );
  if (others.includes(chosen)) select.value = chosen;
  select.disabled = !allowed || !others.length;
  $("transfer").disabled = select.disabled || !select.value;
  $("transfer").textContent = holder ? "Transfer" : "Assign";
}

function transfer() {
  const to = $("transfer-to").value;
  if (!to || $("transfer").disabled) return;
  act(async () => {
    await api("POST", `conversations/${encodeURIComponent(current)}/transfer`, { to });
    $("transfer-to").value = "";
    announce(`Transferred to ${to}.`);
  }, $("transfer"));
}

export async function loadIntents() {
  try {
    const data = await api("GET", "intents");
    intents = data.intents || [];
    intentsVersion += 1;
  } catch (error) {
    if (error.status !== 401) showConversationError(`The intent list could not be loaded: ${error.message}`);
  }
}

/** The conversation's action buttons and the reply box (Enter sends, Shift+Enter is a new line). */
export function wireConversation() {
  // Each button's id is also its API path under conversations/{id}/.
  for (const [action, done] of ACTIONS) {
    $(action).addEventListener("click", conversationAction(action, () => announce(done)));
  }
  $("transfer-to").addEventListener("change", () => {
    $("transfer").disabled = $("transfer-to").disabled || !$("transfer-to").value;
  });
  $("transfer-to").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      transfer();
    }
  });
  $("transfer").addEventListener("click", transfer);
  $("note-form").addEventListener("submit", (event) => {
    event.preventDefault();
    addNote();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    sendReply();
  });
  $("reply").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendReply();
    }
  });
}
