// Live: the latest inspections on this gateway (newest first, refreshed every 2 s), each with its RGB
// thumbnail, the heat map and defect outline over it, score vs threshold and the decision; per-object
// counters. Thumbnails are fetched with the API key and cached by inspection id (they never change).

import { describeError, getJson, imageUrl, postJson, upload } from "./api.js";
import { byId, formatNumber, formatPercent, formatTime, h, notify, viewLifecycle } from "./dom.js";

const REFRESH_MS = 2000;
const LIMIT = 50;
const SCORE_SCALE_MAX = 1.5; // the score bar spans 0 .. 1.5; the threshold sits at 0.5

let busy = false;
let again = false; // a filter changed while a refresh was running
const cards = new Map(); // inspection id -> {element, withPictures}
const pictures = new Map(); // "id/kind" -> object URL

function query() {
  const parameters = new URLSearchParams({ limit: String(LIMIT) });
  const object = byId("live-object").value;
  const decision = byId("live-decision").value;
  if (object) {
    parameters.set("object", object);
  }
  if (decision) {
    parameters.set("decision", decision);
  }
  return "/dashboard/recent?" + parameters;
}

async function picture(id, kind) {
  const key = id + "/" + kind;
  if (!pictures.has(key)) {
    const promise = imageUrl(`/dashboard/recent/${encodeURIComponent(id)}/${kind}.png`);
    promise.catch(() => pictures.delete(key)); // retried with the next card (e.g. after a new key)
    pictures.set(key, promise);
  }
  return pictures.get(key);
}

function forget(keepIds) {
  for (const [key, promise] of pictures) {
    if (!keepIds.has(key.split("/")[0])) {
      pictures.delete(key);
      promise.then((url) => URL.revokeObjectURL(url)).catch(() => {});
    }
  }
  for (const id of [...cards.keys()]) {
    if (!keepIds.has(id)) {
      cards.delete(id);
    }
  }
}

function scoreBar(item) {
  const fill = h("span", { class: "fill" });
  fill.style.width = (100 * Math.min(Math.max(item.score, 0), SCORE_SCALE_MAX)) / SCORE_SCALE_MAX + "%";
  const marker = h("span", { class: "marker", title: "threshold" });
  marker.style.left = (100 * 0.5) / SCORE_SCALE_MAX + "%";
  return h(
    "div",
    {
      class: "scorebar",
      role: "img",
      "aria-label": `score ${formatNumber(item.score, 2)}; the threshold is at 0.50`,
    },
    fill,
    marker,
  );
}

function pictureBox(item) {
  const box = h("div", { class: "picture" });
  if (!item.pictures) {
    const text = item.pictures_pending ? "making the pictures…" : "no pictures (the gateway was busy)";
    box.appendChild(h("div", { class: "no-picture" }, text));
    return box;
  }
  box.style.aspectRatio = `${item.pictures.width} / ${item.pictures.height}`;
  const kinds = ["rgb", "heatmap"].concat(item.pictures.outline ? ["outline"] : []);
  const alts = {
    rgb: `part ${item.object}`,
    heatmap: "anomaly heat map",
    outline: "defect outline",
  };
  for (const kind of kinds) {
    const image = h("img", { class: "layer " + kind, alt: alts[kind], dataset: { kind } });
    picture(item.id, kind)
      .then((url) => {
        image.src = url;
      })
      .catch(() => {
        image.alt = alts[kind] + " (no longer available)";
      });
    box.appendChild(image);
  }
  return box;
}

// An operator's verdict on this inspection (POST /inspections/{id}/feedback). A rejected part's
// images are kept by the gateway (IUMAD_KEEP_REJECTED_IMAGES); for any other part the answer is 409
// and the card asks for the images to attach.
const VERDICT_WORDS = {
  false_reject: "marked good (false reject)",
  confirmed_good: "marked good",
  confirmed_defect: "defect confirmed",
  missed_defect: "missed defect reported",
};

function feedbackControls(item) {
  const status = h("p", { class: "notice", hidden: true, role: "status" });
  const rgb = h("input", { type: "file", accept: "image/*,.tif,.tiff", "aria-label": "RGB image" });
  const depth = h("input", { type: "file", accept: ".tif,.tiff,.png,.npy", "aria-label": "depth frame" });
  const attach = h(
    "form",
    { class: "attach", hidden: true },
    h("label", {}, "RGB ", rgb),
    h("label", {}, "Depth ", depth),
    h("button", { type: "submit" }, "Send with images"),
  );
  let verdict = null;

  const done = (correction) => {
    attach.hidden = true;
    notify(status, VERDICT_WORDS[correction.kind] || "recorded", "ok");
  };
  const send = async (chosen) => {
    verdict = chosen;
    const path = `/inspections/${encodeURIComponent(item.request_id)}/feedback`;
    try {
      done(await postJson(path, { verdict }));
    } catch (error) {
      if (error.status === 409 && /not kept/.test(error.message)) {
        attach.hidden = false;
        notify(status, "Its images were not kept: attach them.", "info");
      } else {
        notify(status, describeError(error));
      }
    }
  };
  attach.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!rgb.files.length) {
      notify(status, "Choose the part's RGB image.");
      return;
    }
    const form = new FormData();
    form.append("verdict", verdict);
    form.append("rgb", rgb.files[0]);
    if (depth.files.length) {
      form.append("depth", depth.files[0]);
    }
    try {
      done(await upload(`/inspections/${encodeURIComponent(item.request_id)}/feedback`, form, () => {}));
    } catch (error) {
      notify(status, describeError(error));
    }
  });
  return h(
    "div",
    { class: "feedback" },
    h("button", { type: "button", class: "mark-good", onclick: () => send("good") }, "Mark good"),
    h(
      "button",
      { type: "button", class: "mark-defective", onclick: () => send("defective") },
      item.decision === "fail" ? "Confirm defect" : "Report defect",
    ),
    attach,
    status,
  );
}

