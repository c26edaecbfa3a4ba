/*
 * supportbot agent console. Plain modern JavaScript, no build step, no libraries.
 *
 * Talks to the JSON API under /console/api and listens on its events WebSocket; the contract
 * is docs/console.md. Events are only hints: on each one the page refetches what it shows
 * (the queue, and the open conversation when the event is about it), so a missed event
 * costs nothing but a moment's delay. All text from the API is rendered as text, never as
 * HTML.
 */
(() => {
  "use strict";

  const script = document.currentScript;
  const API = new URL("../api/", script ? script.src : new URL("/console/static/", location.href));
  const SIGN_IN = new URL("../sign-in", API);
  const EVENTS_URL = new URL("events", API);
  EVENTS_URL.protocol = EVENTS_URL.protocol === "https:" ? "wss:" : "ws:";
  const TITLE = "supportbot console";
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const REFRESH_DELAY_MS = 120; // events in a burst cause one refetch
  const SOUND_KEY = "supportbot.console.sound";
  const NEW_INTENT = "__new__";
  const INTENT_PATTERN = /^[a-z][a-z0-9_]{1,63}$/;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const REASONS = {
    asked_for_human: "Asked for a person",
    negative_message: "Negative message",
    negative_trend: "Negative trend",
    repeated_fallback: "Bot could not help",
  };
  const CHANNELS = { widget: "Web chat", telegram: "Telegram", rest: "REST API", rasa: "Rasa" };
  const SENTIMENTS = ["negative", "neutral", "positive"];

  const $ = (id) => document.getElementById(id);

  // -- state ---------------------------------------------------------------------------------

  let me = null; // {name, role, csrf_token}
  let queue = []; // queue items as last fetched
  let queueFetchedAt = 0; // performance.now() of that fetch: waiting times tick from it
  let queueLoaded = false;
  const knownEscalations = new Set(); // escalation ids seen in the queue since page load
  const fresh = new Set(); // escalation ids that arrived while the page was open, not yet opened
  let current = null; // the open conversation's id
  let conversation = null; // its last fetched payload
  let intents = [];
  let intentsVersion = 0;
  let socket = null;
  let attempts = 0;
  let reconnectTimer = null;
  let refreshTimer = null;
  let pending = { queue: false, conversation: false };
  let refreshing = false;
  let soundOn = load(SOUND_KEY) !== "off";
  let audio = null;
  const queueNodes = new Map(); // escalation_id -> <li>
  const messageNodes = new Map(); // message id -> {node, signature}

  function load(key) {
    try {
      return localStorage.getItem(key);
    } catch (_) {
      return null;
    }
  }

  function save(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch (_) {
      /* storage disabled: the setting lasts for this page view */
    }
  }

  // -- DOM helpers ---------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
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

  function svg(tag, attrs = {}, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function svgTitle(text) {
    const title = svg("title");
    title.textContent = text;
    return title;
  }

  function announce(text) {
    const announcer = $("announcer");
    announcer.textContent = "";
    // A fresh text node after a tick, so that repeating the same words is announced again.
    setTimeout(() => (announcer.textContent = text), 50);
  }

  // -- formatting ----------------------------------------------------------------------------

  function reasonLabel(reason) {
    return REASONS[reason] || (reason ? reason.replace(/_/g, " ") : "unknown");
  }

  /** A customer's display name; anonymous web visitors are known by a random session id. */
  function customerLabel(customer) {
    if (!customer) return "Customer";
    return /^[A-Za-z0-9_-]{16,}$/.test(customer) ? `Visitor ${customer.slice(0, 6)}` : customer;
  }

  function channelLabel(channel) {
    return CHANNELS[channel] || channel;
  }

  function formatWaiting(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const minutes = Math.floor(s / 60);
    if (minutes < 60) return `${minutes} min`;
    const hours = Math.floor(minutes / 60);
    return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
  }

  function formatTime(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    const sameDay = date.toDateString() === new Date().toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return sameDay ? time : `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
  }

  function percent(value) {
    return typeof value === "number" ? `${Math.round(value * 100)} %` : "–";
  }

  function fixed(value, digits = 2) {
    return typeof value === "number" ? value.toFixed(digits) : "–";
  }

  function urgencyLevel(urgency) {
    if (urgency >= 2.5) return "high";
    if (urgency >= 1.8) return "medium";
    return "low";
  }

  function humanize(key) {
    const text = key.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // -- API -----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function goToSignIn() {
    const next = location.pathname + location.search + location.hash;
    location.assign(`${SIGN_IN.pathname}?next=${encodeURIComponent(next)}`);
  }

  /** One API call; JSON in and out. Throws ApiError with the server's message. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf_token;
    let response;
    try {
      response = await fetch(new URL(path, API), {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      throw new ApiError(0, "the console cannot reach the server; check the connection");
    }
    if (response.status === 401) {
      goToSignIn();
      throw new ApiError(401, "signed out");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message);
    }
    return data;
  }

  // -- notification --------------------------------------------------------------------------

  function updateTitle() {
    document.title = fresh.size ? `(${fresh.size}) ${TITLE}` : TITLE;
  }

  function audioContext() {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    if (!audio) audio = new Context();
    if (audio.state === "suspended") audio.resume().catch(() => {});
    return audio;
  }

  function beep() {
    if (!soundOn) return;
    try {
      const context = audioContext();
      if (!context) return;
      const oscillator = context.createOscillator();
      const gain = context.createGain();
      const t = context.currentTime;
      oscillator.type = "sine";
      oscillator.frequency.setValueAtTime(880, t);
      oscillator.frequency.setValueAtTime(1175, t + 0.12);
      gain.gain.setValueAtTime(0.0001, t);
      gain.gain.exponentialRampToValueAtTime(0.18, t + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.3);
      oscillator.connect(gain);
      gain.connect(context.destination);
      oscillator.start(t);
      oscillator.stop(t + 0.32);
    } catch (_) {
      /* autoplay refused or no audio device: the title badge still tells */
    }
  }

  // Browsers only let audio start after a user gesture: take the first one to unlock it.
  function unlockAudio() {
    try {
      audioContext();
    } catch (_) {
      /* no audio: nothing to unlock */
    }
    window.removeEventListener("pointerdown", unlockAudio);
    window.removeEventListener("keydown", unlockAudio);
  }

  function renderSound() {
    const button = $("sound");
    button.setAttribute("aria-pressed", String(soundOn));
    button.textContent = soundOn ? "Sound on" : "Sound off";
  }

  // -- queue ---------------------------------------------------------------------------------

  function waitingOf(item) {
    return item.waiting_s + (performance.now() - queueFetchedAt) / 1000;
  }

  function urgencyOf(item) {
    return item.priority + waitingOf(item) / 600;
  }

  async function loadQueue() {
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

  function assigneeText(item) {
    if (item.status !== "claimed" || !item.assignee) return "Unassigned";
    return item.assignee === me.name ? "Claimed by you" : `Claimed by ${item.assignee}`;
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
        button.addEventListener("click", () => openConversation(button.dataset.conversationId));
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
    const open = queue.filter((item) => item.status !== "claimed").length;
    $("queue-count").textContent = queue.length
      ? `${open} waiting, ${queue.length - open} claimed`
      : "nobody waiting";
    updateTitle();
    if (arrived.length) {
      beep();
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

  // -- conversation --------------------------------------------------------------------------

  function openConversation(id) {
    if (!id) return;
    if (id !== current) {
      current = id;
      conversation = null;
      messageNodes.clear();
      $("transcript").replaceChildren();
      $("reply").value = "";
      showConversationError("");
    }
    for (const item of queue) if (item.conversation_id === id) fresh.delete(item.escalation_id);
    history.replaceState(null, "", `#conversation=${encodeURIComponent(id)}`);
    renderQueue();
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
    renderQueue();
  }

  async function loadConversation() {
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
    };
  }

  function statusText(conv, esc) {
    if (conv.status === "claimed") return conv.assignee === me.name ? "claimed by you" : `claimed by ${conv.assignee}`;
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
    const reply = $("reply");
    const wasDisabled = reply.disabled;
    reply.disabled = !can.mine;
    $("send").disabled = !can.mine;
    $("reply-hint").textContent = can.mine
      ? "Enter sends, Shift+Enter starts a new line. The customer gets it in their own channel."
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
      add(name.replace(/_/g, " "), typeof value === "number" ? value.toFixed(3) : value);
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
    for (const message of conversation.messages) {
      seen.add(message.id);
      const signature = `${intentsVersion}|${conversation.conversation.status}|${conversation.conversation.assignee}|${JSON.stringify(message)}`;
      const cached = messageNodes.get(message.id);
      if (cached && cached.signature === signature) {
        nodes.push(cached.node);
        continue;
      }
      const node = renderMessage(message);
      if (cached) {
        // Keep the keyboard where it was: focus the same control in the new node.
        const active = cached.node.contains(document.activeElement) ? document.activeElement.dataset.control : null;
        cached.node.replaceWith(node);
        if (active) node.querySelector(`[data-control="${active}"]`)?.focus();
      } else {
        appended = true;
      }
      messageNodes.set(message.id, { node, signature });
      nodes.push(node);
    }
    for (const id of Array.from(messageNodes.keys())) if (!seen.has(id)) messageNodes.delete(id);
    const same = nodes.length === log.children.length && nodes.every((node, i) => log.children[i] === node);
    if (!same) log.replaceChildren(...nodes);
    if (appended && (atEnd || !same)) log.scrollTop = log.scrollHeight;
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
      node.append(facts, intentControls(message, textId));
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
    button.addEventListener("click", () =>
      act(async () => {
        await api("POST", "approved-answers", { answer_message_id: message.id });
        announce("Saved as an approved answer.");
      }, button, error)
    );
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
          "Your reply is saved in the transcript, but the customer's channel did not take it; they will see it when they reconnect."
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

  async function loadIntents() {
    try {
      const data = await api("GET", "intents");
      intents = data.intents || [];
      intentsVersion += 1;
    } catch (error) {
      if (error.status !== 401) showConversationError(`The intent list could not be loaded: ${error.message}`);
    }
  }

  // -- live updates --------------------------------------------------------------------------

  function setConnection(text, state) {
    const node = $("connection");
    node.textContent = text;
    node.dataset.state = state;
  }

  function connect() {
    if (socket) return;
    clearTimeout(reconnectTimer);
    setConnection(attempts ? "Reconnecting…" : "Connecting…", "connecting");
    const ws = new WebSocket(EVENTS_URL);
    socket = ws;
    ws.addEventListener("message", (event) => {
      if (socket !== ws) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      receive(data);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return;
      socket = null;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempts);
    attempts += 1;
    const wait = Math.round(delay * (0.75 + Math.random() * 0.5));
    setConnection(`Offline: retrying in ${Math.ceil(wait / 1000)} s`, "offline");
    // A refused handshake looks like any dropped socket: if the session expired, /me says so.
    if (attempts > 1) api("GET", "me").catch(() => {});
    reconnectTimer = setTimeout(connect, wait);
  }

  function receive(event) {
    switch (event.type) {
      case "hello":
        attempts = 0;
        setConnection("Live", "online");
        // Whatever happened while the socket was down: reload it all.
        refresh({ queue: true, conversation: true });
        break;
      case "lagged":
        refresh({ queue: true, conversation: true });
        break;
      default:
        refresh({ queue: true, conversation: !!current && event.conversation_id === current });
    }
  }

  /** Coalesce refetches: a burst of events costs one queue and one conversation fetch. */
  function refresh(what) {
    pending.queue = pending.queue || what.queue;
    pending.conversation = pending.conversation || what.conversation;
    if (refreshTimer || refreshing) return;
    refreshTimer = setTimeout(runRefresh, REFRESH_DELAY_MS);
  }

  async function runRefresh() {
    refreshTimer = null;
    refreshing = true;
    const what = pending;
    pending = { queue: false, conversation: false };
    try {
      await Promise.all([what.queue ? loadQueue() : null, what.conversation ? loadConversation() : null]);
    } finally {
      refreshing = false;
      if (pending.queue || pending.conversation) refreshTimer = setTimeout(runRefresh, REFRESH_DELAY_MS);
    }
  }

  // -- dashboard -----------------------------------------------------------------------------

  const CHART = { width: 460, height: 210, left: 44, right: 14, top: 14, bottom: 30 };

  const TICKS = 4; // grid lines above the axis

  /** A round top for an axis, so that each of the TICKS grid lines sits on a round value
   * (whole numbers for counts: no "0, 0, 1, 1, 1" axis for small counts). */
  function niceMax(value, whole = true) {
    const raw = Math.max(value, 0) / TICKS;
    if (!(raw > 0)) return whole ? TICKS : 1;
    const power = 10 ** Math.floor(Math.log10(raw));
    let step = 10 * power;
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * power >= raw) {
        step = m * power;
        break;
      }
    }
    if (whole) step = Math.max(1, Math.ceil(step));
    return step * TICKS;
  }

  function shortDate(iso) {
    const date = new Date(`${iso}T00:00:00`);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toLocaleDateString([], { day: "numeric", month: "short" });
  }

  /** Axes, grid lines and x labels for a chart over `labels` with values up to `max`. */
  function frame(labels, max, format) {
    const { width, height, left, right, top, bottom } = CHART;
    const plotHeight = height - top - bottom;
    const group = svg("g");
    for (let i = 0; i <= TICKS; i++) {
      const value = (max * i) / TICKS;
      const y = top + plotHeight - (plotHeight * i) / TICKS;
      group.append(svg("line", { class: i ? "grid" : "axis", x1: left, x2: width - right, y1: y, y2: y }));
      const tick = svg("text", { class: "tick", x: left - 6, y: y + 4, "text-anchor": "end" });
      tick.textContent = format(value);
      group.append(tick);
    }
    const every = Math.max(1, Math.ceil(labels.length / 8));
    labels.forEach((label, i) => {
      if (i % every && i !== labels.length - 1) return;
      const text = svg("text", { class: "tick", x: xOf(i, labels.length), y: height - bottom + 16, "text-anchor": "middle" });
      text.textContent = shortDate(label);
      group.append(text);
    });
    return group;
  }

  function xOf(index, count) {
    const { width, left, right } = CHART;
    const plot = width - left - right;
    return left + (plot * (index + 0.5)) / count;
  }

  function yOf(value, max) {
    const { height, top, bottom } = CHART;
    const plot = height - top - bottom;
    return top + plot - (plot * Math.max(0, value)) / max;
  }

  function chartFigure(title, chart, summary, legend) {
    chart.setAttribute("role", "img");
    chart.setAttribute("aria-label", summary);
    const figure = el("figure", { class: "chart" }, el("figcaption", { text: title }), chart);
    if (legend) {
      figure.append(
        el(
          "div",
          { class: "legend", "aria-hidden": "true" },
          ...legend.map(([name, color]) => {
            const swatch = el("i");
            swatch.style.background = color;
            return el("span", {}, swatch, name);
          })
        )
      );
    }
    return figure;
  }

  /** Lines with a point per day; a null value leaves a gap. */
  function lineChart(labels, series, { max, format }) {
    const { width, height } = CHART;
    const values = series.flatMap((s) => s.values).filter((v) => typeof v === "number");
    const top = max || niceMax(Math.max(0, ...values));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "line-chart" }, frame(labels, top, format));
    for (const s of series) {
      let path = "";
      let drawing = false;
      s.values.forEach((value, i) => {
        if (typeof value !== "number") {
          drawing = false;
          return;
        }
        path += `${drawing ? "L" : "M"}${xOf(i, labels.length).toFixed(1)},${yOf(value, top).toFixed(1)}`;
        drawing = true;
      });
      if (path) chart.append(svg("path", { class: `line ${s.className || ""}`, d: path }));
      s.values.forEach((value, i) => {
        if (typeof value !== "number") return;
        chart.append(
          svg(
            "circle",
            { class: `point ${s.className || ""}`, cx: xOf(i, labels.length).toFixed(1), cy: yOf(value, top).toFixed(1), r: 3.5, "data-series": s.name },
            svgTitle(`${labels[i]}: ${s.name} ${format(value)}`)
          )
        );
      });
    }
    return chart;
  }

  /** Vertical bars per day, one per series side by side. */
  function columnChart(labels, series, { format }) {
    const { width, height, left, right } = CHART;
    const values = series.flatMap((s) => s.values);
    const top = niceMax(Math.max(0, ...values));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "column-chart" }, frame(labels, top, format));
    const slot = (width - left - right) / labels.length;
    const barWidth = Math.max(2, Math.min(18, (slot * 0.7) / series.length));
    labels.forEach((label, i) => {
      series.forEach((s, j) => {
        const value = s.values[i] || 0;
        const x = xOf(i, labels.length) - (barWidth * series.length) / 2 + j * barWidth;
        const y = yOf(value, top);
        chart.append(
          svg(
            "rect",
            { class: `bar ${s.className || ""}`, x: x.toFixed(1), y: y.toFixed(1), width: barWidth.toFixed(1), height: (yOf(0, top) - y).toFixed(1), "data-series": s.name },
            svgTitle(`${label}: ${value} ${s.name}`)
          )
        );
      });
    });
    return chart;
  }

  /** Horizontal bars, one per item, labelled on the left. */
  function barChart(items, { max, format }) {
    const { width } = CHART;
    const rowHeight = 26;
    const left = 150;
    const right = 60;
    const height = Math.max(1, items.length) * rowHeight + 12;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "bar-chart" });
    if (!items.length) {
      const text = svg("text", { class: "nodata", x: width / 2, y: height / 2 + 4, "text-anchor": "middle" });
      text.textContent = "No data in this period";
      chart.setAttribute("viewBox", `0 0 ${width} 40`);
      text.setAttribute("y", "24");
      chart.append(text);
      return chart;
    }
    const top = max || Math.max(...items.map((item) => item.value), 1e-9);
    const plot = width - left - right;
    chart.append(svg("line", { class: "axis", x1: left, x2: left, y1: 4, y2: height - 6 }));
    items.forEach((item, i) => {
      const y = 8 + i * rowHeight;
      const label = svg("text", { class: "tick", x: left - 8, y: y + 13, "text-anchor": "end" });
      label.textContent = item.label.length > 22 ? `${item.label.slice(0, 21)}…` : item.label;
      const length = (plot * Math.max(0, item.value)) / top;
      const value = svg("text", { class: "bar-label", x: left + length + 6, y: y + 13 });
      value.textContent = format(item.value);
      chart.append(
        label,
        svg("rect", { class: "bar", x: left, y, width: length.toFixed(1), height: rowHeight - 8, rx: 3 }, svgTitle(item.title || `${item.label}: ${format(item.value)}`)),
        value
      );
    });
    return chart;
  }

  function renderDashboard(data) {
    const days = data.days || [];
    const labels = days.map((d) => d.date);
    const count = (n) => String(Math.round(n));
    const rate = (n) => `${Math.round(n * 100)}%`;

    const totals = $("totals");
    totals.replaceChildren();
    for (const [key, value] of Object.entries(data.totals || {})) {
      let shown = null;
      if (typeof value === "number") shown = /rate|share|confidence/.test(key) && value <= 1 ? percent(value) : value.toLocaleString();
      else if (value && typeof value === "object") {
        const numbers = Object.values(value).filter((v) => typeof v === "number");
        if (numbers.length) shown = numbers.reduce((a, b) => a + b, 0).toLocaleString();
      }
      if (shown !== null) totals.append(el("div", { class: "tile" }, el("div", { class: "value", text: shown }), el("div", { class: "name", text: humanize(key) })));
    }

    const messages = days.map((d) => d.messages || 0);
    const customer = days.map((d) => d.customer_messages || 0);
    // A day without customer messages has no automation rate (a gap, not a 0 %).
    const automation = days.map((d) =>
      d.customer_messages && typeof d.automation_rate === "number" ? d.automation_rate : null
    );
    const byReason = {};
    for (const d of days) for (const [reason, n] of Object.entries(d.escalations || {})) byReason[reason] = (byReason[reason] || 0) + n;
    const reasons = Object.entries(byReason)
      .sort((a, b) => b[1] - a[1])
      .map(([reason, n]) => ({ label: reasonLabel(reason), value: n, title: `${reasonLabel(reason)} (${reason}): ${n}` }));
    const up = days.map((d) => (d.feedback || {}).up || 0);
    const down = days.map((d) => (d.feedback || {}).down || 0);
    const perIntent = (data.intents || [])
      .filter((i) => typeof i.mean_confidence === "number")
      .sort((a, b) => b.mean_confidence - a.mean_confidence)
      .map((i) => ({
        label: i.intent,
        value: i.mean_confidence,
        title: `${i.intent}: mean confidence ${rate(i.mean_confidence)} over ${i.messages} messages`,
      }));
    const sum = (list) => list.reduce((a, b) => a + b, 0);
    const rated = automation.filter((v) => v !== null);

    const accent = getComputedStyle(document.documentElement).getPropertyValue("--accent").trim() || "#0f6e63";
    $("charts").replaceChildren(
      chartFigure(
        "Messages per day",
        lineChart(labels, [
          { name: "all messages", values: messages },
          { name: "customer messages", values: customer, className: "second" },
        ], { format: count }),
        `Messages per day over ${days.length} days: ${sum(messages)} in all, ${sum(customer)} from customers.`,
        [["all messages", accent], ["customer messages", "#f0a43a"]]
      ),
      chartFigure(
        "Automation rate",
        lineChart(labels, [{ name: "automated", values: automation }], { max: 1, format: rate }),
        rated.length
          ? `Share of customer messages answered by the bot without a hand-off, per day; mean ${rate(sum(rated) / rated.length)}.`
          : "No customer messages in this period."
      ),
      chartFigure(
        "Escalations by reason",
        barChart(reasons, { format: count }),
        reasons.length ? `Escalations by reason: ${reasons.map((r) => `${r.label} ${r.value}`).join(", ")}.` : "No escalations in this period."
      ),
      chartFigure(
        "Feedback",
        columnChart(labels, [
          { name: "up", values: up, className: "up" },
          { name: "down", values: down, className: "down" },
        ], { format: count }),
        `Feedback per day: ${sum(up)} helpful, ${sum(down)} not helpful.`,
        [["helpful (up)", "#2fb36a"], ["not helpful (down)", "#e0574f"]]
      ),
      chartFigure(
        "Mean confidence per intent",
        barChart(perIntent, { max: 1, format: rate }),
        perIntent.length
          ? `Mean intent confidence: ${perIntent.map((i) => `${i.label} ${rate(i.value)}`).join(", ")}.`
          : "No classified messages in this period."
      )
    );
  }

  async function loadDashboard() {
    try {
      const data = await api("GET", `dashboard?days=${encodeURIComponent($("days").value)}`);
      $("dashboard-error").textContent = "";
      renderDashboard(data);
    } catch (error) {
      if (error.status !== 401) $("dashboard-error").textContent = `The dashboard could not be loaded: ${error.message}`;
    }
  }

  // -- tabs ----------------------------------------------------------------------------------

  function tabs() {
    return Array.from(document.querySelectorAll('[role="tab"]')).filter((tab) => !tab.hidden);
  }

  function selectTab(tab, focus) {
    for (const other of tabs()) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
    if (tab.id === "tab-dashboard") {
      loadDashboard();
      if (!current) history.replaceState(null, "", "#dashboard");
    } else if (location.hash === "#dashboard") {
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function tabKeys(event) {
    const all = tabs();
    const index = all.indexOf(event.target);
    let target = null;
    if (event.key === "ArrowRight") target = all[(index + 1) % all.length];
    else if (event.key === "ArrowLeft") target = all[(index - 1 + all.length) % all.length];
    else if (event.key === "Home") target = all[0];
    else if (event.key === "End") target = all[all.length - 1];
    if (target) {
      event.preventDefault();
      selectTab(target, true);
    }
  }

  // -- start ---------------------------------------------------------------------------------

  function wire() {
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      tab.addEventListener("click", () => selectTab(tab, false));
      tab.addEventListener("keydown", tabKeys);
    }
    $("queue").addEventListener("keydown", queueKeys);
    $("claim").addEventListener(
      "click",
      conversationAction("claim", () => announce("Claimed. You can reply now."))
    );
    $("release").addEventListener(
      "click",
      conversationAction("release", () => announce("Released: back in the queue."))
    );
    $("handback").addEventListener(
      "click",
      conversationAction("handback", () => announce("Handed back: the bot answers this customer again."))
    );
    $("resolve").addEventListener(
      "click",
      conversationAction("resolve", () => announce("Resolved: the bot answers this customer again."))
    );
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
    $("days").addEventListener("change", loadDashboard);
    $("sound").addEventListener("click", () => {
      soundOn = !soundOn;
      save(SOUND_KEY, soundOn ? "on" : "off");
      renderSound();
      if (soundOn) beep();
    });
    $("sign-out").addEventListener("click", async () => {
      try {
        await api("DELETE", "session");
      } catch (_) {
        /* signed out already, or the server is away: the sign-in page is the way on either way */
      }
      location.assign(SIGN_IN.pathname);
    });
    window.addEventListener("pointerdown", unlockAudio);
    window.addEventListener("keydown", unlockAudio);
    window.addEventListener("focus", updateTitle);
    window.addEventListener("online", () => {
      if (!socket) {
        attempts = 0;
        connect();
      }
    });
    setInterval(tick, 1000);
  }

  async function start() {
    try {
      me = await api("GET", "me");
    } catch (error) {
      if (error.status !== 401) {
        $("queue-error").textContent = `The console could not start: ${error.message}. Retrying…`;
        setTimeout(start, 3000);
      }
      return;
    }
    $("agent-name").textContent = me.name;
    $("agent-role").textContent = me.role;
    $("tab-dashboard").hidden = me.role !== "operator";
    await Promise.all([loadIntents(), loadQueue()]);
    const match = /^#conversation=(.+)$/.exec(location.hash);
    if (match) openConversation(decodeURIComponent(match[1]));
    else if (location.hash === "#dashboard" && me.role === "operator") selectTab($("tab-dashboard"), false);
    connect();
  }

  // Handlers are wired once; start() may run again after a failed /me.
  let started = false;
  const boot = () => {
    if (started) return;
    started = true;
    wire();
    renderSound();
    start();
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
