// Objects: the serving model's enrolled objects with modalities, sample counts and threshold; a
// histogram of recent raw scores (passed green, rejected red) with the threshold line, so an operator
// can place the threshold by eye; set or clear the threshold (PATCH /objects/{name}, operator key);
// the operators' pending corrections, a Refine button (POST /objects/{name}/refine) and what the last
// refinement changed: false rejects on the parts marked good and misses on the reported defects.

import { describeError, getJson, patchJson, postJson } from "./api.js";
import { byId, confirmButton, formatNumber, formatPercent, h, notify, viewLifecycle } from "./dom.js";

const BINS = 30;
const REFRESH_MS = 5000;
// The chart's colours are the stylesheet's (style.css :root), so the two cannot differ.
function colours() {
  const style = getComputedStyle(document.documentElement);
  const read = (name) => style.getPropertyValue(name).trim();
  return {
    pass: read("--bright-pass"),
    fail: read("--bright-fail"),
    threshold: read("--text"),
    calibrated: read("--muted"),
    holdout: "rgba(46, 157, 74, 0.12)", // --bright-pass, faint
    axis: read("--grey-400"),
    text: read("--grey-700"),
  };
}

const charts = new Map(); // object name -> {canvas, scores, rejected, threshold, calibrated}

function histogram(values, low, high) {
  const counts = new Array(BINS).fill(0);
  const width = (high - low) / BINS;
  for (const value of values) {
    const index = Math.min(BINS - 1, Math.max(0, Math.floor((value - low) / width)));
    counts[index] += 1;
  }
  return counts;
}

function drawChart(chart, threshold) {
  const canvas = chart.canvas;
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 480;
  const cssHeight = canvas.clientHeight || 170;
  canvas.width = Math.round(cssWidth * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const context = canvas.getContext("2d");
  const palette = colours();
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, cssWidth, cssHeight);
  context.font = "12px system-ui, sans-serif";

  const passed = chart.scores.filter((_, index) => !chart.rejected[index]);
  const failed = chart.scores.filter((_, index) => chart.rejected[index]);
  const holdout = chart.holdout; // [min, max] raw score of the calibration's normal holdout parts
  const marks = [threshold, chart.calibrated, ...(holdout || [])].filter((value) => Number.isFinite(value));
  const everything = chart.scores.concat(marks);
  if (!everything.length) {
    context.fillStyle = palette.text;
    context.fillText("no scores yet", 10, 20);
    return;
  }
  let low = Math.min(...everything);
  let high = Math.max(...everything);
  const pad = Math.max((high - low) * 0.08, 0.05);
  low -= pad;
  high += pad;

  const left = 34;
  const right = cssWidth - 10;
  const top = 26;
  const bottom = cssHeight - 24;
  const x = (value) => left + ((value - low) / (high - low)) * (right - left);

  if (holdout && holdout.every(Number.isFinite)) {
    context.fillStyle = palette.holdout;
    context.fillRect(x(holdout[0]), top, Math.max(2, x(holdout[1]) - x(holdout[0])), bottom - top);
  }
  if (!chart.scores.length) {
    context.fillStyle = palette.text;
    context.textAlign = "center";
    context.fillText("no inspections of this object on this gateway yet", (left + right) / 2, (top + bottom) / 2);
  }

  const passCounts = histogram(passed, low, high);
  const failCounts = histogram(failed, low, high);
  const tallest = Math.max(1, ...passCounts.map((count, index) => count + failCounts[index]));
  const binWidth = (right - left) / BINS;
  for (let index = 0; index < BINS; index += 1) {
    const passHeight = ((bottom - top) * passCounts[index]) / tallest;
    const failHeight = ((bottom - top) * failCounts[index]) / tallest;
    const x0 = left + index * binWidth + 1;
    context.fillStyle = palette.pass;
    context.fillRect(x0, bottom - passHeight, binWidth - 2, passHeight);
    context.fillStyle = palette.fail;
    context.fillRect(x0, bottom - passHeight - failHeight, binWidth - 2, failHeight);
  }

  context.strokeStyle = palette.axis;
  context.lineWidth = 1;
  context.beginPath();
  context.moveTo(left, bottom + 0.5);
  context.lineTo(right, bottom + 0.5);
  context.stroke();
  context.fillStyle = palette.text;
  context.textAlign = "left";
  context.fillText(formatNumber(low, 2), left, bottom + 16);
  context.textAlign = "right";
  context.fillText(formatNumber(high, 2), right, bottom + 16);
  context.fillText(String(tallest), left - 6, top + 10);
  context.fillText("0", left - 6, bottom);
  context.textAlign = "center";
  context.fillText("raw score", (left + right) / 2, bottom + 16);

  if (Number.isFinite(chart.calibrated)) {
    context.strokeStyle = palette.calibrated;
    context.setLineDash([4, 4]);
    context.beginPath();
    context.moveTo(x(chart.calibrated), top);
    context.lineTo(x(chart.calibrated), bottom);
    context.stroke();
    context.setLineDash([]);
  }
  if (Number.isFinite(threshold)) {
    context.strokeStyle = palette.threshold;
    context.lineWidth = 2.5;
    context.beginPath();
    context.moveTo(x(threshold), top - 4);
    context.lineTo(x(threshold), bottom);
    context.stroke();
    context.fillStyle = palette.threshold;
    const label = "threshold " + formatNumber(threshold, 3);
    const labelX = x(threshold);
    context.textAlign = labelX > (left + right) / 2 ? "right" : "left";
    context.fillText(label, labelX + (labelX > (left + right) / 2 ? -5 : 5), top - 10);
  }
}

