// Models: every version on disk with its parent, objects and metrics; the active one (the pointer all
// gateways follow) and the one this gateway serves are marked. Activate = accept a candidate or roll
// back (POST /models/{version}/activate, operator key); gateways swap to it within about a second.

import { describeError, getJson, postJson } from "./api.js";
import { byId, confirmButton, formatDateTime, formatNumber, h, notify, viewLifecycle } from "./dom.js";

const REFRESH_MS = 5000;

let lastSignature = "";

function metricsSummary(model) {
  const items = [];
  const guard = model.metrics && model.metrics.forgetting_guard;
  if (guard) {
    items.push(h("li", { class: guard.passed ? "" : "bad-text" }, guard.summary || (guard.passed ? "guard passed" : "guard failed")));
  }
  for (const [name, value] of Object.entries(model.metrics || {})) {
    if (name === "forgetting_guard") {
      continue;
    }
    const text = typeof value === "number" ? formatNumber(value) : JSON.stringify(value);
    items.push(h("li", {}, `${name}: ${text.length > 80 ? text.slice(0, 77) + "…" : text}`));
  }
  const training = model.training || {};
  if (training.kind) {
    const added = training.new_objects ? ` (${[].concat(training.new_objects).join(", ")})` : "";
    items.push(h("li", { class: "muted" }, `training: ${training.kind}${added}`));
  }
  return items.length ? h("ul", { class: "metrics" }, items) : h("span", { class: "muted" }, "—");
}

function row(model, message, activeCreated) {
  const badges = [];
  if (model.active) {
    badges.push(h("span", { class: "badge small pass" }, "ACTIVE"));
  }
  if (model.serving) {
    badges.push(h("span", { class: "badge small info" }, "serving here"));
  }
  const older = activeCreated !== null && model.created < activeCreated;
  const label = older ? "Roll back" : "Activate";
  const action = model.active
    ? h("span", { class: "muted" }, "active")
    : confirmButton(
        label,
        `Click again to ${label.toLowerCase()}`,
        async () => {
          try {
            const answer = await postJson(`/models/${encodeURIComponent(model.version)}/activate`);
            notify(message, answer.message, "ok");
            window.dispatchEvent(new CustomEvent("iumad-model-changed"));
            lastSignature = "";
            await refresh();
          } catch (error) {
            notify(message, describeError(error));
          }
        },
        { class: older ? "secondary" : "primary", dataset: { version: model.version }, title: `${label}: ${model.version}` },
      );
  return h(
    "tr",
    { class: model.active ? "active" : "", dataset: { version: model.version } },
    h("th", { scope: "row" }, h("div", { class: "mono" }, model.version), badges),
    h("td", {}, formatDateTime(model.created)),
    h("td", { class: "mono" }, model.parent || "—"),
    h("td", {}, model.objects.join(", ")),
    h("td", {}, metricsSummary(model)),
    h("td", {}, action),
  );
}

async function refresh() {
  if (!lifecycle.isVisible()) {
    return;
  }
  try {
    const list = await getJson("/models");
    notify(byId("models-error"), "");
    const signature = JSON.stringify(list);
    if (signature === lastSignature || document.querySelector("#models-table button.armed")) {
      return; // unchanged, or an activation is half confirmed
    }
    lastSignature = signature;
    const message = byId("models-message");
    const models = [...list.models].reverse(); // newest first
    const active = models.find((model) => model.active);
    const activeCreated = active ? active.created : null;
    byId("models-table")
      .querySelector("tbody")
      .replaceChildren(...models.map((model) => row(model, message, activeCreated)));
    byId("models-empty").hidden = models.length > 0;
    const unreadable = (list.unreadable || []).map((item) => `${item.directory}: ${item.error}`);
    if (unreadable.length) {
      notify(byId("models-error"), "Unreadable versions: " + unreadable.join("; "));
    }
  } catch (error) {
    notify(byId("models-error"), describeError(error));
  }
}

const lifecycle = viewLifecycle({
  wire() {
    byId("models-refresh").addEventListener("click", () => {
      lastSignature = "";
      refresh();
    });
    window.addEventListener("iumad-serving-changed", refresh);
  },
  onShow() {
    lastSignature = "";
    refresh();
  },
  tick: refresh,
  intervalMs: REFRESH_MS,
});
export const { show, hide } = lifecycle;
