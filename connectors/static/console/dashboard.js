/*
 * The operator's dashboard: totals and charts of the last days' traffic, automation rate,
 * escalations, feedback, customer satisfaction (CSAT) and intent confidence, from
 * GET /console/api/dashboard.
 */

import { $, el } from "../lib/dom.js";
import { api } from "./api.js";
import { barChart, chartFigure, columnChart, lineChart } from "./charts.js";
import { humanize, percent, reasonLabel } from "./format.js";

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
  const csat = data.csat || { mean: null, count: 0, distribution: {} };
  totals.append(
    el(
      "div",
      { class: "tile csat", id: "csat-tile" },
      el("div", { class: "value", text: csat.mean === null ? "–" : `${csat.mean.toFixed(1)} / 5` }),
      el("div", { class: "name", text: `CSAT (${csat.count} rating${csat.count === 1 ? "" : "s"})` })
    )
  );
  const scores = ["5", "4", "3", "2", "1"].map((score) => ({
    label: `${score} ${"★".repeat(Number(score))}`,
    value: (csat.distribution || {})[score] || 0,
    title: `${score} of 5: ${(csat.distribution || {})[score] || 0} rating(s)`,
  }));

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
      "Customer satisfaction (CSAT)",
      barChart(csat.count ? scores : [], { format: count }),
      csat.count
        ? `CSAT: mean ${csat.mean.toFixed(2)} of 5 over ${csat.count} ratings; ${scores.map((s) => `${s.value} rated ${s.label.split(" ")[0]}`).join(", ")}.`
        : "No customer rated the help in this period."
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

export async function loadDashboard() {
  try {
    const data = await api("GET", `dashboard?days=${encodeURIComponent($("days").value)}`);
    $("dashboard-error").textContent = "";
    renderDashboard(data);
  } catch (error) {
    if (error.status !== 401) $("dashboard-error").textContent = `The dashboard could not be loaded: ${error.message}`;
  }
}

export function wireDashboard() {
  $("days").addEventListener("change", loadDashboard);
}