function wouldReject(chart, threshold) {
  if (!chart.scores.length || !Number.isFinite(threshold)) {
    return "";
  }
  const above = chart.scores.filter((score) => score > threshold).length;
  return `At ${formatNumber(threshold)}, ${above} of the last ${chart.scores.length} parts would be rejected.`;
}

function thresholdEditor(info, chart, message) {
  const inputId = "threshold-" + info.name;
  const input = h("input", {
    id: inputId,
    type: "number",
    step: "any",
    value: info.threshold === null ? "" : String(Number(info.threshold.toFixed(4))),
    "aria-describedby": "preview-" + info.name,
  });
  const preview = h("p", { id: "preview-" + info.name, class: "muted preview" }, wouldReject(chart, info.threshold));
  input.addEventListener("input", () => {
    const value = parseFloat(input.value);
    drawChart(chart, Number.isFinite(value) ? value : info.threshold);
    preview.textContent = wouldReject(chart, value);
  });
  const save = async (threshold) => {
    try {
      const updated = await patchJson("/objects/" + encodeURIComponent(info.name), { threshold });
      notify(
        message,
        updated.threshold_source === "operator"
          ? `Threshold of ${info.name} set to ${formatNumber(updated.threshold)} (applies to every model version).`
          : `Threshold of ${info.name} reset to the calibrated ${formatNumber(updated.threshold)}.`,
        "ok",
      );
      input.value = input.defaultValue; // saved: the rebuilt card shows the value in force
      await refresh(true);
    } catch (error) {
      notify(message, describeError(error));
    }
  };
  const form = h(
    "form",
    { class: "threshold-form", dataset: { object: info.name } },
    h("label", { for: inputId }, "New threshold (raw score)"),
    input,
    h("button", { type: "submit", class: "primary" }, "Set threshold"),
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        disabled: info.threshold_source !== "operator",
        onclick: () => save(null),
      },
      "Use calibrated",
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = parseFloat(input.value);
    if (!Number.isFinite(value)) {
      notify(message, "Enter a number for the threshold.");
      return;
    }
    save(value);
  });
  return [form, preview];
}

function calibrationRange(calibration) {
  const low = calibration ? Number(calibration.score_min) : NaN;
  const high = calibration ? Number(calibration.score_max) : NaN;
  return Number.isFinite(low) && Number.isFinite(high) ? [low, high] : null;
}

