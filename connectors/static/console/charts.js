/*
 * Small SVG charts for the dashboard: lines and columns per day, and horizontal bars. Each
 * chart is an accessible image (role img with a text summary) with a title on every point.
 */

import { el, svg } from "../lib/dom.js";

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

export function chartFigure(title, chart, summary, legend) {
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
export function lineChart(labels, series, { max, format }) {
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
export function columnChart(labels, series, { format }) {
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
export function barChart(items, { max, format }) {
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

function svgTitle(text) {
  const title = svg("title");
  title.textContent = text;
  return title;
}
