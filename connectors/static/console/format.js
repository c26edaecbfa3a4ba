/*
 * How the console words and formats what the API returns: reasons, channels, customers,
 * times and numbers. Pure functions of their arguments.
 */

const REASONS = {
  asked_for_human: "Asked for a person",
  negative_message: "Negative message",
  negative_trend: "Negative trend",
  repeated_fallback: "Bot could not help",
  upset_fallback: "Upset, bot could not help",
};
const CHANNELS = { widget: "Web chat", telegram: "Telegram", rest: "REST API", rasa: "Rasa" };

export function reasonLabel(reason) {
  return REASONS[reason] || (reason ? reason.replace(/_/g, " ") : "unknown");
}

/** A customer's display name; anonymous web visitors are known by a random session id. */
export function customerLabel(customer) {
  if (!customer) return "Customer";
  return /^[A-Za-z0-9_-]{16,}$/.test(customer) ? `Visitor ${customer.slice(0, 6)}` : customer;
}

export function channelLabel(channel) {
  return CHANNELS[channel] || channel;
}

export function formatWaiting(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

export function percent(value) {
  return typeof value === "number" ? `${Math.round(value * 100)} %` : "–";
}

export function fixed(value, digits = 2) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

export function humanize(key) {
  const text = key.replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}