function rate(value) {
  return value === null || value === undefined ? "—" : formatPercent(value, 0);
}

// What the latest refinement job of the object did, from its metrics (before -> after).
function refinementSummary(job) {
  if (!job) {
    return null;
  }
  const rates = job.metrics && job.metrics.refinement;
  if (job.status !== "succeeded" || !rates) {
    return h("p", { class: "refinement-result" }, `Last refinement: ${job.status} — ${job.message}`);
  }
  return h(
    "p",
    { class: "refinement-result" },
    `Last refinement (${job.version}): false rejects on the parts marked good ` +
      `${rate(rates.before.false_reject_rate)} → ${rate(rates.after.false_reject_rate)}, ` +
      `misses on the reported defects ${rate(rates.before.miss_rate)} → ${rate(rates.after.miss_rate)}.`,
  );
}

function correctionsPanel(info, feedback, job, message) {
  if (feedback === undefined) {
    return h("p", { class: "corrections muted" }, "Corrections: an operator key shows and refines them.");
  }
  const counts = feedback.counts;
  const running = job && (job.status === "queued" || job.status === "running");
  const refine = confirmButton(
    "Refine",
    "Click again to refine on these corrections",
    async () => {
      try {
        const started = await postJson(`/objects/${encodeURIComponent(info.name)}/refine`, {});
        notify(message, `Refinement queued (job ${started.job_id}); the Enrol view follows it.`, "ok");
        refresh(true);
      } catch (error) {
        notify(message, describeError(error));
      }
    },
    { class: "refine", disabled: running || feedback.pending.length === 0 },
  );
  return h(
    "div",
    { class: "corrections" },
    h(
      "p",
      {},
      `Pending corrections: ${counts.good || 0} marked good, ${counts.defective || 0} defective. `,
      running ? h("span", { class: "tag warn" }, `refining (${job.stage})`) : null,
    ),
    refine,
    refinementSummary(job),
  );
}

async function objectFeedback(names) {
  const entries = await Promise.all(
    names.map((name) =>
      getJson(`/objects/${encodeURIComponent(name)}/feedback`).then(
        (feedback) => [name, feedback],
        () => [name, undefined], // not an operator key
      ),
    ),
  );
  return new Map(entries);
}

function latestRefinements(jobs) {
  const latest = new Map();
  for (const job of jobs) {
    if (job.kind === "refinement" && !latest.has(job.object)) {
      latest.set(job.object, job); // newest first
    }
  }
  return latest;
}

function objectCard(info, scores, feedback, job) {
  const canvas = h("canvas", {
    class: "histogram",
    role: "img",
    "aria-label": `histogram of the recent raw scores of ${info.name}, with the threshold`,
  });
  const chart = {
    canvas,
    scores: scores ? scores.raw_scores : [],
    rejected: scores ? scores.rejected : [],
    calibrated: info.calibrated_threshold,
    holdout: calibrationRange(info.calibration),
  };
  charts.set(info.name, { chart, threshold: info.threshold });
  const message = h("div", { class: "notice", role: "alert", hidden: true });
  const rejectedCount = chart.rejected.filter(Boolean).length;
  return h(
    "article",
    { class: "panel object-card", dataset: { object: info.name } },
    h(
      "header",
      {},
      h("h2", {}, info.name),
      h("span", { class: "tag" }, info.modalities.join(" + ")),
      h("span", { class: "tag " + (info.threshold_source === "operator" ? "warn" : "") }, "threshold: " + info.threshold_source),
    ),
    h(
      "dl",
      { class: "facts wide" },
      h("dt", {}, "Threshold in force"),
      h("dd", { class: "threshold-value" }, formatNumber(info.threshold)),
      h("dt", {}, "Calibrated threshold"),
      h("dd", {}, formatNumber(info.calibrated_threshold)),
      h("dt", {}, "Target false-reject rate"),
      h("dd", {}, formatNumber(info.target_false_reject_rate)),
      h("dt", {}, "Samples (train / holdout)"),
      h("dd", {}, `${info.train_samples} / ${info.holdout_samples}`),
      h("dt", {}, "Enrolled in"),
      h("dd", { class: "mono" }, info.enrolled_in),
    ),
    canvas,
    h(
      "p",
      { class: "legend" },
      h("span", { class: "swatch pass" }),
      ` passed (${chart.scores.length - rejectedCount}) `,
      h("span", { class: "swatch fail" }),
      ` rejected (${rejectedCount}) `,
      h("span", { class: "swatch line" }),
      " threshold ",
      h("span", { class: "swatch dashed" }),
      " calibrated ",
      chart.holdout ? [h("span", { class: "swatch holdout" }), " normal holdout range"] : null,
    ),
    thresholdEditor(info, chart, message),
    correctionsPanel(info, feedback, job, message),
    message,
  );
}

