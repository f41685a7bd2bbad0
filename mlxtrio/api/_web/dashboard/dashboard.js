// The dashboard: /admin/status and /metrics of this admin port, polled; load and unload through the admin API.
import { ApiError, Credential, authorized, credentialForm, el } from "../common/api.js";

const token = new Credential("mlxtrio.adminToken");
const $ = (id) => document.getElementById(id);
const tokenForm = credentialForm("token-form", "admin token");
const REFRESH_MS = 2000;
// Points kept per chart: two minutes at one poll every two seconds.
const HISTORY = 60;
// Model ids with a load or unload under way, so their buttons stay disabled until it answers.
const pending = new Set();
// The latest load or unload's error, shown until the next one.
let actionError = null;

function bytes(count) {
  if (count === null || count === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = count;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function duration(seconds) {
  const whole = Math.max(0, Math.round(seconds));
  if (whole < 60) return `${whole} s`;
  if (whole < 3600) return `${Math.floor(whole / 60)} min ${whole % 60} s`;
  return `${Math.floor(whole / 3600)} h ${Math.floor((whole % 3600) / 60)} min`;
}

const now = () => Date.now() / 1000;
const ago = (at) => (at === null || at === undefined ? "—" : `${duration(now() - at)} ago`);
const until = (at) => (at === null || at === undefined ? "—" : `in ${duration(at - now())}`);

function showProblem(error) {
  const box = $("problem");
  box.hidden = error === null;
  box.textContent = error === null ? "" : error instanceof ApiError ? error.text : String(error);
}

async function call(path, body) {
  const response = await authorized(token, tokenForm, path, body === undefined ? {} : { method: "POST", body });
  if (!response.ok) throw await ApiError.of(response);
  return response;
}

async function steer(action, model) {
  pending.add(model);
  render(lastStatus);
  try {
    await call(`/admin/${action}`, { model });
    actionError = null;
  } catch (error) {
    actionError = error;
  } finally {
    pending.delete(model);
    await refresh();
  }
}

function stateCell(worker) {
  const cell = el("td", { className: `state ${worker.state}` }, worker.state);
  if (worker.failure) {
    cell.append(el("div", { className: "failure" }, worker.failure));
    if (worker.retry_at) cell.append(el("div", { className: "retry" }, `next attempt ${until(worker.retry_at)}`));
  }
  return cell;
}

function restartsCell(worker) {
  const causes = Object.entries(worker.restart_causes || {}).map(([cause, count]) => `${cause} ${count}`);
  return el("td", {}, String(worker.restarts), causes.length ? el("div", { className: "detail" }, causes.join(", ")) : null);
}

function actionsCell(worker) {
  const busy = pending.has(worker.model);
  const loaded = worker.state === "ready" || worker.state === "loading";
  const load = el("button", { type: "button", className: "load", disabled: busy || loaded }, "Load");
  const unload = el("button", { type: "button", className: "unload", disabled: busy || !loaded }, "Unload");
  load.addEventListener("click", () => steer("load", worker.model));
  unload.addEventListener("click", () => steer("unload", worker.model));
  return el("td", { className: "actions" }, load, " ", unload);
}

function row(worker) {
  const tr = el(
    "tr",
    {},
    el("td", { className: "model" }, worker.model),
    stateCell(worker),
    el("td", { className: "pid" }, worker.pid === null ? "—" : String(worker.pid)),
    el("td", {}, bytes(worker.memory_bytes)),
    el("td", { className: "active" }, String(worker.active_requests)),
    el("td", { className: "queued" }, String(worker.queued_requests)),
    el("td", {}, worker.engine || "—"),
    el("td", {}, ago(worker.loaded_at)),
    el("td", {}, worker.load_seconds === null ? "—" : `${worker.load_seconds.toFixed(2)} s`),
    el("td", { className: "unload-at" }, until(worker.unload_at)),
    restartsCell(worker),
    el("td", { className: "crash" }, worker.last_crash || "—"),
    actionsCell(worker),
  );
  tr.dataset.model = worker.model;
  return tr;
}

let lastStatus = null;

function render(status) {
  if (status === null) return;
  // Every model the server has a worker entry for, then the configured ones never loaded.
  const workers = [...status.workers];
  const known = new Set(workers.map((worker) => worker.model));
  for (const name of Object.keys(status.config.models || {})) {
    if (!known.has(name)) workers.push({ model: name, state: "unloaded", pid: null, memory_bytes: null, active_requests: 0,
      queued_requests: 0, engine: null, loaded_at: null, load_seconds: null, unload_at: null, restarts: 0,
      restart_causes: {}, last_crash: null, failure: null, retry_at: null });
  }
  $("models").tBodies[0].replaceChildren(...workers.map(row));
  const budget = status.config.memory_budget_bytes;
  const used = workers.reduce((sum, worker) => sum + (worker.memory_bytes || 0), 0);
  const meter = $("memory-meter");
  meter.max = budget;
  meter.value = used;
  meter.high = budget * 0.9;
  $("memory-text").textContent = `${bytes(used)} used of a ${bytes(budget)} budget`;
  $("server").textContent =
    `pid ${status.pid} · up ${duration(now() - status.started_at)}` + (status.shutting_down ? " · shutting down" : "");
}

// --- charts, from the Prometheus text of /metrics ---------------------------------------------------

const SAMPLE = /^([A-Za-z_:][\w:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)/;

/** Each metric's samples summed over their labels: name → total. */
function totals(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (Number.isFinite(value)) sums.set(match[1], (sums.get(match[1]) || 0) + value);
  }
  return sums;
}

function chart(id, label, color) {
  const element = $(id);
  const data = [[], []];
  const plot = new uPlot(
    {
      width: Math.max(240, element.clientWidth),
      height: 160,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true }, y: { range: (_plot, _min, max) => [0, Math.max(1, max) * 1.1] } },
      series: [{}, { label, stroke: color, width: 2, spanGaps: false }],
      axes: [{ stroke: "#888", grid: { stroke: "#8883" } }, { stroke: "#888", grid: { stroke: "#8883" }, size: 50 }],
    },
    data,
    element,
  );
  return {
    push(at, value) {
      data[0].push(at);
      data[1].push(value);
      if (data[0].length > HISTORY) {
        data[0].shift();
        data[1].shift();
      }
      plot.setData(data);
      // What is drawn, for a reader of the page's DOM (and its tests).
      element.dataset.points = String(data[0].length);
      element.dataset.last = value === null ? "" : String(value);
    },
  };
}

