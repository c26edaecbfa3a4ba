/*
 * The dialog that shows a question/answer pair before it is saved as an approved answer; the
 * agent edits question, answer and intent first.
 *
 * - "Save as approved answer" on an agent's reply (openApproval): the server proposes the
 *   question the reply answers (GET /console/api/messages/{id}/approval: the customer's
 *   messages since the previous answer, without "I want a human", greetings and thanks) and
 *   the intent; saving stores the edited pair (POST /console/api/approved-answers).
 * - "Approve a clean version" of an answer curation kept out of the index (openCleanVersion,
 *   from the answer library): the excluded pair as it was written; saving stores the clean
 *   version (POST /console/api/answers/excluded/approve).
 */

import { $, el } from "../lib/dom.js";
import { announce } from "./alerts.js";
import { api } from "./api.js";

const APPROVE_HINT =
  "The bot will give this answer to customers who ask something like this question (trusted as written, from the next supportbot index build or retrain). Remove anything about this one customer.";
const CLEAN_HINT =
  "Curation kept this answer out of the index because of what it says about one customer (see the reasons). Rewrite it so any customer can be told it: no names, order numbers, contact details or actions the bot cannot take. Saved as an approved answer, served from the next supportbot index build or retrain.";

let pending = null; // { save(pair), done } for the pair being edited
let saved = () => {}; // what to refresh after saving
let returnFocus = null;

/** Open the dialog for agent message `message` (throws the API's error when it cannot). */
export async function openApproval(message, onSaved) {
  const [data, known] = await Promise.all([api("GET", `messages/${message.id}/approval`), api("GET", "intents")]);
  const draft = data.draft;
  open(
    {
      title: "Save as approved answer",
      hint: APPROVE_HINT,
      question: draft.question,
      answer: draft.answer,
      intent: draft.intent,
      intents: known.intents || [],
      done: "Saved as an approved answer.",
      save: (pair) => {
        const body = { answer_message_id: draft.answer_message_id, ...pair };
        // The question message gives the pair its origin; an edited question is still about it.
        if (draft.question_message_id) body.question_message_id = draft.question_message_id;
        return api("POST", "approved-answers", body);
      },
    },
    onSaved
  );
}

/** Open the dialog for an answer curation excluded (an item of GET answers/excluded). */
export async function openCleanVersion(excluded, onSaved) {
  const known = await api("GET", "intents");
  open(
    {
      title: "Approve a clean version",
      hint: CLEAN_HINT,
      question: excluded.question,
      answer: excluded.clean_answer ?? excluded.answer,
      intent: excluded.intent,
      intents: known.intents || [],
      done: "Clean version saved as an approved answer.",
      save: (pair) => api("POST", "answers/excluded/approve", { source: excluded.source, ...pair }),
    },
    onSaved
  );
}

function open(spec, onSaved) {
  pending = spec;
  saved = onSaved || (() => {});
  $("approve-title").textContent = spec.title;
  $("approve-hint").textContent = spec.hint;
  $("approve-question").value = spec.question;
  $("approve-answer").value = spec.answer;
  const intents = [...spec.intents];
  if (spec.intent && !intents.includes(spec.intent)) intents.push(spec.intent);
  const select = $("approve-intent");
  select.replaceChildren(el("option", { value: "", text: "none" }), ...intents.map((i) => el("option", { value: i, text: i })));
  select.value = spec.intent || "";
  $("approve-error").textContent = "";
  $("approve-save").disabled = false;
  returnFocus = document.activeElement;
  $("approve").hidden = false;
  $("approve-question").focus();
}

function close() {
  $("approve").hidden = true;
  pending = null;
  if (returnFocus && document.contains(returnFocus)) returnFocus.focus();
}

async function save(event) {
  event.preventDefault();
  if (!pending) return;
  const question = $("approve-question").value.trim();
  const answer = $("approve-answer").value.trim();
  if (!question || !answer) {
    $("approve-error").textContent = "Write both the question and the answer.";
    return;
  }
  const pair = { question, answer };
  const intent = $("approve-intent").value;
  if (intent) pair.intent = intent;
  $("approve-save").disabled = true;
  const { done } = pending;
  try {
    await pending.save(pair);
  } catch (error) {
    if (error.status === 401) return;
    $("approve-error").textContent = `${error.message}${error.status ? ` (${error.status})` : ""}`;
    $("approve-save").disabled = false;
    return;
  }
  close();
  announce(done);
  await saved();
}

export function wireApproval() {
  $("approve-form").addEventListener("submit", save);
  $("approve-close").addEventListener("click", close);
  $("approve").addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      close();
    }
  });
  $("approve").addEventListener("click", (event) => {
    if (event.target === $("approve")) close();
  });
}