let lastSignature = "";

async function refresh(force = false) {
  if (!lifecycle.isVisible()) {
    return;
  }
  try {
    const [list, scores, jobs] = await Promise.all([
      getJson("/objects"),
      getJson("/dashboard/scores"),
      getJson("/jobs?limit=50").catch(() => ({ jobs: [] })), // a gateway without Redis has no jobs
    ]);
    const feedback = await objectFeedback(list.objects.map((info) => info.name));
    const refinements = latestRefinements(jobs.jobs);
    notify(byId("objects-error"), "");
    // Rebuilding would wipe a threshold being typed: only when something changed.
    const signature = JSON.stringify([list, scores.objects, [...feedback], [...refinements]]);
    if (!force && signature === lastSignature) {
      return;
    }
    if (!force && document.activeElement && document.activeElement.closest(".threshold-form")) {
      return;
    }
    lastSignature = signature;
    byId("objects-version").textContent = list.model_version ? "from model version " + list.model_version : "";
    const container = byId("objects-list");
    const messages = new Map(
      [...container.querySelectorAll(".object-card")].map((card) => [
        card.dataset.object,
        card.querySelector('[role="alert"]'),
      ]),
    );
    const typed = new Map(
      [...container.querySelectorAll(".threshold-form input")]
        .filter((input) => input.value !== input.defaultValue)
        .map((input) => [input.id, input.value]),
    );
    charts.clear();
    const cardsBuilt = list.objects.map((info) =>
      objectCard(info, scores.objects[info.name], feedback.get(info.name), refinements.get(info.name)),
    );
    for (const built of cardsBuilt) {
      const old = messages.get(built.dataset.object);
      if (old && !old.hidden) {
        const alert = built.querySelector('[role="alert"]'); // keep the last message shown
        alert.textContent = old.textContent;
        alert.className = old.className;
        alert.hidden = false;
      }
    }
    container.replaceChildren(...cardsBuilt);
    byId("objects-empty").hidden = list.objects.length > 0;
    for (const { chart, threshold } of charts.values()) {
      drawChart(chart, threshold);
    }
    for (const [id, value] of typed) {
      const input = byId(id); // keep what the operator was typing
      if (input) {
        input.value = value;
        input.dispatchEvent(new Event("input"));
      }
    }
  } catch (error) {
    notify(byId("objects-error"), describeError(error));
  }
}

const lifecycle = viewLifecycle({
  wire() {
    byId("objects-refresh").addEventListener("click", () => refresh(true));
    window.addEventListener("iumad-serving-changed", () => refresh(false));
    window.addEventListener("resize", () => {
      for (const { chart, threshold } of charts.values()) {
        drawChart(chart, threshold);
      }
    });
  },
  onShow() {
    lastSignature = "";
    for (const alert of byId("objects-list").querySelectorAll('[role="alert"]')) {
      alert.hidden = true; // shown again (e.g. after a new key): old answers no longer apply
    }
    refresh(true);
  },
  tick: () => refresh(false),
  intervalMs: REFRESH_MS,
});
export const { show, hide } = lifecycle;