function card(item) {
  const rejected = item.decision === "fail";
  return h(
    "li",
    {
      class: "inspection " + (rejected ? "fail" : "pass"),
      dataset: { entryId: item.id, object: item.object, decision: item.decision },
    },
    pictureBox(item),
    h(
      "div",
      { class: "details" },
      h("div", { class: "badge " + (rejected ? "fail" : "pass") }, rejected ? "REJECT" : "PASS"),
      h("div", { class: "object" }, item.object),
      scoreBar(item),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Score"),
        h("dd", {}, formatNumber(item.score, 2) + " (pass ≤ 0.50)"),
        h("dt", {}, "Raw / threshold"),
        h("dd", {}, `${formatNumber(item.raw_score)} / ${formatNumber(item.threshold)} (${item.threshold_source})`),
        h("dt", {}, "Defect area"),
        h("dd", {}, formatPercent(item.defect_area_fraction, 2)),
      ),
      h(
        "div",
        { class: "card-footer" },
        formatTime(item.time) + " · model ",
        h("span", { class: "mono" }, item.model_version),
      ),
      item.warnings && item.warnings.length ? h("p", { class: "warning" }, item.warnings.join("; ")) : null,
      feedbackControls(item),
    ),
  );
}

function renderCounters(counters, since) {
  const body = byId("live-counters").querySelector("tbody");
  const rows = Object.entries(counters).map(([name, count]) =>
    h(
      "tr",
      { dataset: { object: name } },
      h("th", { scope: "row" }, name),
      h("td", {}, String(count.inspected)),
      h("td", { class: count.rejected ? "bad-text" : "" }, String(count.rejected)),
      h("td", {}, formatPercent(count.reject_rate)),
    ),
  );
  if (!rows.length) {
    rows.push(h("tr", {}, h("td", { colspan: "4", class: "muted" }, "no inspections yet")));
  }
  body.replaceChildren(...rows);
  byId("live-counters-caption").textContent = `Per object, on this gateway since ${formatTime(since)}`;
}

function updateObjectFilter(names) {
  const select = byId("live-object");
  const known = new Set([...select.options].map((option) => option.value));
  for (const name of names) {
    if (!known.has(name)) {
      select.appendChild(h("option", { value: name }, name));
    }
  }
}

function renderList(items) {
  const list = byId("live-list");
  const nodes = items.map((item) => {
    const cached = cards.get(item.id);
    const state = item.pictures ? "ready" : item.pictures_pending ? "pending" : "none";
    if (cached && cached.state === state) {
      return cached.element;
    }
    const element = card(item);
    cards.set(item.id, { element, state });
    return element;
  });
  list.replaceChildren(...nodes);
  byId("live-empty").hidden = items.length > 0;
  forget(new Set(items.map((item) => item.id)));
}

async function refresh() {
  if (!lifecycle.isVisible()) {
    return;
  }
  if (busy) {
    again = true;
    return;
  }
  busy = true;
  try {
    const body = await getJson(query());
    notify(byId("live-error"), "");
    renderCounters(body.counters, body.since);
    updateObjectFilter(Object.keys(body.counters));
    renderList(body.inspections);
    byId("live-updated").textContent = "updated " + formatTime(new Date().toISOString());
  } catch (error) {
    notify(byId("live-error"), describeError(error));
  } finally {
    busy = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

function tick() {
  if (!byId("live-pause").checked && !document.hidden) {
    refresh();
  }
}

function updateLayers() {
  const list = byId("live-list");
  list.classList.toggle("hide-heatmap", !byId("live-heatmap").checked);
  list.classList.toggle("hide-outline", !byId("live-outline").checked);
}

function wire() {
  byId("live-object").addEventListener("change", refresh);
  byId("live-decision").addEventListener("change", refresh);
  byId("live-heatmap").addEventListener("change", updateLayers);
  byId("live-outline").addEventListener("change", updateLayers);
  window.addEventListener("iumad-key-changed", () => cards.clear()); // rebuild: pictures may load now
  updateLayers();
}

const lifecycle = viewLifecycle({ wire, onShow: refresh, tick, intervalMs: REFRESH_MS });
export const { show, hide } = lifecycle;