const charts = {
  tokens: chart("chart-tokens", "tokens/s", "#2f6fdb"),
  ttft: chart("chart-ttft", "TTFT ms", "#d97706"),
  queue: chart("chart-queue", "queued", "#7c3aed"),
};
let previous = null;

function plotMetrics(text) {
  const at = now();
  const sums = totals(text);
  const current = {
    at,
    tokens: sums.get("mlxtrio_completion_tokens_total") || 0,
    ttftSum: sums.get("mlxtrio_time_to_first_token_seconds_sum") || 0,
    ttftCount: sums.get("mlxtrio_time_to_first_token_seconds_count") || 0,
  };
  if (previous !== null && at > previous.at) {
    const answers = current.ttftCount - previous.ttftCount;
    charts.tokens.push(at, Math.max(0, current.tokens - previous.tokens) / (at - previous.at));
    charts.ttft.push(at, answers > 0 ? ((current.ttftSum - previous.ttftSum) / answers) * 1000 : null);
  }
  charts.queue.push(at, sums.get("mlxtrio_queued_sequences") || 0);
  previous = current;
}

async function refresh() {
  try {
    const [status, metrics] = await Promise.all([call("/admin/status"), call("/metrics")]);
    lastStatus = await status.json();
    render(lastStatus);
    plotMetrics(await metrics.text());
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    showProblem(actionError);
  } catch (error) {
    showProblem(error);
  }
}

async function poll() {
  await refresh();
  setTimeout(poll, REFRESH_MS);
}

poll();
